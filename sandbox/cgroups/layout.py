"""Which cgroup hierarchies this mount namespace has: `detect()` reads /proc/self/mountinfo and
returns a `Layout` — the controllers with a cgroup v1 hierarchy of their own, and where the cgroup2
(unified) hierarchy is mounted. Modes: `v1`, `v2`, `hybrid` (v1 controllers plus a cgroup2 mount),
`none`."""
from __future__ import annotations

import os
import re
from collections import namedtuple

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Optional

from .files import read

MOUNTINFO = "/proc/self/mountinfo"

# Controllers known to cgroup v1 (a `cgroup` mount's super options name the ones it carries).
_V1_KNOWN = frozenset({"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls",
                       "net_prio", "blkio", "perf_event", "hugetlb", "pids", "rdma", "misc"})


def unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


class Layout(namedtuple("Layout", ("v1", "unified"), defaults=((), None))):
    # a named tuple, not a frozen dataclass: as immutable and comparable, ~0.5 ms less to define on
    # the CLI's launch path (this module is imported by every launch with limits); collections', not
    # typing.NamedTuple: typing is not imported on that path.
    #   v1: tuple[tuple[str, str], ...]   (controller, mount point); co-mounted ones share it
    #   unified: Optional[str]            cgroup2 mount point
    __slots__ = ()

    @property
    def v1_map(self) -> dict[str, str]:
        return dict(self.v1)

    @property
    def mode(self) -> str:
        if self.v1 and self.unified:
            return "hybrid"
        if self.v1:
            return "v1"
        if self.unified:
            return "v2"
        return "none"

    def unified_controllers(self) -> frozenset[str]:
        """Controllers bound to cgroup2 (its root's `cgroup.controllers`)."""
        if not self.unified:
            return frozenset()
        text = read(os.path.join(self.unified, "cgroup.controllers"))
        return frozenset(text.split()) if text is not None else frozenset()

    def describe(self) -> str:
        parts = [self.mode]
        if self.v1:
            parts.append("v1 controllers " + ",".join(sorted(c for c, _ in self.v1)))
        if self.unified:
            ctl = " ".join(sorted(self.unified_controllers())) or "none"
            parts.append(f"cgroup2 at {self.unified} (controllers: {ctl})")
        return "; ".join(parts)


def parse_mountinfo(text: str) -> Layout:
    """The cgroup layout described by a /proc/<pid>/mountinfo text.

    When a hierarchy is mounted more than once, the first mount of its root ("/") wins, else the
    first mount seen.
    """
    v1: dict[str, tuple[str, str]] = {}      # controller -> (mount point, root)
    unified: Optional[tuple[str, str]] = None
    for line in text.splitlines():
        parts = line.split()
        try:
            sep = parts.index("-", 6)
        except ValueError:
            continue
        if len(parts) < sep + 3:
            continue
        fstype, root, mnt = parts[sep + 1], unescape(parts[3]), unescape(parts[4])
        superopts = parts[sep + 3].split(",") if len(parts) > sep + 3 else []
        if fstype == "cgroup":
            for c in superopts:
                if c in _V1_KNOWN and (c not in v1 or (v1[c][1] != "/" and root == "/")):
                    v1[c] = (mnt, root)
        elif fstype == "cgroup2":
            if unified is None or (unified[1] != "/" and root == "/"):
                unified = (mnt, root)
    return Layout(v1=tuple(sorted((c, m) for c, (m, _) in v1.items())),
                  unified=unified[0] if unified else None)


_LAYOUT: list = [None, None]                 # (mountinfo text, its Layout): parsed once per change


def detect(mountinfo: str = MOUNTINFO) -> Layout:
    """The cgroup layout of our mount namespace (read every time, parsed again only when the
    mount table changed: a launch server asks once per sandbox)."""
    text = read(mountinfo)
    if text is None:
        with open(mountinfo) as f:           # the error, as before
            text = f.read()
    if _LAYOUT[0] != text:
        _LAYOUT[:] = [text, parse_mountinfo(text)]
    return _LAYOUT[1]
