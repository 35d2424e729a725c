"""The cgroups of one sandbox: what the launcher calls. `create_for_sandbox` picks a driver for
each controller the limits need, creates the leaves, writes every limit and reads it back (fail
closed); the `Cgroup` it returns hands PID 1 its descriptors, kills, reports and removes.

Each controller is served by the hierarchy it is bound to: a controller that has a v1 hierarchy is
driven by `V1Driver` (one directory per hierarchy), otherwise by `V2Driver` when the controller is
enabled in cgroup2. A controller can be bound to only one hierarchy at a time, so this choice is
unambiguous. On a hybrid machine the sandbox is also placed in a controller-less cgroup2 directory
(the way systemd's hybrid mode tracks services): that gives the atomic `cgroup.kill` and the
`cgroup.events` "populated" flag even though the controllers live in v1. Controllers that were not
asked for (pids, memory, cpuacct, freezer for statistics and killing) are used when available and
skipped silently otherwise.

Liveness: the supervisor holds a `flock` on every leaf directory it created for as long as the
sandbox lives (`leftover.reclaim_stale` removes unlocked, empty ones).
"""
from __future__ import annotations

import os

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path

from . import placement, stats
from .driver import Driver
from .files import CgroupError, errmsg, read
from .layout import Layout, detect
from .limits import NAMES, flags_by_controller, only, precheck
from .placement import ID_RE, PARENT
from .v1 import V1Driver
from .v2 import V2Driver

if TYPE_CHECKING:  # pragma: no cover
    from typing import Optional
    from policies.plan import Limits


