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


def _copy_shifted(src: str, dst: str, umap, gmap, owner=None) -> None:
    """owner(rel, st) -> (uid, gid): the copy's owners (rel: the path below src, "" for src); by
    default the source's owners shifted through the maps."""
    inodes: dict[tuple[int, int], str] = {}
    dirs = []
    if owner is None:
        def owner(_rel, st):
            return shift_id(umap, st.st_uid), shift_id(gmap, st.st_gid)
    cut = len(src.rstrip("/")) + 1

    def one(s: str, d: str, st: os.stat_result) -> None:
        m = st.st_mode
        if stat.S_ISDIR(m):
            os.mkdir(d, 0o700)
            dirs.append((d, st, s[cut:]))
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
        os.chown(d, *owner(s[cut:], st), follow_symlinks=False)
        if not stat.S_ISLNK(m):
            os.chmod(d, stat.S_IMODE(m))
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    one(src, dst, os.lstat(src))
    for d, st, rel in reversed(dirs):
        os.chown(d, *owner(rel, st))
        os.chmod(d, stat.S_IMODE(st.st_mode))
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))




# --------------------------------------------------------------------------- rootless, subordinate ids
#
# A rootless caller's layers hold its own files (it cannot chown; the archive's owners are kept in
# the layer's owners.json, store/extract.py). A sandbox whose ids are the caller's subordinate ids
# (root inside is not the caller) cannot use them: its root could not write its own root, and
# idmapped mounts of the host's file system need privileges the caller lacks. As podman's rootless
# storage, the work is done in a user namespace with the sandbox's maps plus the caller
# (idmap.run_in_userns, newuidmap/newgidmap): uid-shifted copies of the layers, files owned by the
# subordinate ids, in <store>/userns/ (owned by the sandbox's root, 0700: the sandbox's root
# reaches it, no other host user), sealed as a layer is; and each sandbox's top layer (mount
# points, container-interface files) in <store>/userns/c-<id>/. Copies of layers no longer in the
# store and top layers of sandboxes gone are removed by the next preparation (under the store lock).

AREA = "userns"


def subordinate(umap, gmap) -> bool:
    """Rootless maps of more than the caller's own uid and gid (as idmap.uses_helpers)."""
    def own(m, i):
        m = id_maps(m)
        return len(m) == 1 and m[0][2] == 1 and m[0][1] == i
    return not (own(umap, os.geteuid()) and own(gmap, os.getegid()))


def area(store: Store) -> str:
    return os.path.join(store.root, AREA)


def map_key(umap, gmap) -> str:
    key = "_".join("-".join(map(str, e)) for e in umap) + "__" + "_".join("-".join(map(str, e)) for e in gmap)
    if len(key) > 120:
        import hashlib
        key = hashlib.sha256(key.encode()).hexdigest()[:16]
    return key


def check_reachable(store: Store) -> None:
    """The sandbox's root (a subordinate id, not the caller) opens the store by its path: every
    directory above it must be searchable by others. Raises ImageError naming the first that is not."""
    from .images import ImageError
    p = os.path.dirname(os.path.abspath(store.root))
    while True:
        with contextlib.suppress(OSError):
            if not os.stat(p).st_mode & stat.S_IXOTH:
                raise ImageError(f"{p} is not searchable by others (mode {oct(os.stat(p).st_mode & 0o7777)}): "
                                 f"the sandbox's root with subordinate ids is not the caller and must reach the state "
                                 f"directory {store.root}; chmod o+x {p}, or set PYSANDBOX_STATE_DIR elsewhere")
        if p == "/":
            return
        p = os.path.dirname(p)


def _in_map(maps, i: int) -> bool:
    return any(inside <= i < inside + count for inside, _, count in maps)


def _ns_id(maps, i: int) -> int:
    """The store namespace's id for a file the archive gives id `i`: the same id (the namespace maps
    the sandbox's ids as the sandbox does); one the sandbox does not map becomes nobody (65534)
    where mapped, else root."""
    if _in_map(maps, i):
        return i
    return 65534 if _in_map(maps, 65534) else 0


