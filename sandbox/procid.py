"""Process identity: a pid names a process only together with its start time.

A pid is recycled as soon as its process is reaped; (pid, start time) — field 22 of /proc/PID/stat,
clock ticks since boot — names one process for as long as the machine runs. Every record that
names a process (a sandbox's state, the reclaim registry's owners, a kept container, a network's
attachments) stores both and checks both; a process is signalled or joined only through a pidfd
taken after its start time was checked (`open_pidfd`), so a recycled pid is never acted on.

(audit/integrity.py has its own reader: audit/ may not import sandbox/, and it tells an unreadable
entry from a missing one, which a record's check never needs.)
"""
from __future__ import annotations

import os

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Optional


def _stat_fields(pid: int) -> Optional[list]:
    """The fields of /proc/PID/stat after the command name (field 3, the state, first)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            s = f.read()
        return s[s.rindex(b")") + 2:].split()
    except (OSError, ValueError):
        return None


def start_time(pid: int) -> Optional[int]:
    """The process's start time (clock ticks since boot), None when there is no such process."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (ValueError, IndexError):
        return None


def same_process(pid: Optional[int], start: Optional[int]) -> bool:
    """pid still names the process that had this start time (a zombie included)."""
    return bool(pid) and start is not None and start_time(pid) == start


def running(pid: Optional[int], start: Optional[int] = None) -> bool:
    """pid names a live process (not a zombie: it holds nothing any more, and its reaper — init,
    after a double fork — may take its time), the one with this start time when start is given."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    fields = _stat_fields(pid)
    try:
        return bool(fields) and (start is None or int(fields[19]) == start) and fields[0] not in (b"Z", b"X")
    except (ValueError, IndexError):
        return False


def zombie_status(pid: int, start: Optional[int]) -> Optional[int]:
    """The wait status of the process (pid, start) if it is a zombie now (field 52 of
    /proc/PID/stat, `exit_code`: what waitpid will return), else None - running, reaped, or another
    process. Lets a process that is not the parent learn an exit without waiting for the reaper."""
    fields = _stat_fields(pid)
    try:
        if fields and fields[0] == b"Z" and start is not None and int(fields[19]) == start and len(fields) >= 50:
            return int(fields[49])
    except (ValueError, IndexError):
        pass
    return None


def open_pidfd(pid: Optional[int], start: Optional[int]) -> Optional[int]:
    """A pidfd of the process (pid, start), or None when it is gone: the start time is checked
    after the pidfd is taken, so the descriptor cannot name a process that recycled the pid."""
    if not same_process(pid, start):
        return None
    from . import _sys          # ctypes: only the commands that act on a process need it
    try:
        fd = _sys.pidfd_open(pid)
    except OSError:
        return None
    if not same_process(pid, start):
        os.close(fd)
        return None
    return fd
