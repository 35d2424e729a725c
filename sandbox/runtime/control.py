"""What engines ask of a running container besides the lifecycle: its processes (`ps`, `kill
--all`) and freezing it (`pause`, `resume`), through the cgroups the monitor recorded in
state.json (`cgroup_dirs`: every leaf of the sandbox, its own or linux.cgroupsPath's).

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
