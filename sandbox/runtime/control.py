"""What engines ask of a running container besides the lifecycle: its processes (`ps`, `kill
--all`), freezing it (`pause`, `resume`) and new limits (`update`), through the cgroups the
monitor recorded in state.json (`cgroup_dirs`: every leaf of the sandbox, its own or
linux.cgroupsPath's).

A container without a cgroup (no linux.resources and no linux.cgroupsPath: pysandbox makes none)
has no freezer: pause is refused. Its processes are then those of PID 1's pid namespace when the
container made one (not a namespace joined by path, whose other members are not the container's);
otherwise ps is refused. containerd's runc shim always gives a cgroupsPath, podman too."""
from __future__ import annotations

import os

from .. import procid
from . import state as _state

CGROUP_ROOT = "/sys/fs/cgroup/"
MAX_PIDS = 1 << 16             # a bound on what one ps lists (the pids controller's limit is the real one)


class ControlError(Exception):
    """One line: why the command cannot be done for this container."""


def cgroup_dirs(st: dict) -> list:
    """The container's cgroup leaves that still exist (what the monitor recorded: ours, below the
    cgroup mount)."""
    out = []
    for d in st.get("cgroup_dirs") or ():
        if isinstance(d, str) and d.startswith(CGROUP_ROOT) and "/../" not in d + "/" and os.path.isdir(d):
            out.append(d)
    return out


def _tree_pids(d: str, out: set) -> None:
    for top, _dirs, _files in os.walk(d):
        try:
            with open(os.path.join(top, "cgroup.procs")) as f:
                out.update(int(p) for p in f.read().split() if p.isdigit())
        except OSError:
            continue
        if len(out) > MAX_PIDS:
            raise ControlError(f"more than {MAX_PIDS} processes")


