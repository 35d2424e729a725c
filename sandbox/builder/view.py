"""A read-only view of a stack of directories as overlayfs would merge them (top first; a 0:0
character device is a whiteout, `trusted/user.overlay.opaque=y` hides what is below), without
mounting anything: the layers of a build stage (COPY --from, the destination of COPY/ADD, WORKDIR)
and the build context (a single directory).

Paths are resolved inside the view's root: a symlink's target is looked up again in the view, an
absolute target or `..` never climbs above the root (as in a chroot), and at most 40 links are
followed. Files are opened by descriptors, each component with O_NOFOLLOW relative to its parent,
so nothing outside a layer is ever read, even if the tree changes meanwhile.
"""
from __future__ import annotations

import os
import stat
from typing import Iterator, Optional

from ..store.mountpoints import is_opaque

MAX_LINKS = 40
MAX_ENTRIES = 1_000_000
MAX_DEPTH = 256
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ViewError(Exception):
    pass


def _split(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


class View:
    def __init__(self, layers: list[str], *, whiteouts: bool = True):
        self.layers = list(layers)            # top first
        self.whiteouts = whiteouts             # the build context has none: a char device is refused later

    # ---- one entry (no symlink followed)
    def entry(self, parts: tuple) -> Optional[tuple[str, os.stat_result]]:
        """(layer, lstat) of the topmost object at `parts` (whose parents are real directories in
        the view), or None."""
        for layer in self.layers:
            d = layer
            hidden = False
            for i, comp in enumerate(parts):
                try:
                    st = os.lstat(os.path.join(d, comp))
                except (FileNotFoundError, NotADirectoryError):
                    break
                if self.whiteouts and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    return None
                if i == len(parts) - 1:
                    return layer, st
                if not stat.S_ISDIR(st.st_mode):
                    return None                # a non-directory hides everything below it
                d = os.path.join(d, comp)
                if self.whiteouts and is_opaque(d):
                    hidden = True
            else:
                if not parts:
                    return layer, os.lstat(layer)
                continue
            if hidden:
                return None
        return None

    def resolve(self, path: str, *, follow_last: bool = True) -> tuple[str, ...]:
        """The path, symlinks resolved inside the view's root -> its components (which may not exist)."""
        todo = _split(path)
        out: list[str] = []
        links = 0
        while todo:
            comp = todo.pop(0)
            if comp == "..":
                if out:
                    out.pop()
                continue
            cand = tuple(out) + (comp,)
            if not todo and not follow_last:
                out.append(comp)
                break
            hit = self.entry(cand)
            if hit and stat.S_ISLNK(hit[1].st_mode):
                links += 1
                if links > MAX_LINKS:
                    raise ViewError(f"/{'/'.join(cand)}: too many levels of symbolic links")
                target = os.readlink(os.path.join(hit[0], *cand))
                if target.startswith("/"):
                    out = []
                todo = _split(target) + todo
                continue
            out.append(comp)
        return tuple(out)

    def listdir(self, parts: tuple) -> list[str]:
        """The merged entries of the directory at `parts` (a resolved path), sorted."""
        names: set[str] = set()
        gone: set[str] = set()
        for layer in self.layers:
            d = layer
            ok = True
            for comp in parts:
                d = os.path.join(d, comp)
                try:
                    st = os.lstat(d)
                except OSError:
                    ok = False
                    break
                if not stat.S_ISDIR(st.st_mode):
                    ok = False
                    break
            if not ok:
                if os.path.lexists(d):     # a non-directory here hides the layers below
                    break
                continue
            for n in os.listdir(d):
                if n in names or n in gone:
                    continue
                if self.whiteouts:
                    st = os.lstat(os.path.join(d, n))
                    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                        gone.add(n)
                        continue
                names.add(n)
            if self.whiteouts and is_opaque(d):
                break
        return sorted(names)

    def walk(self, parts: tuple, max_entries: int = MAX_ENTRIES) -> Iterator[tuple[tuple, str, os.stat_result]]:
        """(parts, layer, lstat) of `parts` and, for a directory, everything below it (pre-order).
        Symlinks are yielded, never followed."""
        hit = self.entry(parts)
        if hit is None:
            return
        stack = [(parts, hit)]
        count = 0
        while stack:
            p, (layer, st) = stack.pop()
            count += 1
            if count > max_entries:
                raise ViewError(f"more than {max_entries} entries to copy")
            if len(p) > MAX_DEPTH:
                raise ViewError(f"/{'/'.join(p[:8])}/...: deeper than {MAX_DEPTH} directories")
            yield p, layer, st
            if stat.S_ISDIR(st.st_mode):
                kids = []
                for n in self.listdir(p):
                    h = self.entry(p + (n,))
                    if h is not None:
                        kids.append((p + (n,), h))
                stack.extend(reversed(kids))

    def open(self, layer: str, parts: tuple) -> int:
        """A descriptor of the regular file `parts` in `layer`, every component opened with
        O_NOFOLLOW relative to its parent (a symlink swapped in meanwhile: ELOOP/ENOTDIR)."""
        fd = os.open(layer, _DIR)
        try:
            for comp in parts[:-1]:
                nfd = os.open(comp, _DIR, dir_fd=fd)
                os.close(fd)
                fd = nfd
            ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        finally:
            os.close(fd)
        st = os.fstat(ffd)
        if not stat.S_ISREG(st.st_mode):
            os.close(ffd)
            raise ViewError(f"/{'/'.join(parts)} changed while being read")
        return ffd

    def read_small(self, path: str, limit: int = 1 << 20) -> Optional[bytes]:
        """A small file of the view (e.g. /etc/passwd), or None."""
        try:
            parts = self.resolve(path)
            hit = self.entry(parts)
            if hit is None or not stat.S_ISREG(hit[1].st_mode):
                return None
            fd = self.open(hit[0], parts)
        except (OSError, ViewError):
            return None
        try:
            chunks, left = [], limit
            while left > 0:
                b = os.read(fd, min(left, 1 << 20))
                if not b:
                    break
                chunks.append(b)
                left -= len(b)
            return b"".join(chunks)
        finally:
            os.close(fd)
