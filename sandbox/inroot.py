"""Paths inside a root the launcher did not make: resolved *inside* that root, by descriptor.

An image's layers, a `filesystem.root` directory, a volume's contents and the sandbox's own root
after pivot_root are written by someone else (the image's author, the program of an earlier or
concurrent run). A path the launcher uses there (/etc/hosts, the /proc /sys /dev mount points, a
bind or volume destination, a masked path) must never be looked up by the host's rules: an image
whose `etc` is a symlink to a host directory would make "new_root/etc/hosts" a host file.

`resolve(root_fd, path, ...)` returns an O_PATH descriptor of the object `path` names inside
`root_fd`:

* follow=True — symlinks are followed *as if root_fd were "/"* (openat2 RESOLVE_IN_ROOT):
  `etc -> /x` and `etc -> ../../..` both stay inside the root; /proc-style magic links are refused
  (RESOLVE_NO_MAGICLINKS). For paths the program itself will open by name (the hosts file, masked
  and read-only paths): the launcher acts on what the program would see.
* follow=False — any symlink on the way is refused, naming it (each component opened with
  O_NOFOLLOW relative to its parent's descriptor, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS). For mount
  points (/proc, /sys, /dev, bind/volume/tmpfs destinations).

create="dir"/"file": missing components are made with mkdirat / openat(O_CREAT|O_EXCL|O_NOFOLLOW)
relative to the descriptor of their resolved parent (the last as `create` says), so nothing is
created through a link; a name that appears meanwhile or is a dangling link is refused. The caller
mounts on the returned descriptor (sandbox._sys.move_mount_fd: MOVE_MOUNT_T_EMPTY_PATH): no path is
looked up again by name after the check, so swapping a component for a symlink in between gains
nothing.

No RESOLVE_NO_XDEV: mount targets legitimately lie on other mounts of the root (a bind inside a
bind, /tmp's tmpfs), and crossing a mount below root_fd never leaves it — the walk is anchored at
root_fd (RESOLVE_IN_ROOT / RESOLVE_BENEATH), which is what keeps it inside.

Errors: InRootError, one line naming the path as the sandbox sees it.
"""
from __future__ import annotations

import errno
import os
import stat

from . import _sys

_O_PATH = _sys.O_PATH | os.O_CLOEXEC
IN_ROOT = _sys.RESOLVE_IN_ROOT | _sys.RESOLVE_NO_MAGICLINKS
NO_LINKS = _sys.RESOLVE_BENEATH | _sys.RESOLVE_NO_SYMLINKS | _sys.RESOLVE_NO_MAGICLINKS


class InRootError(Exception):
    """A path inside a root cannot be used as asked (one line, naming it)."""


def open_root(path: str) -> int:
    """An O_PATH descriptor of a root directory (of the launcher's choosing)."""
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def parts_of(path: str) -> list[str]:
    """The components of an absolute in-root path ('.', '' dropped; '..' refused: the paths the
    launcher uses are normalised, and a '..' left over means a caller's mistake)."""
    parts = [p for p in os.path.normpath("/" + path).split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InRootError(f"{path}: '..' in a path inside the sandbox's root")
    return parts


def _kind(mode: int) -> str:
    return "directory" if stat.S_ISDIR(mode) else "symbolic link" if stat.S_ISLNK(mode) else "file"


def resolve(root_fd: int, path: str, *, follow: bool, create: str | None = None, what: str = "path") -> int:
    """O_PATH descriptor of `path` inside the root `root_fd` (module docstring). create: None (must
    exist: FileNotFoundError / NotADirectoryError are raised as they are, for callers that skip a
    missing path), "dir" or
    "file" (missing components made; an existing last component must be of that kind)."""
    parts = parts_of(path)
    shown = "/" + "/".join(parts)
    if follow and parts:
        try:
            fd = _sys.openat2(root_fd, "/".join(parts), _O_PATH, 0, IN_ROOT)
        except (FileNotFoundError, NotADirectoryError):
            if create is None:
                raise
            fd = _walk(root_fd, parts, follow, create, what, shown)      # (which component, made or not)
        except OSError as e:
            raise InRootError(f"{what} {shown}: {_why(e)}") from None
    else:
        fd = _walk(root_fd, parts, follow, create, what, shown)
    if create is not None:
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode) != (create == "dir") or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise InRootError(f"{what} {shown}: is a {_kind(mode)} (a {'directory' if create == 'dir' else 'file'}"
                                  f" is needed)")
        except BaseException:
            os.close(fd)
            raise
    return fd


def _why(e: OSError) -> str:
    if e.errno == errno.EXDEV:
        return "leads out of the root (refused)"
    if e.errno == errno.ELOOP:
        return "a /proc magic link or too many levels of symbolic links (refused)"
    return e.strerror or str(e)


def _walk(root_fd: int, parts: list[str], follow: bool, create: str | None, what: str, shown: str) -> int:
    """Component by component from the root: each one opened relative to its parent's descriptor
    (follow: each prefix resolved from the root, RESOLVE_IN_ROOT); a missing one made there."""
    cur = os.dup(root_fd)
    try:
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            prefix = "/" + "/".join(parts[: i + 1])
            try:
                if follow:
                    nxt = _sys.openat2(root_fd, prefix[1:], _O_PATH, 0, IN_ROOT)
                else:
                    nxt = _sys.openat2(cur, name, _O_PATH | os.O_NOFOLLOW, 0, NO_LINKS)
            except (FileNotFoundError, NotADirectoryError) as e:
                if create is None:
                    raise
                if isinstance(e, NotADirectoryError):
                    raise InRootError(f"{what} {shown}: cannot create {prefix}: Not a directory") from None
                nxt = _make(cur, name, "file" if last and create == "file" else "dir", what, shown, prefix)
            except OSError as e:
                raise InRootError(f"{what} {shown}: {prefix}: {_why(e)}") from None
            os.close(cur)
            cur = nxt
            if not follow and stat.S_ISLNK(os.fstat(cur).st_mode):
                raise InRootError(f"{what} {shown}: {prefix} is a symbolic link (refused)")
        out, cur = cur, -1
        return out
    finally:
        if cur >= 0:
            os.close(cur)


def _make(parent: int, name: str, kind: str, what: str, shown: str, prefix: str) -> int:
    """Make `name` in the directory `parent` (a descriptor: nothing is followed) and open it."""
    try:
        if kind == "dir":
            os.mkdir(name, 0o755, dir_fd=parent)
        else:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                             dir_fd=parent))
    except FileExistsError:           # a dangling symlink (lookup said ENOENT), or made meanwhile
        raise InRootError(f"{what} {shown}: {prefix} is a dangling symbolic link or appeared meanwhile "
                          f"(refused)") from None
    except OSError as e:
        raise InRootError(f"{what} {shown}: cannot create {prefix}: {e.strerror}") from None
    try:
        return _sys.openat2(parent, name, _O_PATH | os.O_NOFOLLOW, 0, NO_LINKS)
    except OSError as e:
        raise InRootError(f"{what} {shown}: {prefix}: {_why(e)}") from None
