"""Overlay root file systems from image layers, the writable layer after the run, safe mount targets.

Flow (called by the launcher):

    spec = prepare_root(plan.filesystem, sandbox_id, rootless=..., uid_map=..., gid_map=...)  # supervisor
    mount_root(spec, target, rootless=...)          # sandbox PID 1, in its user+mount namespace
    ... lead's rootfs code: proc, dev, tmp, binds (bind targets through safe_target) ...
    finish_root(spec, keep=plan.filesystem.keep)    # supervisor, after the sandbox exited

Per-sandbox state lives in ``<store>/containers/<id>/``: ``upperfs``, the mount point of the
writable layer (none when the root is read-only: a tmpfs of the plan's storage size holding
``upper`` and ``work``, mounted by PID 1 in the sandbox's mount namespace; its upper directory is
copied to ``upper`` after a ``--keep`` run), ``mnt`` (a small top lower layer holding mount points
the image lacks, so a read-only root still gets its mount points) and ``container.json``.

Copy-on-write: the image layers are only ever overlay *lower* directories; every write lands in
the sandbox's own upper directory. When the sandbox's root is mapped to an unprivileged host uid
(root launching with a uid range), the layers are used through idmapped mounts made by the
supervisor (or, where the kernel cannot, a uid-shifted copy cached next to the layer,
``layers/<hex>/shift-<maps>``), so the layer itself is never chowned.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Optional

from .images import (ImageError, Store, rmtree, _now, add_layer_from_tar, add_image_record, normalize_name,
                     tree_seal, tree_to_tar)
from .images import _Lazy
from . import fsutil, procid

tarfile, tempfile = _Lazy("tarfile"), _Lazy("tempfile")

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
OPAQUE_XATTRS = ("user.overlay.opaque", "trusted.overlay.opaque")


@dataclass(frozen=True)
class RootSpec:
    """Everything mount_root/finish_root need; plain data, picklable."""
    container_id: str
    store_root: str
    image: str
    image_id: str
    lowers: tuple[str, ...]            # absolute lower dirs, overlay order: top first, lowest last
    upper: Optional[str]
    work: Optional[str]
    mnt: str                           # per-sandbox top lower layer (mount points)
    container_dir: str
    read_only: bool
    uid_map: tuple[tuple[int, int, int], ...] = ()
    gid_map: tuple[tuple[int, int, int], ...] = ()
    config: dict = field(default_factory=dict, compare=False, hash=False)   # image Env/Cmd/WorkingDir...
    # Root with a mapped uid range: the supervisor (real root) hands PID 1 detached mount trees
    # (open_tree, inherited through clone): one per layer, top first (idmapped through the
    # sandbox's maps, or plain over uid-shifted copies), and one of the container dir (mnt, upper,
    # work). PID 1 attaches them in its own namespace, so the store itself stays 0700: no local
    # user can reach a layer's setuid binaries. Empty/-1: the overlay uses the paths.
    lower_fds: tuple[int, ...] = field(default=(), compare=False)
    rw_fd: int = field(default=-1, compare=False)
    idmapped: bool = False
    # The writable layer (upper + work) is a tmpfs of `upper_size` bytes, mounted by PID 1 on
    # containers/<id>/upperfs in its own mount namespace: the kernel refuses writes beyond it
    # (ENOSPC), root and rootless. PID 1 sends a descriptor of that tmpfs over `layer_sock`
    # (a socketpair; the supervisor keeps the other end): after the sandbox ended it still
    # reaches the layer (a file in flight keeps its mount alive) to record a full layer and,
    # --keep, to copy the upper directory to containers/<id>/upper for diff/commit.
    upper_size: int = 0
    keep: bool = False
    layer_sock: tuple[int, int] = field(default=(-1, -1), compare=False)


def _maps(m) -> tuple[tuple[int, int, int], ...]:
    out = []
    for e in m or ():
        if hasattr(e, "inside"):
            out.append((int(e.inside), int(e.outside), int(e.count)))
        else:
            out.append(tuple(int(x) for x in e))
    return tuple(out)


def _shift(maps, i: int) -> int:
    for inside, outside, count in maps:
        if inside <= i < inside + count:
            return outside + (i - inside)
    return i


def _unshift(maps, o: int) -> int:
    for inside, outside, count in maps:
        if outside <= o < outside + count:
            return inside + (o - outside)
    return o


def _needs_shift(maps) -> bool:
    return any(inside != outside for inside, outside, _ in maps)


# --------------------------------------------------------------------------- prepare

def prepare_root(fs, sandbox_id: str, *, rootless: bool, uid_map=(), gid_map=(), store: Optional[Store] = None,
                 name: Optional[str] = None) -> RootSpec:
    """Resolve fs.image to layer dirs and create the per-sandbox dirs (supervisor, before clone).

    uid_map/gid_map (policies.plan.IdMapEntry or (inside, outside, count) tuples): the sandbox's
    user namespace maps. As root with a shifted range the layers are handed to PID 1 as detached
    idmapped mount trees (fallback: uid-shifted copies), the container dir as a detached tree, and
    the upper dir belongs to the sandbox's root; rootless they are ignored (the store belongs to
    the caller, who is the sandbox's root). The spec's descriptors are inherited through clone:
    call mount_root in a child of this process, and finish_root here afterwards (closes them).
    """
    if not getattr(fs, "image", None):
        raise ImageError("filesystem has no image")
    if not isinstance(sandbox_id, str) or not _ID.match(sandbox_id):
        raise ImageError(f"invalid sandbox id {sandbox_id!r}")
    store = store or Store(rootless=rootless)
    umap, gmap = (_maps(uid_map), _maps(gid_map)) if not rootless else ((), ())
    shift = _needs_shift(umap) or _needs_shift(gmap)
    read_only = bool(getattr(fs, "read_only", False))
    upper_size = 0
    if not read_only:
        from policies.plan import DEFAULT_STORAGE_SIZE
        upper_size = getattr(fs, "storage_size", None) or DEFAULT_STORAGE_SIZE   # never unlimited
        _check_storage_size(upper_size)
    with store.locked():
        _reclaim_stale(store)
        keep = bool(getattr(fs, "keep", False))
        if name and keep:                  # `diff NAME` / `commit NAME` must find one container
            other = _by_name(store, name)
            if other:
                raise ImageError(f"the name {name!r} is already used by kept container {other} "
                                 f"(pysandbox commit --rm, or image prune --containers)")
        sandbox_name = name
        name, rec = store.resolve(fs.image)
        for d in rec["layers"]:
            store.check_layer(d)           # missing, or changed since its digest was checked: refused
        cdir = os.path.join(store.containers, sandbox_id)
        try:
            os.mkdir(cdir, 0o700)
        except FileExistsError:
            raise ImageError(f"container {sandbox_id} already exists in {store.containers}") from None
        idfds: tuple[int, ...] = ()
        rw_fd = -1
        idmapped = False
        try:
            lowers = []
            if shift and os.environ.get("PYSANDBOX_IDMAP", "1") != "0":
                idfds = _idmapped_layers(store, rec["layers"], umap, gmap)
                if idfds:
                    idmapped = True
                    lowers = [store.layer_diff(d) for d in reversed(rec["layers"])]
            if not idfds:
                for d in reversed(rec["layers"]):           # top first
                    lowers.append(_shifted_layer(store, d, umap, gmap) if shift else store.layer_diff(d))
                if shift:
                    idfds = _detached(lowers)
            root_uid, root_gid = _shift(umap, 0), _shift(gmap, 0)
            mnt = os.path.join(cdir, "mnt")
            os.mkdir(mnt, 0o755)
            upper = work = None
            if not read_only:                # the tmpfs's mount point; upper and work are made in it
                os.mkdir(os.path.join(cdir, "upperfs"), 0o700)
                upper, work = os.path.join(cdir, "upperfs", "upper"), os.path.join(cdir, "upperfs", "work")
            _mountpoints(mnt, [store.layer_diff(d) for d in reversed(rec["layers"])], getattr(fs, "mounts", ()),
                         umap, gmap, rootless=rootless, read_only=read_only)
            if shift:
                from . import _sys
                os.chmod(cdir, 0o711)     # the mapped root enters it as the root of a detached tree;
                rw_fd = _sys.open_tree(cdir, recursive=False)   # containers/ (0700) keeps others out
            meta = {"id": sandbox_id, "image": name, "image_id": rec["id"], "layers": rec["layers"],
                    "created": _now(), "status": "running", "pid": os.getpid(),
                    "pid_start": procid.start_time(os.getpid()), "read_only": read_only,
                    "rootless": rootless, "uid_map": umap, "gid_map": gmap, "keep": keep, "name": sandbox_name}
            _write_json(os.path.join(cdir, "container.json"), meta)
        except ImageError:
            _close(idfds + ((rw_fd,) if rw_fd >= 0 else ()))
            rmtree(cdir)
            raise
        except OSError as e:
            _close(idfds + ((rw_fd,) if rw_fd >= 0 else ()))
            rmtree(cdir)
            raise ImageError(f"cannot prepare the root of {sandbox_id}: {e.strerror} ({e.filename})") from None
    sock = (-1, -1)
    if not read_only:
        import socket
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock = (a.detach(), b.detach())
    return RootSpec(container_id=sandbox_id, store_root=store.root, image=name, image_id=rec["id"],
                    lowers=tuple(lowers), upper=upper, work=work, mnt=mnt, container_dir=cdir,
                    read_only=read_only, uid_map=umap, gid_map=gmap, config=dict(rec.get("config") or {}),
                    lower_fds=idfds, rw_fd=rw_fd, idmapped=idmapped, upper_size=upper_size,
                    keep=bool(getattr(fs, "keep", False)), layer_sock=sock)


def _check_storage_size(size: int) -> None:
    """Fail closed: a tmpfs larger than the machine's memory and swap would not stop a program
    at the limit (it would exhaust the host's memory first), so such a limit is not enforceable."""
    total = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("MemTotal", "SwapTotal"):
                    total += int(v.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        total = 0
    if total and size > total:
        raise ImageError(f"writable layer size {_human(size)} cannot be enforced: the layer is a tmpfs and this "
                         f"machine has {_human(total)} of memory and swap (choose --storage-opt size= below "
                         f"that, or --read-only)")


def _human(n: int) -> str:
    for unit, m in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= m:
            return f"{n / m:.1f} {unit}"
    return f"{n} B"


def upper_tmpfs_options(size: int) -> str:
    """tmpfs options of the writable layer: `size` bytes of data and one inode per 4 KiB of it
    (empty files and directories take no data page but kernel memory: bounded too)."""
    return f"size={size},nr_inodes={max(1024, size // 4096)},mode=0755"


def _reclaim_stale(store: Store) -> None:
    """Writable layers of sandboxes whose supervisor died (SIGKILL) without --keep: deleted."""
    with contextlib.suppress(FileNotFoundError):
        for cid in os.listdir(store.containers):
            path = os.path.join(store.containers, cid, "container.json")
            try:
                with open(path) as f:
                    m = json.load(f)
            except (OSError, ValueError):
                continue
            if m.get("status") == "running" and not m.get("keep") and not _alive(m):
                rmtree(os.path.join(store.containers, cid))


def _close(fds) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _idmap_userns(umap, gmap) -> int:
    """An fd of a fresh user namespace with the given maps (only used to idmap mounts)."""
    from . import _sys
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


def _idmapped_layers(store: Store, layers, umap, gmap) -> tuple[int, ...]:
    """Detached idmapped mounts of the layers (top first); () when this kernel/file system cannot
    idmap (the caller then falls back to uid-shifted copies)."""
    from . import _sys
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
        _close(fds)
        return ()
    finally:
        os.close(uns)
    return tuple(fds)


def _detached(paths) -> tuple[int, ...]:
    from . import _sys
    fds: list[int] = []
    try:
        for p in paths:
            fds.append(_sys.open_tree(p, recursive=False))
    except OSError:
        _close(fds)
        raise
    return tuple(fds)


def _write_json(path: str, data: dict) -> None:
    # on the launch path (container.json): no fsync, as before (a crash loses the container anyway)
    fsutil.atomic_write_json(path, data, mode=0o644, fsync=False, indent=1, sort_keys=True)


def _shifted_layer(store: Store, digest: str, umap, gmap) -> str:
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
        os.chown(d, _shift(umap, st.st_uid), _shift(gmap, st.st_gid), follow_symlinks=False)
        if not stat.S_ISLNK(m):
            os.chmod(d, stat.S_IMODE(m))
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    one(src, dst, os.lstat(src))
    for d, st in reversed(dirs):
        os.chown(d, _shift(umap, st.st_uid), _shift(gmap, st.st_gid))
        os.chmod(d, stat.S_IMODE(st.st_mode))
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))


