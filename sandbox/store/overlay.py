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
the image lacks, so a read-only root still gets its mount points, and the container-interface
files: store/mountpoints.py) and ``container.json``. A read-only `root:` directory gets the same
kind of top layer (mount_dir_root). Kept containers (ls, rm, diff, commit): store/containers.py;
id-shifted layers: store/idshift.py.

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
from dataclasses import field

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Optional

from policies.plan import dataclass            # shared methods, none compiled by exec at import

from .. import fsutil, procid
from .idshift import (close_all, detached, id_maps, idmapped_layers, needs_shift, prepare_rootless, remove_in_userns,
                      shift_id, shifted_layer, subordinate, unshift_id)
from .images import ImageError, Store, now, rmtree
from .mountpoints import add_interface_files, make_mountpoints

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")


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
    # Rootless with subordinate ids: the sandbox's directory in <store>/userns/ (its top layer and
    # the writable layer's mount point, owned by its root; store/idshift.py), removed at the end
    userns_dir: str = ""


# --------------------------------------------------------------------------- prepare

def prepare_root(fs, sandbox_id: str, *, rootless: bool, uid_map=(), gid_map=(), store: Optional[Store] = None,
                 name: Optional[str] = None) -> RootSpec:
    """Resolve fs.image to layer dirs and create the per-sandbox dirs (supervisor, before clone).

    uid_map/gid_map (policies.plan.IdMapEntry or (inside, outside, count) tuples): the sandbox's
    user namespace maps. As root with a shifted range the layers are handed to PID 1 as detached
    idmapped mount trees (fallback: uid-shifted copies), the container dir as a detached tree, and
    the upper dir belongs to the sandbox's root. Rootless, mapping only the caller, they are ignored
    (the store belongs to the caller, who is the sandbox's root); rootless with subordinate ids the
    layers are uid-shifted copies made in a user namespace with the sandbox's maps
    (idshift.prepare_rootless), and the sandbox's top layer and writable layer's mount point are in
    <store>/userns/c-<id>/ (owned by the sandbox's root). The spec's descriptors are inherited through clone:
    call mount_root in a child of this process, and finish_root here afterwards (closes them).
    """
    if not getattr(fs, "image", None):
        raise ImageError("filesystem has no image")
    if not isinstance(sandbox_id, str) or not _ID.match(sandbox_id):
        raise ImageError(f"invalid sandbox id {sandbox_id!r}")
    store = store or Store(rootless=rootless)
    sub = rootless and subordinate(uid_map, gid_map)
    umap, gmap = (id_maps(uid_map), id_maps(gid_map)) if not rootless or sub else ((), ())
    shift = (needs_shift(umap) or needs_shift(gmap)) and not rootless
    read_only = bool(getattr(fs, "read_only", False))
    upper_size = 0
    if not read_only:
        from policies.plan import DEFAULT_STORAGE_SIZE
        upper_size = getattr(fs, "storage_size", None) or DEFAULT_STORAGE_SIZE   # never unlimited
        _check_storage_size(upper_size)
    with store.locked():
        _reclaim_stale(store)
        keep = bool(getattr(fs, "keep", False))
        from .containers import by_name   # (imported here: PID 1 imports this module to mount)
        if name and keep:                  # `diff NAME` / `commit NAME` must find one container
            other = by_name(store, name)
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
        udir = ""
        try:
            lowers = []
            if sub:
                lowers, udir, mnt, upper, work = _prepare_subordinate(store, rec, fs, sandbox_id, umap, gmap,
                                                                      read_only, keep)
            if shift and os.environ.get("PYSANDBOX_IDMAP", "1") != "0":
                idfds = idmapped_layers(store, rec["layers"], umap, gmap)
                if idfds:
                    idmapped = True
                    lowers = [store.layer_diff(d) for d in reversed(rec["layers"])]
            if not idfds and not sub:
                for d in reversed(rec["layers"]):           # top first
                    lowers.append(shifted_layer(store, d, umap, gmap) if shift else store.layer_diff(d))
                if shift:
                    idfds = detached(lowers)
            if not sub:
                mnt = os.path.join(cdir, "mnt")
                os.mkdir(mnt, 0o755)
                upper = work = None
                if not read_only:                # the tmpfs's mount point; upper and work are made in it
                    os.mkdir(os.path.join(cdir, "upperfs"), 0o700)
                    upper, work = os.path.join(cdir, "upperfs", "upper"), os.path.join(cdir, "upperfs", "work")
                image_lowers = [store.layer_diff(d) for d in reversed(rec["layers"])]
                make_mountpoints(mnt, image_lowers, getattr(fs, "mounts", ()), umap, gmap, rootless=rootless,
                                 read_only=read_only)
                add_interface_files(mnt, image_lowers, umap, gmap, rootless=rootless)
            if shift:
                from .. import _sys
                os.chmod(cdir, 0o711)     # the mapped root enters it as the root of a detached tree;
                rw_fd = _sys.open_tree(cdir, recursive=False)   # containers/ (0700) keeps others out
            meta = {"id": sandbox_id, "image": name, "image_id": rec["id"], "layers": rec["layers"],
                    "created": now(), "status": "running", "pid": os.getpid(),
                    "pid_start": procid.start_time(os.getpid()), "read_only": read_only,
                    "rootless": rootless, "uid_map": umap, "gid_map": gmap, "keep": keep, "name": sandbox_name,
                    **({"userns_dir": udir} if udir else {})}
            _write_json(os.path.join(cdir, "container.json"), meta)
        except ImageError:
            close_all(idfds + ((rw_fd,) if rw_fd >= 0 else ()))
            rmtree(cdir)
            raise
        except OSError as e:
            close_all(idfds + ((rw_fd,) if rw_fd >= 0 else ()))
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
                    keep=bool(getattr(fs, "keep", False)), layer_sock=sock, userns_dir=udir)


