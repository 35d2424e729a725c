"""Compile a loaded profile plus command-line overrides into one immutable Plan.

Pure: reads files (profiles, the schema, imported seccomp JSON) but makes no kernel
changes, needs no root, and never imports `sandbox` or `audit`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Optional

from . import plan as P
from . import subids
from .errors import ProfileError
from .loader import Document, load_profile
from .units import MAX_BYTES, parse_bytes, parse_cpus, parse_rlimit, parse_ulimit

SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "profile.schema.json"

# Capabilities known to Linux 6.x (CAP_LAST_CAP = CHECKPOINT_RESTORE = 40), without the CAP_ prefix.
from .plan import CAP_INDEX, CAPABILITIES  # noqa: E402  (the names live with the plan: the launch path reads them)

# Host uid/gid range a root caller maps the sandbox to when the profile says `auto`.
ROOT_AUTO_BASE = 1_000_000_000
ROOT_AUTO_COUNT = 65536
# What `subordinate` stands for when compiling for no real caller (lint): useradd's first range.
LINT_SUBORDINATE_BASE = 100000

DEFAULT_ETC = ("passwd", "group", "nsswitch.conf", "ld.so.cache", "ld.so.conf", "ld.so.conf.d",
               "alternatives", "localtime", "os-release", "debian_version", "protocols", "services",
               "mime.types", "ssl", "ca-certificates", "ca-certificates.conf", "profile", "bash.bashrc",
               "inputrc", "terminfo", "host.conf", "gai.conf", "python3", "python3.11")


@dataclass
class Overrides:
    """Command-line overrides, with Docker's flag names."""
    argv: tuple = ()
    cap_add: tuple = ()
    cap_drop: tuple = ()
    volumes: tuple = ()          # "SRC:DST[:ro|rw]"
    tmpfs: tuple = ()            # "DST[:size=..,mode=..]"
    read_only: Optional[bool] = None
    env: tuple = ()              # "K=V" or "K"
    workdir: Optional[str] = None
    hostname: Optional[str] = None
    network: Optional[str] = None
    ports: tuple = ()
    add_hosts: tuple = ()        # "NAME:ADDR" (Docker's --add-host): network.hosts entries
    timeout: Optional[float] = None
    memory: Optional[str] = None
    memory_swap: Optional[str] = None
    memory_reservation: Optional[str] = None
    cpus: Optional[str] = None
    cpu_shares: Optional[int] = None
    cpuset_cpus: Optional[str] = None
    pids_limit: Optional[int] = None
    blkio_weight: Optional[int] = None
    device_read_bps: tuple = ()
    device_write_bps: tuple = ()
    device_read_iops: tuple = ()
    device_write_iops: tuple = ()
    ulimits: tuple = ()
    security_opt: tuple = ()
    image: Optional[str] = None
    keep: bool = False
    storage_opt: tuple = ()      # "size=10G" (Docker's --storage-opt)
    user: Optional[str] = None   # "NAME|UID[:GROUP|GID]" inside
    profile_path: tuple = ()     # further directories `extends:` paths / seccomp.import may resolve into
    group_add: tuple = ()        # supplementary groups inside: names or GIDs
    isolation: Optional[str] = None   # --isolation namespaces|landlock: the backend (policies/landlock.py)
    # the sandbox layer's reader of the root's /etc/passwd and /etc/group (sandbox/userdb.py):
    # user_db(filesystem) -> object with .read(name) -> bytes|None, .where, .image_user
    user_db: Optional[object] = field(default=None, compare=False, repr=False)
    cwd_for_paths: str = field(default_factory=os.getcwd)


@dataclass(frozen=True)
class Compiled:
    plan: P.Plan
    document: Document


