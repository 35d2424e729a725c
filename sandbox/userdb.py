"""The sandbox root's /etc/passwd and /etc/group, for `--user name` and `--group-add` (parsed by
policies/users.py), and an image's config `User` (Docker: the default user).

The root is untrusted (a directory, an image's layers): every file is opened through the root's
descriptor with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) — a symlink such as
etc/passwd -> /etc/shadow resolves inside that root, never on the host — must be a regular file,
and is read up to MAX_BYTES. (A helper of our own: sandbox/rootfs.py's in-root resolution is
being written in parallel; this needs only an open.) An image is read layer by layer, top first,
with overlay's rules: a whiteout (char 0:0) or an opaque etc/ below ends the search.
"""
from __future__ import annotations

import contextlib
import os
import stat
from typing import Optional

from . import _sys

MAX_BYTES = 1 << 20
_RESOLVE = _sys.RESOLVE_IN_ROOT | _sys.RESOLVE_NO_MAGICLINKS


def _read_in_root(root_fd: int, rel: str) -> tuple[Optional[bytes], bool]:
    """(content, stop): content None when absent; stop when this layer hides lower ones (a whiteout
    of the file, or an opaque directory on its way)."""
    try:                                        # (symlinks followed inside this root only)
        fd = _sys.openat2(root_fd, rel, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY, resolve=_RESOLVE)
    except OSError:
        try:                                    # the entry exists (a dangling or looping link): it
            os.close(_sys.openat2(root_fd, rel, _sys.O_PATH | os.O_NOFOLLOW, resolve=_RESOLVE))
            return None, True                   # hides the lower layers' file, as overlay would
        except OSError:
            return None, _opaque(root_fd, os.path.dirname(rel))
    try:
        st = os.fstat(fd)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return None, True                   # overlay whiteout: deleted in this layer
        if not stat.S_ISREG(st.st_mode):
            return None, True
        out = b""
        while len(out) < MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES - len(out))
            if not chunk:
                break
            out += chunk
        return out, True
    finally:
        os.close(fd)


def _opaque(root_fd: int, rel_dir: str) -> bool:
    try:
        fd = _sys.openat2(root_fd, rel_dir, os.O_RDONLY | os.O_DIRECTORY, resolve=_RESOLVE)
    except OSError:
        return False
    try:
        for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
            with contextlib.suppress(OSError):
                if os.getxattr(fd, name) == b"y":
                    return True
        return False
    finally:
        os.close(fd)


class UserDB:
    """user_db for policies.compiler.Overrides: built per compile from the plan's filesystem."""

    def __init__(self, fs):
        self.image_user: Optional[str] = None
        self.image_config: dict = {}
        self._dirs: list[str] = []
        self.files: list[str] = []             # what the answer depends on (the run's plan cache)
        if getattr(fs, "image", None):
            from .store.images import ImageError, Store
            try:
                store = Store()
                self.files.append(store.index)
                name, rec = store.resolve(fs.image)
                self._dirs = [store.layer_diff(d) for d in reversed(rec["layers"])]      # top first
                user = (rec.get("config") or {}).get("User")
                self.image_user = user if isinstance(user, str) and user else None
                self.image_config = dict(rec.get("config") or {})     # Entrypoint, Cmd, Env, WorkingDir
            except (ImageError, OSError, KeyError, TypeError):
                pass                            # the launch reports a missing image clearly
            self.where = f"image {fs.image}:"
        else:
            root = "/" if fs.root == "host" else fs.root
            self._dirs = [root]
            self.files += [os.path.join(root, "etc", n) for n in ("passwd", "group")]
            self.where = "" if root == "/" else root

    def read(self, name: str) -> Optional[bytes]:
        rel = f"etc/{name}"
        for d in self._dirs:
            try:
                root_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                content, stop = _read_in_root(root_fd, rel)
            finally:
                os.close(root_fd)
            if content is not None or stop:
                return content
        return None


def user_db(fs) -> UserDB:
    return UserDB(fs)
