"""Kept containers: list, remove, diff (changes) and commit of a sandbox's writable layer."""
from __future__ import annotations

import contextlib
import json
import os
import stat
from typing import Optional

from .. import procid
from .archive import add_layer_from_tar, tree_to_tar
from .export import oci_entry, recorded_owner
from .idshift import unshift_id
from .images import ImageError, LazyModule, Store, add_image_record, normalize_name, now, rmtree
from .mountpoints import SymlinkInPath, fd_is_opaque, is_opaque, lookup

tarfile, tempfile = LazyModule("tarfile", globals()), LazyModule("tempfile", globals())


# --------------------------------------------------------------------------- kept containers

def by_name(store: Store, name: str) -> Optional[str]:
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
        named = by_name(store, ref)
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


def alive(meta: dict) -> bool:
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
                if m.get("status") == "running" and not alive(m):
                    m["status"] = "dead"
                out.append(m)
    return out


def remove_container(store: Store, ref: str) -> str:
    with store.locked():
        cid, meta = _container(store, ref)
        if meta.get("status") == "running" and alive(meta):
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
        if meta.get("status") == "running" and alive(meta):
            raise ImageError(f"container {cid} is still running (its writable layer is kept when it exits)")
        raise ImageError(f"container {cid} has no writable layer (read-only root)")
    lowers = _lowers_of(store, meta)
    out: list[tuple[str, str]] = []

    def lower_st(parts):
        try:
            return lookup(lowers, parts)
        except SymlinkInPath:
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
                if not new and fd_is_opaque(e.fd):
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
        if is_opaque(p):
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
        if meta.get("status") == "running" and alive(meta):
            raise ImageError(f"container {cid} is still running")
        base = None
        for rec in store.images().values():
            if rec["id"] == meta.get("image_id"):
                base = rec
                break
        if base is None:                       # the image was removed: rebuild from the layers
            base = {"layers": meta["layers"], "history": [], "config": {}}
        info = _pack_upper(store, upper, meta, f"commit {cid}", limits)
        import hashlib
        layers = list(base["layers"]) + [info["digest"]]
        hist = list(base.get("history") or [])
        hist.append({"created": now(), "created_by": f"pysandbox commit {cid}", "comment": message,
                     "author": author, "empty_layer": False})
        cfg = {"rootfs": {"type": "layers", "diff_ids": layers}, "history": hist,
               "config": base.get("config") or {}, "created": now()}
        image_id = "sha256:" + hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()
        record = {"id": image_id, "layers": layers, "history": hist, "created": cfg["created"],
                  "source": f"commit {cid}", "format": "commit", "config": base.get("config") or {}}
        add_image_record(store, name, record)
    return name, dict(record, name=name)


def _pack_upper(store: Store, upper: str, meta: dict, what: str, limits=None) -> dict:
    fd, tarpath = tempfile.mkstemp(prefix="commit.", suffix=".tar", dir=store.tmp)
    os.close(fd)
    try:
        if meta.get("rootless") and meta.get("uid_map"):
            _upper_to_tar_subordinate(upper, tarpath, meta, limits)
        else:
            _upper_to_tar(upper, tarpath, meta, limits)
        return add_layer_from_tar(tarpath, store, what, limits)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tarpath)


def layer_of(store: Store, cid: str, what: str, limits=None) -> dict:
    """The writable layer of the ended, kept container `cid` as a layer of the store (its upper
    directory only is walked: whiteouts -> .wh.NAME, opaque directories -> .wh..wh..opq, owners
    mapped back to the ids inside); the container is removed. Returns the layer's info (digest)."""
    with store.locked():
        cid, meta = _container(store, cid)
        try:
            upper = os.path.join(store.containers, cid, "upper")
            if not os.path.isdir(upper):
                raise ImageError(f"{what}: the sandbox left no writable layer")
            return _pack_upper(store, upper, meta, what, limits)
        finally:
            rmtree(os.path.join(store.containers, cid))


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
                ti.uid, ti.gid = unshift_id(umap, ti.uid), unshift_id(gmap, ti.gid)
            ti.uname = ti.gname = ""

        # by descriptors: the upper directory was written by the sandbox (tree_to_tar)
        tree_to_tar(upper, tf, f"commit {meta.get('id', '')}".strip(), on_entry=oci_entry(owner), limits=limits)


def _upper_to_tar_subordinate(upper: str, tarpath: str, meta: dict, limits=None) -> None:
    """Rootless with subordinate ids: the kept upper directory holds the caller's own files, their
    owners inside in containers/<id>/owners.json (overlay._keep_subordinate). Packed in the store's
    user namespace (there the caller's files are within its root's reach: one of mode 0000 or a
    directory of 0700 is read too), each entry with its recorded owner inside."""
    from .. import idmap
    from .extract import read_owners
    from .idshift import id_maps
    owner = recorded_owner(read_owners(os.path.dirname(upper)))

    def work() -> str:
        with tarfile.open(tarpath, "w", format=tarfile.PAX_FORMAT) as tf:
            tree_to_tar(upper, tf, f"commit {meta.get('id', '')}".strip(), on_entry=oci_entry(owner), limits=limits)
        return "ok"
    try:
        idmap.run_in_userns(*idmap.store_maps(id_maps(meta["uid_map"]), id_maps(meta["gid_map"])), work)
    except idmap.IdMapError as e:
        raise ImageError(f"commit {meta.get('id', '')}: {e}") from None