@lru_cache(maxsize=1)
def _validator():
    import jsonschema
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def validate(doc: Document) -> None:
    """Validate against the JSON Schema; the first error (by position) is raised with its location."""
    errors = list(_validator().iter_errors(doc.data))
    if not errors:
        return

    def key(e):
        loc = doc.locate(e.absolute_path)
        return (loc.line, loc.col) if loc else (0, 0)

    err = sorted(errors, key=key)[0]
    path = tuple(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        if extra:
            path += (extra[0],)
    raise ProfileError(_schema_message(err), doc.locate(path))


def _schema_message(err) -> str:
    path = ".".join(str(p) for p in err.absolute_path) or "profile"
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        known = ", ".join(sorted(err.schema.get("properties", {})))
        return f"{path}: unknown key {', '.join(map(repr, extra))} (known: {known})"
    if err.validator == "oneOf" and err.context:
        best = min(err.context, key=lambda e: len(list(e.absolute_path)))
        return f"{path}: {best.message}"
    if err.validator == "enum":
        return f"{path}: {err.instance!r} is not one of {', '.join(map(str, err.validator_value))}"
    return f"{path}: {err.message}"


def compile_profile(ref: str, overrides: Optional[Overrides] = None, *,
                    caller_uid: Optional[int] = None, caller_gid: Optional[int] = None,
                    kernel: Optional[tuple] = None) -> Compiled:
    ov = overrides or Overrides()
    doc = load_profile(ref, allow=tuple(os.path.join(ov.cwd_for_paths, d) for d in ov.profile_path))
    return compile_document(doc, overrides, caller_uid=caller_uid, caller_gid=caller_gid, kernel=kernel)


def schema_errors(doc: Document) -> list:
    """Every schema violation, as ProfileErrors at their nodes, in file order."""
    out = []
    for err in _validator().iter_errors(doc.data):
        path = tuple(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            if extra:
                path += (extra[0],)
        e = ProfileError(_schema_message(err), doc.locate(path))
        e.path = path
        out.append(e)
    return out


class _Collect:
    """One pass over the stages of compilation, collecting every ProfileError. A stage whose
    section failed the schema is skipped (its data has not the shape the stage reads); a stage
    that depends on another which failed gets that one's default. Without schema errors, an
    exception other than ProfileError is a bug and propagates."""

    def __init__(self, schema: list):
        self.errors: list = list(schema)
        self.bad = {getattr(e, "path", ())[:1] for e in schema}
        self.all_bad = () in self.bad

    def __call__(self, sections, fn, default=None):
        if self.all_bad or any((k,) in self.bad for k in sections):
            return default
        try:
            return fn()
        except ProfileError as e:
            self.errors.append(e)
            return default
        except (TypeError, KeyError, AttributeError, ValueError, IndexError):
            if len(self.errors) > 0 and self.bad:
                return default            # a shape the schema already reported elsewhere
            raise

    def add(self, e: ProfileError) -> None:
        self.errors.append(e)

    def raise_if_any(self) -> None:
        if self.errors:
            from .errors import ProfileErrors
            raise ProfileErrors(self.errors)


def compile_document(doc: Document, overrides: Optional[Overrides] = None, *,
                     caller_uid: Optional[int] = None, caller_gid: Optional[int] = None,
                     kernel: Optional[tuple] = None, owned_ids: bool = True) -> Compiled:
    """owned_ids=False: do not refuse id maps the caller does not own (lint, which cannot know the
    caller, reports them as PSB105 instead).

    Every error found is reported (ProfileErrors, see policies.errors), not only the first: the
    schema's, then each stage's (namespaces, user, capabilities, security options, seccomp,
    filesystem, process, network, limits), each at its node."""
    ov = overrides or Overrides()
    col = _Collect(schema_errors(doc))
    col((), lambda: _no_nul(doc.data, (), doc.locate))
    uid = os.geteuid() if caller_uid is None else caller_uid
    gid = os.getegid() if caller_gid is None else caller_gid
    d = doc.data
    loc = doc.locate

    def err(msg, path):
        raise ProfileError(msg, loc(path))

    # --- namespaces ---------------------------------------------------------
    def namespaces():
        ns = P.Namespaces(**d.get("namespaces", {}))
        if not ns.mount:
            err("namespaces.mount: false is not supported: the sandbox root needs its own mount namespace",
                ("namespaces", "mount"))
        return ns
    ns = col(("namespaces",), namespaces)
    ns_ok = ns is not None
    ns = ns or P.Namespaces()

    # --- filesystem (before the user: the root's /etc/passwd names users) ---
    fs = col(("filesystem",), lambda: _filesystem(d.get("filesystem", {}), ov, loc))

    # --- user ---------------------------------------------------------------
    def user_stage():
        user_d = d.get("user", {})
        in_uid, in_gid = user_d.get("uid", 0), user_d.get("gid", 0)
        if in_uid == "caller":          # map the caller to itself rather than to root
            in_uid = uid
        if in_gid == "caller":
            in_gid = gid
        as_caller = user_d.get("uid", 0) == "caller"
        in_uid, in_gid, groups = _user_override(ov, fs, in_uid, in_gid, uid)
        auto_sub, map_note = _auto_choice(uid, in_uid, in_gid, as_caller, owned_ids, user_d) if ns.user else (False, "")
        uid_map = _idmap(user_d.get("uid_map", "auto"), in_uid, uid, ("user", "uid_map"), loc,
                         owned_ids, owner=uid, auto_sub=auto_sub) if ns.user else ()
        gid_map = _idmap(user_d.get("gid_map", "auto"), in_gid, gid, ("user", "gid_map"), loc,
                         owned_ids, owner=uid, auto_sub=auto_sub) if ns.user else ()
        if uid != 0 and ov.group_add and not (ns.user and subids.holds_range(gid_map)):
            raise ProfileError("--group-add: supplementary groups need a root caller or a subordinate gid range "
                               "(gid_map: subordinate, or auto with /etc/subgid ids): a rootless caller mapping "
                               "only its own gid is denied setgroups")
        if ns.user:
            _check_mapped(in_uid, in_gid, groups, uid_map, gid_map, uid,
                          user_d if not (ov.user or fs.image) else {}, loc)
        return P.User(uid=in_uid, gid=in_gid, uid_map=uid_map, gid_map=gid_map, groups=groups, map_note=map_note)
    user = col(("user", "namespaces") if not ns_ok else ("user",), user_stage) if fs is not None else None

    # --- capabilities (every unknown name reported; the valid ones still count) ----------
    caps_d = d.get("capabilities", {"drop": ["ALL"]}) if ("capabilities",) not in col.bad else {}
    caps = set(CAPABILITIES)
    for i, c in enumerate(caps_d.get("drop", []) if isinstance(caps_d, dict) else ()):
        caps -= col(("capabilities",), lambda: _cap_set(c, ("capabilities", "drop", i), loc), set())
    for i, c in enumerate(caps_d.get("add", []) if isinstance(caps_d, dict) else ()):
        caps |= col(("capabilities",), lambda: _cap_set(c, ("capabilities", "add", i), loc), set())
    for c in ov.cap_drop:
        caps -= col((), lambda: _cap_set(c, None, loc, flag="--cap-drop"), set())
    for c in ov.cap_add:
        caps |= col((), lambda: _cap_set(c, None, loc, flag="--cap-add"), set())
    capabilities = tuple(sorted(caps, key=CAP_INDEX.__getitem__))

    # --- no_new_privs / security-opt ----------------------------------------
    def security_opts():
        no_new_privs = d.get("no_new_privs", True)
        seccomp_section = d.get("seccomp")
        for opt in ov.security_opt:
            k, _, v = opt.partition("=")
            if k == "seccomp":
                if not v:
                    raise ProfileError("--security-opt seccomp= needs a FILE or 'unconfined'")
                if v == "unconfined":
                    seccomp_section = {"enabled": False}
                else:
                    p = Path(ov.cwd_for_paths, v)
                    if not p.is_file():
                        raise ProfileError(f"--security-opt seccomp={v}: "
                                           + ("not a regular file" if p.exists() else "file not found"))
                    seccomp_section = {"import": str(p.resolve())}
            elif k in ("no-new-privileges", "no_new_privs"):
                if v not in ("", "true", "false"):
                    raise ProfileError(f"--security-opt {opt}: expected true or false")
                no_new_privs = v != "false"
            elif k == "landlock":
                pass
            else:
                raise ProfileError(f"--security-opt {opt!r}: unknown option (known: seccomp=FILE|unconfined, "
                                   "no-new-privileges[=true|false])")
        return no_new_privs, seccomp_section
    no_new_privs, seccomp_section = col(("no_new_privs",), security_opts, (True, None))

    # --- seccomp ------------------------------------------------------------
    from .seccomp import compile_seccomp
    seccomp = col(("seccomp",), lambda: compile_seccomp(seccomp_section, capabilities=frozenset(capabilities),
                                                        locate=loc, kernel=kernel))

    # --- filesystem: see the user section (the root's /etc/passwd names users) -------------
    # --- process ------------------------------------------------------------
    image_cfg = _image_config(ov, fs)          # an image's Entrypoint, Cmd, Env, WorkingDir (Docker's run)
    proc = col(("process",), lambda: _process(d.get("process", {}), ov, loc, image_cfg))

    # --- network ------------------------------------------------------------
    def network():
        nonlocal ns
        net = _network(d.get("network", "none"), ov, loc, ns)
        if net.mode == "host" and ns.net:
            ns = replace(ns, net=False)
        elif net.mode != "host" and not ns.net:
            err(f"network {net.mode!r} needs namespaces.net: true", ("namespaces", "net"))
        for k in [k for k, _ in getattr(proc, "env_set", ())] + list(getattr(proc, "env_allow", ())):
            # a secret's placeholder or its source set or passed by hand (a wildcard: launcher drops it)
            for s in net.secrets:
                if k in (s.name, s.source[4:] if s.source.startswith("env:") else None):
                    err(f"process.env: {k} is {'secret ' + s.name if k == s.name else 'the source of secret ' + s.name}"
                        f" (network.secrets); it is never set or passed into the sandbox", ("process", "env"))
        if net.egress_default == "deny" and "NET_ADMIN" in capabilities:
            err("network.egress: an egress allow-list cannot hold against CAP_NET_ADMIN (the program could "
                "change the rules); drop NET_ADMIN", ("network", "egress"))
        return net
    net = col(("network",), network)      # with the default namespaces if those failed
    if net is not None and getattr(net, "egress_hosts", ()) and proc is not None:
        # programs that honour proxy variables go to the egress proxy's listener in the sandbox's
        # own namespace (sandbox/network/egress/); the others are steered to it by nft all the same
        from .egress import PROXY_URL
        env = dict(proc.env_set)
        for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            env.setdefault(k, PROXY_URL)
        env.setdefault("no_proxy", "localhost,127.0.0.1,::1")
        proc = replace(proc, env_set=tuple(sorted(env.items())))

    # --- limits -------------------------------------------------------------
    limits = col(("limits",), lambda: _limits(d.get("limits", {}), ov, loc))

    # --- landlock, isolation (policies/landlock.py) ---------------------------
    from . import landlock as _ll
    landlock = col(("landlock",), lambda: _ll.compile_landlock(d.get("landlock"), fs or P.Filesystem(), loc))
    isolation, backend = col(("isolation",), lambda: _ll.compile_isolation(d.get("isolation"), ov.isolation, loc),
                             ("namespaces", None))

    col.raise_if_any()
    name = d.get("name") or Path(doc.files[0]).stem
    plan = P.Plan(name=name, sources=tuple(doc.files), namespaces=ns, user=user,
                  capabilities=capabilities, no_new_privs=no_new_privs, seccomp=seccomp,
                  filesystem=fs, process=proc, network=net, limits=limits,
                  landlock=landlock, isolation=isolation, backend=backend)
    return Compiled(plan, doc)


def _user_override(ov: Overrides, fs: P.Filesystem, in_uid: int, in_gid: int, caller: int) -> tuple:
    """--user (else the image's config User) and --group-add, names resolved in the sandbox's root
    (policies/users.py): (uid, gid, supplementary groups). A rootless caller takes groups only with
    --group-add (then the user's memberships in /etc/group too, as root's), which user_stage allows
    only with a subordinate gid range mapped (setgroups allowed: sandbox/idmap.py); without
    --group-add its memberships are not taken."""
    from . import users
    spec = ov.user or None
    db = None
    if spec is not None or ov.group_add or fs.image:
        db = ov.user_db(fs) if ov.user_db is not None else None
    label = "--user"
    if spec is None and fs.image and db is not None:
        spec = getattr(db, "image_user", None) or None    # Docker: the image's User is the default
        label = "the image's User"
    if spec is None and not ov.group_add:
        return in_uid, in_gid, ()
    where = getattr(db, "where", "the sandbox's root")
    r_uid, r_gid, groups = users.resolve(spec, tuple(ov.group_add), db.read if db is not None else None,
                                         where, label)
    if r_uid is not None:
        in_uid, in_gid = r_uid, r_gid
    return in_uid, in_gid, groups if caller == 0 or ov.group_add else ()


def _check_mapped(in_uid: int, in_gid: int, groups: tuple, uid_map, gid_map, caller: int, user_d, loc) -> None:
    """Every id the program takes is mapped in its user namespace (else setresuid fails with
    EINVAL, or files come out EOVERFLOW at launch); a root caller's set-up runs as the namespace's
    root, so a map must hold inside 0 too (a rootless caller's set-up runs as itself)."""
    for what, ids, m in (("uid", (in_uid,), uid_map), ("gid", (in_gid,), gid_map), ("gid", groups, gid_map)):
        for val in ids:
            if not any(e.inside <= val < e.inside + e.count for e in m):
                path = ("user", what) if what in user_d else ("user", f"{what}_map")
                raise ProfileError(f"{what} {val} is not mapped by {what}_map ({_show_map(m)}): map it, "
                                   f"or choose another --user", loc(path))
    if caller == 0:
        for what, m in (("uid", uid_map), ("gid", gid_map)):
            if not any(e.inside == 0 for e in m):
                raise ProfileError(f"{what} 0 is not mapped by {what}_map ({_show_map(m)}): the sandbox is set up "
                                   f"as root of its user namespace; add an entry for inside 0",
                                   loc(("user", f"{what}_map")))


def _show_map(m) -> str:
    return ", ".join(f"{e.inside}->{e.outside} x{e.count}" for e in m) or "empty"


def _no_nul(value, path: tuple, loc) -> None:
    """No kernel interface takes a string with a NUL byte (paths, argv, environment, names): refused
    at its node rather than failing in the launch (ValueError: embedded null byte)."""
    if isinstance(value, str):
        if "\0" in value:
            raise ProfileError(f"{'.'.join(map(str, path)) or 'profile'}: contains a NUL byte", loc(path))
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_nul(k, path + (k,), loc)
            _no_nul(v, path + (k,), loc)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _no_nul(v, path + (i,), loc)


def _auto_choice(caller: int, in_uid: int, in_gid: int, as_caller: bool, owned_check: bool, user_d) -> tuple:
    """What a rootless caller's `auto` maps, and why (explain shows the reason): its subordinate
    ids (inside 0-65535, as `subordinate`) when /etc/subuid and /etc/subgid give it 65536 each,
    else its own uid and gid only. -> (subordinate?, one line; "" for a root caller or no auto)."""
    if caller == 0 or "auto" not in (user_d.get("uid_map", "auto"), user_d.get("gid_map", "auto")):
        return False, ""
    if not owned_check:              # lint: no real caller
        return False, ""
    name = subids.user_name(caller) or str(caller)
    if as_caller:
        return False, "auto: the caller's own ids only (user.uid: caller asks for the caller itself inside)"
    if subids.no_new_privs():
        return False, ("auto: the caller's own ids only (it runs with no_new_privs: the setuid newuidmap and "
                       "newgidmap cannot map its subordinate ids)")
    if max(in_uid, in_gid) >= subids.WANT:
        return False, (f"auto: the caller's own ids only (uid/gid {max(in_uid, in_gid)} inside is beyond the "
                       f"subordinate range 0-{subids.WANT - 1})")
    try:
        have = {w: sum(n for _, n in subids.ranges(w, caller)) for w in ("uid", "gid")}
        enough = all(subids.first_ids(subids.ranges(w, caller)) for w in ("uid", "gid"))
    except subids.SubidError as e:
        return False, f"auto: the caller's own ids only ({e})"
    if enough:
        return True, (f"auto: user {name}'s subordinate ids (/etc/subuid, /etc/subgid: inside 0-"
                      f"{subids.WANT - 1}; root inside is not the caller)")
    return False, (f"auto: the caller's own ids only (user {name} has {have['uid']} subordinate uids and "
                   f"{have['gid']} gids in /etc/subuid, /etc/subgid; 65536 of each give the sandbox 65536 ids "
                   f"and a root that is not the caller: usermod --add-subuids/--add-subgids FIRST-LAST {name})")


def _idmap(spec, inside: int, caller: int, path, loc, owned_check: bool = True,
           owner: Optional[int] = None, auto_sub: bool = False) -> tuple:
    """caller: the caller's uid (uid_map) or gid (gid_map); owner: its uid, which names it in both
    /etc/subuid and /etc/subgid (by name or number). auto_sub: a rootless `auto` maps the caller's
    subordinate ids (_auto_choice)."""
    owner = caller if owner is None else owner
    what = "uid" if path[-1] == "uid_map" else "gid"
    if spec in ("auto", "subordinate"):
        if caller == 0:
            if inside >= ROOT_AUTO_COUNT:
                raise ProfileError(f"uid/gid {inside} is outside the automatic range 0-{ROOT_AUTO_COUNT - 1}",
                                   loc(path))
            return (P.IdMapEntry(0, ROOT_AUTO_BASE, ROOT_AUTO_COUNT),)
        if spec == "auto" and not auto_sub:
            return (P.IdMapEntry(inside, caller, 1),)
        # rootless `subordinate`: inside 0-65535 -> the first 65536 of the caller's /etc/sub{u,g}id
        # ids (root inside is not the caller); written by newuidmap/newgidmap at launch. (lint,
        # owned_check False, compiles for no real caller: a placeholder range, no file read.)
        if not owned_check:
            return (P.IdMapEntry(0, LINT_SUBORDINATE_BASE, subids.WANT),)
        entries = subids.first_ids(_subids(what, owner, path, loc))
        if not entries:
            raise ProfileError(f"{'.'.join(path)}: subordinate: {_no_subids(what, owner)}", loc(path))
        return tuple(P.IdMapEntry(*e) for e in entries)
    out = []
    owned = None
    own_seen = False
    for i, e in enumerate(spec):
        outside = caller if e["outside"] == "caller" else e["outside"]
        if owned_check and caller != 0:
            # who owns a host id: root owns all; a rootless caller its own (one id, once) and its
            # subordinate ranges (/etc/subuid, /etc/subgid: newuidmap/newgidmap write those) -
            # refused here, at compile time, pointing at the entry (the launch would fail anyway)
            n = e["count"]
            ids = f"{outside}" if n == 1 else f"{outside}-{outside + n - 1}"
            if outside == caller and n == 1:
                if own_seen:
                    raise ProfileError(f"{'.'.join(path)}[{i}]: a rootless caller may map its own {what} only once",
                                       loc(path + (i,)))
                own_seen = True
            else:
                if owned is None:
                    owned = _subids(what, owner, path + (i,), loc)
                if not subids.owns(owned, outside, n):
                    raise ProfileError(f"{'.'.join(path)}[{i}]: host {what} {ids} is not yours: a rootless caller "
                                       f"({what} {caller}) may map its own {what} (outside: caller, count: 1) and "
                                       f"ids of its ranges in {subids.FILES[what]} "
                                       f"({_ranges_text(owned) or 'none'}); other ids need root",
                                       loc(path + (i,)))
        out.append(P.IdMapEntry(e["inside"], outside, e["count"]))
    out.sort(key=lambda e: e.inside)
    for a, b in zip(out, out[1:]):
        if a.inside + a.count > b.inside:
            raise ProfileError("overlapping ranges in the map", loc(path))
    return tuple(out)


def _subids(what: str, owner: int, path, loc) -> list:
    try:
        return subids.ranges(what, owner)
    except subids.SubidError as e:
        raise ProfileError(f"{'.'.join(str(p) for p in path)}: {e}", loc(path)) from None


def _ranges_text(rs) -> str:
    return ", ".join(f"{a}-{a + n - 1}" for a, n in rs)


def _no_subids(what: str, owner: int) -> str:
    """One line: why there are no subordinate ids to map, and the remedy."""
    name = subids.user_name(owner) or str(owner)
    have = sum(n for _, n in subids.ranges(what, owner))
    short = (f"only {have} subordinate {what}s" if have else f"no subordinate {what}s")
    return (f"user {name} has {short} in {subids.FILES[what]} (needs {subids.WANT}); an administrator adds "
            f"them: usermod --add-sub{what}s FIRST-LAST {name} (e.g. 100000-165535, a range no other user "
            f"has)")


def _cap_set(name: str, path, loc, flag: Optional[str] = None) -> set:
    n = name.upper()
    if n.startswith("CAP_"):
        n = n[4:]
    if n == "ALL":
        return set(CAPABILITIES)
    if n not in CAP_INDEX:
        msg = f"unknown capability {name!r}"
        if flag:
            raise ProfileError(f"{flag}: {msg}")
        raise ProfileError(msg, loc(path))
    return {n}


def _filesystem(f: dict, ov: Overrides, loc) -> P.Filesystem:
    root, image = "host", None
    r = f.get("root", "host")
    if isinstance(r, dict):
        if "path" in r:
            root = r["path"]
        else:
            image = r["image"]
    if ov.image:
        image, root = ov.image, "host"
    read_only = f.get("read_only", True)
    if ov.read_only is not None:
        read_only = ov.read_only
    if ov.storage_opt and not image:
        raise ProfileError("--storage-opt limits an image's writable layer: it needs --image (and --read-write)")
    storage_size = _storage_size(f, ov, loc) if image and not read_only else None
    mounts, errs = [], []
    for i, m in enumerate(f.get("mounts", [])):
        try:
            mounts.append(_mount_from_profile(m, ("filesystem", "mounts", i), loc))
        except ProfileError as e:            # every bad mount is reported
            errs.append(e)
    if errs:
        from .errors import ProfileErrors
        raise ProfileErrors(errs)
    for v in ov.volumes:
        mounts.append(_parse_volume(v, ov.cwd_for_paths))
    for t in ov.tmpfs:
        mounts.append(_parse_tmpfs(t))
    # later mounts on the same target replace earlier ones (CLI over profile)
    seen, deduped = {}, []
    for m in mounts:
        seen[m.target.rstrip("/") or "/"] = m
    for m in mounts:
        if seen.get(m.target.rstrip("/") or "/") is m:
            deduped.append(m)
    for m in deduped:
        if m.target.rstrip("/") in ("", "/proc", "/dev") :
            raise ProfileError(f"mount target {m.target} is managed by pysandbox and cannot be replaced")
    return P.Filesystem(
        root=root, image=image, read_only=read_only,
        system_dirs=tuple(f.get("system_dirs", P.Filesystem.system_dirs)),
        etc=tuple(f.get("etc", DEFAULT_ETC)),
        mounts=tuple(deduped),
        masked_paths=tuple(f.get("masked_paths", ())),
        readonly_paths=tuple(f.get("readonly_paths", ())),
        proc=f.get("proc", True), sys=f.get("sys", True), keep=ov.keep, storage_size=storage_size)


DEFAULT_STORAGE_SIZE = P.DEFAULT_STORAGE_SIZE


def _storage_size(f: dict, ov: Overrides, loc) -> int:
    """filesystem.storage.size, then --storage-opt size= (later wins); the default otherwise."""
    size = DEFAULT_STORAGE_SIZE
    st = f.get("storage") or {}
    if "size" in st:
        try:
            size = parse_bytes(st["size"])
        except ValueError as e:
            raise ProfileError(str(e), loc(("filesystem", "storage", "size"))) from None
        if size <= 0:
            raise ProfileError(f"filesystem.storage.size must be a positive size (got {st['size']!r})",
                               loc(("filesystem", "storage", "size")))
    for opt in ov.storage_opt:
        k, eq, v = opt.partition("=")
        if k.strip() != "size" or not eq:
            raise ProfileError(f"--storage-opt {opt}: unknown option (supported: size=SIZE, e.g. size=10G)")
        try:
            size = parse_bytes(v)
        except ValueError as e:
            raise ProfileError(f"--storage-opt {opt}: {e}") from None
        if size <= 0:
            raise ProfileError(f"--storage-opt {opt}: the size must be positive")
    return size


def _mount_from_profile(m: dict, path, loc) -> P.Mount:
    t = m["type"]
    try:
        size = parse_bytes(m["size"]) if "size" in m else None
        mode = int(m["mode"], 8) if isinstance(m.get("mode"), str) else m.get("mode")
    except ValueError as e:
        raise ProfileError(str(e), loc(path)) from None
    if t in ("bind", "volume") and not m.get("source"):
        raise ProfileError(f"a {t} mount needs a source", loc(path))
    if t == "bind" and not os.path.isabs(m["source"]):
        raise ProfileError("bind source must be an absolute path", loc(path + ("source",)))
    from .loader import check_path_value
    check_path_value(m["target"], ".".join(map(str, path + ("target",))), loc(path + ("target",)))
    if m.get("source") is not None:
        check_path_value(m["source"], ".".join(map(str, path + ("source",))), loc(path + ("source",)))
    return P.Mount(type=t, target=os.path.normpath(m["target"]), source=m.get("source"),
                   read_only=m.get("read_only", t == "bind"), size=size, mode=mode)


def _parse_volume(spec: str, cwd: str) -> P.Mount:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ProfileError(f"-v {spec!r}: expected SRC:DST[:ro|rw]")
    src, dst = parts[0], parts[1]
    opts = parts[2].split(",") if len(parts) == 3 else []
    bad = [o for o in opts if o not in ("ro", "rw")]
    if bad:
        raise ProfileError(f"-v {spec!r}: unknown option {bad[0]!r} (known: ro, rw)")
    if not dst.startswith("/"):
        raise ProfileError(f"-v {spec!r}: destination must be an absolute path")
    ro = "ro" in opts
    if src.startswith(("/", ".")):
        src_abs = os.path.normpath(os.path.join(cwd, src))
        try:
            os.stat(src_abs)
        except (FileNotFoundError, NotADirectoryError):
            raise ProfileError(f"-v {spec!r}: source {src_abs} does not exist") from None
        except OSError:     # e.g. EACCES: the launcher opens it as the caller and says why (exit 125)
            pass
        return P.Mount(type="bind", source=src_abs, target=os.path.normpath(dst), read_only=ro)
    return P.Mount(type="volume", source=src, target=os.path.normpath(dst), read_only=ro)


def _parse_tmpfs(spec: str) -> P.Mount:
    dst, _, optstr = spec.partition(":")
    if not dst.startswith("/"):
        raise ProfileError(f"--tmpfs {spec!r}: destination must be an absolute path")
    size = mode = None
    for o in filter(None, optstr.split(",")):
        k, _, v = o.partition("=")
        try:
            if k == "size":
                size = parse_bytes(v)
            elif k == "mode":
                mode = int(v, 8)
            else:
                raise ProfileError(f"--tmpfs {spec!r}: unknown option {k!r} (known: size, mode)")
        except ValueError:
            raise ProfileError(f"--tmpfs {spec!r}: bad value for {k}") from None
    return P.Mount(type="tmpfs", target=os.path.normpath(dst), size=size, mode=mode)


def _image_config(ov: Overrides, fs) -> dict:
    """The image's config (run --image): user_db(fs).image_config of the sandbox layer, or {}."""
    if fs is None or not getattr(fs, "image", None) or ov.user_db is None:
        return {}
    cfg = getattr(ov.user_db(fs), "image_config", None)
    return cfg if isinstance(cfg, dict) else {}


def _str_list(v) -> tuple:
    return tuple(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else ()


def _process(p: dict, ov: Overrides, loc, image_cfg: Optional[dict] = None) -> P.Process:
    img = image_cfg or {}
    entry, cmd = _str_list(img.get("Entrypoint")), _str_list(img.get("Cmd"))
    if ov.argv:                        # Docker: the image's Entrypoint, then the command given
        argv = entry + tuple(ov.argv)
    elif entry or cmd:
        argv = entry + cmd
    else:
        argv = tuple(p.get("argv", ("/bin/sh",)))
    for flag, values in (("command", ov.argv), ("-e", ov.env)):   # the profile's are checked at load
        bad = next((v for v in values if "\0" in v), None)
        if bad is not None:
            raise ProfileError(f"{flag} {bad!r}: contains a NUL byte")
    env = p.get("env", {})
    allow = list(env.get("allow", ()))
    env_set = {k: ("true" if v is True else "false" if v is False else str(v))
               for k, v in env.get("set", {}).items()}
    for e in _str_list(img.get("Env")):  # the image's Env over the profile's, -e over both
        k, eq, v = e.partition("=")
        if eq and k and (k[0].isalpha() or k[0] == "_") and k.replace("_", "a").isalnum():
            env_set[k] = v
    for e in ov.env:
        if "=" in e:
            k, v = e.split("=", 1)
            if not k or not (k[0].isalpha() or k[0] == "_") or not k.replace("_", "a").isalnum():
                raise ProfileError(f"-e {e!r}: invalid variable name")
            env_set[k] = v
        else:
            if not e or not e.replace("_", "a").isalnum():
                raise ProfileError(f"-e {e!r}: invalid variable name")
            allow.append(e)
    rlimits, errs = [], []
    for name, value in p.get("rlimits", {}).items():
        try:
            soft, hard = parse_rlimit(name, value)
        except ValueError as e:
            errs.append(ProfileError(str(e), loc(("process", "rlimits", name))))
            continue
        rlimits.append(P.Rlimit(name, soft, hard))
    if errs:
        from .errors import ProfileErrors
        raise ProfileErrors(errs)
    for u in ov.ulimits:
        try:
            name, soft, hard = parse_ulimit(u)
        except ValueError as e:
            raise ProfileError(f"--ulimit: {e}") from None
        rlimits = [r for r in rlimits if r.name != name] + [P.Rlimit(name, soft, hard)]
    timeout = p.get("timeout")
    if timeout is not None and not _finite_seconds(timeout):    # the schema lets .nan and .inf through
        raise ProfileError("process.timeout: must be a finite number of seconds > 0", loc(("process", "timeout")))
    if ov.timeout is not None:
        if not _finite_seconds(ov.timeout):
            raise ProfileError(f"--timeout {ov.timeout!r:.40}: must be a finite number of seconds > 0")
        timeout = float(ov.timeout)
    wd = img.get("WorkingDir")
    cwd = ov.workdir or (wd if isinstance(wd, str) and wd.startswith("/") else None) or p.get("cwd", "/")
    if not cwd.startswith("/"):
        raise ProfileError(f"-w {cwd!r}: working directory must be an absolute path")
    hostname = ov.hostname or p.get("hostname", "sandbox")
    import re
    if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$", hostname):
        raise ProfileError(f"--hostname {hostname!r}: not a valid host name")
    return P.Process(argv=argv, cwd=cwd, env_allow=tuple(dict.fromkeys(allow)),
                     env_set=tuple(sorted(env_set.items())), hostname=hostname,
                     rlimits=tuple(sorted(rlimits, key=lambda r: r.name)), timeout=timeout,
                     new_session=p.get("new_session", True))


PID_MAX_LIMIT = 4 * 1024 * 1024      # include/linux/threads.h, 64-bit: the most pids.max accepts


def _finite_seconds(v) -> bool:
    """A timeout: a real number (not a bool, not a string), finite and > 0."""
    import math
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _network(n, ov: Overrides, loc, ns) -> P.Network:
    if isinstance(n, str):
        n = {"mode": n}
    mode = ov.network or n.get("mode", "none")
    ports = []
    for i, spec in enumerate(list(n.get("ports", [])) + list(ov.ports)):
        try:
            ports.append(parse_port(spec))
        except ValueError as e:
            raise ProfileError(str(e), loc(("network", "ports", i)) if i < len(n.get("ports", [])) else None) from None
    eg = n.get("egress", {})
    dns = [ProfileError(f"network.egress.allow[{i}].to: {r['to']!r} looks like a DNS name, not a "
                        f"sandbox peer or an IP/CIDR; {DNS_EGRESS_HINT}", loc(("network", "egress", "allow", i, "to")))
           for i, r in enumerate(eg.get("allow", [])) if egress_dns_name(r.get("to"))]
    if dns:
        from .errors import ProfileErrors
        raise ProfileErrors(dns)
    rules = tuple(P.EgressRule(to=r["to"], ports=tuple(r.get("ports", ())), proto=r.get("proto", "tcp"))
                  for r in eg.get("allow", []) if "to" in r)
    host_rules, host_entries = _egress_hosts(n, eg, ov, loc)     # egress by domain name (policies/egress.py)
    if host_rules and mode in ("none", "host"):
        raise ProfileError(f"network {mode}: egress by host name needs an outbound network (a private network, "
                           "pasta or slirp4netns)", loc(("network", "egress", "allow", host_rules[0].index)))
    if mode == "host" and (ports or rules or eg.get("default") == "deny"):
        raise ProfileError("network host cannot publish ports or filter egress (it shares the host's network)",
                           loc(("network",)))
    if mode == "none" and ports:
        raise ProfileError("network none cannot publish ports", loc(("network",)))
    if host_entries and not host_rules:
        raise ProfileError("network.hosts / --add-host: the names are answered by the egress resolver, which "
                           "runs with egress `host:` rules only (add a rule allowing the name)",
                           loc(("network", "hosts")) if n.get("hosts") else None)
    if host_rules and eg.get("default") == "allow":
        raise ProfileError("network.egress: host rules need default deny (the proxy is the only way out)",
                           loc(("network", "egress", "default")))
    http, secrets = _http_and_secrets(n, mode, loc)
    _intercepted_hosts_allowed(http, secrets, host_rules, loc)
    return P.Network(mode=mode, ports=tuple(ports),
                     egress_default=eg.get("default", "deny" if rules or host_rules else "allow"),
                     egress_allow=rules, egress_hosts=host_rules, hosts=host_entries, http=http, secrets=secrets)


def _egress_hosts(n: dict, eg: dict, ov: Overrides, loc) -> tuple[tuple, tuple]:
    """network.egress.allow's `host:` rules and network.hosts + --add-host, normalised and bounded
    (policies/egress.py)."""
    from . import egress as E
    allow = eg.get("allow", [])
    if len(allow) > E.MAX_RULES:
        raise ProfileError(f"network.egress.allow: at most {E.MAX_RULES} rules", loc(("network", "egress", "allow")))
    out = []
    for i, r in enumerate(allow):
        if "host" not in r:
            continue
        where = loc(("network", "egress", "allow", i))
        if "to" in r or "proto" in r:
            raise ProfileError(f"network.egress.allow[{i}]: a host rule takes host, ports, allow_private "
                               "(TCP through the egress proxy), not to/proto", where)
        try:
            out.append(P.EgressHostRule(host=E.normalise_name(r["host"], pattern=True),
                                        ports=E.ports(r.get("ports"), f"network.egress.allow[{i}]"),
                                        allow_private=bool(r.get("allow_private", False)), index=i))
        except ValueError as e:
            raise ProfileError(f"network.egress.allow[{i}].host: {e}", where) from None
    entries: dict[tuple[str, bool], str] = {}       # (name, IPv6?): a name may have one address of each family
    table = n.get("hosts", {}) or {}
    if len(table) + len(ov.add_hosts) > E.MAX_HOSTS:
        raise ProfileError(f"network.hosts: at most {E.MAX_HOSTS} names", loc(("network", "hosts")))
    for name, addr in table.items():
        try:
            a = E.address(addr, f"network.hosts.{name}")
            entries[(E.normalise_name(name), ":" in a)] = a
        except ValueError as e:
            raise ProfileError(f"network.hosts: {e}", loc(("network", "hosts", name))) from None
    for spec in ov.add_hosts:
        try:
            k, v = E.parse_add_host(spec)
        except ValueError as e:
            raise ProfileError(str(e)) from None
        entries[(k, ":" in v)] = v
    return tuple(out), tuple(P.HostEntry(k[0], v) for k, v in sorted(entries.items()))


# Headers a secret may not go into: they frame the message or name its peer (the proxy's own).
SECRET_HEADERS_REFUSED = frozenset(("host", "content-length", "transfer-encoding", "connection", "upgrade",
                                    "te", "trailer", "keep-alive", "proxy-connection", "expect"))


_SECRET_SOURCE = __import__("re").compile(r"env:[A-Za-z_][A-Za-z0-9_]*|file:[^\x00]+")
_HEADER_NAME = __import__("re").compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")


def http_host_ok(host) -> bool:
    """A host of an http rule or a secret: a DNS name, `*.` + a DNS name, or an IP address."""
    import ipaddress
    if not isinstance(host, str) or not host or len(host) > 253:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    name = host[2:] if host.startswith("*.") else host
    return all(_HOSTNAME_LABEL.fullmatch(x) for x in name.split("."))


def _http_and_secrets(n: dict, mode: str, loc) -> tuple:
    """network.egress.http and network.secrets -> (HttpRule, ...), (Secret, ...). Pure: a secret is
    kept as a reference (its NAME, `from:`, hosts, header, format), never read here."""
    from .errors import ProfileErrors
    errs = []
    eg = n.get("egress", {}) or {}
    http = []
    for i, r in enumerate(eg.get("http", []) or []):
        where = ("network", "egress", "http", i)
        if not http_host_ok(r["host"]):
            errs.append(ProfileError(f"network.egress.http[{i}].host: {r['host']!r} is no host name, "
                                     f"`*.`name or IP address", loc(where + ("host",))))
            continue
        http.append(P.HttpRule(host=r["host"].lower().rstrip("."),
                               methods=tuple(sorted({m.upper() for m in r.get("methods", ())})),
                               paths=tuple(r.get("paths", ()))))
    secrets = []
    for name, sp in sorted((n.get("secrets") or {}).items()):
        where = ("network", "secrets", name)
        src = sp["from"]
        if not _SECRET_SOURCE.fullmatch(src):
            errs.append(ProfileError(f"network.secrets.{name}.from: {src!r}: expected env:VARIABLE or file:/path",
                                     loc(where + ("from",))))
        elif src.startswith("file:") and not os.path.isabs(src[5:]):
            errs.append(ProfileError(f"network.secrets.{name}.from: {src!r}: the file must be an absolute path",
                                     loc(where + ("from",))))
        bad = [h for h in sp["hosts"] if not http_host_ok(h)]
        if bad:
            errs.append(ProfileError(f"network.secrets.{name}.hosts: {bad[0]!r} is no host name, `*.`name or "
                                     f"IP address", loc(where + ("hosts",))))
        header = sp.get("header", "Authorization")
        if not _HEADER_NAME.fullmatch(header):
            errs.append(ProfileError(f"network.secrets.{name}.header: {header!r} is no HTTP header name",
                                     loc(where + ("header",))))
        elif header.lower() in SECRET_HEADERS_REFUSED:
            errs.append(ProfileError(f"network.secrets.{name}.header: {header!r} frames the request; a secret "
                                     f"cannot go there", loc(where + ("header",))))
        fmt = sp.get("format", "{}")
        if fmt.count("{}") != 1 or any(ord(c) < 0x20 or ord(c) == 0x7f for c in fmt):
            errs.append(ProfileError(f"network.secrets.{name}.format: {fmt!r} must hold `{{}}` (the value) once "
                                     f"and no control characters", loc(where + ("format",))))
        secrets.append(P.Secret(name=name, source=src, hosts=tuple(h.lower().rstrip(".") for h in sp["hosts"]),
                                header=header, format=fmt))
    if (http or secrets) and mode in ("none", "host"):
        errs.append(ProfileError(f"network.{'secrets' if secrets else 'egress.http'}: needs a network whose "
                                 f"traffic the egress proxy steers (a private network or pasta/slirp4netns), "
                                 f"not {mode!r}", loc(("network", "secrets" if secrets else "egress"))))
    if errs:
        raise ProfileErrors(errs) if len(errs) > 1 else errs[0]
    return tuple(http), tuple(secrets)


_HOSTNAME_LABEL = __import__("re").compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def egress_dns_name(to) -> bool:
    """True when an egress `to:` is no IP address or CIDR but looks like a DNS name: it has a dot
    (sandbox peer names in `to:` have none) and every label is hostname syntax, or it is
    `localhost`. Such a rule would be taken as a peer name that never matches (issue 20.8);
    domain rules do not exist yet, so it is refused (compiler) and linted (PSB503)."""
    import ipaddress
    if not isinstance(to, str) or not to:
        return False
    try:
        ipaddress.ip_network(to, strict=False)
        return False
    except ValueError:
        pass
    name = to[:-1] if to.endswith(".") else to
    if name.lower() == "localhost":
        return True
    labels = name.split(".")
    return len(labels) > 1 and all(_HOSTNAME_LABEL.fullmatch(x) for x in labels) \
        and not all(x.isdigit() for x in labels)


DNS_EGRESS_HINT = ("allow a name with `host:` (`{host: example.com, ports: [443]}`), an address with `to:` "
                   "(`to: 203.0.113.7` or `to: 203.0.113.0/24`); a sandbox peer name has no dot")


def parse_port(spec) -> P.PortMapping:
    """`[HOSTIP:]HOSTPORT:PORT[/tcp|udp]` or a mapping {host_port, port, proto, host_ip}."""
    if isinstance(spec, dict):
        unknown = sorted(str(k) for k in spec if k not in ("host_port", "port", "proto", "host_ip"))
        hp, cp = spec.get("host_port"), spec.get("port")
        proto, host_ip = spec.get("proto", "tcp"), spec.get("host_ip", "0.0.0.0")
        if unknown or not all(type(v) is int and 0 < v < 65536 for v in (hp, cp)) \
                or proto not in ("tcp", "udp") or not isinstance(host_ip, str):
            raise ValueError("a port mapping is {host_port: 1-65535, port: 1-65535, proto: tcp|udp, "
                             "host_ip: ADDRESS}" + (f" (unknown key {unknown[0][:40]!r})" if unknown else ""))
        return P.PortMapping(hp, cp, proto, host_ip)
    s, _, proto = str(spec).partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise ValueError(f"-p {spec!r}: protocol must be tcp or udp")
    parts = s.rsplit(":", 2)
    try:
        if len(parts) == 3:
            host_ip, hp, cp = parts
        elif len(parts) == 2:
            host_ip, (hp, cp) = "0.0.0.0", parts
        else:
            raise ValueError
        hp_i, cp_i = int(hp), int(cp)
    except ValueError:
        raise ValueError(f"-p {spec!r}: expected [HOSTIP:]HOSTPORT:PORT[/tcp|udp]") from None
    if not (0 < hp_i < 65536 and 0 < cp_i < 65536):
        raise ValueError(f"-p {spec!r}: ports must be 1-65535")
    return P.PortMapping(hp_i, cp_i, proto, host_ip or "0.0.0.0")


def _limits(l: dict, ov: Overrides, loc) -> P.Limits:
    """Every bad limit is reported (ProfileErrors), each at its node (or naming its flag)."""
    errs: list = []

    def bad(msg, key, from_flag):
        errs.append(ProfileError(msg) if from_flag else ProfileError(msg, loc(("limits", key))))

    def size(key, flag_val, flag):
        v = flag_val if flag_val is not None else l.get(key)
        if v is None:
            return None
        try:
            return parse_bytes(v)
        except ValueError as e:
            bad(f"{flag}: {e}" if flag_val is not None else f"limits.{key}: {e}", key, flag_val is not None)
            return None

    def rates(key, flag_vals, flag):
        out = []
        for i, r in enumerate(l.get(key, [])):
            try:
                out.append(P.DeviceRate(r["path"], parse_bytes(r["rate"])))
            except ValueError as e:
                errs.append(ProfileError(f"limits.{key}[{i}]: {e}", loc(("limits", key, i, "rate"))))
        for spec in flag_vals:
            dev, _, rate = spec.rpartition(":")
            try:
                out.append(P.DeviceRate(dev, parse_bytes(rate)))
            except ValueError:
                errs.append(ProfileError(f"{flag} {spec!r}: expected DEVICE:RATE"))
                continue
            if not dev.startswith("/dev/"):
                errs.append(ProfileError(f"{flag} {spec!r}: expected DEVICE:RATE with a /dev path"))
        return tuple(out)

    def pick(flag_val, key):
        return (flag_val, True) if flag_val is not None else (l.get(key), False)

    cpus, f = pick(ov.cpus, "cpus")
    cpus_v = None
    try:
        cpus_v = parse_cpus(cpus) if cpus is not None else None
    except ValueError as e:
        bad(f"--cpus: {e}" if f else f"limits.cpus: {e}", "cpus", f)
    pids, f = pick(ov.pids_limit, "pids")
    if pids is not None and pids < 1:
        bad("--pids-limit must be at least 1" if f else "limits.pids must be at least 1", "pids", f)
    elif pids is not None and pids > PID_MAX_LIMIT:      # pids.max refuses more (ERANGE): bad input, not 125
        bad(f"--pids-limit must be at most {PID_MAX_LIMIT} (the kernel's PID_MAX_LIMIT)" if f else
            f"limits.pids must be at most {PID_MAX_LIMIT} (the kernel's PID_MAX_LIMIT)", "pids", f)
    shares, f = pick(ov.cpu_shares, "cpu_shares")
    if shares is not None and not (2 <= shares <= 262144):
        bad("--cpu-shares must be 2-262144" if f else "limits.cpu_shares must be 2-262144", "cpu_shares", f)
    weight, f = pick(ov.blkio_weight, "blkio_weight")
    if weight is not None and not (10 <= weight <= 1000):
        bad("--blkio-weight must be 10-1000" if f else "limits.blkio_weight must be 10-1000", "blkio_weight", f)
    memory = size("memory", ov.memory, "--memory")
    if memory is not None and 0 <= memory < 6 * 1024 * 1024:
        bad(f"{'--memory' if ov.memory is not None else 'limits.memory'}: minimum memory limit is 6 MiB "
            "(Docker's minimum)", "memory", ov.memory is not None)
    swap = size("memory_swap", ov.memory_swap, "--memory-swap")
    if memory is not None and swap is None and 2 * memory > MAX_BYTES:
        # Docker: --memory alone allows as much swap again (memory+swap = 2 x --memory)
        raise ProfileError(f"--memory: {memory} is too large without --memory-swap (twice it, the default "
                           f"memory+swap limit, must be at most {MAX_BYTES} bytes)")
    if swap is not None and swap != -1 and (memory is None or swap < memory):
        bad("--memory-swap must be at least --memory (it is memory plus swap), or -1", "memory_swap",
            ov.memory_swap is not None)
    cpuset = ov.cpuset_cpus or l.get("cpuset_cpus")
    if cpuset is not None:
        import re
        if not re.match(r"^\d+(-\d+)?(,\d+(-\d+)?)*$", cpuset):
            bad(f"--cpuset-cpus {cpuset!r}: expected e.g. 0-1,3", "cpuset_cpus", bool(ov.cpuset_cpus))
    reservation = size("memory_reservation", ov.memory_reservation, "--memory-reservation")
    rd_bps = rates("device_read_bps", ov.device_read_bps, "--device-read-bps")
    wr_bps = rates("device_write_bps", ov.device_write_bps, "--device-write-bps")
    rd_iops = rates("device_read_iops", ov.device_read_iops, "--device-read-iops")
    wr_iops = rates("device_write_iops", ov.device_write_iops, "--device-write-iops")
    if errs:
        from .errors import ProfileErrors
        raise ProfileErrors(errs)
    return P.Limits(memory=memory, memory_swap=swap, memory_reservation=reservation,
                    cpus=cpus_v, cpu_shares=shares, cpuset_cpus=cpuset, pids=pids, blkio_weight=weight,
                    device_read_bps=rd_bps, device_write_bps=wr_bps,
                    device_read_iops=rd_iops, device_write_iops=wr_iops)


def _intercepted_hosts_allowed(http: tuple, secrets: tuple, host_rules: tuple, loc) -> None:
    """The egress proxy intercepts only connections it let through: an http rule's or a secret's
    host that no egress `host:` rule allows would never be reached (the secret never substituted,
    the http rule never enforced) — a profile that says so is refused rather than half enforced."""
    from .egress import matches

    def covered(h: str) -> bool:
        if _is_address(h):      # an egress `host:` rule names no address: refused below, said why
            return False
        if h.startswith("*."):
            return any(r.host in ("*", h) or (r.host.startswith("*.") and h[1:].endswith(r.host[1:]))
                       for r in host_rules)
        return any(matches(r.host, h) for r in host_rules)
    def why(h: str) -> str:
        if _is_address(h):
            return (f"{h!r} is an address: the egress proxy intercepts connections by host name "
                    f"(SNI, Host, CONNECT) let through by a `host:` rule; name the host instead")
        return f"{h!r} is allowed by no egress `host:` rule (add {{host: {h}, ports: [443]}} to network.egress.allow)"
    for i, r in enumerate(http):
        if not covered(r.host):
            raise ProfileError(f"network.egress.http[{i}].host: {why(r.host)}",
                               loc(("network", "egress", "http", i, "host")))
    for s in secrets:
        for h in s.hosts:
            if not covered(h):
                raise ProfileError(f"network.secrets.{s.name}.hosts: {why(h)}",
                                   loc(("network", "secrets", s.name, "hosts")))


def _is_address(h: str) -> bool:
    import ipaddress
    try:
        ipaddress.ip_address(h.strip("[]"))
        return True
    except ValueError:
        return False
