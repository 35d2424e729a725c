"""An image of the store out again: layer tars, its OCI config, and `image save`'s archives
(docker-archive, oci-archive, an OCI layout directory) — the registry push uses the same pieces.

A stored layer is an extracted directory (overlay whiteouts, opaque marks); it is packed back into
an OCI layer tar by descriptors (archive.tree_to_tar: nothing a layer holds is followed), char 0:0
whiteouts become `.wh.NAME`, opaque directories `.wh..wh..opq`; a rootless store's layer (the
caller's own files on disk) is read in a user namespace where the caller is root, each entry with
the owner its archive gave it (owners.json, recorded_owner). Digests are computed while the
bytes are written (never by reading them back). The re-packed tar is not the tar the layer was
imported from, so its digest — the saved image's diff_id — may differ from the store's layer digest
(docs/images.md, "Saving and loading").
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
from dataclasses import dataclass

from .archive import tree_to_tar
from .images import ImageError, Store, now, one_line, rmtree
from .mountpoints import fd_is_opaque

FORMATS = ("docker-archive", "oci-archive", "oci-dir")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
# the config keys an image record may carry (the build part's records carry ExposedPorts, Volumes…)
CONFIG_KEYS = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "Labels",
               "StopSignal", "Shell")


@dataclass
class Blob:
    path: str            # the file (in a staging directory)
    digest: str          # sha256 of its bytes
    size: int
    diff_id: str = ""    # a layer: sha256 of its uncompressed tar


class _HashWriter(io.RawIOBase):
    """Writes through to `f`, hashing and counting on the way."""

    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def writable(self):
        return True

    def write(self, b):
        self.h.update(b)
        self.n += len(b)
        return self.f.write(b)

    def digest(self) -> str:
        return "sha256:" + self.h.hexdigest()


def anonymous(ti) -> None:
    """owner(ti) as root packs a stored layer: the files' own owners, no names."""
    ti.uname = ti.gname = ""


def recorded_owner(owners: dict):
    """owner(ti) for a tree a rootless caller keeps as its own files, whose owners inside are
    recorded in `owners` ("a/b" -> [uid, gid]; an entry not recorded is root's): a stored layer
    (its owners.json, store/extract.py) or a kept container's writable layer
    (containers/<id>/owners.json). The owners on disk (the caller) never reach the tar."""
    def owner(ti):
        u, g = owners.get(ti.name.rstrip("/"), (0, 0))
        ti.uid, ti.gid, ti.uname, ti.gname = int(u), int(g), "", ""
    return owner


def oci_entry(owner):
    """tree_to_tar's on_entry for an overlay directory (a stored layer, a writable layer) packed as
    an OCI layer: a char 0:0 whiteout becomes `.wh.NAME`, an opaque directory gains
    `.wh..wh..opq`; `owner(ti)` sets each entry's owner."""
    def entry(e, ti):
        st = e.st
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:          # overlay whiteout -> .wh.NAME
            d, _, base = e.arc.rpartition("/")
            wh = tarfile.TarInfo(f"{d}/.wh.{base}" if d else f".wh.{base}")
            wh.mtime = int(st.st_mtime)
            return [wh]
        owner(ti)
        if ti.isdir() and fd_is_opaque(e.fd):
            op = tarfile.TarInfo(f"{e.arc}/.wh..wh..opq")
            op.mtime = int(st.st_mtime)
            return [ti, op]
        return [ti]
    return entry