class Cgroup:
    """The cgroups of one sandbox (one or two drivers). Created by `create_for_sandbox`."""

    def __init__(self, sandbox_id: str, limits: "Limits", drivers: list[Driver], layout: Layout):
        self.sandbox_id = sandbox_id
        self.limits = limits
        self.drivers = drivers
        self.layout = layout
        self._events: Optional[list[dict]] = None

    @property
    def paths(self) -> list[str]:
        return [d for drv in self.drivers for d in drv.created]

    def backend(self, controller: str) -> Optional[str]:
        """`"v1 <dir>"` / `"v2 <dir>"` for a logical controller, None when not used."""
        for drv in self.drivers:
            d = drv.dir(controller)
            if d:
                return f"v{drv.version} {d}"
        return None

    def add_pid(self, pid: int) -> None:
        for drv in self.drivers:
            if not (drv.version == 1 and self._child_joins or drv.version == 2 and self._child_clones_into):
                drv.add_pid(pid)

    _child_joins = False
    _child_clones_into = False

    def v2_fd(self) -> Optional[int]:
        """A descriptor of the cgroup2 leaf (None without one) for the sandbox's PID 1 to fork the
        program straight into it (clone3 CLONE_INTO_CGROUP), after which add_pid() leaves the v2
        driver alone: PID 1 itself stays where it was in cgroup2 (its v1 cgroups carry the limits),
        its program and all it starts are in the leaf (cgroup.kill, cgroup.events). Moving a pid
        through cgroup.procs would cost the launch an RCU grace period."""
        for drv in self.drivers:
            if drv.version == 2 and drv.created:
                try:
                    fd = os.open(drv.leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                except OSError as e:
                    raise CgroupError("cgroup2", f"cannot open {drv.leaf}: {errmsg(e)}") from None
                self._child_clones_into = True
                return fd
        return None

    def join_fds(self) -> list[int]:
        """Write-only descriptors of each v1 leaf's `tasks` file, for the sandbox's first process to
        join by itself (`write(fd, "0")` before it forks anything: sandbox/init.py), after which add_pid()
        leaves the v1 drivers alone.

        Why: a pid written to cgroup.procs (or another task's tid to `tasks`) makes the kernel take
        the global cgroup_threadgroup_rwsem for writing, which waits for an RCU grace period —
        milliseconds, during which a launcher serving many sandboxes could do nothing else. A
        single-threaded task moving itself ("0" to `tasks`) needs no threadgroup lock
        (kernel/cgroup/cgroup.c, cgroup_procs_write_start). Permission is checked against the
        opener's credentials, ours. v2 has no such file for processes: the parent moves it."""
        fds: list[int] = []
        try:
            for drv in self.drivers:
                if drv.version != 1:
                    continue
                for leaf in drv.leaves():
                    fds.append(os.open(os.path.join(leaf, "tasks"), os.O_WRONLY | os.O_CLOEXEC))
        except OSError as e:
            for fd in fds:
                os.close(fd)
            raise CgroupError("cgroup", f"cannot open a tasks file: {errmsg(e)}") from None
        self._child_joins = bool(fds)
        return fds

    def fds(self) -> list[int]:
        """The supervisor's lock descriptors (O_CLOEXEC). A child that does not exec (the sandbox's
        PID 1) may close its inherited copies; the supervisor's copy keeps the lock."""
        return [fd for drv in self.drivers for fd in drv.locks()]

    def procs(self) -> set[int]:
        out: set[int] = set()
        for drv in self.drivers:
            out |= drv.procs()
        return out

    def kill(self) -> None:
        # cgroup2 first where it is there: cgroup.kill is atomic, even against a fork bomb.
        for drv in sorted(self.drivers, key=lambda d: -d.version):
            drv.kill()

    def finish(self, pidns_reaped: bool = False) -> list[dict]:
        """After the sandbox exited: kill leftovers, read events and peaks, remove every directory.
        Idempotent (a second call returns the same events). pidns_reaped: the sandbox's pid
        namespace init has been reaped, so the kernel has already ended every process of it (no
        leftovers to look for; a directory that stays busy is still emptied by remove())."""
        if self._events is not None:
            return self._events
        try:
            if not pidns_reaped and self.procs():
                self.kill()
        except OSError:
            pass
        events = stats.events(self.limits, stats.merged(self.drivers))
        left = []
        for drv in self.drivers:
            left += drv.remove()
        if left:
            events.append({"type": "cgroup_cleanup_failed", "paths": left})
        self._events = events
        return events

    def __repr__(self) -> str:  # pragma: no cover
        return f"Cgroup({self.sandbox_id!r}, {self.paths!r})"


def create_for_sandbox(sandbox_id: str, limits: "Limits", *, rootless: bool,
                       layout: Optional[Layout] = None, parent: Optional[str] = None,
                       path: Optional[str] = None) -> Optional[Cgroup]:
    """Create the sandbox's cgroup(s) and write every requested limit (read back; fail closed).

    Returns None when `limits` asks for nothing. Raises `CgroupError` when a requested limit cannot
    be enforced; raises ValueError for an invalid sandbox id. `parent` replaces the parent's name
    (`pysandbox` / `pysandbox-user-<uid>/sandboxes`) — for tests that need a parent of their own.
    `path` (an OCI bundle's linux.cgroupsPath, placement.engine_path): the leaf at that path below
    each hierarchy's root instead, created even when `limits` asks for nothing (the engine reads it).
    """
    if not limits.any() and path is None:
        return None
    if path is not None:
        parent, sandbox_id = os.path.split(path)
    elif not ID_RE.match(sandbox_id):
        raise ValueError(f"invalid sandbox id {sandbox_id!r}")
    layout = layout or detect()
    requested = flags_by_controller(limits)
    precheck(limits)

    v1map = layout.v1_map
    if parent is not None and path is None and not ID_RE.match(parent):
        raise ValueError(f"invalid parent name {parent!r}")
    parent_name = parent if path is not None else (parent or placement.parent_name(rootless))
    v2_base = placement.v2_base(layout, rootless)
    v2_avail: frozenset[str] = frozenset()
    if v2_base:
        v2_avail = frozenset((read(os.path.join(v2_base, "cgroup.controllers")) or "").split())

    v1_ctl: list[str] = []
    v2_ctl: list[str] = []
    required = set(requested)
    for ctl in ("memory", "pids", "cpu", "cpuset", "io"):
        v1name, v2name = NAMES[ctl]
        needed = ctl in required
        if not needed and ctl not in (("memory", "pids") if path is None else ("memory", "pids", "cpu", "io")):
            continue
        if v1name in v1map:
            v1_ctl.append(ctl)
        elif v2name in v2_avail:
            v2_ctl.append(ctl)
        elif needed:
            flags = ", ".join(requested[ctl])
            if rootless and layout.unified and not v2_base and not v1map:
                raise CgroupError(v2name, f"controller not available for this user (no delegated cgroup; "
                                          f"needed for {flags})")
            where = []
            if layout.unified:
                where.append(f"not enabled in cgroup2 at {v2_base or layout.unified}")
            if layout.v1 or not layout.unified:
                where.append("no cgroup v1 hierarchy")
            raise CgroupError(v1name if not layout.unified or layout.v1 else v2name,
                              f"controller not available ({', '.join(where)}; needed for {flags})")
    if v1_ctl and (not v2_base or path is not None):     # (an engine reads an OCI container's cpuacct)
        # statistics and freeze-then-kill; a cgroup2 directory (hybrid) gives both already (its
        # cpu.stat, its atomic cgroup.kill): two directories fewer to create and remove per sandbox
        for extra in ("cpuacct", "freezer"):
            if extra in v1map:
                v1_ctl.append(extra)

    drivers: list[Driver] = []
    try:
        if v1_ctl:
            drv = V1Driver(sandbox_id, v1_ctl, v1map, parent_name, rootless)
            drivers.append(drv)
            drv.create(required)
            drv.apply(only(limits, v1_ctl))
        if v2_base:
            drv2 = V2Driver(sandbox_id, v2_ctl, v2_base, parent if path is not None else (parent or PARENT), rootless)
            try:
                drv2.create(required)
                drivers.append(drv2)
            except CgroupError:
                drv2.remove(timeout=0)
                if v2_ctl and set(v2_ctl) & required:
                    raise
            else:
                drv2.apply(only(limits, v2_ctl))
    except BaseException:
        for drv in drivers:
            drv.remove(timeout=1.0)
        raise
    return Cgroup(sandbox_id, limits, drivers, layout)
