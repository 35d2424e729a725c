"""An OCI bundle's config.json -> the launcher's terms (a policies.plan.Plan) plus what a Plan has no
field for (hooks, namespaces joined by path, oomScoreAdj, sysctl, the console). Everything the
bundle asks for and this runtime cannot honour stops here, with the field's name (fail closed);
docs/interop.md lists every field and its support.

The bundle is the invoking engine's (trusted as the caller is), but it is still read bounded: at
most MAX_CONFIG bytes, JSON only, and only the fields below are interpreted."""
from __future__ import annotations

import json
import os
from policies import plan as P                 # before dataclasses: it lets inspect stand lazy (plan.py)
from policies.plan import dataclass            # shared methods, none compiled by exec at import

from dataclasses import field, replace  # noqa: E402,I001

from ..fsutil import read_json_object

MAX_CONFIG = 4 << 20
ANNOTATION_PROFILE = "org.pysandbox.profile"
ANNOTATION_AUDIT_LOG = "org.pysandbox.audit-log"

# namespaces the plan creates (type -> Namespaces field); joined by path: JOINABLE only
NS_FIELDS = {"pid": "pid", "network": "net", "mount": "mount", "ipc": "ipc", "uts": "uts",
             "user": "user", "cgroup": "cgroup", "time": "time"}
JOINABLE = {"network": "net", "ipc": "ipc", "uts": "uts", "pid": "pid", "user": "user", "mount": "mount"}
# mounts the sandbox's own root always provides (rootfs._make_dev, proc, sysfs) or that are
# not mounted (documented in docs/interop.md): accepted at these destinations only
PROVIDED = {("/dev", "tmpfs"), ("/dev/pts", "devpts"), ("/dev/shm", "tmpfs"), ("/dev/mqueue", "mqueue"),
            ("/sys/fs/cgroup", "cgroup"), ("/sys/fs/cgroup", "cgroup2")}
HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
SUPPORTED_HOOKS = HOOK_KINDS
# the nodes rootfs._make_dev binds from the host; linux.devices may only name these
DEV_NODES = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"}
# sysctls of the namespaces a container has (runc's validation: ipc and net ones)
IPC_SYSCTLS = {"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
               "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"}
RLIMITS = {"RLIMIT_" + n.upper(): n for n in ("as", "core", "cpu", "data", "fsize", "locks", "memlock",
                                               "msgqueue", "nice", "nofile", "nproc", "rss", "rtprio",
                                               "rttime", "sigpending", "stack")}
KNOWN_TOP = {"ociVersion", "root", "mounts", "process", "hostname", "domainname", "hooks", "annotations",
             "linux"}


class BundleError(Exception):
    """config.json asks for something this runtime cannot honour, or is malformed: one line."""


@dataclass(frozen=False)
class Bundle:
    """A bundle translated: the plan, and what the monitor does beside the launch sequence."""
    path: str
    plan: P.Plan
    hooks: dict = field(default_factory=dict)          # kind -> [{"path", "args", "env", "timeout"}]
    join: dict = field(default_factory=dict)           # OCI type -> path (network, ipc, uts, pid, user, mount)
    oom_score_adj: "int | None" = None
    sysctl: dict = field(default_factory=dict)
    terminal: bool = False
    annotations: dict = field(default_factory=dict)
    audit_log: "str | None" = None
    umask: "int | None" = None                          # set in the monitor, inherited by PID 1
    cgroup_path: "str | None" = None                    # linux.cgroupsPath below each hierarchy's root


def _get(d, key, kind, where):
    v = d.get(key)
    if v is not None and not isinstance(v, kind):
        raise BundleError(f"config.json: {where}{key}: must be {getattr(kind, '__name__', 'of another type')}")
    return v


def load(bundle_dir: str) -> Bundle:
    """Read BUNDLE/config.json and translate it (BundleError: one line naming the field)."""
    return translate(read_config(bundle_dir), os.path.abspath(bundle_dir))


def read_config(bundle_dir: str) -> dict:
    """BUNDLE/config.json as a dict: at most MAX_CONFIG bytes, a JSON object (BundleError)."""
    path = os.path.join(bundle_dir, "config.json")
    try:
        return read_json_object(path, MAX_CONFIG)
    except OSError as e:
        raise BundleError(f"{path}: {e.strerror}") from None
    except ValueError as e:
        raise BundleError(f"{path}: {e}") from None