def layer_blob(store: Store, digest: str, dest_dir: str, *, compress: bool = False) -> Blob:
    """Pack the stored layer `digest` into an OCI layer tar (gzip when `compress`) in `dest_dir`.
    The layer is checked against its seal first (Store.check_layer). A rootless store's layer
    holds the caller's own files: each entry gets the owner recorded at import (owners.json), and
    it is read in a user namespace where the caller is root (idmap.run_in_userns, its own uid and
    gid only), whose CAP_DAC_OVERRIDE over the caller's files reads a file of mode 0000 or 0600
    and lists a directory of mode 0000 -- as containers._upper_to_tar_subordinate does."""
    store.check_layer(digest)
    diff = store.layer_diff(digest)
    what = f"layer {digest[:19]}"
    if store.rootless:
        from .extract import read_owners
        entry = oci_entry(recorded_owner(read_owners(store.layer_dir(digest))))
    else:
        entry = oci_entry(anonymous)

    fd, path = tempfile.mkstemp(prefix="layer.", suffix=".tar.gz" if compress else ".tar", dir=dest_dir)
    os.close(fd)

    def write() -> str:
        try:
            with open(path, "wb") as out:
                outer = _HashWriter(out)
                gz = gzip.GzipFile(fileobj=outer, mode="wb", mtime=0, compresslevel=6) if compress else None
                inner = _HashWriter(gz) if gz else outer
                with tarfile.open(fileobj=inner, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                    tree_to_tar(diff, tf, what, on_entry=entry)
                if gz:
                    gz.close()
        except OSError as e:
            raise ImageError(f"{what}: cannot write the layer tar ({one_line(e)})") from None
        return json.dumps([outer.digest(), outer.n, inner.digest()])

    try:
        if store.rootless:
            from .. import idmap
            try:
                res = idmap.run_in_userns(((0, os.geteuid(), 1),), ((0, os.getegid(), 1),), write)
            except idmap.IdMapError as e:
                raise ImageError(str(e) if str(e).startswith(what) else f"{what}: {e}") from None
        else:
            res = write()
        d, n, diff_id = json.loads(res)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return Blob(path, d, int(n), diff_id)


def image_config(rec: dict, diff_ids: list[str]) -> dict:
    """The OCI image config of a record, with the diff_ids of the layer tars written for it."""
    from .archive import _arch
    cfg = rec.get("config") or {}
    history = []
    for h in rec.get("history") or []:
        e = {k: h[k] for k in ("created", "created_by", "author", "comment") if h.get(k)}
        if h.get("empty_layer"):
            e["empty_layer"] = True
        history.append(e)
    if sum(1 for h in history if not h.get("empty_layer")) != len(diff_ids):
        history = [{"created": rec.get("created") or now(), "created_by": "pysandbox"} for _ in diff_ids]
    return {"created": rec.get("created") or now(), "architecture": rec.get("architecture") or _arch(),
            "os": "linux", "config": {k: cfg[k] for k in CONFIG_KEYS if cfg.get(k) not in (None, "", [], {})},
            "rootfs": {"type": "layers", "diff_ids": list(diff_ids)}, "history": history}


def _bytes_blob(data: bytes, dest_dir: str) -> Blob:
    fd, path = tempfile.mkstemp(prefix="blob.", dir=dest_dir)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Blob(path, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))


@dataclass
class Packed:
    """An image packed for export: its layers (as blobs), config and OCI manifest."""
    layers: list[Blob]
    config: Blob
    manifest: Blob
    manifest_json: dict


def pack(store: Store, rec: dict, dest_dir: str, *, compress: bool = False) -> Packed:
    """Every layer of `rec` as a tar (or tar+gzip) blob, the config and an OCI manifest, in `dest_dir`.
    Holds the store's shared lock while reading the layers (no `image rm` removes them meanwhile)."""
    layers: list[Blob] = []
    with store.locked(shared=True):
        done: dict[str, Blob] = {}
        for d in rec["layers"]:
            if d not in done:
                done[d] = layer_blob(store, d, dest_dir, compress=compress)
            layers.append(done[d])
    cfg_bytes = json.dumps(image_config(rec, [b.diff_id for b in layers]), sort_keys=True,
                           separators=(",", ":")).encode()
    config = _bytes_blob(cfg_bytes, dest_dir)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
                "layers": [{"mediaType": OCI_LAYER_GZIP if compress else OCI_LAYER, "digest": b.digest,
                            "size": b.size} for b in layers]}
    mbytes = json.dumps(manifest, separators=(",", ":")).encode()
    return Packed(layers, config, _bytes_blob(mbytes, dest_dir), manifest)


# --------------------------------------------------------------------------- image save

def _tar_add_file(tf, name: str, path: str) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = os.path.getsize(path), 0o644, 0
    with open(path, "rb") as f:
        tf.addfile(ti, f)