# --------------------------------------------------------------------------- lower-layer lookups

def _lookup(lowers, parts: tuple[str, ...]) -> Optional[os.stat_result]:
    """lstat of a path in the merged lower layers (no symlink following, honours whiteouts and
    opaque dirs). None when absent. Raises _Symlink when a parent component is a symlink."""
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
                raise _Symlink("/" + "/".join(parts[: i + 1]))
            if not stat.S_ISDIR(st.st_mode):
                return None
            d = p
            if _is_opaque(p):
                stop = True                      # nothing below this layer exists under p
        else:
            continue
        if stop:
            return None
    return None


class _Symlink(Exception):
    pass


def _fd_is_opaque(fd: int) -> bool:
    for xa in OPAQUE_XATTRS:
        with contextlib.suppress(OSError):
            if os.getxattr(fd, xa) == b"y":
                return True
    return False


def _is_opaque(path: str) -> bool:
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


def _mountpoints(mnt: str, lowers, mounts, umap, gmap, *, rootless: bool, read_only: bool = False) -> None:
    """Create, in the per-sandbox top lower layer, the mount points the image lacks.

    Directories of the image on the way are reproduced with the image's mode and owner (the top
    layer's attributes are what the merged directory shows)."""
    extra = [_MP(t) for t in STANDARD_MOUNTPOINTS]
    if read_only:
        extra += [_MP(t, file=True) for t in READ_ONLY_FILE_MOUNTPOINTS]

    def own(p: str, uid: int, gid: int) -> None:
        if not rootless:
            os.chown(p, _shift(umap, uid), _shift(gmap, gid), follow_symlinks=False)

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
                st = _lookup(lowers, sub)
            except _Symlink:
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