def _prepare_subordinate(store: Store, rec: dict, fs, sandbox_id: str, umap, gmap, read_only: bool, keep: bool):
    """Rootless with subordinate ids (store/idshift.py): the layers' uid-shifted copies and the
    sandbox's top layer, made in the store's user namespace. -> (lowers, its directory, mnt, upper, work)."""
    mounts = getattr(fs, "mounts", ())

    def top_layer(lowers, udir):       # in the namespace, as the sandbox's root: its own files
        mnt = os.path.join(udir, "mnt")
        os.mkdir(mnt, 0o755)
        if not read_only:
            os.mkdir(os.path.join(udir, "upperfs"), 0o700)
        make_mountpoints(mnt, lowers, mounts, (), (), rootless=False, read_only=read_only)
        add_interface_files(mnt, lowers, rootless=True, chown=False)
    lowers, udir = prepare_rootless(store, rec["layers"], umap, gmap, sandbox_id, top_layer)
    upper = work = None
    if not read_only:
        upper, work = os.path.join(udir, "upperfs", "upper"), os.path.join(udir, "upperfs", "work")
    return lowers, udir, os.path.join(udir, "mnt"), upper, work


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
    from .containers import alive
    with contextlib.suppress(FileNotFoundError):
        for cid in os.listdir(store.containers):
            path = os.path.join(store.containers, cid, "container.json")
            try:
                with open(path) as f:
                    m = json.load(f)
            except (OSError, ValueError):
                continue
            if m.get("status") == "running" and not m.get("keep") and not alive(m):
                rmtree(os.path.join(store.containers, cid))


def _write_json(path: str, data: dict) -> None:
    # on the launch path (container.json): no fsync, as before (a crash loses the container anyway)
    fsutil.atomic_write_json(path, data, mode=0o644, fsync=False, indent=1, sort_keys=True)


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
    from .. import _sys
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


def mount_dir_root(root_fd: int, target: str, fs, *, rootless: bool) -> None:
    """A read-only `root:` directory (the descriptor root_fd, O_PATH) at `target`, in the sandbox's
    PID 1 as the root of its user namespace: an overlay of a top layer over the directory, the
    layer made here on target's tmpfs (hidden below the overlay afterwards) with the container-
    interface files and the mount points the directory lacks. Nothing is ever written into the
    directory (a bind of it would need its mount points made in it), and the root stays
    read-only. (Submounts below the directory are not part of an overlay layer.)"""
    from .. import _sys
    layer = os.path.join(target, ".pysandbox-top")
    lower = f"/proc/self/fd/{root_fd}"
    try:
        os.mkdir(layer, 0o755)
        # as the sandbox's root: the directory's ids as this namespace sees them are not all mapped
        make_mountpoints(layer, [lower + "/"], getattr(fs, "mounts", ()), (), (), rootless=True, read_only=True)
        add_interface_files(layer, [lower + "/"], rootless=rootless, chown=False)
        opts = ("userxattr," if rootless or _in_user_namespace() else "") + \
            f"index=off,metacopy=off,lowerdir={_escape(layer)}:{lower}"
        _sys.mount("pysandbox-root", target, "overlay", _sys.MS_RDONLY | _sys.MS_NOSUID | _sys.MS_NODEV, opts)
    except OSError as e:
        raise ImageError(f"filesystem.root {fs.root}: cannot mount it read-only with the container "
                         f"interface: {e.strerror}") from None