def translate(cfg: dict, bundle_dir: str) -> Bundle:
    unknown = sorted(set(cfg) - KNOWN_TOP)
    if unknown:
        raise BundleError(f"config.json: {unknown[0]}: not supported by pysandbox-runtime")
    if not isinstance(cfg.get("ociVersion"), str):
        raise BundleError("config.json: ociVersion: required (a string)")
    linux = _get(cfg, "linux", dict, "") or {}
    proc = _get(cfg, "process", dict, "")
    if proc is None:
        raise BundleError("config.json: process: required by create (this runtime starts a process)")
    root = _get(cfg, "root", dict, "") or {}
    rpath = _get(root, "path", str, "root.")
    if not rpath:
        raise BundleError("config.json: root.path: required")
    rootfs = os.path.normpath(os.path.join(bundle_dir, rpath))
    if not os.path.isdir(rootfs):
        raise BundleError(f"config.json: root.path: {rootfs}: not a directory")
    annotations = _get(cfg, "annotations", dict, "") or {}

    ns, join = _namespaces(linux)
    user = _user(proc, linux, ns, join.get("user"))
    if "mount" in join:
        _joined_mount_ns(cfg, linux, root)
    caps = _capabilities(proc)
    mounts, proc_on, sys_on = _mounts(cfg, bundle_dir)
    fs = P.Filesystem(root=rootfs, read_only=bool(root.get("readonly", False)), system_dirs=(), etc=(),
                      mounts=mounts, masked_paths=tuple(_strings(linux, "maskedPaths")),
                      readonly_paths=tuple(_strings(linux, "readonlyPaths")), proc=proc_on, sys=sys_on)
    process = _process(proc, cfg)
    prop = linux.get("rootfsPropagation")
    if prop not in (None, "", "private", "rprivate", "slave", "rslave"):
        raise BundleError(f"config.json: linux.rootfsPropagation: {prop!r} not supported (the sandbox's mount "
                          "table is private: private, rprivate, slave, rslave)")
    for key in ("intelRdt", "personality", "mountLabel", "uidMappings" if not ns.user else "",
                "memoryPolicy", "timeOffsets", "netDevices"):
        if key and linux.get(key):
            raise BundleError(f"config.json: linux.{key}: not supported by pysandbox-runtime")
    _devices(linux)
    limits = _resources(linux.get("resources") or {})
    seccomp = _seccomp(linux.get("seccomp"), caps)
    network = P.Network(mode="none" if ns.net or "network" in join else "host")
    plan = P.Plan(name=f"oci:{os.path.basename(bundle_dir)}", sources=(os.path.join(bundle_dir, "config.json"),),
                  namespaces=ns, user=user, capabilities=caps, no_new_privs=bool(proc.get("noNewPrivileges")),
                  seccomp=seccomp, filesystem=fs, process=process, network=network, limits=limits)
    profile = annotations.get(ANNOTATION_PROFILE)
    if profile:
        plan = _apply_profile(plan, profile)
    hooks = _hooks(cfg)
    sysctl = _sysctl(linux, ns, join)
    oom = proc.get("oomScoreAdj")
    if oom is not None and (isinstance(oom, bool) or not isinstance(oom, int) or not -1000 <= oom <= 1000):
        raise BundleError("config.json: process.oomScoreAdj: must be an integer from -1000 to 1000")
    if proc.get("apparmorProfile") or proc.get("selinuxLabel"):
        raise BundleError("config.json: process.apparmorProfile/selinuxLabel: no LSM labels in pysandbox-runtime")
    if proc.get("ioPriority") or proc.get("scheduler") or proc.get("execCPUAffinity"):
        raise BundleError("config.json: process.ioPriority/scheduler/execCPUAffinity: not supported")
    return Bundle(bundle_dir, plan, hooks, join, oom, sysctl, bool(proc.get("terminal")), dict(annotations),
                  annotations.get(ANNOTATION_AUDIT_LOG), (proc.get("user") or {}).get("umask"),
                  _cgroups_path(linux))