# --------------------------------------------------------------------------- mount (sandbox PID 1)

def _in_user_namespace() -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return True


def overlay_options(spec: RootSpec, *, userxattr: bool, lowers=None, mnt=None, upper=None, work=None) -> str:
    lowers = list(spec.lowers if lowers is None else lowers)
    lowers.insert(0, mnt or spec.mnt)         # mount points on top (also: >= 2 lowers without upper)
    opts = []
    if userxattr:
        opts.append("userxattr")
    opts += ["index=off", "metacopy=off"]
    opts.append("lowerdir=" + ":".join(_escape(p) for p in lowers))
    if not spec.read_only:
        opts.append("upperdir=" + _escape(upper or spec.upper))
        opts.append("workdir=" + _escape(work or spec.work))
    return ",".join(opts)


def _escape(p: str) -> str:
    if any(c in p for c in ",:\\"):
        raise ImageError(f"path {p!r} contains ',' ':' or '\\' and cannot be an overlay layer")
    return p


_store_fd: Optional[int] = None


def open_store(spec: RootSpec) -> None:
    """In PID 1, in its new mount namespace, before anything is mounted over the store's path (the
    new root's tmpfs on /tmp would hide a store under /tmp): keep a descriptor of the store for
    mount_root. It must be opened in the sandbox's own mount namespace (overlay refuses layers
    reached through a mount of another namespace)."""
    global _store_fd
    if spec.lower_fds:
        return                                # detached mounts: no path into the store needed
    try:
        _store_fd = os.open(spec.store_root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise ImageError(f"image store {spec.store_root}: {e.strerror}") from None


def mount_root(spec: RootSpec, target: str, *, rootless: Optional[bool] = None) -> None:
    """Mount the overlay root at `target` (in the sandbox's PID 1, as user-namespace root).

    Inside any user namespace overlay can only use user.* xattrs (option userxattr)."""
    global _store_fd
    from . import _sys
    userxattr = bool(rootless) or _in_user_namespace()
    flags = _sys.MS_NODEV | (_sys.MS_RDONLY if spec.read_only else 0)
    try:
        if spec.lower_fds:
            _mount_detached(spec, target, flags, userxattr)
            return
        # Shorten the option string (one page at most): layer paths relative to the store root.
        opts = overlay_options(spec, userxattr=userxattr)
        rel = opts.replace(spec.store_root.rstrip("/") + "/", "")
        if len(rel) > 4000:
            raise ImageError(f"image {spec.image} has too many layers for one overlay mount ({len(spec.lowers)})")
        old = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if _store_fd is not None:
                os.fchdir(_store_fd)
            else:
                os.chdir(spec.store_root)
            if not spec.read_only:
                _mount_upperfs(spec, os.path.relpath(os.path.dirname(spec.upper), spec.store_root))
            _sys.mount("pysandbox-overlay", target, "overlay", flags, rel)
        finally:
            os.fchdir(old)
            os.close(old)
            if _store_fd is not None:
                os.close(_store_fd)
                _store_fd = None
    except OSError as e:
        raise ImageError(f"filesystem.root image {spec.image}: overlay mount failed: {e.strerror}"
                         f"{' (rootless overlay needs kernel >= 5.11)' if rootless else ''}") from None


def _mount_detached(spec: RootSpec, target: str, flags: int, userxattr: bool) -> None:
    """Attach the supervisor's detached trees in a stage dir under target (the new root's tmpfs),
    mount the overlay at stage/root, drop the attachments (overlay keeps private clones) and move
    the overlay onto target."""
    from . import _sys
    stage = os.path.join(target, ".pysandbox-stage")
    os.mkdir(stage, 0o700)
    attached = []
    try:
        lowers = []
        for i, fd in enumerate(spec.lower_fds):
            p = os.path.join(stage, f"l{i}")
            os.mkdir(p, 0o700)
            _sys.move_mount_fd(fd, p)
            attached.append(p)
            lowers.append(p)
        rw = os.path.join(stage, "rw")
        os.mkdir(rw, 0o700)
        _sys.move_mount_fd(spec.rw_fd, rw)
        attached.append(rw)
        if not spec.read_only:
            _mount_upperfs(spec, os.path.join(rw, "upperfs"))
        opts = overlay_options(spec, userxattr=userxattr, lowers=lowers, mnt=os.path.join(rw, "mnt"),
                               upper=os.path.join(rw, "upperfs", "upper"), work=os.path.join(rw, "upperfs", "work"))
        if len(opts) > 4000:
            raise ImageError(f"image {spec.image} has too many layers for one overlay mount ({len(lowers)})")
        root = os.path.join(stage, "root")
        os.mkdir(root, 0o755)
        _sys.mount("pysandbox-overlay", root, "overlay", flags, opts)
    finally:
        for p in reversed(attached):
            with contextlib.suppress(OSError):
                _sys.umount2(p, _sys.MNT_DETACH)
        _close(spec.lower_fds + (spec.rw_fd,))
    _sys.mount(root, target, None, _sys.MS_MOVE)


def _mount_upperfs(spec: RootSpec, where: str) -> None:
    """PID 1, as root of the sandbox's user namespace, in its mount namespace: the writable layer's
    tmpfs on `where` (relative to the working directory or absolute), upper and work made in it,
    and a descriptor of it sent to the supervisor. Any failure stops the launch (fail closed)."""
    from . import _sys
    import socket
    try:
        _sys.mount("pysandbox-layer", where, "tmpfs", _sys.MS_NODEV | _sys.MS_NOSUID,
                   upper_tmpfs_options(spec.upper_size))
        fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.mkdir("upper", 0o755, dir_fd=fd)
            os.mkdir("work", 0o700, dir_fd=fd)
            if spec.layer_sock[1] >= 0:
                with socket.socket(fileno=os.dup(spec.layer_sock[1])) as s:
                    socket.send_fds(s, [b"L"], [fd])
        finally:
            os.close(fd)
    except OSError as e:
        raise ImageError(f"writable layer of {spec.image} (a tmpfs of {_human(spec.upper_size)}): "
                         f"{e.strerror}") from None
    finally:
        if spec.layer_sock[1] >= 0:
            with contextlib.suppress(OSError):
                os.close(spec.layer_sock[1])


def _receive_layer(spec: RootSpec) -> int:
    """The supervisor's descriptor of the sandbox's writable-layer tmpfs; -1 when PID 1 never
    sent it (its set-up failed first)."""
    import socket
    a, b = spec.layer_sock
    if a < 0:
        return -1
    with contextlib.suppress(OSError):
        os.close(b)
    try:
        with socket.socket(fileno=a) as s:
            _msg, fds, _flags, _addr = socket.recv_fds(s, 4, 2, socket.MSG_DONTWAIT)
    except (BlockingIOError, OSError):
        return -1
    for extra in fds[1:]:
        os.close(extra)
    return fds[0] if fds else -1


def finish_root(spec: RootSpec, *, keep: bool) -> list[dict]:
    """After the sandbox exited: discard the writable layer, or keep it for `diff`/`commit`.

    Returns audit events: `limit_exceeded` (limit `storage`) when the writable layer was full at the end."""
    _close(spec.lower_fds + ((spec.rw_fd,) if spec.rw_fd >= 0 else ()))
    events: list[dict] = []
    layer = _receive_layer(spec)
    try:
        if layer >= 0:
            with contextlib.suppress(OSError):
                v = os.fstatvfs(layer)
                if v.f_bavail == 0 or v.f_favail == 0:
                    what = "inodes" if v.f_favail == 0 else "bytes"
                    events.append({"type": "limit_exceeded", "limit": "storage", "value": spec.upper_size,
                                   "peak": (v.f_blocks - v.f_bfree) * v.f_frsize, "via": "tmpfs", "what": what,
                                   "message": f"the writable layer was full ({what}) at the end: writes "
                                              f"beyond {_human(spec.upper_size)} failed with ENOSPC"})
        if keep and not spec.read_only:
            if layer >= 0:
                keep_upper(spec, layer)
            elif not os.path.isdir(os.path.join(spec.container_dir, "upper")):   # (kept by a caller)
                rmtree(spec.container_dir)
                raise ImageError(f"--keep: the writable layer of {spec.container_id} was never mounted")
    finally:
        if layer >= 0:
            os.close(layer)
    finish_kept(spec, keep=keep)
    return events


def keep_upper(spec: RootSpec, layer_fd: int) -> None:
    """Copy the upper directory of the layer's tmpfs (a descriptor PID 1 sent) to
    containers/<id>/upper, replacing an earlier copy. On failure nothing of the run is kept."""
    dst = os.path.join(spec.container_dir, "upper")
    try:
        if os.path.lexists(dst):
            rmtree(dst)
        _copy_layer(layer_fd, dst, rootless=os.geteuid() != 0)
    except (OSError, ImageError) as e:
        rmtree(spec.container_dir)
        raise ImageError(f"--keep: could not keep the writable layer of {spec.container_id}: "
                         f"{getattr(e, 'strerror', None) or e}") from None


def receive_layer(spec: RootSpec) -> int:
    """The descriptor of the layer's tmpfs PID 1 sent (-1: none); the caller closes it."""
    return _receive_layer(spec)


def _copy_layer(layer_fd: int, dst: str, *, rootless: bool) -> None:
    """Copy the upper directory of the writable layer's tmpfs to `dst` on disk, by descriptors
    (treewalk.walk_tree: nothing is followed), with what overlay and diff/commit need: types,
    whiteouts (0:0 character devices), overlay's xattrs, modes, owners (as root), times, hard
    links. Bounded: the tmpfs holds at most its size and inode count."""
    from .treewalk import walk_tree, TreeChanged
    os.mkdir(dst, 0o700)
    dfd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    dirs: list[tuple[str, os.stat_result, list]] = []
    links: dict[tuple[int, int], str] = {}

    def xattrs(src) -> list:             # a descriptor (never follows) or a directory path
        kw = {} if isinstance(src, int) else {"follow_symlinks": False}
        out = []
        with contextlib.suppress(OSError):
            for n in os.listxattr(src, **kw):
                if n.startswith(("user.overlay.", "trusted.overlay.")):
                    with contextlib.suppress(OSError):
                        out.append((n, os.getxattr(src, n, **kw)))
        return out

    def finish(path: str, st: os.stat_result, xa=()) -> None:
        for n, v in xa:
            os.setxattr(path, n, v, follow_symlinks=False)
        if not rootless:
            os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(path, stat.S_IMODE(st.st_mode), follow_symlinks=False)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    try:
        src_root = f"/proc/self/fd/{layer_fd}/upper"
        for e in walk_tree(src_root):
            st = e.st
            p = os.path.join(dst, e.arc)
            m = st.st_mode
            if stat.S_ISDIR(m):
                os.mkdir(p, 0o700)
                dirs.append((p, st, xattrs(e.fd)))
                continue
            if st.st_nlink > 1:
                k = (st.st_dev, st.st_ino)
                if k in links:
                    os.link(links[k], p, follow_symlinks=False)
                    continue
                links[k] = p
            if stat.S_ISREG(m):
                out = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                try:
                    while os.sendfile(out, e.fd, None, 1 << 24):
                        pass
                finally:
                    os.close(out)
                finish(p, st, xattrs(e.fd))
            elif stat.S_ISLNK(m):
                os.symlink(e.link, p)
                finish(p, st)
            elif stat.S_ISCHR(m) and st.st_rdev == 0:            # a whiteout
                os.mknod(p, stat.S_IFCHR | 0o600, 0)
                finish(p, st)
            elif stat.S_ISFIFO(m):
                os.mkfifo(p, 0o600)
                finish(p, st)
            # sockets and devices (the layer is nodev) are not part of a layer
        for p, st, xa in reversed(dirs):
            finish(p, st, xa)
        root_st = os.stat(src_root)
        finish(dst, root_st, xattrs(src_root))
    except TreeChanged as e:
        raise ImageError(str(e)) from None
    finally:
        os.close(dfd)


def finish_kept(spec: RootSpec, *, keep: bool) -> None:
    meta_path = os.path.join(spec.container_dir, "container.json")
    if keep and not spec.read_only:
        with contextlib.suppress(OSError, ValueError):
            with open(meta_path) as f:
                meta = json.load(f)
            meta.update(status="exited", finished=_now(), pid=None)
            _write_json(meta_path, meta)
        with contextlib.suppress(OSError):
            rmtree(spec.mnt)
            os.mkdir(spec.mnt, 0o755)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(spec.container_dir, "upperfs"))
        return
    rmtree(spec.container_dir)


