"""The launch context on the wire: one versioned encoding for everything of a launch that crosses a
process boundary — the API process to its launch server (a request, a plan) and back (a run's
audit events and result), the launch server to its template and to a PID 1 it did not fork
itself (the run's context), PID 1 to pysandbox-init (the program's last steps, read by
sandbox/pid1.c). One encoder and one decoder per side; no
pickle: a decoder builds only the values and classes listed here, within fixed limits, and refuses
anything else (a message of another version included) — fail closed.

Layout (every integer little-endian):

  message  header, then `count` sections
  header   magic b"PSBW" | version u16 (VERSION) | count u16 | length u32 (the whole message)
  section  tag u16 | reserved u16 (0) | length u32 | payload (length bytes)

  tag 1 PID1     what PID 1 reads before anything else, fixed size (PID1: "<8iqqI"); always the
                 first section of a run's context, so header + this section are PID1_PREFIX bytes:
                 positions in the descriptor list that travels with the message (SCM_RIGHTS; -1:
                 none) of go_r, status_w, stdin, stdout, stderr, the first v1 cgroup `tasks`
                 descriptor, their count, the cgroup2 leaf; RLIMIT_NOFILE soft, hard (i64); F_* flags
  tag 2 PROGRAM  the program's last steps, what pysandbox-init's spawn mode reads (pid1.c
                 `program`): flags u32 (P_*), uid u32, gid u32, ngroups u32, groups u32 × ngroups,
                 nrlimits u32, nrlimits × (resource u32, soft i64, hard i64, name str), cwd str,
                 capabilities kept u64 (bit = number), bpf (u32 length, a multiple of 8, bytes),
                 argc u32, argv str × argc, envc u32, env str × envc ("NAME=value");
                 str = u32 length + bytes (no NUL byte)
  tag 3 RUN      the run's context (LaunchContext with descriptors by number), a value
  tag 4 PLAN     a compiled plan (policies.plan.Plan), a value
  tag 5 REQUEST  a launch request of the API to its launch server (dict), a value
  tag 6 BPF      the run's seccomp filter (LaunchContext.bpf), raw (struct sock_filter, a
                 multiple of 8 bytes): kept out of RUN, whose JSON would carry it as hex
  tag 7 EVENT    audit events of a run, launch server -> API (its run socket): a value, a tuple
                 of (type, fields dict) pairs (one event, or a batch)
  tag 8 RESULT   a run's end, launch server -> API: a value, a dict with one key: "result" (the
                 launcher's Result as a dict of its fields) or "error" ((exit code, message))

A decoder skips a known section it does not need and refuses an unknown tag, a tag twice, a
length beyond the message, more than MAX_SECTIONS sections or a message over MAX_MESSAGE bytes.

A value is UTF-8 JSON that keeps Python's types: null, true/false, numbers and strings as
themselves; an array is a tuple; {"l": [...]} a list, {"d": [[key, value], ...]} a dict,
{"b": "hex"} bytes, {"c": "Name", "f": [[field, value], ...]} a dataclass of CLASSES (the plan's,
LaunchContext, overlay.RootSpec) — nothing else is built; at most MAX_DEPTH levels deep.
"""
from __future__ import annotations

import struct
from dataclasses import field, fields, is_dataclass

from policies import plan as _plan
# the plan's dataclass(): shared generic methods, nothing compiled by exec at import (the standard
# decorator's three classes here were ~3 ms of every launch's imports)
from policies.plan import dataclass

MAGIC = b"PSBW"
VERSION = 1
HEADER = struct.Struct("<4sHHI")
SECTION = struct.Struct("<HHI")
MAX_MESSAGE = 64 << 20                  # (pid1.c refuses a larger parameter file too)
MAX_SECTIONS = 8
MAX_DEPTH = 32