def _mount_detached(spec: RootSpec, target: str, flags: int, userxattr: bool) -> None:
    """Attach the supervisor's detached trees in a stage dir under target (the new root's tmpfs),
    mount the overlay at stage/root, drop the attachments (overlay keeps private clones) and move
    the overlay onto target."""
    from .. import _sys
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
        close_all(spec.lower_fds + (spec.rw_fd,))
    _sys.mount(root, target, None, _sys.MS_MOVE)


def _mount_upperfs(spec: RootSpec, where: str) -> None:
    """PID 1, as root of the sandbox's user namespace, in its mount namespace: the writable layer's
    tmpfs on `where` (relative to the working directory or absolute), upper and work made in it,
    and a descriptor of it sent to the supervisor. Any failure stops the launch (fail closed)."""
    from .. import _sys
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
    close_all(spec.lower_fds + ((spec.rw_fd,) if spec.rw_fd >= 0 else ()))
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
    if spec.userns_dir:
        remove_in_userns(spec.uid_map, spec.gid_map, spec.userns_dir)
    finish_kept(spec, keep=keep)
    return events


def keep_upper(spec: RootSpec, layer_fd: int) -> None:
    """Copy the upper directory of the layer's tmpfs (a descriptor PID 1 sent) to
    containers/<id>/upper, replacing an earlier copy. On failure nothing of the run is kept."""
    dst = os.path.join(spec.container_dir, "upper")
    try:
        if os.path.lexists(dst):
            rmtree(dst)
        if spec.userns_dir:
            _keep_subordinate(spec, layer_fd, dst)
        else:
            _copy_layer(layer_fd, dst, rootless=os.geteuid() != 0)
    except (OSError, ImageError) as e:
        rmtree(spec.container_dir)
        raise ImageError(f"--keep: could not keep the writable layer of {spec.container_id}: "
                         f"{getattr(e, 'strerror', None) or e}") from None


def _keep_subordinate(spec: RootSpec, layer_fd: int, dst: str) -> None:
    """--keep, rootless with subordinate ids: the layer's files belong to subordinate ids, which the
    caller cannot read; copied in the store's user namespace as the caller's own files (as a
    rootless import keeps a layer), their owners inside in containers/<id>/owners.json."""
    from .. import idmap
    from .extract import write_owners
    hum, hgm = idmap.store_maps(spec.uid_map, spec.gid_map)
    cu, cg = unshift_id(hum, os.geteuid()), unshift_id(hgm, os.getegid())    # the caller's ids there

    def work() -> str:
        owners: dict = {}
        _copy_layer(layer_fd, dst, rootless=False, chown_to=(cu, cg), owners=owners)
        write_owners(spec.container_dir, owners)
        os.chown(os.path.join(spec.container_dir, "owners.json"), cu, cg)
        return "ok"
    try:
        idmap.run_in_userns(hum, hgm, work)
    except idmap.IdMapError as e:
        raise ImageError(str(e)) from None


def receive_layer(spec: RootSpec) -> int:
    """The descriptor of the layer's tmpfs PID 1 sent (-1: none); the caller closes it."""
    return _receive_layer(spec)


def _copy_layer(layer_fd: int, dst: str, *, rootless: bool, chown_to=None, owners=None) -> None:
    """Copy the upper directory of the writable layer's tmpfs to `dst` on disk, by descriptors
    (treewalk.walk_tree: nothing is followed), with what overlay and diff/commit need: types,
    whiteouts (0:0 character devices), overlay's xattrs, modes, owners (as root), times, hard
    links. Bounded: the tmpfs holds at most its size and inode count. chown_to: every entry given
    these (uid, gid) instead, its own (not 0:0) recorded in `owners` ("a/b" -> [uid, gid])."""
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
        if chown_to is not None:
            os.chown(path, *chown_to, follow_symlinks=False)
            rel = os.path.relpath(path, dst)
            if (st.st_uid, st.st_gid) != (0, 0):
                owners["" if rel == "." else rel] = [st.st_uid, st.st_gid]
        elif not rootless:
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
            meta.update(status="exited", finished=now(), pid=None)
            _write_json(meta_path, meta)
        with contextlib.suppress(OSError):
            mnt = os.path.join(spec.container_dir, "mnt") if spec.userns_dir else spec.mnt
            rmtree(mnt)
            os.mkdir(mnt, 0o755)
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
    from .. import inroot
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