# --------------------------------------------------------------------------- safe mount targets

_open_targets: list[int] = []


def safe_target(root: str, dst: str, *, create: Optional[str] = None) -> str:
    """Resolve `dst` (a path inside the sandbox) under `root` without ever leaving `root`.

    Symlinks in the path are resolved as if `root` were "/" (sandbox.inroot.resolve, follow=True:
    openat2 RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS), so a symlink to "/" or "../../.." stays inside
    the root (CVE-2021-30465 class). create: None (the target must exist), "dir" or "file" (create
    missing components relative to their resolved parent; the last as dir or file).
    Returns "/proc/self/fd/N" for an O_PATH descriptor of the target: mount(2) on it mounts on
    exactly the resolved object, so a concurrent symlink swap cannot redirect the mount. The
    descriptor is close-on-exec; release_targets() closes them earlier. (The launcher itself uses
    inroot.resolve and move_mount on the descriptor: sandbox/rootfs.py.)
    """
    from . import inroot
    if not dst.startswith("/"):
        raise ImageError(f"mount target {dst!r} must be an absolute path")
    try:
        rfd = inroot.open_root(root)
    except OSError as e:
        raise ImageError(f"root {root}: {e.strerror}") from None
    try:
        fd = inroot.resolve(rfd, dst, follow=True, create=create, what="mount target")
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError(f"mount target {dst} does not exist in the sandbox root") from None
    except inroot.InRootError as e:
        raise ImageError(str(e)) from None
    finally:
        os.close(rfd)
    _open_targets.append(fd)
    return f"/proc/self/fd/{fd}"