T_PID1, T_PROGRAM, T_RUN, T_PLAN, T_REQUEST, T_BPF, T_EVENT, T_RESULT = 1, 2, 3, 4, 5, 6, 7, 8
TAGS = frozenset((T_PID1, T_PROGRAM, T_RUN, T_PLAN, T_REQUEST, T_BPF, T_EVENT, T_RESULT))

PID1 = struct.Struct("<8iqqI")
PID1_PREFIX = HEADER.size + SECTION.size + PID1.size
# PID1 flags: time namespace, kmsg linger, the credential steps (setresgid 0, setgroups [],
# setresuid 0: init.credential_steps), RLIMIT_NOFILE given, the root was built ahead (a spare)
F_TIME, F_LINGER, F_GID0, F_GROUPS, F_UID0, F_NOFILE, F_BUILT = 1, 2, 4, 8, 16, 32, 64

# PROGRAM flags (pid1.c: enum P_*)
P_NEW_SESSION, P_SET_IDS, P_SETGROUPS, P_NNP, P_LISTENER, P_LOG = 1, 2, 4, 8, 16, 32
P_CGROUPNS, P_GID0, P_GROUPS0, P_UID0, P_LANDLOCK, P_KEYRING = 64, 128, 256, 512, 1024, 2048
MAX_GROUPS, MAX_RLIMITS = 65536, 32


class WireError(ValueError):
    """A message that is not one of ours, of another version, or beyond a limit."""


@dataclass(frozen=False)
class LaunchContext:
    """What PID 1 needs of one run: inherited through fork (the CLI), or sent as a RUN section (a
    launch server's PID 1, cloned by its template). Descriptors are numbers in this process."""
    plan: object
    argv: tuple
    env: dict
    bpf: "bytes | None"
    rootless: bool
    go_r: int
    go_w: "int | None"
    status_r: "int | None"
    status_w: int
    hosts_text: "str | None" = None
    hosts_file: "str | None" = None       # private network: live hosts file, bind-mounted read-only
    ca_bundle: "str | None" = None        # egress interception: host CA bundle + the sandbox's CA (PEM)
    image_root: object = None             # sandbox.store.overlay.RootSpec
    volume_dirs: dict = field(default_factory=dict)
    # bind sources opened by the supervisor as the caller, in plan.filesystem.mounts order (None for
    # other mounts): (fd, is_dir, is_tree) — as root a detached tree (open_tree in the host's mount
    # namespace), rootless an O_PATH descriptor (launcher.open_bind_sources)
    bind_srcs: tuple = ()
    notify_sock: object = None            # socket (a number on the wire): the seccomp listener goes back on it
    console: object = None                # socket (a number on the wire): run -t, the pty master goes back on it
    seccomp_log: bool = False
    stdio: tuple = (None, None, None)     # descriptors for the program's stdin/stdout/stderr
    cg_fds: tuple = ()                    # v1 `tasks` files PID 1 writes "0" to (joins its cgroups)
    cg_v2_fd: "int | None" = None         # cgroup2 leaf: PID 1 forks the program into it (CLONE_INTO_CGROUP)
    nofile: "tuple | None" = None         # RLIMIT_NOFILE for PID 1, when the supervisor raised its own
    keep_keyring: bool = False            # the program keeps the caller's session keyring (runtime
                                          # `create --no-new-keyring`); else a new one (ProgramSpec.keyring)


def _classes() -> dict:
    out = {c.__name__: c for c in vars(_plan).values()
           if isinstance(c, type) and is_dataclass(c) and c.__module__ == _plan.__name__}
    out["LaunchContext"] = LaunchContext
    return out


CLASSES = _classes()


def _class(name: str):
    cls = CLASSES.get(name)
    if cls is None and name == "RootSpec":        # an image's root: only runs with an image load it
        from .store import overlay
        cls = CLASSES[name] = overlay.RootSpec
    return cls


# --- the envelope ------------------------------------------------------------------------------