def _cgroups_path(linux: dict) -> "str | None":
    cp = _get(linux, "cgroupsPath", str, "linux.")
    if not cp:
        return None                                    # pysandbox's own leaf per container
    from ..cgroups.placement import engine_path
    try:
        return engine_path(cp)
    except ValueError as e:
        raise BundleError(f"config.json: linux.cgroupsPath: {e}") from None


def _strings(d: dict, key: str, where: str = "linux.") -> list:
    v = d.get(key) or []
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise BundleError(f"config.json: {where}{key}: must be a list of strings")
    return v


def _namespaces(linux: dict):
    on, join = {}, {}
    seen = set()
    for i, n in enumerate(linux.get("namespaces") or []):
        t = n.get("type") if isinstance(n, dict) else None
        if t not in NS_FIELDS:
            raise BundleError(f"config.json: linux.namespaces[{i}].type: {t!r} not supported")
        if t in seen:
            raise BundleError(f"config.json: linux.namespaces[{i}]: {t} twice")
        seen.add(t)
        path = n.get("path")
        if path:
            if t not in JOINABLE:
                raise BundleError(f"config.json: linux.namespaces[{i}].path: joining a {t} namespace is not "
                                  "supported (network, ipc, uts, pid, user and mount ones are)")
            if not os.path.exists(path):
                raise BundleError(f"config.json: linux.namespaces[{i}].path: {path}: no such namespace")
            join[t] = path
            if t == "pid":                 # a pid namespace the sandbox has (its /proc), not a new one:
                on["pid"] = True           # monitor.clone_joining clones PID 1 into it
            elif t in ("user", "mount"):   # the sandbox's own, made by someone else: monitor.clone_via_helper
                on[t] = True               # clones PID 1 in it (a user namespace's maps are read from it)
        else:
            on[NS_FIELDS[t]] = True
    if not on.get("mount"):
        raise BundleError("config.json: linux.namespaces: a mount namespace is required (the root is "
                          "pivoted in one)")
    fields = {f: on.get(f, False) for f in NS_FIELDS.values()}
    if "pid" in join and ("user" in join or "mount" in join):
        raise BundleError("config.json: linux.namespaces: joining a pid namespace together with a user or mount "
                          "namespace by path is not supported")
    if join and fields["user"] and "user" not in join:
        raise BundleError("config.json: linux.namespaces: joining a namespace by path together with a new user "
                          "namespace is not supported")
    return P.Namespaces(**fields), join


def _idmaps(linux: dict, key: str) -> tuple:
    out = []
    for i, m in enumerate(linux.get(key) or []):
        try:
            out.append(P.IdMapEntry(int(m["containerID"]), int(m["hostID"]), int(m["size"])))
        except (KeyError, TypeError, ValueError):
            raise BundleError(f"config.json: linux.{key}[{i}]: containerID, hostID and size are required") from None
    return tuple(out)


def _joined_mount_ns(cfg: dict, linux: dict, root: dict) -> None:
    """A mount namespace joined by path: its root and mounts are the container's as they are (crun's
    behaviour: the rootfs is prepared only in a namespace the runtime creates; runc would pivot_root
    inside the joined one, changing it for every process there — not done). What would have to be
    mounted in it is refused (fail closed)."""
    for key, v in (("mounts", cfg.get("mounts")), ("linux.maskedPaths", linux.get("maskedPaths")),
                   ("linux.readonlyPaths", linux.get("readonlyPaths")), ("root.readonly", root.get("readonly")),
                   ("linux.rootfsPropagation", linux.get("rootfsPropagation"))):
        if v:
            raise BundleError(f"config.json: {key}: cannot be applied in a mount namespace joined by path "
                              "(its root and mounts are used as they are)")


