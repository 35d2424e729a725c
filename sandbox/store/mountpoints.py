"""The per-sandbox top lower layer of a root we did not make (an image's, a `root:` directory's): the
mount points the root lacks, and the container-interface files (/run/.containerenv,
/run/host/container-manager) — so nothing is ever written into an image layer or the user's
directory, and a read-only root still gets them."""
from __future__ import annotations

import contextlib
import os
import stat

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Optional

from .idshift import shift_id
from .images import OPAQUE_XATTRS


# --------------------------------------------------------------------------- lower-layer lookups

def lookup(lowers, parts: tuple[str, ...]) -> Optional[os.stat_result]:
    """lstat of a path in the merged lower layers (no symlink following, honours whiteouts and
    opaque dirs). None when absent. Raises SymlinkInPath when a parent component is a symlink."""
    for layer in lowers:
        d = layer
        stop = False
        for i, comp in enumerate(parts):
            p = os.path.join(d, comp)
            try:
                st = os.lstat(p)
            except (FileNotFoundError, NotADirectoryError):
                break
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return None                      # whiteout: deleted in this layer, nothing below
            if i == len(parts) - 1:
                return st
            if stat.S_ISLNK(st.st_mode):
                raise SymlinkInPath("/" + "/".join(parts[: i + 1]))
            if not stat.S_ISDIR(st.st_mode):
                return None
            d = p
            if is_opaque(p):
                stop = True                      # nothing below this layer exists under p
        else:
            continue
        if stop:
            return None
    return None


class SymlinkInPath(Exception):
    pass


def fd_is_opaque(fd: int) -> bool:
    for xa in OPAQUE_XATTRS:
        with contextlib.suppress(OSError):
            if os.getxattr(fd, xa) == b"y":
                return True
    return False


def is_opaque(path: str) -> bool:
    for xa in OPAQUE_XATTRS:
        with contextlib.suppress(OSError):
            if os.getxattr(path, xa, follow_symlinks=False) == b"y":
                return True
    return False


class _MP:
    def __init__(self, target: str, file: bool = False):
        self.target, self.type, self.source = target, ("file" if file else "dir"), None


# Mount points the launcher's root set-up always uses (fresh /proc, sysfs, /dev, /tmp), and, for
# a read-only root (nothing can be created later), the files a private network binds.
STANDARD_MOUNTPOINTS = ("/proc", "/sys", "/dev", "/tmp")
READ_ONLY_FILE_MOUNTPOINTS = ("/etc/hosts", "/etc/resolv.conf")


# The container interface of systemd and podman (issue 20 item 15), as in a `root: host` tree
# (sandbox/rootfs.py writes the same files there): (directory, its mode when the root lacks it,
# file name). The files are 0444, the sandbox root's.
INTERFACE_FILES = (("run", 0o755, ".containerenv"), ("run/host", 0o555, "container-manager"))


def add_interface_files(layer: str, lowers, umap=(), gmap=(), *, rootless: bool, chown: bool = True) -> None:
    """Write the container-interface files into the top layer `layer` (contents as for a host root:
    sandbox/interface.py), over whatever the root has at those paths. Directories of
    the root on the way keep its mode and owner (the top layer's attributes are what the merged
    directory shows); missing ones are made as in a host root. Where the root has a symlink or a
    file on the way (`/run -> /var/run`), or a directory we cannot search, the files are left out:
    the root's own business, and nothing of it is followed. chown=False: as the sandbox's root (the files are its own already)."""
    from ..interface import ENGINE, containerenv
    texts = {".containerenv": containerenv(rootless=rootless), "container-manager": ENGINE + "\n"}
    modes = []                                      # (path, mode): set after the files are written

    def own(p: str, uid: int, gid: int) -> None:
        if chown and not rootless:
            os.chown(p, shift_id(umap, uid), shift_id(gmap, gid), follow_symlinks=False)

    for rel, new_mode, fname in INTERFACE_FILES:
        parts = tuple(rel.split("/"))
        ok = True
        for i in range(1, len(parts) + 1):
            sub = parts[:i]
            try:
                st = lookup(lowers, sub)
            except (SymlinkInPath, PermissionError):   # (a directory the sandbox's root cannot search:
                ok = False                              # its contents are not the sandbox's to see either)
                break
            if st is not None and not stat.S_ISDIR(st.st_mode):
                ok = False                          # a symlink or a file of the root's
                break
            p = os.path.join(layer, *sub)
            if os.path.lexists(p):
                continue
            os.mkdir(p, 0o755)
            modes.append((p, stat.S_IMODE(st.st_mode) if st is not None else (new_mode if i == len(parts) else 0o755)))
            own(p, st.st_uid if st is not None else 0, st.st_gid if st is not None else 0)
        if not ok:
            continue
        p = os.path.join(layer, *parts, fname)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
        try:
            os.write(fd, texts[fname].encode())
            os.fchmod(fd, 0o444)
        finally:
            os.close(fd)
        own(p, 0, 0)
    for p, mode in reversed(modes):
        os.chmod(p, mode)


def make_mountpoints(mnt: str, lowers, mounts, umap, gmap, *, rootless: bool, read_only: bool = False) -> None:
    """Create, in the per-sandbox top lower layer, the mount points the image lacks.

    Directories of the image on the way are reproduced with the image's mode and owner (the top
    layer's attributes are what the merged directory shows)."""
    extra = [_MP(t) for t in STANDARD_MOUNTPOINTS]
    if read_only:
        extra += [_MP(t, file=True) for t in READ_ONLY_FILE_MOUNTPOINTS]

    def own(p: str, uid: int, gid: int) -> None:
        if not rootless:
            os.chown(p, shift_id(umap, uid), shift_id(gmap, gid), follow_symlinks=False)

    # the top layer's root directory is what "/" shows: the image's own mode and owner
    rst = os.lstat(lowers[0]) if lowers else None
    if rst is not None:
        os.chmod(mnt, stat.S_IMODE(rst.st_mode))
        own(mnt, rst.st_uid, rst.st_gid)

    for m in extra + list(mounts or ()):
        target = getattr(m, "target", None)
        if not target or not target.startswith("/"):
            continue
        parts = tuple(p for p in target.split("/") if p not in ("", "."))
        if not parts or ".." in parts:
            continue
        is_file = getattr(m, "type", "") == "file" or getattr(m, "type", "") == "bind" \
            and bool(getattr(m, "source", None)) and os.path.isfile(m.source)
        for i in range(1, len(parts) + 1):
            sub = parts[:i]
            last = i == len(parts)
            try:
                st = lookup(lowers, sub)
            except SymlinkInPath:
                break                            # resolved later, inside the root
            if st is not None and (stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode)):
                break                            # exists in the image (a file, or a symlink: its business)
            if st is not None and last:
                break                            # the directory exists: nothing to create
            p = os.path.join(mnt, *sub)
            if os.path.lexists(p):
                continue
            if st is not None:                   # an image directory on the way: same mode and owner
                os.mkdir(p, 0o700)
                os.chmod(p, stat.S_IMODE(st.st_mode))
                own(p, st.st_uid, st.st_gid)
                continue
            if last and is_file:
                os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
            else:
                os.mkdir(p, 0o755)
            own(p, 0, 0)


