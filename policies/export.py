"""Export a compiled Plan to other engines' formats (pure: no syscalls, no root).

    oci_config(plan)        -> OCI runtime-spec config.json (dict) for crun/runc/containerd
    seccomp_profile(plan)   -> Docker/OCI seccomp JSON (dict) for docker/podman/Kubernetes
    run_argv(plan, ...)     -> `docker run` / `podman run` arguments (list) and shell line
    k8s_pod(plan, ...)      -> Kubernetes Pod manifest (dict) with a Localhost seccompProfile
    validate_oci(config)    -> JSON Schema errors against the shipped OCI runtime-spec schema

Every target format is weaker than pysandbox somewhere (no Landlock in OCI 1.0, no per-container
user namespace in Docker, no rlimits in Kubernetes, ...). Each exporter therefore also returns
`Loss` records: `weaker=True` means a control the plan enforces is NOT carried by the export (the
command refuses to write such an export unless told `--allow-weaker`); `weaker=False` is
information (e.g. audit of denials, the run timeout).

Host facts (is /bin a symlink? does /etc/ssl exist? device numbers for blkio rates) come from a
`HostView` passed in by the caller (sandbox/cli/export.py gives a real one); the default
`AssumeHost` assumes every path is a directory and knows no devices, so this module never
touches the filesystem except to read its own shipped schema files.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Optional

from .plan import Plan, Mount, SyscallRule

OCI_VERSION = "1.0.2"
SCHEMA_DIR = Path(__file__).with_name("schema") / "oci"

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UINT64_MAX = 2 ** 64 - 1

# Masked and read-only paths that Docker, podman and Kubernetes (procMount: Default) apply by
# themselves (moby oci/defaults.go; containers/common pkg/config). A plan asking for no more than
# these loses nothing on those engines.
ENGINE_MASKED = frozenset({
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap"})
ENGINE_READONLY = frozenset({"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"})

# plan action -> libseccomp action name (OCI / Docker profile spelling)
ACTIONS = {
    "allow": "SCMP_ACT_ALLOW",
    "errno": "SCMP_ACT_ERRNO",
    "kill": "SCMP_ACT_KILL_PROCESS",     # the whole program dies with SIGSYS, as under `run`
    "log": "SCMP_ACT_LOG",
    "trap": "SCMP_ACT_TRAP",
    "notify": "SCMP_ACT_ERRNO",          # the supervisor's answer is an errno; exported as that
}
OPS = {"eq": "SCMP_CMP_EQ", "ne": "SCMP_CMP_NE", "lt": "SCMP_CMP_LT", "le": "SCMP_CMP_LE",
       "gt": "SCMP_CMP_GT", "ge": "SCMP_CMP_GE", "masked_eq": "SCMP_CMP_MASKED_EQ"}
ARCHES = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64", "i686": "SCMP_ARCH_X86",
          "i386": "SCMP_ARCH_X86", "armv7l": "SCMP_ARCH_ARM", "ppc64le": "SCMP_ARCH_PPC64LE",
          "s390x": "SCMP_ARCH_S390X", "riscv64": "SCMP_ARCH_RISCV64", "mips64": "SCMP_ARCH_MIPS64"}


class ExportError(ValueError):
    """The plan cannot be exported to the asked format (one line, CLI exit 2)."""


@dataclass(frozen=True)
class Loss:
    control: str          # e.g. "landlock", "filesystem.masked_paths"
    detail: str
    weaker: bool = True   # True: the exported sandbox is weaker than `pysandbox run` here

    def __str__(self) -> str:
        return f"{'WEAKER' if self.weaker else 'note'}: {self.control}: {self.detail}"


def _landlock_loss(plan, detail: str) -> Loss:
    """Landlock rules derived from the mounts (`filesystem: from_mounts`, strict) repeat the mount
    plan the export carries: only the second wall is lost, not a control (a note, not weaker)."""
    ll = plan.landlock
    derived = ll.derived and not ll.network and not (set(ll.scope) - {"abstract_unix_socket"})
    return Loss("landlock", detail + ("; its rules were derived from the mounts, which the export carries "
                                      "(only the second wall is lost)" if derived else ""), weaker=not derived)


class HostView:
    """What the exporter may ask about the host. Subclassed by sandbox.cli.export.RealHost."""

    def kind(self, path: str, follow: bool = False) -> str:
        """'dir', 'file', 'link' (only when not following), 'missing' or 'other'."""
        return "dir"

    def readlink(self, path: str) -> str:
        raise OSError(path)

    def device(self, path: str) -> Optional[tuple[int, int]]:
        """(major, minor) of a block device path, or None when unknown."""
        return None


AssumeHost = HostView


def native_arch(machine: Optional[str] = None) -> str:
    if machine is None:
        import platform
        machine = platform.machine()
    try:
        return ARCHES[machine]
    except KeyError:
        raise ExportError(f"no seccomp architecture name known for machine {machine!r}") from None


# ---------------------------------------------------------------- seccomp

def _rule_key(r: SyscallRule):
    args = tuple((a.index, a.op, a.value, a.mask) for a in r.args)
    return (ACTIONS[r.action], r.errno if ACTIONS[r.action] == "SCMP_ACT_ERRNO" else None, args)


def _oci_args(r: SyscallRule) -> list[dict]:
    out = []
    for a in r.args:
        if a.op not in OPS:
            raise ExportError(f"seccomp rule {r.name}: unknown argument comparison {a.op!r}")
        if a.op == "masked_eq":
            # libseccomp SCMP_CMP_MASKED_EQ(mask, datum): OCI puts the mask in value, datum in valueTwo
            out.append({"index": a.index, "value": a.mask, "valueTwo": a.value, "op": OPS[a.op]})
        else:
            out.append({"index": a.index, "value": a.value, "op": OPS[a.op]})
    return out


def seccomp_section(plan: Plan, *, architectures: Optional[Iterable[str]] = None) -> tuple[Optional[dict], list[Loss]]:
    """The `linux.seccomp` object (also valid as a Docker/podman/Kubernetes seccomp profile).

    None when the plan has seccomp disabled. Rules with the same action, errno and argument
    conditions are grouped into one entry (`names: [...]`), in first-appearance order.
    """
    sc = plan.seccomp
    losses: list[Loss] = []
    if not sc.enabled:
        return None, losses
    if sc.default_action not in ACTIONS or sc.default_action == "notify":
        raise ExportError(f"seccomp default action {sc.default_action!r} cannot be exported")
    out: dict = {"defaultAction": ACTIONS[sc.default_action]}
    if sc.default_action == "errno":
        out["defaultErrnoRet"] = sc.default_errno if sc.default_errno is not None else 1
    out["architectures"] = list(architectures) if architectures is not None else [native_arch()]
    from .seccomp import disjoint
    by_name: dict = {}
    for r in sc.rules:
        by_name.setdefault(r.name, []).append(r)
    for name, rules in by_name.items():
        if not disjoint(rules):     # kept in priority order: libseccomp would read them otherwise
            raise ExportError(f"seccomp rules for {name} are too complex for libseccomp (they overlap and "
                              "depend on their order; pysandbox's own filter enforces them)")
    groups: dict = {}
    order: list = []
    for r in sc.rules:
        if r.action not in ACTIONS:
            raise ExportError(f"seccomp rule {r.name}: action {r.action!r} cannot be exported")
        key = _rule_key(r)
        if key not in groups:
            entry: dict = {"names": [], "action": key[0]}
            if key[0] == "SCMP_ACT_ERRNO":
                entry["errnoRet"] = r.errno if r.errno is not None else 1
            if r.args:
                entry["args"] = _oci_args(r)
            groups[key] = entry
            order.append(key)
        if r.name not in groups[key]["names"]:
            groups[key]["names"].append(r.name)
    out["syscalls"] = [groups[k] for k in order]
    if any(r.action == "notify" for r in sc.rules) or sc.notify_denials:
        losses.append(Loss("seccomp.notify_denials",
                           "denials are answered with their errno but not reported to an audit log", False))
    if sc.skipped:
        losses.append(Loss("seccomp.skipped", "syscall names unknown to this libseccomp were not "
                           f"exported either: {', '.join(sc.skipped)}", False))
    return out, losses


def seccomp_profile(plan: Plan, *, architectures: Optional[Iterable[str]] = None) -> Optional[dict]:
    """Docker/podman/Kubernetes seccomp profile JSON (dict); None when seccomp is disabled."""
    return seccomp_section(plan, architectures=architectures)[0]


# ---------------------------------------------------------------- OCI config.json

def _caps(plan: Plan) -> dict:
    caps = sorted({c.upper() if c.upper().startswith("CAP_") else "CAP_" + c.upper()
                   for c in plan.capabilities})
    # As `pysandbox run` (sandbox/capabilities.py): bounding, permitted, effective and
    # inheritable are the kept set; ambient too when the program is not uid 0, so that a
    # non-root program keeps them across execve (root gets them from the bounding set anyway).
    # Inheritable cannot grant anything outside the bounding set.
    ambient = caps if plan.user.uid != 0 else []
    return {"bounding": caps, "effective": caps, "permitted": caps, "inheritable": caps, "ambient": ambient}


def _env(plan: Plan, environ: Optional[Mapping[str, str]]) -> list[str]:
    env: dict[str, str] = {}
    if environ is not None:
        for name in plan.process.env_allow:
            if name in environ:
                env[name] = environ[name]
    for k, v in plan.process.env_set:
        env[k] = v
    env.setdefault("PATH", DEFAULT_PATH)
    return [f"{k}={v}" for k, v in env.items()]


def _mapped(ids: int, maps) -> bool:
    return any(m.inside <= ids < m.inside + m.count for m in maps)


def _tmpfs_options(m: Mount, default_mode: Optional[int] = None) -> list[str]:
    opts = ["nosuid", "nodev"]
    if m.read_only:
        opts.append("ro")
    if m.size:
        opts.append(f"size={m.size}")
    mode = m.mode if m.mode is not None else default_mode
    if mode is not None:
        opts.append(f"mode={mode:o}")
    return opts


def rootfs_layout(plan: Plan, host: HostView = AssumeHost()) -> tuple[list[tuple[str, str]], list[str]]:
    """For `root: host`: (symlinks to create in the bundle's rootfs as (relative path, target),
    system directories to bind read-only). A system directory that is a symlink on the host
    (merged /usr: /bin -> usr/bin) is recreated as the same symlink instead of a mount."""
    links, binds = [], []
    for d in plan.filesystem.system_dirs:
        k = host.kind(d)
        if k == "link":
            links.append((d.lstrip("/"), host.readlink(d)))
        elif k == "dir":
            binds.append(d)
    return links, binds


def rootfs_skeleton(config: dict, host: HostView = AssumeHost()) -> list[tuple[str, str]]:
    """Mount points to create in the bundle's rootfs before the runtime starts, as
    (relative path, 'dir'|'file'), parents first. A runtime creates missing mount points itself,
    but inside a user namespace the mapped root may not write the host-owned rootfs."""
    dests = [m["destination"] for m in config.get("mounts", [])]
    covering = {m["destination"] for m in config.get("mounts", []) if m.get("type") != "bind"}
    out: dict[str, str] = {}
    for m in config.get("mounts", []):
        d = m["destination"]
        if any(d != c and d.startswith(c.rstrip("/") + "/") for c in covering):
            continue                     # lives inside a tmpfs/proc/sysfs the runtime mounts first
        parts = d.strip("/").split("/")
        for i in range(1, len(parts)):
            out.setdefault("/".join(parts[:i]), "dir")
        kind = "dir"
        if m.get("type") == "bind" and host.kind(m.get("source", ""), follow=True) == "file":
            kind = "file"
        out["/".join(parts)] = kind
    del dests
    return list(out.items())


def oci_config(plan: Plan, *, rootfs: str = "rootfs", host: HostView = AssumeHost(),
               environ: Optional[Mapping[str, str]] = None,
               architectures: Optional[Iterable[str]] = None,
               cgroups_path: Optional[str] = None) -> tuple[dict, list[Loss]]:
    """OCI runtime-spec 1.0.2 `config.json` for `plan`, and what it cannot carry.

    `rootfs` is the bundle's root directory for `root: host` plans (the caller creates it, with
    the symlinks of `rootfs_layout`); a plan with `root: /abs/dir` uses that directory.
    `environ`: the caller's environment, for the plan's env allow-list (None: not passed).
    """
    losses: list[Loss] = []
    ns, fs, pr = plan.namespaces, plan.filesystem, plan.process
    if fs.image:
        raise ExportError(f"root from image {fs.image!r} cannot be exported: export its rootfs directory "
                          "and use `filesystem.root: DIR`")

    process: dict = {
        "terminal": False,
        "user": {"uid": plan.user.uid, "gid": plan.user.gid},
        "args": list(pr.argv),
        "env": _env(plan, environ),
        "cwd": pr.cwd,
        "capabilities": _caps(plan),
        "noNewPrivileges": bool(plan.no_new_privs),
    }
    if plan.user.groups:
        process["user"]["additionalGids"] = list(plan.user.groups)
    if pr.rlimits:
        process["rlimits"] = [{"type": "RLIMIT_" + r.name.upper(),
                               "soft": UINT64_MAX if r.soft < 0 else r.soft,
                               "hard": UINT64_MAX if r.hard < 0 else r.hard} for r in pr.rlimits]
    if pr.timeout:
        losses.append(Loss("process.timeout", f"OCI has no run timeout ({pr.timeout}s): enforce it "
                           "from the caller (e.g. `timeout` around `crun run`)", False))
    if not pr.new_session:
        losses.append(Loss("process.new_session", "runtimes always start a new session", False))

    cfg: dict = {"ociVersion": OCI_VERSION, "process": process}
    if fs.root == "host":
        cfg["root"] = {"path": rootfs, "readonly": bool(fs.read_only)}
    else:
        cfg["root"] = {"path": fs.root, "readonly": bool(fs.read_only)}
    if ns.uts:
        cfg["hostname"] = pr.hostname
    elif pr.hostname:
        losses.append(Loss("process.hostname", "no UTS namespace: the hostname is not set", False))

    # ---- mounts
    mounts: list[dict] = []
    if fs.proc:
        mounts.append({"destination": "/proc", "type": "proc", "source": "proc",
                       "options": ["nosuid", "noexec", "nodev"]})
    mounts.append({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]})
    pts = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
    if not ns.user or _mapped(5, plan.user.gid_map):
        pts.append("gid=5")
    mounts.append({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": pts})
    mounts.append({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                   "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]})
    if fs.sys:
        if ns.user and not ns.net:
            # sysfs can only be mounted in a user namespace that owns the network namespace
            mounts.append({"destination": "/sys", "type": "bind", "source": "/sys",
                           "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
        else:
            mounts.append({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                           "options": ["nosuid", "noexec", "nodev", "ro"]})
    if fs.root == "host":
        for d in rootfs_layout(plan, host)[1]:
            mounts.append({"destination": d, "type": "bind", "source": d,
                           "options": ["rbind", "ro", "nosuid", "nodev"]})
        for name in fs.etc:
            src = "/etc/" + name
            if host.kind(src, follow=True) in ("missing", "other"):
                continue
            mounts.append({"destination": src, "type": "bind", "source": src,
                           "options": ["rbind", "ro", "nosuid", "nodev"]})
    targets = {m.target for m in fs.mounts}
    if "/tmp" not in targets:
        mounts.append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "nodev", "mode=1777"]})
    for m in fs.mounts:
        if m.type == "tmpfs":
            mounts.append({"destination": m.target, "type": "tmpfs", "source": "tmpfs",
                           "options": _tmpfs_options(m)})
        elif m.type == "bind":
            if m.optional and host.kind(m.source, follow=True) == "missing":
                continue
            mounts.append({"destination": m.target, "type": "bind", "source": m.source,
                           "options": ["rbind", "ro" if m.read_only else "rw"]})
        else:
            raise ExportError(f"{m.type} mount {m.target} cannot be exported (pysandbox {m.type}s "
                              "exist only in its own store): use a bind mount")
    cfg["mounts"] = mounts

    # ---- linux
    linux: dict = {}
    nslist = []
    for attr, oci in (("pid", "pid"), ("net", "network"), ("ipc", "ipc"), ("uts", "uts"),
                      ("mount", "mount"), ("user", "user"), ("cgroup", "cgroup")):
        if getattr(ns, attr):
            nslist.append({"type": oci})
    if not ns.mount:
        raise ExportError("an OCI container always has a mount namespace; the plan has none")
    if ns.time:
        losses.append(Loss("namespaces.time", "OCI runtime-spec 1.0.2 has no time namespace"))
    linux["namespaces"] = nslist
    if ns.user:
        if not plan.user.uid_map or not plan.user.gid_map:
            raise ExportError("user namespace without resolved uid_map/gid_map")
        linux["uidMappings"] = [{"containerID": m.inside, "hostID": m.outside, "size": m.count}
                                for m in plan.user.uid_map]
        linux["gidMappings"] = [{"containerID": m.inside, "hostID": m.outside, "size": m.count}
                                for m in plan.user.gid_map]
    resources, rl = _oci_resources(plan, host)
    losses += rl
    if resources:
        linux["resources"] = resources
    if cgroups_path:
        linux["cgroupsPath"] = cgroups_path
    sc, sl = seccomp_section(plan, architectures=architectures)
    losses += sl
    if sc is not None:
        linux["seccomp"] = sc
    linux["rootfsPropagation"] = "private"
    linux["maskedPaths"] = list(fs.masked_paths)
    linux["readonlyPaths"] = list(fs.readonly_paths)
    cfg["linux"] = linux

    if plan.landlock:
        losses.append(_landlock_loss(plan, "OCI runtime-spec 1.0.2 has no Landlock ruleset"))
    losses += _network_losses(plan, "OCI runtimes configure no network (use CNI / the engine)")
    return cfg, losses


def _network_losses(plan: Plan, why: str) -> list[Loss]:
    n = plan.network
    out = []
    if n.mode not in ("none", "host"):
        out.append(Loss("network.mode", f"network {n.mode!r} is pysandbox's own: {why}"))
    if n.ports:
        out.append(Loss("network.ports", f"port mappings are not carried: {why}", False))
    if n.egress_default == "deny" or n.egress_allow:
        out.append(Loss("network.egress", f"egress rules are not carried: {why}"))
    return out


def _oci_resources(plan: Plan, host: HostView) -> tuple[dict, list[Loss]]:
    lim = plan.limits
    losses: list[Loss] = []
    res: dict = {}
    mem = {}
    if lim.memory is not None:
        mem["limit"] = lim.memory
    if lim.memory_swap is not None:
        mem["swap"] = lim.memory_swap
    if lim.memory_reservation is not None:
        mem["reservation"] = lim.memory_reservation
    if mem:
        res["memory"] = mem
    cpu = {}
    if lim.cpus is not None:
        cpu["period"] = 100000
        cpu["quota"] = int(round(lim.cpus * 100000))
    if lim.cpu_shares is not None:
        cpu["shares"] = lim.cpu_shares
    if lim.cpuset_cpus is not None:
        cpu["cpus"] = lim.cpuset_cpus
    if cpu:
        res["cpu"] = cpu
    if lim.pids is not None:
        res["pids"] = {"limit": lim.pids}
    blk: dict = {}
    if lim.blkio_weight is not None:
        blk["weight"] = lim.blkio_weight
    for attr, key in (("device_read_bps", "throttleReadBpsDevice"),
                      ("device_write_bps", "throttleWriteBpsDevice"),
                      ("device_read_iops", "throttleReadIOPSDevice"),
                      ("device_write_iops", "throttleWriteIOPSDevice")):
        for d in getattr(lim, attr):
            dev = host.device(d.path)
            if dev is None:
                losses.append(Loss(f"limits.{attr}", f"device numbers of {d.path} unknown: rate not exported"))
                continue
            blk.setdefault(key, []).append({"major": dev[0], "minor": dev[1], "rate": d.rate})
    if blk:
        res["blockIO"] = blk
    return res, losses


# ---------------------------------------------------------------- validation

@lru_cache(maxsize=1)
def _oci_validator():
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4
    resources = []
    for f in sorted(SCHEMA_DIR.glob("*.json")):
        resources.append((f.name, Resource.from_contents(json.loads(f.read_text()), default_specification=DRAFT4)))
    registry = Registry().with_resources(resources)
    root = json.loads((SCHEMA_DIR / "config-schema.json").read_text())
    # relative $refs ("defs.json#/...") resolve against the root's URI: give it the file's name
    root = dict(root, id="config-schema.json")
    return jsonschema.Draft4Validator(root, registry=registry)


def validate_oci(config: dict) -> list[str]:
    """Errors of `config` against the shipped OCI runtime-spec schema, plus the cross-field rules
    the schema cannot state and runtimes enforce. Empty list: valid."""
    errs = []
    for e in sorted(_oci_validator().iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        where = "/".join(str(p) for p in e.absolute_path) or "config"
        errs.append(f"{where}: {e.message}")
    linux = config.get("linux", {})
    types = [n.get("type") for n in linux.get("namespaces", [])]
    if ("uidMappings" in linux or "gidMappings" in linux) and "user" not in types:
        errs.append("linux: uid/gid mappings given without a user namespace")
    if "user" in types and not (linux.get("uidMappings") and linux.get("gidMappings")):
        errs.append("linux: user namespace without uid/gid mappings")
    if "hostname" in config and "uts" not in types:
        errs.append("hostname: set without a UTS namespace")
    caps = config.get("process", {}).get("capabilities", {})
    bounding = set(caps.get("bounding", []))
    for s in ("effective", "permitted", "inheritable", "ambient"):
        extra = set(caps.get(s, [])) - bounding
        if extra:
            errs.append(f"process/capabilities/{s}: {sorted(extra)} not in the bounding set")
    return errs


# ---------------------------------------------------------------- docker / podman run

def run_argv(plan: Plan, *, engine: str = "docker", seccomp_file: Optional[str] = "seccomp.json",
             image: str = "IMAGE", rootfs: Optional[str] = None,
             host: HostView = AssumeHost()) -> tuple[list[str], list[Loss]]:
    """`docker run` / `podman run` argv (starting with the engine name) for `plan`.

    `seccomp_file`: where the seccomp profile JSON will be (ignored when seccomp is disabled).
    `rootfs` (podman only): run from that directory (`--rootfs DIR`) instead of `image`.
    """
    if engine not in ("docker", "podman"):
        raise ExportError(f"unknown engine {engine!r} (docker or podman)")
    ns, fs, pr, lim = plan.namespaces, plan.filesystem, plan.process, plan.limits
    losses: list[Loss] = []
    a = [engine, "run", "--rm"]
    # No --init: the engine's init (tini/catatonit) would run under the profile's seccomp filter,
    # which a strict profile may not let it work under (setpgid, setsid); pysandbox's own PID 1
    # runs outside the filter.
    losses.append(Loss("init", "no init process: the program runs as PID 1 (zombies are not reaped, "
                       "signals without a handler are ignored); add --init if the seccomp profile allows "
                       "the engine's init", False))
    # ---- namespaces
    if ns.user:
        if engine == "podman":
            for m in plan.user.uid_map:
                a.append(f"--uidmap={m.inside}:{m.outside}:{m.count}")
            for m in plan.user.gid_map:
                a.append(f"--gidmap={m.inside}:{m.outside}:{m.count}")
        else:
            losses.append(Loss("namespaces.user", "docker has no per-container user namespace (only the "
                               "daemon-wide userns-remap): run with podman, or enable userns-remap"))
    elif engine == "docker":
        a.append("--userns=host")
    if not ns.pid:
        a.append("--pid=host")
    a.append("--ipc=private" if ns.ipc else "--ipc=host")
    if not ns.uts:
        a.append("--uts=host")
    a.append("--cgroupns=private" if ns.cgroup else "--cgroupns=host")
    if ns.time:
        losses.append(Loss("namespaces.time", f"{engine} has no time namespace option"))
    if not ns.mount:
        raise ExportError("a container always has a mount namespace; the plan has none")
    mode = plan.network.mode if ns.net else "host"
    if mode not in ("none", "host"):
        losses += _network_losses(plan, f"create the network with `{engine} network create`")
    a.append(f"--network={mode if mode in ('none', 'host') else 'none'}")
    if plan.network.ports:
        for p in plan.network.ports:
            a.append(f"--publish={p.host_ip}:{p.host_port}:{p.port}/{p.proto}")
    if plan.network.egress_default == "deny" or plan.network.egress_allow:
        losses.append(Loss("network.egress", f"{engine} has no per-container egress rules"))
    if ns.uts and pr.hostname:
        a.append(f"--hostname={pr.hostname}")
    # ---- identity, privileges
    a.append(f"--user={plan.user.uid}:{plan.user.gid}")
    for g in plan.user.groups:
        a.append(f"--group-add={g}")
    a.append("--cap-drop=ALL")
    for c in sorted({c.upper().removeprefix("CAP_") for c in plan.capabilities}):
        a.append(f"--cap-add={c}")
    if plan.capabilities:
        losses.append(Loss("capabilities.inheritable", f"{engine} leaves the inheritable set empty "
                           "(pysandbox fills it with the kept capabilities; no privilege differs)", False))
    if plan.capabilities and plan.user.uid != 0:
        if engine == "docker":
            losses.append(Loss("capabilities", "docker does not give a non-root user ambient capabilities: "
                               "the program runs without them (fewer privileges, not weaker)", False))
    if plan.no_new_privs:
        a.append("--security-opt=no-new-privileges")
    if plan.seccomp.enabled:
        a.append(f"--security-opt=seccomp={seccomp_file}")
    else:
        a.append("--security-opt=seccomp=unconfined")
    if plan.landlock:
        losses.append(_landlock_loss(plan, f"{engine} has no Landlock option"))
    # ---- filesystem
    if fs.image:
        raise ExportError(f"root from image {fs.image!r}: pass that image to {engine} instead")
    if fs.read_only:
        a.append("--read-only")
        if engine == "podman":
            a.append("--read-only-tmpfs=false")
    extra_mask = sorted(set(fs.masked_paths) - ENGINE_MASKED)
    unmask = sorted(ENGINE_MASKED - set(fs.masked_paths))
    extra_ro = sorted(set(fs.readonly_paths) - ENGINE_READONLY)
    if engine == "podman":
        if extra_mask:
            a.append("--security-opt=mask=" + ":".join(extra_mask))
        if unmask:
            a.append("--security-opt=unmask=" + ":".join(unmask))
    else:
        if extra_mask:
            losses.append(Loss("filesystem.masked_paths", f"docker cannot mask {', '.join(extra_mask)}"))
        if not fs.masked_paths and not fs.readonly_paths:
            a.append("--security-opt=systempaths=unconfined")
    if extra_ro:
        losses.append(Loss("filesystem.readonly_paths", f"{engine} cannot make {', '.join(extra_ro)} read-only"))
    if fs.root == "host":
        links, binds = rootfs_layout(plan, host)
        if engine == "podman" and rootfs:
            for d in binds:
                a.append(f"--volume={d}:{d}:ro")
            for name in fs.etc:
                src = "/etc/" + name
                if host.kind(src, follow=True) not in ("missing", "other"):
                    a.append(f"--volume={src}:{src}:ro")
        else:
            losses.append(Loss("filesystem.root", f"`root: host` becomes the image {image!r}: its system "
                               "directories replace the host's", False))
    elif engine == "podman":
        rootfs = fs.root
    else:
        losses.append(Loss("filesystem.root", f"root directory {fs.root} must be packaged as an image", False))
    targets = {m.target for m in fs.mounts}
    if "/tmp" not in targets:
        a.append("--tmpfs=/tmp:rw,nosuid,nodev,mode=1777")
    for m in fs.mounts:
        if m.type == "tmpfs":
            opts = ["ro" if m.read_only else "rw"] + [o for o in _tmpfs_options(m) if o != "ro"]
            a.append(f"--tmpfs={m.target}:" + ",".join(opts))
        elif m.type == "bind":
            if m.optional and host.kind(m.source, follow=True) == "missing":
                continue
            a.append(f"--volume={m.source}:{m.target}:{'ro' if m.read_only else 'rw'}")
        else:
            a.append(f"--volume={m.source}:{m.target}:{'ro' if m.read_only else 'rw'}")
            losses.append(Loss("filesystem.mounts", f"volume {m.source!r} becomes an {engine} named volume", False))
    # ---- process
    a.append(f"--workdir={pr.cwd}")
    for name in pr.env_allow:
        a.append(f"--env={name}")
    for k, v in pr.env_set:
        a.append(f"--env={k}={v}")
    for r in pr.rlimits:
        a.append(f"--ulimit={r.name}={r.soft}:{r.hard}")
    if pr.timeout:
        losses.append(Loss("process.timeout", f"{engine} run has no timeout: use `timeout {pr.timeout:g}` around it", False))
    # ---- limits
    if lim.memory is not None:
        a.append(f"--memory={lim.memory}")
    if lim.memory_swap is not None:
        a.append(f"--memory-swap={lim.memory_swap}")
    if lim.memory_reservation is not None:
        a.append(f"--memory-reservation={lim.memory_reservation}")
    if lim.cpus is not None:
        a.append(f"--cpus={lim.cpus:g}")
    if lim.cpu_shares is not None:
        a.append(f"--cpu-shares={lim.cpu_shares}")
    if lim.cpuset_cpus is not None:
        a.append(f"--cpuset-cpus={lim.cpuset_cpus}")
    if lim.pids is not None:
        a.append(f"--pids-limit={lim.pids}")
    if lim.blkio_weight is not None:
        a.append(f"--blkio-weight={lim.blkio_weight}")
    for attr in ("device_read_bps", "device_write_bps", "device_read_iops", "device_write_iops"):
        for d in getattr(lim, attr):
            a.append(f"--{attr.replace('_', '-')}={d.path}:{d.rate}")
    if engine == "podman" and rootfs:
        a += ["--rootfs", rootfs]
    else:
        a.append(image)
    a += list(pr.argv)
    return a, losses


def shell_line(argv: list[str]) -> str:
    return " ".join(shlex.quote(x) for x in argv)


# ---------------------------------------------------------------- Kubernetes

def k8s_pod(plan: Plan, *, image: str = "debian:bookworm-slim", name: Optional[str] = None,
            localhost_profile: Optional[str] = None) -> tuple[dict, list[Loss]]:
    """Kubernetes Pod manifest (dict) whose securityContext carries `plan`.

    The seccomp JSON (seccomp_profile) must be installed on every node as
    `/var/lib/kubelet/seccomp/<localhost_profile>` (default `pysandbox/<plan name>.json`).
    """
    ns, fs, pr, lim = plan.namespaces, plan.filesystem, plan.process, plan.limits
    losses: list[Loss] = []
    name = name or ("pysandbox-" + "".join(c if c.isalnum() else "-" for c in plan.name.lower()).strip("-"))
    localhost_profile = localhost_profile or f"pysandbox/{plan.name}.json"
    caps = sorted({c.upper().removeprefix("CAP_") for c in plan.capabilities})
    csc: dict = {
        "privileged": False,
        "allowPrivilegeEscalation": not plan.no_new_privs,
        "capabilities": {"drop": ["ALL"], **({"add": caps} if caps else {})},
        "readOnlyRootFilesystem": bool(fs.read_only),
        "procMount": "Default",
        "runAsUser": plan.user.uid,
        "runAsGroup": plan.user.gid,
    }
    if plan.user.uid != 0:
        csc["runAsNonRoot"] = True
    if plan.no_new_privs and "SYS_ADMIN" in caps:
        raise ExportError("Kubernetes rejects allowPrivilegeEscalation: false together with CAP_SYS_ADMIN")
    if plan.seccomp.enabled:
        csc["seccompProfile"] = {"type": "Localhost", "localhostProfile": localhost_profile}
    else:
        csc["seccompProfile"] = {"type": "Unconfined"}
    psc: dict = {}
    if plan.user.groups:
        psc["supplementalGroups"] = list(plan.user.groups)
    container: dict = {"name": "main", "image": image, "command": list(pr.argv), "workingDir": pr.cwd,
                       "securityContext": csc}
    env = [{"name": k, "value": v} for k, v in pr.env_set]
    if env:
        container["env"] = env
    if pr.env_allow:
        losses.append(Loss("process.env_allow", "pass-through variables from the caller do not exist in a Pod: "
                           f"{', '.join(pr.env_allow)} left out", False))
    limits, requests = {}, {}
    if lim.memory is not None:
        limits["memory"] = str(lim.memory)
    if lim.memory_reservation is not None:
        requests["memory"] = str(lim.memory_reservation)
    if lim.cpus is not None:
        limits["cpu"] = f"{int(round(lim.cpus * 1000))}m"
    if limits or requests:
        container["resources"] = {**({"limits": limits} if limits else {}),
                                  **({"requests": requests} if requests else {})}
    for attr, why in (("pids", "pod pids limits are node configuration (kubelet podPidsLimit)"),
                      ("memory_swap", "swap is node configuration"),
                      ("cpu_shares", "shares derive from cpu requests"),
                      ("cpuset_cpus", "cpusets come from the CPU manager policy"),
                      ("blkio_weight", "no block I/O controls in a Pod")):
        if getattr(lim, attr) is not None:
            losses.append(Loss(f"limits.{attr}", why))
    if any(getattr(lim, a) for a in ("device_read_bps", "device_write_bps", "device_read_iops", "device_write_iops")):
        losses.append(Loss("limits.device_rates", "no block I/O controls in a Pod"))
    volumes, vmounts = [], []
    targets = {m.target for m in fs.mounts}
    mts = list(fs.mounts)
    if "/tmp" not in targets:
        mts.insert(0, Mount(type="tmpfs", target="/tmp"))
    for i, m in enumerate(mts):
        vname = f"v{i}"
        if m.type == "tmpfs":
            ed: dict = {"medium": "Memory"}
            if m.size:
                ed["sizeLimit"] = str(m.size)
            volumes.append({"name": vname, "emptyDir": ed})
        elif m.type == "bind":
            volumes.append({"name": vname, "hostPath": {"path": m.source}})
            losses.append(Loss("filesystem.mounts", f"bind {m.source} becomes a hostPath volume: the node's "
                               "path, not the caller's", False))
        else:
            volumes.append({"name": vname, "persistentVolumeClaim": {"claimName": m.source}})
            losses.append(Loss("filesystem.mounts", f"volume {m.source!r} becomes a PersistentVolumeClaim", False))
        vm = {"name": vname, "mountPath": m.target}
        if m.read_only:
            vm["readOnly"] = True
        vmounts.append(vm)
    container["volumeMounts"] = vmounts
    spec: dict = {"restartPolicy": "Never", "automountServiceAccountToken": False,
                  "enableServiceLinks": False, "containers": [container], "volumes": volumes}
    if psc:
        spec["securityContext"] = psc
    if ns.user:
        spec["hostUsers"] = False
        losses.append(Loss("user.uid_map", "hostUsers: false lets the kubelet choose the host range "
                           "(needs Kubernetes >= 1.30 with user namespaces enabled)", False))
    if not ns.net or plan.network.mode == "host":
        spec["hostNetwork"] = True
    elif plan.network.mode == "none":
        losses.append(Loss("network.mode", "Pods always get the cluster network: isolate with a deny-all "
                           "NetworkPolicy (not generated)"))
    else:
        losses += _network_losses(plan, "use a NetworkPolicy")
    if not ns.pid:
        spec["hostPID"] = True
    if not ns.ipc:
        spec["hostIPC"] = True
    if ns.uts and pr.hostname:
        spec["hostname"] = pr.hostname
    if ns.time:
        losses.append(Loss("namespaces.time", "Kubernetes has no time namespace"))
    extra = sorted(set(fs.masked_paths) - ENGINE_MASKED) + sorted(set(fs.readonly_paths) - ENGINE_READONLY)
    if extra:
        losses.append(Loss("filesystem.masked_paths", f"only the runtime's default masked/read-only paths apply; "
                           f"not {', '.join(extra)}"))
    if pr.rlimits:
        losses.append(Loss("process.rlimits", "Pods have no rlimits: "
                           + ", ".join(f"{r.name}={r.soft}:{r.hard}" for r in pr.rlimits)))
    if pr.timeout:
        spec["activeDeadlineSeconds"] = max(1, int(pr.timeout))
    if plan.landlock:
        losses.append(_landlock_loss(plan, "Kubernetes has no Landlock option"))
    if fs.root != "host":
        losses.append(Loss("filesystem.root", f"root directory {fs.root} must be packaged as image {image!r}", False))
    else:
        losses.append(Loss("filesystem.root", f"`root: host` becomes the image {image!r}", False))
    losses += seccomp_section(plan, architectures=())[1]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": {"pysandbox.io/sandbox": name},
                        "annotations": {"pysandbox.io/profile": plan.name}},
           "spec": spec}
    return pod, losses


def k8s_manifests(plan: Plan, **kw) -> tuple[list[dict], list[Loss]]:
    """The Pod of `k8s_pod` and, for `network: none`, a deny-all NetworkPolicy selecting it."""
    pod, losses = k8s_pod(plan, **kw)
    docs = [pod]
    if plan.namespaces.net and plan.network.mode == "none":
        name = pod["metadata"]["name"]
        docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": name + "-deny-all"},
                     "spec": {"podSelector": {"matchLabels": {"pysandbox.io/sandbox": name}},
                              "policyTypes": ["Ingress", "Egress"]}})
        losses = [l for l in losses if l.control != "network.mode"]
        losses.append(Loss("network.mode", "network none becomes a deny-all NetworkPolicy: enforced only by a "
                           "CNI plugin that implements NetworkPolicy; the Pod still has an interface", False))
    return docs, losses