def joined_maps(path: str) -> tuple:
    """The uid and gid maps of the user namespace at `path`, as its parent namespace sees them:
    read by a child that joins it (/proc/self/{uid,gid}_map from inside: relative to the parent)."""
    from .. import _sys
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        out = b"E"
        try:
            os.close(r)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            _sys.setns(fd, _sys.CLONE_NEWUSER)
            with open("/proc/self/uid_map", "rb") as u, open("/proc/self/gid_map", "rb") as g, \
                    open("/proc/self/setgroups", "rb") as sg:
                out = sg.read(16).strip() + b"\0" + u.read(65536) + b"\0" + g.read(65536)
        except OSError as e:
            out = b"E" + (e.strerror or str(e)).encode()
        finally:
            os.write(w, out[:140000])
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
        if len(data) > 140000:
            break
    os.close(r)
    os.waitpid(pid, 0)
    if data.startswith(b"E") or data.count(b"\0") != 2:
        raise BundleError(f"config.json: linux.namespaces: user: cannot join {path}: "
                          f"{data[1:].decode(errors='replace') or 'failed'}")

    def parse(text: bytes) -> tuple:
        out = []
        for line in text.decode(errors="replace").splitlines()[:340]:
            f = line.split()
            if len(f) == 3 and all(x.isdigit() for x in f):
                out.append(P.IdMapEntry(int(f[0]), int(f[1]), int(f[2])))
        return tuple(out)
    sg, u, g = data.split(b"\0")
    return parse(u), parse(g), sg == b"allow"


