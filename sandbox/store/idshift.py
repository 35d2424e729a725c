"""A layer for a sandbox whose root is mapped to another host uid: idmapped mounts, or uid-shifted copies."""
from __future__ import annotations

import contextlib
import os
import stat

from .images import OPAQUE_XATTRS, LazyModule, Store, rmtree, tree_seal

tempfile = LazyModule("tempfile", globals())


def id_maps(m) -> tuple[tuple[int, int, int], ...]:
    out = []
    for e in m or ():
        if hasattr(e, "inside"):
            out.append((int(e.inside), int(e.outside), int(e.count)))
        else:
            out.append(tuple(int(x) for x in e))
    return tuple(out)


def shift_id(maps, i: int) -> int:
    for inside, outside, count in maps:
        if inside <= i < inside + count:
            return outside + (i - inside)
    return i


def unshift_id(maps, o: int) -> int:
    for inside, outside, count in maps:
        if outside <= o < outside + count:
            return inside + (o - outside)
    return o


def needs_shift(maps) -> bool:
    return any(inside != outside for inside, outside, _ in maps)


def close_all(fds) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _idmap_userns(umap, gmap) -> int:
    """An fd of a fresh user namespace with the given maps (only used to idmap mounts)."""
    from .. import _sys
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = _sys.clone_fork(_sys.CLONE_NEWUSER)
    if pid == 0:
        try:
            os.close(w)
            os.read(r, 1)
        finally:
            os._exit(0)
    os.close(r)
    try:
        for name, m in (("uid_map", umap), ("gid_map", gmap)):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write("".join(f"{a} {b} {c}\n" for a, b, c in m))
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(w)
        os.waitpid(pid, 0)


def idmapped_layers(store: Store, layers, umap, gmap) -> tuple[int, ...]:
    """Detached idmapped mounts of the layers (top first); () when this kernel/file system cannot
    idmap (the caller then falls back to uid-shifted copies)."""
    from .. import _sys
    fds: list[int] = []
    try:
        uns = _idmap_userns(umap or ((0, 0, 4294967295),), gmap or ((0, 0, 4294967295),))
    except OSError:
        return ()
    try:
        for d in reversed(layers):
            fd = _sys.open_tree(store.layer_diff(d), recursive=False)
            fds.append(fd)
            _sys.mount_setattr_idmap(fd, uns)
    except OSError:
        close_all(fds)
        return ()
    finally:
        os.close(uns)
    return tuple(fds)


def detached(paths) -> tuple[int, ...]:
    from .. import _sys
    fds: list[int] = []
    try:
        for p in paths:
            fds.append(_sys.open_tree(p, recursive=False))
    except OSError:
        close_all(fds)
        raise
    return tuple(fds)


def shifted_layer(store: Store, digest: str, umap, gmap) -> str:
    """A copy of the layer with every owner shifted through the maps (cached, built atomically)."""
    key = "_".join("-".join(map(str, e)) for e in umap) + "__" + "_".join("-".join(map(str, e)) for e in gmap)
    if len(key) > 120:
        import hashlib
        key = hashlib.sha256(key.encode()).hexdigest()[:16]
    ldir = store.layer_dir(digest)
    final = os.path.join(ldir, f"shift-{key}")
    sealf = final + ".seal"
    if os.path.isdir(final):
        # a cache of the layer (checked just before): used only while its own seal holds, else
        # rebuilt from the layer -- the copy is a lower layer of the sandbox like the layer itself
        with contextlib.suppress(OSError):
            with open(sealf) as f:
                if f.read().strip() == tree_seal(final):
                    return final
        rmtree(final)
    tmp = tempfile.mkdtemp(prefix=".shift.", dir=ldir)
    try:
        _copy_shifted(store.layer_diff(digest), os.path.join(tmp, "d"), umap, gmap)
        os.rename(os.path.join(tmp, "d"), final)        # (a rename moves the directory's ctime: seal after)
        with open(os.path.join(tmp, "seal"), "w") as f:
            f.write(tree_seal(final))
        os.rename(os.path.join(tmp, "seal"), sealf)
    finally:
        rmtree(tmp)
    return final


def _copy_shifted(src: str, dst: str, umap, gmap) -> None:
    inodes: dict[tuple[int, int], str] = {}
    dirs = []

    def one(s: str, d: str, st: os.stat_result) -> None:
        m = st.st_mode
        if stat.S_ISDIR(m):
            os.mkdir(d, 0o700)
            dirs.append((d, st))
            for xa in OPAQUE_XATTRS:
                with contextlib.suppress(OSError):
                    os.setxattr(d, xa, os.getxattr(s, xa, follow_symlinks=False), follow_symlinks=False)
            with os.scandir(s) as it:
                for e in it:
                    one(e.path, os.path.join(d, e.name), e.stat(follow_symlinks=False))
            return
        if st.st_nlink > 1 and not stat.S_ISDIR(m):
            k = (st.st_dev, st.st_ino)
            if k in inodes:
                os.link(inodes[k], d, follow_symlinks=False)
                return
            inodes[k] = d
        if stat.S_ISREG(m):
            fdi = os.open(s, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                fdo = os.open(d, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                try:
                    while True:
                        n = os.sendfile(fdo, fdi, None, 1 << 24)
                        if not n:
                            break
                finally:
                    os.close(fdo)
            finally:
                os.close(fdi)
        elif stat.S_ISLNK(m):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
            os.mknod(d, m, st.st_rdev)
        elif stat.S_ISFIFO(m):
            os.mkfifo(d, 0o600)
        else:
            return
        os.chown(d, shift_id(umap, st.st_uid), shift_id(gmap, st.st_gid), follow_symlinks=False)
        if not stat.S_ISLNK(m):
            os.chmod(d, stat.S_IMODE(m))
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    one(src, dst, os.lstat(src))
    for d, st in reversed(dirs):
        os.chown(d, shift_id(umap, st.st_uid), shift_id(gmap, st.st_gid))
        os.chmod(d, stat.S_IMODE(st.st_mode))
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))