def encode(sections) -> bytes:
    """sections: (tag, payload) pairs, in order -> one message."""
    sections = list(sections)
    if len(sections) > MAX_SECTIONS:
        raise WireError("too many sections")
    body = b"".join(SECTION.pack(tag, 0, len(p)) + p for tag, p in sections)
    n = HEADER.size + len(body)
    if n > MAX_MESSAGE:
        raise WireError(f"message of {n} bytes (at most {MAX_MESSAGE})")
    return HEADER.pack(MAGIC, VERSION, len(sections), n) + body


def check_header(data) -> int:
    """The message's length, from its header (PID 1 reads the rest after that); WireError if the
    header is not ours."""
    if len(data) < HEADER.size:
        raise WireError("short message")
    magic, version, count, n = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WireError("not a launch message")
    if version != VERSION:
        raise WireError(f"launch message version {version}, this is version {VERSION}")
    if count > MAX_SECTIONS or not HEADER.size <= n <= MAX_MESSAGE:
        raise WireError("launch message beyond its limits")
    return n


def decode(data) -> dict:
    """One message -> {tag: payload (a memoryview)}, every check of the layout above done."""
    n = check_header(data)
    if len(data) != n:
        raise WireError(f"launch message of {len(data)} bytes, its header says {n}")
    view = memoryview(data)
    out: dict = {}
    at = HEADER.size
    for _ in range(HEADER.unpack_from(data)[2]):
        if at + SECTION.size > n:
            raise WireError("truncated section")
        tag, _reserved, size = SECTION.unpack_from(data, at)
        at += SECTION.size
        if tag not in TAGS or tag in out or size > n - at:
            raise WireError(f"bad section (tag {tag}, {size} bytes)")
        out[tag] = view[at:at + size]
        at += size
    if at != n:
        raise WireError("trailing bytes after the last section")
    return out


# --- values ------------------------------------------------------------------------------------

_FIELDS: dict = {}


def _fields(cls) -> tuple:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(cls))
    return names


_SCALARS = frozenset((str, int, float, bool, type(None)))


def _enc(v):
    t = type(v)
    if t in _SCALARS:
        return v
    if t is tuple:
        return [x if type(x) in _SCALARS else _enc(x) for x in v]
    if t is list:
        return {"l": [x if type(x) in _SCALARS else _enc(x) for x in v]}
    if t is dict:
        return {"d": [[_enc(k), x if type(x) in _SCALARS else _enc(x)] for k, x in v.items()]}
    if t is bytes:
        return {"b": v.hex()}
    if is_dataclass(v) and _class(t.__name__) is t:
        return {"c": t.__name__, "f": [[n, _enc(getattr(v, n))] for n in _fields(t)]}
    raise WireError(f"cannot encode a {t.__name__}")


def _dec(v, depth: int = 0):
    t = type(v)
    if t in _SCALARS:
        return v
    if depth > MAX_DEPTH:
        raise WireError("value nested too deep")
    depth += 1
    if t is list:
        return tuple(x if type(x) in _SCALARS else _dec(x, depth) for x in v)
    if t is dict and len(v) in (1, 2):
        if "l" in v and len(v) == 1 and type(v["l"]) is list:
            return [x if type(x) in _SCALARS else _dec(x, depth) for x in v["l"]]
        if "d" in v and len(v) == 1 and type(v["d"]) is list:
            try:
                return {_dec(k, depth): _dec(x, depth) for k, x in v["d"]}
            except (TypeError, ValueError) as e:
                raise WireError(f"bad dict: {e}") from None
        if "b" in v and len(v) == 1 and type(v["b"]) is str:
            try:
                return bytes.fromhex(v["b"])
            except ValueError:
                raise WireError("bad bytes") from None
        if "c" in v and "f" in v and type(v["c"]) is str and type(v["f"]) is list:
            cls = _class(v["c"])
            if cls is None:
                raise WireError(f"class {v['c']!r} is not one of the launch's")
            try:
                return cls(**{k: _dec(x, depth) for k, x in v["f"]})
            except (TypeError, ValueError) as e:
                raise WireError(f"bad {v['c']}: {e}") from None
    raise WireError("not a launch value")


