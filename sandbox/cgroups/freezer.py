"""Freezing a sandbox's cgroup: the freeze-then-SIGKILL loop every kill goes through (a driver's
`kill`, the removal of a dead supervisor's leftovers), and `pysandbox pause`/`unpause`.

cgroup v1 freezes through the freezer hierarchy's `freezer.state` (FROZEN / FREEZING / THAWED),
cgroup2 through the leaf's `cgroup.freeze` (done when `cgroup.events` says "frozen 1")."""
from __future__ import annotations

import contextlib
import os
import signal
import time

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Callable, Optional

from .files import CgroupError, errmsg, keyed, read, write
from .placement import ID_RE

if TYPE_CHECKING:
    Op = Optional[Callable[[], None]]


def v1_ops(state: str) -> tuple[Op, Op]:
    """(freeze, thaw) through a v1 `freezer.state` file: freeze waits (at most 1 s) for FREEZING
    to end."""
    def freeze():
        try:
            write(state, "FROZEN")
        except OSError:
            return
        end = time.monotonic() + 1.0
        while time.monotonic() < end and (read(state) or "").strip() == "FREEZING":
            time.sleep(0.002)

    def thaw():
        try:
            write(state, "THAWED")
        except OSError:
            pass
    return freeze, thaw


def v2_ops(freeze_file: str) -> tuple[Op, Op]:
    """(freeze, thaw) through a cgroup2 `cgroup.freeze` file."""
    def freeze():
        try:
            write(freeze_file, "1")
        except OSError:
            pass

    def thaw():
        try:
            write(freeze_file, "0")
        except OSError:
            pass
    return freeze, thaw


def ops_of(directory: str) -> tuple[Op, Op]:
    """(freeze, thaw) of a cgroup directory, (None, None) when it has no freezer."""
    if os.path.exists(os.path.join(directory, "cgroup.freeze")):
        return v2_ops(os.path.join(directory, "cgroup.freeze"))
    if os.path.exists(os.path.join(directory, "freezer.state")):
        return v1_ops(os.path.join(directory, "freezer.state"))
    return None, None


def cgroup_kill(directory: str) -> None:
    """cgroup2's atomic kill of everything in `directory` (and below), where the kernel has it."""
    kill_file = os.path.join(directory, "cgroup.kill")
    if os.path.exists(kill_file):
        try:
            write(kill_file, "1")
        except OSError:
            pass


def kill_all(list_procs: Callable[[], set[int]], freeze: Op = None, thaw: Op = None,
             timeout: float = 5.0) -> None:
    """SIGKILL every process until the cgroup is empty (freezing first, so a fork bomb cannot
    outrun the loop, where a freezer is available; a frozen task takes its SIGKILL at the thaw).
    One pass at least, then until `timeout`."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        pids = list_procs()
        if not pids:
            return
        if freeze:
            freeze()
            pids = list_procs()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if thaw:
            thaw()
        if time.monotonic() >= deadline:
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# --------------------------------------------------------------------------- pause / unpause

def _freeze_files(paths, sandbox_id: str) -> list[tuple[str, str]]:
    """[(kind, file)] of a sandbox's freezer controls: cgroup2 `cgroup.freeze` of its leaf, the v1
    freezer hierarchy's `freezer.state`. Only leaves named after the sandbox (its own)."""
    out = []
    for p in paths or ():
        if not isinstance(p, str) or os.path.basename(p) != sandbox_id or not ID_RE.match(sandbox_id or ""):
            continue
        if os.path.exists(os.path.join(p, "cgroup.freeze")):
            out.append(("v2", os.path.join(p, "cgroup.freeze")))
        elif os.path.exists(os.path.join(p, "freezer.state")):
            out.append(("v1", os.path.join(p, "freezer.state")))
    return out


def is_frozen(paths, sandbox_id: str) -> bool:
    """Whether the sandbox's cgroup is frozen (or freezing): v2 `cgroup.freeze` 1, v1 not THAWED."""
    for kind, f in _freeze_files(paths, sandbox_id):
        v = (read(f) or "").strip()
        if (kind == "v2" and v == "1") or (kind == "v1" and v in ("FROZEN", "FREEZING")):
            return True
    return False


def set_frozen(paths, sandbox_id: str, frozen: bool, timeout: float = 5.0) -> None:
    """Freeze (or thaw) every process of the sandbox's cgroup and wait until the kernel says it is
    done (v2 `cgroup.events` "frozen 1", v1 `freezer.state` FROZEN). CgroupError when the sandbox has
    no freezer (no cgroup: its profile sets no limits) or it does not complete in time."""
    files = _freeze_files(paths, sandbox_id)
    if not files:
        raise CgroupError("freezer", "the sandbox has no cgroup with a freezer (a profile without limits "
                                     "gets no cgroup); cannot pause it")
    for kind, f in files:
        try:
            write(f, ("1" if frozen else "0") if kind == "v2" else ("FROZEN" if frozen else "THAWED"))
        except OSError as e:
            raise CgroupError("freezer", f"cannot write {f}: {errmsg(e)}") from None
    deadline = time.monotonic() + timeout
    for kind, f in files:
        while True:
            if kind == "v2":
                done = keyed(read(os.path.join(os.path.dirname(f), "cgroup.events"))).get("frozen") == int(frozen)
            else:
                done = (read(f) or "").strip() == ("FROZEN" if frozen else "THAWED")
            if done:
                break
            if time.monotonic() > deadline:
                raise CgroupError("freezer", f"{f}: not {'frozen' if frozen else 'thawed'} after {timeout:g}s")
            if kind == "v1" and frozen:
                with contextlib.suppress(OSError):
                    write(f, "FROZEN")        # v1: FREEZING is retried by writing FROZEN again
            time.sleep(0.005)
