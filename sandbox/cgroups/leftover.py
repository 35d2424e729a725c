"""What dead supervisors left: sandbox leaves under pysandbox's own parents (`placement.parents`),
found and removed. Never looks outside those parents.

* `remove_leftover` — the leaves of ONE sandbox whose supervisor is known dead (sandbox/reclaim.py):
  killed (the same freeze-then-SIGKILL loop as a live sandbox's, `freezer.kill_all`) and removed.
* `reclaim_stale` — every leaf no supervisor holds the flock of (`files.lock_dir`) and that holds no
  process.
* `list_sandboxes` — sandbox id -> its directories (`pysandbox cgroups ls`).
"""
from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Optional

from . import freezer
from .files import lock_dir, procs
from .layout import Layout, detect
from .placement import ID_RE, parents


def tree_procs(path: str) -> set[int]:
    """Every process in `path` and the cgroups below it."""
    return {pid for root, _dirs, _files in os.walk(path) for pid in procs(root)}


def remove_tree(path: str) -> bool:
    """rmdir `path` and every cgroup below it, deepest first; False when one is still busy."""
    for root, _dirs, _files in os.walk(path, topdown=False):
        try:
            os.rmdir(root)
        except FileNotFoundError:
            pass
        except OSError:
            return False
    return True


def _parents(rootless: Optional[bool], layout: Optional[Layout]) -> list[str]:
    """pysandbox's parents for this caller ([] when the mount table cannot be read)."""
    if rootless is None:
        rootless = os.geteuid() != 0
    try:
        layout = layout or detect()
    except OSError:
        return []
    return parents(layout, rootless)


def remove_leftover(sandbox_id: str, *, rootless: Optional[bool] = None, layout: Optional[Layout] = None,
                    timeout: float = 3.0) -> list[str]:
    """The leaves of ONE sandbox whose supervisor is known dead (sandbox/reclaim.py): SIGKILL what is
    still in them (PID 1 dies of PDEATHSIG, but maybe not yet), then remove them. Only
    `<pysandbox's parent>/<sandbox_id>` is looked at. Returns problems (empty: nothing left)."""
    if not ID_RE.match(sandbox_id or ""):
        return []
    problems = []
    for parent in _parents(rootless, layout):
        path = os.path.join(parent, sandbox_id)
        deadline = time.monotonic() + timeout
        while os.path.isdir(path) and not remove_tree(path):
            if time.monotonic() > deadline:
                problems.append(f"cgroup {path}: still busy")
                break
            freezer.cgroup_kill(path)
            freeze, thaw = freezer.ops_of(path)        # a frozen (paused) task takes its SIGKILL at the thaw
            freezer.kill_all(lambda: tree_procs(path), freeze, thaw, timeout=deadline - time.monotonic())
            time.sleep(0.01)
    return problems


def reclaim_stale(min_age: float = 2.0, *, rootless: Optional[bool] = None,
                  layout: Optional[Layout] = None) -> list[str]:
    """Remove sandbox cgroups under pysandbox's own parents whose supervisor is gone (no flock held)
    and that hold no processes. Never looks outside those parents. Returns the removed paths."""
    removed = []
    now = time.time()
    for parent in _parents(rootless, layout):
        try:
            entries = list(os.scandir(parent))
        except OSError:
            continue
        for ent in entries:
            if not ent.is_dir(follow_symlinks=False) or not ID_RE.match(ent.name):
                continue
            try:
                if now - ent.stat(follow_symlinks=False).st_mtime < min_age:
                    continue                      # may be being set up right now
                fd = lock_dir(ent.path)
            except OSError:
                continue                          # locked: its supervisor is alive
            try:
                if not tree_procs(ent.path) and remove_tree(ent.path):
                    removed.append(ent.path)
            finally:
                os.close(fd)
    return removed


def list_sandboxes(rootless: Optional[bool] = None, layout: Optional[Layout] = None) -> dict[str, list[str]]:
    """sandbox id -> its cgroup directories, under pysandbox's own parents."""
    if rootless is None:
        rootless = os.geteuid() != 0
    layout = layout or detect()
    out: dict[str, list[str]] = {}
    for parent in parents(layout, rootless):
        try:
            for ent in os.scandir(parent):
                if ent.is_dir(follow_symlinks=False) and ID_RE.match(ent.name):
                    out.setdefault(ent.name, []).append(ent.path)
        except OSError:
            continue
    return out