def _user(proc: dict, linux: dict, ns, joined: "str | None" = None) -> P.User:
    u = proc.get("user") or {}
    if not isinstance(u, dict):
        raise BundleError("config.json: process.user: must be an object")
    if u.get("username"):
        raise BundleError("config.json: process.user.username: Windows only")
    um = u.get("umask")
    if um is not None and (isinstance(um, bool) or not isinstance(um, int) or not 0 <= um <= 0o777):
        raise BundleError("config.json: process.user.umask: must be 0..0777")
    uid, gid = u.get("uid", 0), u.get("gid", 0)
    groups = u.get("additionalGids") or []
    for what, v in (("uid", uid), ("gid", gid), *(("additionalGids", g) for g in groups)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 32:
            raise BundleError(f"config.json: process.user.{what}: must be an id")
    uid_map = gid_map = ()
    if joined:                                         # runc: no mappings of one's own for a joined namespace
        for key in ("uidMappings", "gidMappings"):
            if linux.get(key):
                raise BundleError(f"config.json: linux.{key}: must be absent when the user namespace is joined by "
                                  "path (the namespace's own mappings apply)")
        uid_map, gid_map, setgroups = joined_maps(joined)
        if not uid_map or not gid_map:
            raise BundleError(f"config.json: linux.namespaces: user: {joined} has no uid/gid mappings yet")
        if not setgroups and os.geteuid() == 0:        # (rootless: the launcher does not call it)
            raise BundleError(f"config.json: linux.namespaces: user: {joined} denies setgroups (its "
                              "/proc/PID/setgroups), which the sandbox's set-up as root calls to drop the host's "
                              "groups: map it with setgroups allowed")
    elif ns.user:
        uid_map, gid_map = _idmaps(linux, "uidMappings"), _idmaps(linux, "gidMappings")
        if not uid_map or not gid_map:
            raise BundleError("config.json: linux.uidMappings/gidMappings: required with a user namespace")
    return P.User(uid=uid, gid=gid, uid_map=uid_map, gid_map=gid_map, groups=tuple(groups))


def _capabilities(proc: dict) -> tuple:
    """The plan keeps one set (bounding = permitted = effective; inheritable and ambient follow it
    for a non-root program): a bundle whose sets differ otherwise is refused, naming the set."""
    c = proc.get("capabilities") or {}
    sets = {}
    for k in ("bounding", "effective", "permitted", "inheritable", "ambient"):
        names = c.get(k) or []
        if not isinstance(names, list):
            raise BundleError(f"config.json: process.capabilities.{k}: must be a list")
        out = set()
        for n in names:
            name = n[4:] if isinstance(n, str) and n.startswith("CAP_") else None
            if name not in P.CAP_INDEX:
                raise BundleError(f"config.json: process.capabilities.{k}: unknown capability {n!r}")
            out.add(name)
        sets[k] = out
    keep = sets["bounding"]
    for k in ("effective", "permitted"):
        if sets[k] != keep:
            raise BundleError(f"config.json: process.capabilities.{k}: must equal the bounding set (pysandbox keeps "
                              "one set of capabilities)")
    for k in ("inheritable", "ambient"):
        if not sets[k] <= keep:
            raise BundleError(f"config.json: process.capabilities.{k}: must be a subset of the bounding set")
    return tuple(n for n in P.CAPABILITIES if n in keep)


def _mount_opts(opts: list) -> dict:
    out = {"ro": False, "size": None, "mode": None}
    for o in opts:
        if o == "ro":
            out["ro"] = True
        elif o.startswith("size="):
            from policies.units import parse_bytes
            out["size"] = parse_bytes(o[5:])
        elif o.startswith("mode="):
            out["mode"] = int(o[5:], 8)
    return out


# options a bind or tmpfs mount may carry: the sandbox's mounts are nosuid, nodev and private
# anyway; anything else is refused (the option's effect could not be honoured)
OK_OPTIONS = {"ro", "rw", "bind", "rbind", "nosuid", "nodev", "noexec", "private", "rprivate", "slave",
              "rslave", "relatime", "strictatime", "noatime", "nodiratime", "tmpcopyup", "Z", "z",
              "newinstance", "notmpcopyup", "copy-symlink"}


def _mounts(cfg: dict, bundle_dir: str):
    mounts, proc_on, sys_on = [], False, False
    for i, m in enumerate(cfg.get("mounts") or []):
        if not isinstance(m, dict) or not isinstance(m.get("destination"), str) or not m["destination"].startswith("/"):
            raise BundleError(f"config.json: mounts[{i}].destination: must be an absolute path")
        dst = os.path.normpath(m["destination"])
        t = m.get("type") or ("bind" if "bind" in (m.get("options") or []) or "rbind" in (m.get("options") or [])
                              else None)
        opts = m.get("options") or []
        if not isinstance(opts, list) or not all(isinstance(o, str) for o in opts):
            raise BundleError(f"config.json: mounts[{i}].options: must be a list of strings")
        if dst == "/proc" and t == "proc":
            proc_on = True
            continue
        if dst == "/sys" and t == "sysfs":
            sys_on = True
            continue
        if (dst, t) in PROVIDED:
            continue
        bad = [o for o in opts if o not in OK_OPTIONS and not o.startswith(("size=", "mode=", "nr_inodes=",
                                                                             "gid=", "uid="))]
        if t == "bind" or (t is None and m.get("source")):
            if bad:
                raise BundleError(f"config.json: mounts[{i}].options: {bad[0]!r} not supported on a bind mount")
            src = m.get("source")
            if not isinstance(src, str) or not src:
                raise BundleError(f"config.json: mounts[{i}].source: required for a bind mount")
            src = os.path.normpath(os.path.join(bundle_dir, src))
            mounts.append(P.Mount(type="bind", target=dst, source=src, read_only=_mount_opts(opts)["ro"],
                                  noexec="noexec" in opts))
        elif t == "tmpfs":
            if bad:
                raise BundleError(f"config.json: mounts[{i}].options: {bad[0]!r} not supported on a tmpfs")
            try:
                o = _mount_opts(opts)
            except ValueError as e:
                raise BundleError(f"config.json: mounts[{i}].options: {e}") from None
            mounts.append(P.Mount(type="tmpfs", target=dst, size=o["size"], mode=o["mode"], noexec="noexec" in opts,
                                  read_only=o["ro"]))
        else:
            raise BundleError(f"config.json: mounts[{i}].type: {t!r} at {dst} not supported (bind, tmpfs; proc "
                              "at /proc, sysfs at /sys)")
    return tuple(mounts), proc_on, sys_on


def _process(proc: dict, cfg: dict) -> P.Process:
    args = _strings(proc, "args", "process.")
    if not args:
        raise BundleError("config.json: process.args: required (at least the program)")
    env = []
    for e in _strings(proc, "env", "process."):
        k, sep, v = e.partition("=")
        if not sep or not k:
            raise BundleError(f"config.json: process.env: {e!r} is not NAME=VALUE")
        env.append((k, v))
    cwd = proc.get("cwd") or "/"
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise BundleError("config.json: process.cwd: must be an absolute path")
    rl = []
    for i, r in enumerate(proc.get("rlimits") or []):
        name = RLIMITS.get(r.get("type")) if isinstance(r, dict) else None
        if name is None:
            raise BundleError(f"config.json: process.rlimits[{i}].type: unknown")
        try:
            soft, hard = int(r["soft"]), int(r["hard"])
        except (KeyError, TypeError, ValueError):
            raise BundleError(f"config.json: process.rlimits[{i}]: soft and hard are required") from None
        big = (1 << 64) - 1
        rl.append(P.Rlimit(name, -1 if soft >= big else soft, -1 if hard >= big else hard))
    hostname = cfg.get("hostname") or "sandbox"
    if not isinstance(hostname, str):
        raise BundleError("config.json: hostname: must be a string")
    if cfg.get("domainname"):
        raise BundleError("config.json: domainname: not supported")
    return P.Process(argv=tuple(args), cwd=cwd, env_set=tuple(env), hostname=hostname,
                     rlimits=tuple(sorted(rl, key=lambda r: r.name)))


def _devices(linux: dict) -> None:
    for i, d in enumerate(linux.get("devices") or []):
        p = d.get("path") if isinstance(d, dict) else None
        if p not in DEV_NODES:
            raise BundleError(f"config.json: linux.devices[{i}]: {p!r}: only the sandbox's own /dev nodes "
                              f"({', '.join(sorted(DEV_NODES))}) are supported")


def _resources(r: dict) -> P.Limits:
    """linux.resources -> plan limits (cgroups through sandbox/cgroups). devices: the sandbox's /dev
    holds only its own nodes, so rules there grant nothing more (accepted); the rest is refused."""
    if not isinstance(r, dict):
        raise BundleError("config.json: linux.resources: must be an object")
    kw = {}
    mem = r.get("memory") or {}
    for k in mem:
        if k not in ("limit", "swap", "reservation", "disableOOMKiller", "swappiness", "useHierarchy",
                     "checkBeforeUpdate"):
            raise BundleError(f"config.json: linux.resources.memory.{k}: not supported")
    if mem.get("disableOOMKiller"):
        raise BundleError("config.json: linux.resources.memory.disableOOMKiller: not supported")
    if mem.get("limit", 0) > 0:
        kw["memory"] = int(mem["limit"])
    if mem.get("swap") not in (None, 0):
        kw["memory_swap"] = int(mem["swap"])
    if mem.get("reservation", 0) > 0:
        kw["memory_reservation"] = int(mem["reservation"])
    cpu = r.get("cpu") or {}
    for k in cpu:
        if k not in ("shares", "quota", "period", "cpus", "mems"):
            raise BundleError(f"config.json: linux.resources.cpu.{k}: not supported")
    if cpu.get("quota", 0) > 0:
        kw["cpus"] = cpu["quota"] / (cpu.get("period") or 100000)
    if cpu.get("shares"):
        kw["cpu_shares"] = int(cpu["shares"])
    if cpu.get("cpus"):
        kw["cpuset_cpus"] = str(cpu["cpus"])
    if cpu.get("mems"):
        raise BundleError("config.json: linux.resources.cpu.mems: not supported")
    pids = (r.get("pids") or {}).get("limit")
    if pids is not None and pids > 0:
        kw["pids"] = int(pids)
    blk = r.get("blockIO") or {}
    for k in blk:
        if k != "weight":
            raise BundleError(f"config.json: linux.resources.blockIO.{k}: not supported")
    if blk.get("weight"):
        kw["blkio_weight"] = int(blk["weight"])
    for k in r:
        if k not in ("memory", "cpu", "pids", "blockIO", "devices"):
            if r[k]:
                raise BundleError(f"config.json: linux.resources.{k}: not supported")
    return P.Limits(**kw)


def _seccomp(sec, caps: tuple) -> P.Seccomp:
    """linux.seccomp through the project's compiler (policies.seccomp.compile_seccomp importing the
    OCI JSON with policies.docker_seccomp); no seccomp: none, as runc (the bundle decides)."""
    if not sec:
        return P.Seccomp(enabled=False, default_action="allow", default_errno=None)
    if not isinstance(sec, dict):
        raise BundleError("config.json: linux.seccomp: must be an object")
    if sec.get("listenerPath"):
        raise BundleError("config.json: linux.seccomp.listenerPath: not supported (pysandbox's own supervisor "
                          "receives the listener)")
    flags = [f for f in sec.get("flags") or [] if f not in ("SECCOMP_FILTER_FLAG_SPEC_ALLOW",)]
    if flags:
        raise BundleError(f"config.json: linux.seccomp.flags: {flags[0]} not supported")
    from policies.errors import ProfileError
    from policies.seccomp import compile_seccomp
    data = {k: v for k, v in sec.items() if k != "flags"}
    import tempfile                 # only with linux.seccomp (with shutil, bz2, lzma: ~4 ms of every create)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="oci-seccomp-") as f:
        json.dump(data, f)
        f.flush()
        try:
            return compile_seccomp({"import": f.name}, capabilities=caps)
        except ProfileError as e:
            raise BundleError(f"config.json: linux.seccomp: {e.message if hasattr(e, 'message') else e}") from None


def _hooks(cfg: dict) -> dict:
    hooks = cfg.get("hooks") or {}
    if not isinstance(hooks, dict):
        raise BundleError("config.json: hooks: must be an object")
    out = {}
    for kind, lst in hooks.items():
        if kind not in HOOK_KINDS:
            raise BundleError(f"config.json: hooks.{kind}: unknown hook")
        for i, h in enumerate(lst or []):
            if not isinstance(h, dict) or not isinstance(h.get("path"), str) or not h["path"].startswith("/"):
                raise BundleError(f"config.json: hooks.{kind}[{i}].path: must be an absolute path")
            t = h.get("timeout")
            if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t <= 0):
                raise BundleError(f"config.json: hooks.{kind}[{i}].timeout: must be a positive integer")
            out.setdefault(kind, []).append({"path": h["path"], "args": _strings(h, "args", f"hooks.{kind}[{i}]."),
                                             "env": _strings(h, "env", f"hooks.{kind}[{i}]."), "timeout": t})
    return out