def value(obj) -> bytes:
    import json            # (here: the CLI's launch path encodes no value, and json costs its imports)
    return json.dumps(_enc(obj), separators=(",", ":"), allow_nan=False).encode()


def from_value(payload):
    import json
    try:
        raw = json.loads(bytes(payload))
    except (ValueError, RecursionError) as e:
        raise WireError(f"bad value: {e}") from None
    return _dec(raw)


def section(sections: dict, tag: int):
    """A value section of a decoded message; WireError when it is missing."""
    if tag not in sections:
        raise WireError(f"section {tag} missing")
    return from_value(sections[tag])


# --- the plan (API -> launch server -> template) and a request (API -> launch server) -----------

def encode_plan(plan) -> bytes:
    return encode([(T_PLAN, value(plan))])


def decode_plan(data):
    plan = section(decode(data), T_PLAN)
    if type(plan) is not _plan.Plan:
        raise WireError("not a plan")
    return plan


def encode_request(req: dict, plan=None) -> bytes:
    return encode([(T_REQUEST, value(req))] + ([(T_PLAN, value(plan))] if plan is not None else []))


def decode_request(data) -> tuple:
    """-> (the request dict, its plan or None)."""
    s = decode(data)
    req = section(s, T_REQUEST)
    plan = section(s, T_PLAN) if T_PLAN in s else None
    if type(req) is not dict or (plan is not None and type(plan) is not _plan.Plan):
        raise WireError("not a launch request")
    return req, plan


def plan_digest(plan, bpf: "bytes | None") -> str:
    """A plan's key: a digest of its wire encoding and its filter (equal plans, equal keys)."""
    import hashlib
    sections = [(T_PLAN, value(plan))] + ([(T_BPF, bytes(bpf))] if bpf is not None else [])
    return hashlib.sha256(encode(sections)).hexdigest()[:24]


# --- a run's replies (launch server -> API) --------------------------------------------------------

def encode_reply(events=(), result: "dict | None" = None, error: "tuple | None" = None) -> bytes:
    """One message on a run's socket: audit events (EVENT: (type, fields) pairs), then the run's
    end when it is there (RESULT: the Result's fields, or the server's (exit code, message))."""
    out = [(T_EVENT, value(tuple(events)))] if events else []
    if result is not None:
        out.append((T_RESULT, value({"result": result})))
    elif error is not None:
        out.append((T_RESULT, value({"error": (int(error[0]), str(error[1]))})))
    return encode(out)


def decode_reply(data) -> tuple:
    """-> (events: a tuple of (type, fields) pairs, the end or None: ("result", fields dict) or
    ("error", exit code, message)); WireError for anything else."""
    s = decode(data)
    events = section(s, T_EVENT) if T_EVENT in s else ()
    if type(events) is not tuple or not all(type(e) is tuple and len(e) == 2 and type(e[0]) is str
                                            and type(e[1]) is dict for e in events):
        raise WireError("not a run's events")
    if T_RESULT not in s:
        return events, None
    end = section(s, T_RESULT)
    if type(end) is dict and len(end) == 1:
        if type(end.get("result")) is dict and all(type(k) is str for k in end["result"]):
            return events, ("result", end["result"])
        err = end.get("error")
        if type(err) is tuple and len(err) == 2 and type(err[0]) is int and type(err[1]) is str:
            return events, ("error", err[0], err[1])
    raise WireError("not a run's result")


# --- a run's context (launch server -> PID 1) ----------------------------------------------------

