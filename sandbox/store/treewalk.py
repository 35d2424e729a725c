"""Walking a directory written by someone else (a sandbox's writable layer, a directory imported
as an image, an extracted layer) by descriptors only: `walk_tree`.

A leaf module of the standard library only (no tarfile: the layer seal, images.tree_seal, walks
every layer before every image launch).
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Iterator, Optional

MAX_ENTRIES = 1_000_000     # the default bounds, as an archive's (tarsafe.ImportLimits: members, depth)
MAX_DEPTH = 256


def _hint(name: str) -> str:
    return f"(limit {name}; raise it with --limit {name}=N)"


@dataclass
class TreeEntry:
    arc: str                     # path below the root, '/'-separated, no leading '/'
    st: os.stat_result           # of the object actually opened (fstat) for files and directories
    fd: int = -1                 # open O_RDONLY for regular files and directories (valid during the yield)
    link: Optional[str] = None   # symlink target
    unreadable: bool = False     # (unreadable_dirs=True) a directory that cannot be listed: its contents are not walked


class TreeChanged(Exception):
    """An entry changed type while the tree was walked (a concurrent writer). One line."""


class TreeTooLarge(TreeChanged):
    """The tree has more entries or levels than allowed. One line."""


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def walk_tree(root, *, max_entries: Optional[int] = MAX_ENTRIES,
              max_depth: Optional[int] = MAX_DEPTH, open_files: bool = True,
              unreadable_dirs: bool = False) -> Iterator[TreeEntry]:
    """Walk `root` (a path, or a directory descriptor: duplicated, not closed) by descriptors only,
    directory by directory: a directory's entries in name order (of their bytes), then each of its
    subdirectories' in the same way — one descriptor per level, whatever the width. Every
    directory is opened with O_DIRECTORY|O_NOFOLLOW relative to its parent's descriptor, every
    regular file with O_NOFOLLOW|O_NONBLOCK relative to it and checked with fstat; symlinks are
    read with readlinkat and never followed. An entry whose type changes between listing and
    opening, or a directory that is another one when it is entered than when it was listed,
    raises TreeChanged (a concurrent writer): nothing outside the tree is ever read.

    open_files=False: metadata only (one lstat per entry, nothing opened but the directories
    walked; fd -1, no link) — the layer seal (images.tree_seal). unreadable_dirs=True: a
    directory that cannot be entered (EACCES: mode 000, rootless) is yielded once more, with
    unreadable=True, instead of raising. None: no limit. Raises OSError for other failures."""
    fd = os.open(root, _DIR_FLAGS) if isinstance(root, str) else os.dup(root)
    arc = ""
    stack: list[tuple[int, str, list]] = []      # (dir fd, its arc, subdirectories still to enter)
    count = 0
    try:
        while True:
            if fd >= 0:
                subdirs = []
                for name in _listdir(fd):
                    count += 1
                    if max_entries is not None and count > max_entries:
                        raise TreeTooLarge(f"more than {max_entries} entries {_hint('members')}")
                    a = f"{arc}/{name}" if arc else name
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue                     # removed meanwhile: as if it never was
                    mode = st.st_mode
                    if stat.S_ISDIR(mode):
                        if max_depth is not None and len(stack) + 1 >= max_depth:
                            raise TreeTooLarge(f"{a[:100]}...: deeper than {max_depth} directories {_hint('depth')}")
                        if open_files:
                            cfd = _open_dir(name, fd, a)
                            try:
                                st = os.fstat(cfd)
                                yield TreeEntry(a, st, cfd)
                            finally:
                                os.close(cfd)
                        else:
                            yield TreeEntry(a, st)
                        subdirs.append((name, a, st))
                    elif not open_files:
                        yield TreeEntry(a, st)
                    elif stat.S_ISREG(mode):
                        try:
                            ffd = os.open(name, _FILE_FLAGS, dir_fd=fd)
                        except OSError as e:
                            if e.errno in (errno.ELOOP, errno.ENOENT, errno.ENXIO):     # swapped meanwhile
                                raise TreeChanged(f"{a} changed while being read") from None
                            raise
                        try:
                            fst = os.fstat(ffd)
                            if not stat.S_ISREG(fst.st_mode):
                                raise TreeChanged(f"{a} changed while being read")
                            yield TreeEntry(a, fst, ffd)
                        finally:
                            os.close(ffd)
                    elif stat.S_ISLNK(mode):
                        try:
                            target = os.readlink(name, dir_fd=fd)
                        except OSError as e:
                            if e.errno in (errno.EINVAL, errno.ENOENT):   # no longer a symlink
                                raise TreeChanged(f"{a} changed while being read") from None
                            raise
                        yield TreeEntry(a, st, -1, target)
                    else:
                        yield TreeEntry(a, st)       # fifo, device, socket: metadata only
                subdirs.reverse()                    # popped from the end: name order
                stack.append((fd, arc, subdirs))
                fd = -1
            if not stack:
                break
            dfd, _, subdirs = stack[-1]
            if not subdirs:
                os.close(dfd)
                stack.pop()
                continue
            name, arc, listed = subdirs.pop()
            try:
                fd = _open_dir(name, dfd, arc)
            except PermissionError:
                if not unreadable_dirs:
                    raise
                yield TreeEntry(arc, listed, unreadable=True)
                continue
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (listed.st_dev, listed.st_ino):
                raise TreeChanged(f"{arc} changed while being read")
    finally:
        if fd >= 0:
            os.close(fd)
        for dfd, _, _ in stack:
            os.close(dfd)


def _open_dir(name: str, dfd: int, arc: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dfd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):   # swapped or removed meanwhile
            raise TreeChanged(f"{arc} changed while being read") from None
        raise


def _listdir(dfd: int) -> list:
    """The names in the order of their bytes (a seal is over bytes). UTF-8 keeps the code points'
    order: only undecodable names (surrogate escapes) need the bytes as the key."""
    names = os.listdir(dfd)
    try:
        "".join(names).encode()
        names.sort()
    except UnicodeEncodeError:
        names.sort(key=os.fsencode)
    return names