def prepare_rootless(store: Store, layers, umap, gmap, cid: str, top_layer) -> tuple[list[str], str]:
    """The caller's layers as uid-shifted copies for a sandbox with subordinate ids (cached per
    layer and maps, verified against their seal before each use), and the sandbox's own directory
    in the area: returns (lower directories top first, the sandbox's directory). top_layer(lowers,
    cdir) runs in the namespace too, after the copies (it makes the top layer). Called under the
    store's lock. Raises ImageError."""
    from .. import idmap
    from .extract import read_owners
    from .images import ImageError
    umap, gmap = id_maps(umap), id_maps(gmap)
    check_reachable(store)
    a = area(store)
    key = map_key(umap, gmap)
    lowers = [os.path.join(a, f"l-{d.split(':', 1)[1]}-{key}") for d in reversed(layers)]
    cdir = os.path.join(a, f"c-{cid}")
    try:
        os.mkdir(a, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise ImageError(f"{a}: {e.strerror}") from None

    def work() -> str:
        os.chown(a, 0, 0)
        os.chmod(a, 0o700)
        _prune(store, a)
        for d, low in zip(reversed(layers), lowers):
            owners = read_owners(store.layer_dir(d))
            _ns_copy(store.layer_diff(d), low, a, owners, umap, gmap)
        os.mkdir(cdir, 0o700)
        top_layer(lowers, cdir)
        return "ok"
    try:
        idmap.run_in_userns(*idmap.store_maps(umap, gmap), work)
    except idmap.IdMapError as e:
        raise ImageError(f"uid-shifted layers (subordinate ids, rootless): {e}") from None
    return lowers, cdir


def _ns_copy(diff: str, final: str, a: str, owners: dict, umap, gmap) -> None:
    """In the store's namespace: the copy `final` of the layer `diff`, with the archive's owners,
    unless a sealed copy is there already."""
    sealf = final + ".seal"
    if os.path.isdir(final):
        with contextlib.suppress(OSError):
            with open(sealf) as f:
                if f.read().strip() == tree_seal(final):
                    return
        rmtree(final)

    def owner(rel, _st):
        u, g = owners.get(rel, (0, 0))
        return _ns_id(umap, int(u)), _ns_id(gmap, int(g))
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=a)
    try:
        _copy_shifted(diff, os.path.join(tmp, "d"), (), (), owner=owner)
        os.rename(os.path.join(tmp, "d"), final)
        with open(os.path.join(tmp, "seal"), "w") as f:
            f.write(tree_seal(final))
        os.rename(os.path.join(tmp, "seal"), sealf)
    finally:
        rmtree(tmp)


def _prune(store: Store, a: str) -> None:
    """In the store's namespace: copies of layers gone from the store, top layers of sandboxes
    whose directory is gone, and leftovers of interrupted copies."""
    for name in os.listdir(a):
        p = os.path.join(a, name)
        if name.startswith(".tmp-"):
            gone = True
        elif name.startswith("l-"):
            gone = not os.path.isdir(os.path.join(store.layers, name[2:].split("-", 1)[0]))
        elif name.startswith("c-"):
            gone = not os.path.isdir(os.path.join(store.containers, name[2:]))
        else:
            continue
        if gone:
            rmtree(p)


def remove_in_userns(umap, gmap, path: str) -> None:
    """Remove a tree of subordinate-owned files (a sandbox's directory in the area, a volume's
    data) in the store's namespace; best effort, as rmtree."""
    from .. import idmap
    with contextlib.suppress(idmap.IdMapError):
        idmap.run_in_userns(*idmap.store_maps(id_maps(umap), id_maps(gmap)), lambda: rmtree(path) or "ok")


def grant_search(path: str, uid: int) -> None:
    """A POSIX ACL entry on the caller's directory `path`: search (x) for host uid `uid` only (the
    root of a sandbox with subordinate ids, which must reach a volume through the caller's 0700
    store directories; no other user gains anything). The owner's, group's and others' bits
    stay; the ACL mask is the group's bits plus x. Raises OSError (EOPNOTSUPP: no ACLs here)."""
    import struct
    mode = os.stat(path).st_mode
    group = (mode >> 3) & 7
    entries = ((0x01, (mode >> 6) & 7, 0xFFFFFFFF), (0x02, 1, uid), (0x04, group, 0xFFFFFFFF),
               (0x10, group | 1, 0xFFFFFFFF), (0x20, mode & 7, 0xFFFFFFFF))
    blob = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    with contextlib.suppress(OSError):
        if os.getxattr(path, "system.posix_acl_access") == blob:
            return
    os.setxattr(path, "system.posix_acl_access", blob)


def chown_in_userns(umap, gmap, path: str) -> None:
    """`path` (the caller's, empty) given to the sandbox's root, in the store's namespace."""
    from .. import idmap
    idmap.run_in_userns(*idmap.store_maps(id_maps(umap), id_maps(gmap)), lambda: os.chown(path, 0, 0) or "ok")


def caller_maps() -> tuple[tuple, tuple]:
    """Maps naming every id the caller owns (its own at 0, then each of its subordinate ranges):
    the namespace in which anything of its store can be removed."""
    from policies import subids

    def m(what, own):
        out, nxt = [(0, own, 1)], 1
        for first, count in subids.ranges(what, os.geteuid())[:300]:
            out.append((nxt, first, count))
            nxt += count
        return tuple(out)
    return m("uid", os.geteuid()), m("gid", os.getegid())


def remove_as_owner(path: str) -> None:
    """Remove a tree of the caller's store that holds subordinate-owned files (rmtree left them)."""
    from .. import idmap
    if not os.path.lexists(path):
        return
    with contextlib.suppress(idmap.IdMapError, Exception):
        idmap.run_in_userns(*caller_maps(), lambda: rmtree(path) or "ok")