def release_targets() -> None:
    while _open_targets:
        with contextlib.suppress(OSError):
            os.close(_open_targets.pop())


# --------------------------------------------------------------------------- kept containers

def _by_name(store: Store, name: str) -> Optional[str]:
    """The id of the kept container whose sandbox was run with --name NAME, if any."""
    try:
        ids = sorted(os.listdir(store.containers))
    except FileNotFoundError:
        return None
    for cid in ids:
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(store.containers, cid, "container.json")) as f:
                if json.load(f).get("name") == name:
                    return cid
    return None


def _container(store: Store, ref: str) -> tuple[str, dict]:
    """A kept container by id, by its sandbox's --name, or by a unique id prefix."""
    try:
        ids = sorted(os.listdir(store.containers))
    except FileNotFoundError:
        ids = []
    hits = [i for i in ids if i == ref]
    if ref and not hits:
        named = _by_name(store, ref)
        hits = [named] if named else [i for i in ids if i.startswith(ref)]
    if not ref or not hits:
        raise ImageError(f"no such container: {ref} (only runs with --keep are kept)")
    if len(hits) > 1:
        raise ImageError(f"container id prefix {ref!r} is ambiguous")
    cid = hits[0]
    try:
        with open(os.path.join(store.containers, cid, "container.json")) as f:
            return cid, json.load(f)
    except (OSError, ValueError):
        raise ImageError(f"container {cid} has no readable record") from None