def encode_context(ctx: LaunchContext, key: str, fds: list, creds: tuple, built: bool,
                   with_plan: bool) -> bytes:
    """The run's context for a PID 1 made by the template: `fds` travel with the message (PID1's
    positions point into it; RUN names the numbers they are to take). creds: init.credential_steps."""
    idx = {fd: i for i, fd in enumerate(fds)}
    stdio = [idx[fd] if fd is not None else -1 for fd in ctx.stdio]
    cg = [idx[fd] for fd in ctx.cg_fds]
    gid0, groups, uid0 = creds
    flags = ((F_TIME if ctx.plan.namespaces.time else 0) | (F_LINGER if ctx.seccomp_log else 0)
             | (F_GID0 if gid0 else 0) | (F_GROUPS if groups else 0) | (F_UID0 if uid0 else 0)
             | (F_NOFILE if ctx.nofile is not None else 0) | (F_BUILT if built else 0))
    soft, hard = ctx.nofile if ctx.nofile is not None else (0, 0)
    pid1 = PID1.pack(idx[ctx.go_r], idx[ctx.status_w], *stdio, cg[0] if cg else -1, len(cg),
                     idx[ctx.cg_v2_fd] if ctx.cg_v2_fd is not None else -1, soft, hard, flags)
    fileno = lambda s: s.fileno() if s is not None else None      # noqa: E731
    fields = {n: getattr(ctx, n) for n in _fields(LaunchContext)}
    fields.update(plan=None, go_w=None, status_r=None, bpf=None, notify_sock=fileno(ctx.notify_sock),
                  console=fileno(ctx.console))
    # (the value of {"key": key, "fds": fds, "ctx": LaunchContext(**fields)}, built without a copy of ctx)
    run = {"d": [["key", key], ["fds", list(fds)],
                 ["ctx", {"c": "LaunchContext", "f": [[n, _enc(v)] for n, v in fields.items()]}]]}
    import json
    out = [(T_PID1, pid1), (T_RUN, json.dumps(run, separators=(",", ":"), allow_nan=False).encode())]
    if ctx.bpf is not None:
        out.append((T_BPF, bytes(ctx.bpf)))
    if with_plan:
        out.append((T_PLAN, value(ctx.plan)))
    return encode(out)


def decode_pid1(prefix) -> tuple:
    """The first PID1_PREFIX bytes of a run's context -> (the message's length, go_r, status_w,
    stdin, stdout, stderr, cg_first, cg_count, cg_v2, nofile soft, hard, flags)."""
    n = check_header(prefix)
    tag, _reserved, size = SECTION.unpack_from(prefix, HEADER.size)
    if len(prefix) != PID1_PREFIX or tag != T_PID1 or size != PID1.size or n < PID1_PREFIX:
        raise WireError("a run's context starts with its PID1 section")
    return (n, *PID1.unpack_from(prefix, HEADER.size + SECTION.size))


def decode_context(data) -> tuple:
    """A whole run's context -> (LaunchContext with descriptors by number, the plan's key, the
    numbers its descriptors are to take). ctx.plan is None when the template has the plan."""
    s = decode(data)
    run = section(s, T_RUN)
    if type(run) is not dict or type(run.get("ctx")) is not LaunchContext or type(run.get("key")) is not str \
            or type(run.get("fds")) is not tuple or not all(type(fd) is int and fd >= 0 for fd in run["fds"]):
        raise WireError("not a run's context")
    ctx = run["ctx"]
    if T_BPF in s:
        if len(s[T_BPF]) % 8:
            raise WireError("a seccomp filter is a multiple of 8 bytes")
        ctx.bpf = bytes(s[T_BPF])
    if T_PLAN in s:
        ctx.plan = section(s, T_PLAN)
        if type(ctx.plan) is not _plan.Plan:
            raise WireError("not a plan")
    return ctx, run["key"], list(run["fds"])


# --- the program's last steps (PID 1 -> pysandbox-init) -----------------------------------------

def _str(v) -> bytes:
    b = v if isinstance(v, bytes) else v.encode("utf-8", "surrogateescape")
    if b"\0" in b:                          # (os.execvpe refuses them too)
        raise ValueError(f"embedded null byte in {v!r}")
    return struct.pack("<I", len(b)) + b