def _ns_id(pid: int) -> "tuple | None":
    try:
        s = os.stat(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
    return s.st_dev, s.st_ino


def pids(st: dict) -> list:
    """Every process of the container, as the host numbers them (sorted)."""
    dirs = cgroup_dirs(st)
    out: set = set()
    if dirs:
        for d in dirs:
            _tree_pids(d, out)
        return sorted(out)
    pid1, start = st.get("sandbox_pid"), st.get("sandbox_pid_start")
    ns = _ns_id(pid1) if procid.running(pid1, start) else None
    if ns is None:
        return []
    if not st.get("own_pidns") or ns == _ns_id(os.getpid()):
        raise ControlError("the container has no cgroup (no linux.resources, no linux.cgroupsPath) and no "
                           "pid namespace of its own: its processes cannot be told from others")
    for name in os.listdir("/proc"):
        if name.isdigit() and _ns_id(int(name)) == ns:
            out.add(int(name))
            if len(out) > MAX_PIDS:
                raise ControlError(f"more than {MAX_PIDS} processes")
    return sorted(out)


def signal_all(st: dict, sig: int) -> int:
    """`kill --all`: sig to every process of the container (each through a pidfd taken between two
    checks of its start time); how many got it."""
    from .. import _sys
    n = 0
    for pid in pids(st):
        fd = procid.open_pidfd(pid, procid.start_time(pid))
        if fd is None:
            continue
        try:
            _sys.pidfd_send_signal(fd, sig)
            n += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return n


def set_frozen(st: dict, frozen: bool) -> None:
    """Freeze (pause) or thaw (resume) every cgroup of the container with a freezer (v1
    freezer.state, cgroup2 cgroup.freeze) and wait until the kernel says it is done."""
    from ..cgroups import freezer
    from ..cgroups.files import CgroupError
    dirs = [d for d in cgroup_dirs(st) if freezer.ops_of(d) != (None, None)]
    v1 = [d for d in dirs if os.path.exists(os.path.join(d, "freezer.state"))]
    # hybrid: the v1 freezer alone (a task in v1's refrigerator never reports frozen to cgroup2, and
    # every process of the container is in its v1 freezer leaf)
    dirs = v1 or dirs
    if not dirs:
        raise ControlError("the container has no cgroup with a freezer (no linux.resources and no "
                           "linux.cgroupsPath: pysandbox made none)")
    if frozen:
        # every process but PID 1 (pysandbox-init: it only forwards signals and reaps) must be in
        # them: on a hybrid machine a sandbox's own cgroup2 leaf holds the program, not an `exec`'s
        inside: set = set()
        for d in dirs:
            _tree_pids(d, inside)
        outside = set(pids(st)) - inside - {st.get("sandbox_pid")}
        if outside:
            raise ControlError(f"{len(outside)} of its processes are outside its freezer cgroup "
                               "(give it a linux.cgroupsPath: a freezer leaf for every process)")
    # freezer.set_frozen acts on leaves named after their sandbox; a cgroupsPath leaf is named by the
    # engine, the same name in every hierarchy
    by_name: dict = {}
    for d in dirs:
        by_name.setdefault(os.path.basename(d), []).append(d)
    try:
        for name, ds in by_name.items():
            freezer.set_frozen(ds, name, frozen)
    except CgroupError as e:
        raise ControlError(str(e)) from None


def thaw(st: dict) -> None:
    """Thaw without waiting (after a SIGKILL: the processes die as they thaw, and the monitor then
    removes the cgroups, so there is nothing to wait for)."""
    from ..cgroups import freezer
    for d in cgroup_dirs(st):
        _freeze, unfreeze = freezer.ops_of(d)
        if unfreeze is not None:
            unfreeze()


def is_frozen(st: dict) -> bool:
    from ..cgroups import freezer
    dirs = cgroup_dirs(st)
    return any(freezer.is_frozen([d], os.path.basename(d)) for d in dirs)


def save_status(root: str, cid: str, new: str, expect: tuple) -> bool:
    """Record `new` if the recorded status is still one of `expect` (the monitor may have recorded
    the end meanwhile: that record wins)."""
    st = _state.load(root, cid)
    if st.get("status") not in expect:
        return False
    st["status"] = new
    _state.save(root, cid, st)
    return True


# --------------------------------------------------------------------------- update

MAX_RESOURCES = 1 << 16         # `update --resources`: a LinuxResources object is a few hundred bytes
UPDATE_FIELDS = {"memory": ("limit", "reservation", "swap"), "cpu": ("shares", "quota", "period", "cpus"),
                 "pids": ("limit",)}
CPUS_RE = r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$"
INT_MAX = (1 << 63) - 1


def _int(res: dict, sect: str, key: str, lo: int) -> "int | None":
    v = (res.get(sect) or {}).get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= INT_MAX:
        raise ControlError(f"linux.resources.{sect}.{key}: an integer >= {lo} expected")
    return v


def update_writes(res: dict) -> list:
    """A LinuxResources object (what `runc update --resources` reads: containerd's shim and CRI-O
    send it for a resize) -> [(field, [(file, value), ...] alternatives by cgroup version)], or
    ControlError naming the first field this runtime does not update."""
    import re
    if not isinstance(res, dict):
        raise ControlError("the resources must be a JSON object")
    for sect, v in res.items():
        if sect not in UPDATE_FIELDS:
            if v in (None, {}, []):
                continue
            raise ControlError(f"linux.resources.{sect}: not supported by update (memory, cpu, pids)")
        if not isinstance(v, dict):
            raise ControlError(f"linux.resources.{sect}: must be an object")
        for k, x in v.items():
            if k not in UPDATE_FIELDS[sect] and x not in (None, 0, "", False):
                raise ControlError(f"linux.resources.{sect}.{k}: not supported by update")
    out = []
    limit, swap = _int(res, "memory", "limit", -1), _int(res, "memory", "swap", -1)
    resv = _int(res, "memory", "reservation", -1)
    if limit is not None and limit != 0:
        v1 = "-1" if limit == -1 else str(limit)
        out.append(("memory.limit", [("memory.limit_in_bytes", v1)], [("memory.max", "max" if limit == -1 else str(limit))]))
    if swap is not None and swap != 0:
        # v1: memory+swap; cgroup2's swap.max is the swap alone (memory+swap - memory: needs the limit)
        v2 = "max" if swap == -1 else (str(max(swap - limit, 0)) if limit not in (None, 0, -1) else None)
        out.append(("memory.swap", [("memory.memsw.limit_in_bytes", "-1" if swap == -1 else str(swap))],
                    [("memory.swap.max", v2)] if v2 is not None else []))
    if resv is not None and resv != 0:
        out.append(("memory.reservation", [("memory.soft_limit_in_bytes", "-1" if resv == -1 else str(resv))],
                    [("memory.low", "max" if resv == -1 else str(resv))]))
    shares = _int(res, "cpu", "shares", 0)
    if shares:
        weight = 1 + ((min(max(shares, 2), 262144) - 2) * 9999) // 262142          # runc's conversion
        out.append(("cpu.shares", [("cpu.shares", str(shares))], [("cpu.weight", str(weight))]))
    quota, period = _int(res, "cpu", "quota", -1), _int(res, "cpu", "period", 0)
    if quota or period:
        p = period or 100000
        if not 1000 <= p <= 1000000:
            raise ControlError("linux.resources.cpu.period: 1000..1000000 (microseconds)")
        v1 = [("cpu.cfs_period_us", str(p))] + ([("cpu.cfs_quota_us", str(quota))] if quota else [])
        out.append(("cpu.quota", v1, [("cpu.max", f"{'max' if quota in (None, -1) else quota} {p}")]))
    cpus = (res.get("cpu") or {}).get("cpus")
    if cpus:
        if not isinstance(cpus, str) or len(cpus) > 1024 or not re.match(CPUS_RE, cpus):
            raise ControlError("linux.resources.cpu.cpus: a CPU list (0-3,5)")
        out.append(("cpu.cpus", [("cpuset.cpus", cpus)], [("cpuset.cpus", cpus)]))
    pids = _int(res, "pids", "limit", -1)
    if pids is not None and pids != 0:
        val = "max" if pids <= 0 else str(pids)
        out.append(("pids.limit", [("pids.max", val)], [("pids.max", val)]))
    return out


def update(st: dict, res: dict) -> None:
    """Write the new limits into the container's cgroups: each field into every recorded leaf that
    has its file (v1 hierarchies; the cgroup2 leaf when the controller is enabled there). A field
    none of them has (a controller the container was created without) is refused, naming it;
    nothing is written then. v1 memory: memory+swap is raised before, and lowered after, the
    memory limit (the kernel keeps limit <= memory+swap)."""
    from ..cgroups.files import errmsg, write
    dirs = cgroup_dirs(st)
    plan = []
    is_v2 = {d: os.path.exists(os.path.join(d, "cgroup.controllers")) for d in dirs}
    for field, v1, v2 in update_writes(res):
        targets = [(d, f, v) for d in dirs for f, v in (v2 if is_v2[d] else v1) if os.path.exists(os.path.join(d, f))]
        if not targets:
            raise ControlError(f"linux.resources.{field}: the container has no cgroup for it (created without "
                               "that controller)")
        plan += targets
    order = {"memory.memsw.limit_in_bytes": 0, "memory.limit_in_bytes": 1}

    def apply(items):
        for d, f, v in items:
            try:
                write(os.path.join(d, f), v)
            except OSError as e:
                return d, f, v, e
        return None

    writes = sorted(plan, key=lambda t: order.get(t[1], 2))          # memsw first (raising)
    failed = apply(writes)
    if failed and failed[1] in order:                                 # lowering: the memory limit first
        writes = sorted(plan, key=lambda t: (1 - order[t[1]]) if t[1] in order else 2)
        failed = apply(writes)
    if failed:
        d, f, v, e = failed
        raise ControlError(f"{os.path.join(d, f)}: cannot write {v}: {errmsg(e)}")