def _alive(meta: dict) -> bool:
    """The process that made the container still runs: its pid + start time (a record of an older
    pysandbox has no start time: its pid alone)."""
    return procid.running(meta.get("pid"), meta.get("pid_start"))


def list_containers(store: Store) -> list[dict]:
    out = []
    with contextlib.suppress(FileNotFoundError):
        for cid in sorted(os.listdir(store.containers)):
            with contextlib.suppress(OSError, ValueError):
                with open(os.path.join(store.containers, cid, "container.json")) as f:
                    m = json.load(f)
                if m.get("status") == "running" and not _alive(m):
                    m["status"] = "dead"
                out.append(m)
    return out


def remove_container(store: Store, ref: str) -> str:
    with store.locked():
        cid, meta = _container(store, ref)
        if meta.get("status") == "running" and _alive(meta):
            raise ImageError(f"container {cid} is running")
        rmtree(os.path.join(store.containers, cid))
    store.gc()
    return cid


def _lowers_of(store: Store, meta: dict) -> list[str]:
    return [store.layer_diff(d) for d in reversed(meta.get("layers", []))]


def changes(store: Store, ref: str) -> list[tuple[str, str]]:
    """[(kind, path)]: A added, C changed, D deleted (like `docker diff`), sorted by path."""
    cid, meta = _container(store, ref)
    upper = os.path.join(store.containers, cid, "upper")
    if not os.path.isdir(upper):
        if meta.get("status") == "running" and _alive(meta):
            raise ImageError(f"container {cid} is still running (its writable layer is kept when it exits)")
        raise ImageError(f"container {cid} has no writable layer (read-only root)")
    lowers = _lowers_of(store, meta)
    out: list[tuple[str, str]] = []

    def lower_st(parts):
        try:
            return _lookup(lowers, parts)
        except _Symlink:
            return None

    # by descriptors (treewalk.walk_tree): a running sandbox may swap a directory of its upper
    # layer for a symlink to a host directory while it is listed; that is never followed
    from .treewalk import walk_tree, TreeChanged
    children_new: dict[tuple, bool] = {(): False}       # directory -> are its entries all new
    try:
        for e in walk_tree(upper):
            p = tuple(e.arc.split("/"))
            parent_new = children_new.get(p[:-1], True)
            st = e.st
            path = "/" + e.arc
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                if not parent_new and lower_st(p) is not None:
                    out.append(("D", path))
                continue
            new = parent_new or lower_st(p) is None
            out.append(("A" if new else "C", path))
            if stat.S_ISDIR(st.st_mode):
                if not new and _fd_is_opaque(e.fd):
                    present = set(os.listdir(e.fd))
                    for gone in _lower_children(lowers, p):
                        if gone not in present:
                            out.append(("D", f"{path}/{gone}"))
                    children_new[p] = True
                else:
                    children_new[p] = new
    except TreeChanged as err:
        raise ImageError(f"diff {cid}: {err} (retry when the sandbox has stopped)") from None
    except OSError as err:
        raise ImageError(f"diff {cid}: cannot read the writable layer ({err.strerror})") from None
    out.sort(key=lambda x: x[1])
    return out


