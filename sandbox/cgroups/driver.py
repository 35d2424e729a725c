"""What both drivers (`v1.V1Driver`, `v2.V2Driver`) provide, and what they share: the leaves they
created, the flocks held on them, removal."""
from __future__ import annotations

import errno
import os
import time

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path

from .files import procs

if TYPE_CHECKING:  # pragma: no cover
    from typing import Optional
    from policies.plan import Limits


class Driver:
    """One cgroup version's part of a sandbox. `controllers` are logical names (memory cpu cpuset
    pids io)."""

    version = 0
    # The only two directory operations; tests of the v2 file logic against a simulated tree (a plain
    # directory cannot create interface files by itself) replace them with ones that do.
    _mkdir = staticmethod(os.mkdir)
    _rmdir = staticmethod(os.rmdir)

    def __init__(self, sandbox_id: str, controllers: list[str]):
        self.sandbox_id = sandbox_id
        self.controllers = list(controllers)
        self._locks: list[int] = []
        self.created: list[str] = []          # leaf directories this object created

    def dir(self, c: str) -> Optional[str]: raise NotImplementedError
    def create(self, required: set[str]) -> None: raise NotImplementedError
    def apply(self, limits: "Limits") -> None: raise NotImplementedError
    def add_pid(self, pid: int) -> None: raise NotImplementedError
    def stats(self) -> dict: raise NotImplementedError
    def kill(self) -> None: raise NotImplementedError

    def procs(self) -> set[int]:
        out: set[int] = set()
        for d in self.created:
            out |= procs(d)
        return out

    def locks(self) -> list[int]:
        """The flock descriptors held on the leaves (O_CLOEXEC)."""
        return list(self._locks)

    def release_locks(self) -> None:
        for fd in self._locks:
            try:
                os.close(fd)
            except OSError:
                pass
        self._locks = []

    def remove(self, timeout: float = 3.0) -> list[str]:
        """rmdir every leaf (killing stragglers); returns the directories that could not be removed."""
        left = []
        deadline = time.monotonic() + timeout
        for d in reversed(self.created):
            delay = 0.005
            while True:
                try:
                    self._rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        left.append(d)
                        break
                    if procs(d):
                        self.kill()
                    time.sleep(delay)      # exiting tasks leave the cgroup when they are reaped
                    delay = min(delay * 2, 0.1)
        self.release_locks()
        return left
