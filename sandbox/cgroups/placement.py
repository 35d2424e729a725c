"""Where a sandbox's cgroups go, and nothing else is ever touched.

* Root: `<hierarchy root>/pysandbox/<sandbox id>` in every hierarchy.
* Rootless, cgroup v1: only under an administrator-delegated `<hierarchy root>/pysandbox-user-<uid>/
  sandboxes` that the caller can write (below a root-owned parent with finite limits:
  `delegate.delegate()`).
* Rootless, cgroup2: only under the topmost cgroup of the caller's own that is delegated to it
  (owned by the caller, writable `cgroup.procs`).
"""
from __future__ import annotations

import os
import re

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Optional

from .files import read
from .layout import Layout

PARENT = "pysandbox"            # pysandbox's own parent cgroup in every hierarchy (root)
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")     # a sandbox id: one path component
DELEGATE_PREFIX = f"{PARENT}-user-"      # <hierarchy>/pysandbox-user-<uid>: root's, with the user's limits
DELEGATE_SUBTREE = "sandboxes"           # .../pysandbox-user-<uid>/sandboxes: the user's own subtree


def delegated_parent(uid: int) -> str:
    """The root-owned, limited parent of uid's delegated subtree (relative to a hierarchy root)."""
    return f"{DELEGATE_PREFIX}{uid}"


def delegated_subtree(uid: int) -> str:
    """uid's own subtree (relative to a hierarchy root): rootless sandboxes' cgroups go below it."""
    return f"{delegated_parent(uid)}/{DELEGATE_SUBTREE}"


def parent_name(rootless: bool) -> str:
    """Relative to each hierarchy's root: root's sandboxes under `pysandbox`, a rootless caller's
    under the subtree `delegate()` gave it (below a root-owned parent with finite limits)."""
    return delegated_subtree(os.geteuid()) if rootless else PARENT


def _own_v2_cgroup() -> Optional[str]:
    text = read("/proc/self/cgroup") or ""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def delegated_v2_base(layout: Layout) -> Optional[str]:
    """Rootless cgroup2: the topmost cgroup on the caller's own path that is delegated to it (owned
    by the caller, `cgroup.procs` and `cgroup.subtree_control` writable). None when there is none."""
    if not layout.unified:
        return None
    own = _own_v2_cgroup()
    if own is None:
        return None
    uid = os.geteuid()
    path = os.path.normpath(os.path.join(layout.unified, own.lstrip("/")))
    best = None
    while path.startswith(layout.unified) and path != layout.unified:
        try:
            st = os.stat(path)
        except OSError:
            break
        ok = (st.st_uid == uid and os.access(path, os.W_OK | os.X_OK)
              and os.access(os.path.join(path, "cgroup.procs"), os.W_OK)
              and os.access(os.path.join(path, "cgroup.subtree_control"), os.W_OK))
        if not ok:
            break
        best = path
        path = os.path.dirname(path)
    return best


def v2_base(layout: Layout, rootless: bool) -> Optional[str]:
    """The cgroup2 directory a caller's sandboxes go below (`<it>/pysandbox/<id>`), None without one."""
    if not layout.unified:
        return None
    return delegated_v2_base(layout) if rootless else layout.unified


def parents(layout: Layout, rootless: bool) -> list[str]:
    """pysandbox's own parent directories, one per hierarchy: every sandbox leaf is a child of one."""
    out = []
    name = parent_name(rootless)
    for mount in dict.fromkeys(m for _, m in layout.v1):
        out.append(os.path.join(mount, name))
    base = v2_base(layout, rootless)
    if base:
        out.append(os.path.join(base, PARENT))
    return out


def engine_path(cgroups_path: str) -> str:
    """An OCI bundle's linux.cgroupsPath (cgroupfs form) -> the leaf's path relative to each
    hierarchy's root, as runc resolves it: absolute paths from the root of every hierarchy,
    relative ones below pysandbox's own parent (runc: below its own cgroup); `..` cannot leave
    the root (normalised from "/"). The systemd form `slice:prefix:name` is refused (ValueError),
    as is a component that is not a plain name."""
    if ":" in cgroups_path:
        raise ValueError(f"{cgroups_path!r}: the systemd form slice:prefix:name needs the systemd cgroup "
                         "driver, which pysandbox-runtime does not have (use the engine's cgroupfs manager)")
    rel = os.path.normpath("/" + cgroups_path).lstrip("/")
    if not cgroups_path.startswith("/"):
        rel = f"{PARENT}/{rel}" if rel else ""
    parts = rel.split("/") if rel else []
    if not parts or len(parts) > 16 or not all(ID_RE.match(p) for p in parts):
        raise ValueError(f"{cgroups_path!r}: not a cgroup path of plain names (letters, digits, _ . -)")
    return rel