def _lower_children(lowers, parts) -> set[str]:
    names: set[str] = set()
    gone: set[str] = set()
    for layer in lowers:
        p = os.path.join(layer, *parts)
        if not os.path.isdir(p) or os.path.islink(p):
            continue
        for n in os.listdir(p):
            st = os.lstat(os.path.join(p, n))
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                gone.add(n)
            elif n not in gone:
                names.add(n)
        if _is_opaque(p):
            break
    return names


def commit(store: Store, ref: str, name: str, *, message: str = "", author: str = "", limits=None
           ) -> tuple[str, dict]:
    """Turn a kept writable layer into a new layer on top of its image (like `docker commit`)."""
    name = normalize_name(name)
    with store.locked():
        cid, meta = _container(store, ref)
        upper = os.path.join(store.containers, cid, "upper")
        if not os.path.isdir(upper):
            raise ImageError(f"container {cid} has no writable layer (read-only root)")
        if meta.get("status") == "running" and _alive(meta):
            raise ImageError(f"container {cid} is still running")
        base = None
        for rec in store.images().values():
            if rec["id"] == meta.get("image_id"):
                base = rec
                break
        if base is None:                       # the image was removed: rebuild from the layers
            base = {"layers": meta["layers"], "history": [], "config": {}}
        fd, tarpath = tempfile.mkstemp(prefix="commit.", suffix=".tar", dir=store.tmp)
        os.close(fd)
        try:
            _upper_to_tar(upper, tarpath, meta, limits)
            info = add_layer_from_tar(tarpath, store, f"commit {cid}", limits)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tarpath)
        import hashlib
        layers = list(base["layers"]) + [info["digest"]]
        hist = list(base.get("history") or [])
        hist.append({"created": _now(), "created_by": f"pysandbox commit {cid}", "comment": message,
                     "author": author, "empty_layer": False})
        cfg = {"rootfs": {"type": "layers", "diff_ids": layers}, "history": hist,
               "config": base.get("config") or {}, "created": _now()}
        image_id = "sha256:" + hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()
        record = {"id": image_id, "layers": layers, "history": hist, "created": cfg["created"],
                  "source": f"commit {cid}", "format": "commit", "config": base.get("config") or {}}
        add_image_record(store, name, record)
    return name, dict(record, name=name)