@dataclass(frozen=True)
class Pid1Spec:
    """What PID 1 needs before it reads the run's context (sequence.pid1): descriptors by number
    in PID 1 (a launch server's PID 1: from its PID1 section), and what it does with them."""
    status_w: int                   # the report to the supervisor
    go_r: int                       # the release
    cg_fds: tuple                   # v1 `tasks` files to write "0" to
    cg_v2_fd: "int | None"          # the cgroup2 leaf the program is forked into
    nofile: "tuple | None"          # RLIMIT_NOFILE to restore
    stdio: tuple                    # the program's stdin, stdout, stderr (None: inherited)
    time_ns: bool                   # a time namespace for the program
    linger: bool                    # kmsg audit: reaped children linger (init.KMSG_LINGER_MS)
    creds: tuple                    # init.credential_steps
    program_pid: "int | None" = None   # the program's pid (2, when a spare's builder had it)


@dataclass(frozen=True)
class ProgramSpec:
    """The program's last steps as data (sequence.last_steps; pid1.c `program` reads the same as
    a PROGRAM section): flags, then the values. rlimits: (resource number, soft, hard, name) each;
    keep: the capabilities kept, a mask."""
    new_session: bool
    set_ids: bool              # change uid/gid (a user namespace, or root)
    setgroups: bool            # setgroups(groups) allowed
    nnp: bool
    listener: bool             # a seccomp listener to hand to the audit supervisor
    log: bool                  # SECCOMP_FILTER_FLAG_LOG
    cgroupns: bool             # (C: unshare the cgroup namespace; the Python copy did that before)
    gid0: bool                 # (C: the sandbox's root identity first: init.credential_steps)
    groups0: bool
    uid0: bool
    landlock: bool             # Landlock scoping available: the program confines itself
    uid: int
    gid: int
    groups: tuple
    rlimits: tuple
    cwd: str
    keep: int
    bpf: bytes
    argv: tuple
    env: dict
    ruleset: int = -1          # a Landlock ruleset's descriptor to enter (sandbox/landlock.py; -1: none)
    ruleset_flags: int = 0     # landlock_restrict_self's flags
    keyring: bool = True       # a new anonymous session keyring, not the caller's (runc's default)


_P_FLAGS = (("new_session", P_NEW_SESSION), ("set_ids", P_SET_IDS), ("setgroups", P_SETGROUPS),
            ("nnp", P_NNP), ("listener", P_LISTENER), ("log", P_LOG), ("cgroupns", P_CGROUPNS),
            ("gid0", P_GID0), ("groups0", P_GROUPS0), ("uid0", P_UID0), ("landlock", P_LANDLOCK),
            ("keyring", P_KEYRING))


def encode_program(spec: ProgramSpec) -> bytes:
    """-> a message of one PROGRAM section (pysandbox-init's spawn mode reads it)."""
    flags = 0
    for name, bit in _P_FLAGS:
        if getattr(spec, name):
            flags |= bit
    groups, rlimits, bpf, env = list(spec.groups), list(spec.rlimits), spec.bpf, spec.env
    if len(groups) > MAX_GROUPS or len(rlimits) > MAX_RLIMITS or len(bpf) % 8:
        raise WireError("the program's parameters are beyond their limits")
    if any("=" in k for k in env):
        raise ValueError("an environment variable's name contains '='")
    out = [struct.pack("<4I", flags, spec.uid, spec.gid, len(groups)), struct.pack(f"<{len(groups)}I", *groups),
           struct.pack("<I", len(rlimits))]
    for rid, soft, hard, name in rlimits:
        out += [struct.pack("<Iqq", rid, soft, hard), _str(name)]
    out += [_str(spec.cwd), struct.pack("<QI", spec.keep, len(bpf)), bpf, struct.pack("<I", len(spec.argv))]
    out += [_str(a) for a in spec.argv]
    out += [struct.pack("<I", len(env))] + [_str(f"{k}={v}") for k, v in env.items()]
    out += [struct.pack("<iI", spec.ruleset, spec.ruleset_flags)]
    return encode([(T_PROGRAM, b"".join(out))])