def _tar_add_bytes(tf, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
    tf.addfile(ti, io.BytesIO(data))


def _tar_add_dir(tf, name: str) -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
    tf.addfile(ti)


def _oci_files(p: Packed, name: str) -> list[tuple[str, object]]:
    """(archive name, file path or bytes) of an OCI image layout, directories implied."""
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [{"mediaType": OCI_MANIFEST, "digest": p.manifest.digest, "size": p.manifest.size,
                            "annotations": {"org.opencontainers.image.ref.name": name}}]}
    out: list[tuple[str, object]] = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                                     ("index.json", json.dumps(index).encode())]
    seen = set()
    for b in [p.config, p.manifest, *p.layers]:
        if b.digest not in seen:
            seen.add(b.digest)
            out.append(("blobs/sha256/" + b.digest[7:], b.path))
    return out


def _docker_files(p: Packed, name: str) -> list[tuple[str, object]]:
    cname = p.config.digest[7:] + ".json"
    lnames = [b.digest[7:] + "/layer.tar" for b in p.layers]
    man = [{"Config": cname, "RepoTags": [name], "Layers": lnames}]
    repo, _, tag = name.rpartition(":")
    out: list[tuple[str, object]] = [(cname, p.config.path)]
    seen = set()
    for ln, b in zip(lnames, p.layers):
        if ln not in seen:
            seen.add(ln)
            out.append((ln, b.path))
    out += [("manifest.json", json.dumps(man).encode()),
            ("repositories", json.dumps({repo: {tag: p.layers[-1].digest[7:]}}).encode())]
    return out


def save(store: Store, ref: str, output: str, fmt: str = "docker-archive") -> tuple[str, dict, str]:
    """`image save`: write image `ref` to `output` as a docker-archive or OCI-layout tar, or an OCI
    layout directory (fmt "oci-dir"). Atomic: written next to `output` under a temporary name and
    renamed over it at the end; on any error nothing is left. Returns (name, record, manifest digest)."""
    if fmt not in FORMATS:
        raise ImageError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    name, rec = store.resolve(ref)
    output = os.path.abspath(output)
    parent = os.path.dirname(output)
    if not os.path.isdir(parent):
        raise ImageError(f"{output}: the directory {parent} does not exist")
    if fmt == "oci-dir" and os.path.lexists(output) and not (os.path.isdir(output) and not os.listdir(output)):
        raise ImageError(f"{output}: exists (an OCI layout directory is written only to a new or empty one)")
    if fmt != "oci-dir" and os.path.isdir(output):
        raise ImageError(f"{output}: is a directory")
    try:
        stage = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.", dir=parent)
    except OSError as e:
        raise ImageError(f"{output}: cannot write ({e.strerror})") from None
    try:
        blobs = os.path.join(stage, "work")
        os.mkdir(blobs, 0o700)
        p = pack(store, rec, blobs)
        files = _docker_files(p, name) if fmt == "docker-archive" else _oci_files(p, name)
        if fmt == "oci-dir":
            lay = os.path.join(stage, "layout")
            os.makedirs(os.path.join(lay, "blobs", "sha256"), 0o755)
            os.chmod(lay, 0o755)
            for arc, src in files:
                dst = os.path.join(lay, arc)
                if isinstance(src, bytes):
                    with open(dst, "wb") as f:
                        f.write(src)
                else:
                    os.rename(src, dst)
                os.chmod(dst, 0o644)
            if os.path.isdir(output):
                os.rmdir(output)
            os.rename(lay, output)
        else:
            tmp = os.path.join(stage, "out.tar")
            with open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:
                dirs = set()
                for arc, src in files:
                    for i in range(1, arc.count("/") + 1):
                        d = "/".join(arc.split("/")[:i])
                        if d not in dirs:
                            dirs.add(d)
                            _tar_add_dir(tf, d)
                    if isinstance(src, bytes):
                        _tar_add_bytes(tf, arc, src)
                    else:
                        _tar_add_file(tf, arc, src)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644 & ~_umask())
            os.rename(tmp, output)
    except OSError as e:
        raise ImageError(f"{output}: cannot write ({one_line(e)})") from None
    finally:
        rmtree(stage)
    return name, rec, p.manifest.digest


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m