def _upper_to_tar(upper: str, tarpath: str, meta: dict, limits=None) -> None:
    """Overlay upper dir -> OCI layer tar (whiteouts -> .wh.NAME, opaque dirs -> .wh..wh..opq)."""
    umap = [tuple(x) for x in meta.get("uid_map") or ()]
    gmap = [tuple(x) for x in meta.get("gid_map") or ()]
    me = os.getuid()
    rootless = meta.get("rootless")
    with tarfile.open(tarpath, "w", format=tarfile.PAX_FORMAT) as tf:
        def owner(ti):
            if rootless:          # the caller is the sandbox's root
                ti.uid = 0 if ti.uid == me else ti.uid
                ti.gid = 0 if ti.gid == os.getgid() else ti.gid
            else:
                ti.uid, ti.gid = _unshift(umap, ti.uid), _unshift(gmap, ti.gid)
            ti.uname = ti.gname = ""

        def entry(e, ti):
            st = e.st
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:     # overlay whiteout -> .wh.NAME
                d, _, base = e.arc.rpartition("/")
                wh = tarfile.TarInfo(f"{d}/.wh.{base}" if d else f".wh.{base}")
                wh.mtime = int(st.st_mtime)
                return [wh]
            owner(ti)
            if ti.isdir() and _fd_is_opaque(e.fd):
                op = tarfile.TarInfo(f"{e.arc}/.wh..wh..opq")
                op.mtime = int(st.st_mtime)
                return [ti, op]
            return [ti]

        # by descriptors: the upper directory was written by the sandbox (tree_to_tar)
        tree_to_tar(upper, tf, f"commit {meta.get('id', '')}".strip(), on_entry=entry, limits=limits)