def _sysctl(linux: dict, ns, join: dict) -> dict:
    sc = linux.get("sysctl") or {}
    if not isinstance(sc, dict):
        raise BundleError("config.json: linux.sysctl: must be an object")
    for k, v in sc.items():
        if not isinstance(v, str) or "/" in k or ".." in k:
            raise BundleError(f"config.json: linux.sysctl.{k}: bad name or value")
        if k.startswith("net."):
            if not (ns.net or "network" in join):
                raise BundleError(f"config.json: linux.sysctl.{k}: needs a network namespace")
        elif k in IPC_SYSCTLS or k.startswith("fs.mqueue."):
            if not (ns.ipc or "ipc" in join):
                raise BundleError(f"config.json: linux.sysctl.{k}: needs an ipc namespace")
        else:
            raise BundleError(f"config.json: linux.sysctl.{k}: not a sysctl of the container's namespaces")
    return dict(sc)


def _apply_profile(plan: P.Plan, name: str) -> P.Plan:
    """Annotation org.pysandbox.profile: the profile's restrictions on top of the bundle: its
    seccomp filter (when the bundle has none, or always: the profile's wins; both cannot be
    stacked here), the intersection of the capabilities, no_new_privs if either asks, its
    masked/read-only paths added, its limits where the bundle sets none, its audit settings."""
    from policies.compiler import compile_profile
    from policies.errors import ProfileError, ProfileErrors
    try:
        prof = compile_profile(name).plan
    except (ProfileError, ProfileErrors) as e:
        raise BundleError(f"annotation {ANNOTATION_PROFILE}: {str(e).splitlines()[0]}") from None
    fs = replace(plan.filesystem,
                 masked_paths=tuple(dict.fromkeys(plan.filesystem.masked_paths + prof.filesystem.masked_paths)),
                 readonly_paths=tuple(dict.fromkeys(plan.filesystem.readonly_paths + prof.filesystem.readonly_paths)))
    lim = {k: v for k, v in prof.limits.__dict__.items() if v not in (None, ()) and
           getattr(plan.limits, k) in (None, ())}
    return replace(plan, name=f"{plan.name}+{prof.name}",
                   capabilities=tuple(c for c in plan.capabilities if c in prof.capabilities),
                   no_new_privs=plan.no_new_privs or prof.no_new_privs,
                   seccomp=prof.seccomp if prof.seccomp.enabled else plan.seccomp,
                   filesystem=fs, limits=replace(plan.limits, **lim), landlock=plan.landlock or prof.landlock)
