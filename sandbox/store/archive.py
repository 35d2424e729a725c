"""Image import (tar, OCI layout, docker-archive, directory) and packing a tree into a tar."""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Optional

from .extract import CountingReader, Progress, decompress_error, extract_layer, open_decompressed
from .images import (DIGEST_RE, ImageError, LazyModule, Store, human_size, normalize_name, now, one_line, rmtree,
                     seal_new)

hashlib, lzma, tarfile, tempfile, zlib = (
    LazyModule(n, globals()) for n in ("hashlib", "lzma", "tarfile", "tempfile", "zlib"))


# --------------------------------------------------------------------------- import

@dataclass
class _LayerSource:
    open: Callable[[], BinaryIO]          # opens the (possibly compressed) layer blob
    size: Optional[int] = None            # blob size, for progress
    blob_digest: Optional[str] = None     # expected digest of the blob as stored (OCI)
    diff_id: Optional[str] = None         # expected digest of the uncompressed tar


@dataclass
class _ImageSource:
    layers: list[_LayerSource]
    config: dict = field(default_factory=dict)
    config_bytes: Optional[bytes] = None
    names: list[str] = field(default_factory=list)
    created_by_default: str = ""


def _free_budget(path: str) -> int:
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    limit = os.environ.get("PYSANDBOX_MAX_IMPORT_BYTES")
    budget = max(0, free - max(64 << 20, free // 20))   # keep 5% (at least 64 MiB) free
    if limit:
        budget = min(budget, int(limit))
    return budget


def _json_loads(data: bytes, what: str, limits=None):
    from . import tarsafe
    try:
        return tarsafe.json_loads(data, what, limits or tarsafe.DEFAULT_LIMITS)
    except tarsafe.TarLimitError as e:
        raise ImageError(str(e)) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ImageError(f"{what} is not valid JSON ({one_line(e)})") from None


def _safe_rel(name: str, what: str) -> str:
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in name.split("/") or "\x00" in name:
        raise ImageError(f"{what}: unsafe path {name!r} in the image metadata")
    return name


class _Slice(io.RawIOBase):
    """Read-only view of bytes [start, start+size) of a file (a member of an uncompressed tar)."""

    def __init__(self, fd: int, start: int, size: int):
        self.fd, self.pos, self.end = fd, start, start + size

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.end - self.pos)
        if n <= 0:
            return 0
        data = os.pread(self.fd, n, self.pos)
        if not data:
            raise ImageError("archive truncated while being read")
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)


_BUNDLE_MAX_ENTRIES = 65536          # an image archive (docker save, OCI layout) has a few per layer
_BUNDLE_MAX_NAME_BYTES = 16 << 20


class _TarBundle:
    """Random access to files of an outer, uncompressed tar (docker save / OCI layout as a tarball).

    One bounded pass (tarsafe limits) records, for regular files and symlinks, (type, data offset,
    size, link); nothing of tarfile's is kept. Members are then read with pread."""

    def __init__(self, path: str, what: str, limits=None, scan: Optional[dict] = None):
        from . import tarsafe
        self.path, self.what = path, what
        self.limits = limits or tarsafe.DEFAULT_LIMITS
        self.members: Optional[dict] = {}
        self.top: set = set()
        names = 0
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise ImageError(f"{what}: cannot read: {e.strerror}") from None
        try:
            with os.fdopen(os.dup(self.fd), "rb") as f, tarsafe.open_tar(f, "r:", self.limits) as tf:
                for m in tarsafe.members(tf):
                    n = m.name
                    while n.startswith("./"):
                        n = n[2:]
                    n = n.strip("/")
                    if n in ("manifest.json", "oci-layout", "index.json"):
                        self.top.add(n)
                    if self.members is None or not (m.isreg() or m.issym()):
                        continue
                    names += len(n)
                    if len(self.members) >= _BUNDLE_MAX_ENTRIES or names > _BUNDLE_MAX_NAME_BYTES:
                        self.members = None     # not an image archive (a large rootfs): index dropped
                        continue
                    self.members[n] = (m.issym(), m.offset_data, m.size, m.linkname)
        except tarsafe.TarLimitError as e:
            self.close()
            raise ImageError(f"{what}: {e}") from None
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            self.close()
            raise ImageError(f"{what}: not a readable tar archive ({one_line(e)})") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def kind(self) -> Optional[str]:
        if "manifest.json" in self.top:
            kind = "docker"
        elif "oci-layout" in self.top and "index.json" in self.top:
            kind = "oci"
        else:
            return None
        if self.members is None:
            raise ImageError(f"{self.what}: more than {_BUNDLE_MAX_ENTRIES} files in an image archive")
        return kind

    def exists(self, name: str) -> bool:
        return self._get(name) is not None

    def _get(self, name: str):
        m = self.members.get(name)
        seen = 0
        while m is not None and m[0] and seen < 10:     # docker save uses symlinked layer dirs
            target = os.path.normpath(os.path.join(os.path.dirname(name), m[3]))
            name, m, seen = target, self.members.get(target), seen + 1
        return m if m is not None and not m[0] else None

    def read(self, name: str, what: str) -> bytes:
        from . import tarsafe
        m = self._get(_safe_rel(name, what))
        if m is not None and m[2] > self.limits.json:
            raise ImageError(f"{what}: {name} is {human_size(m[2])}, more than {human_size(self.limits.json)} "
                             f"(limit json; raise it with --limit json=N)")
        with self.open(name, what) as f:
            try:
                return tarsafe.read_bounded(f, self.limits.json, f"{what}: {name}")
            except tarsafe.TarLimitError as e:
                raise ImageError(str(e)) from None

    def size(self, name: str) -> Optional[int]:
        m = self._get(name)
        return m[2] if m else None

    def open(self, name: str, what: str) -> BinaryIO:
        m = self._get(_safe_rel(name, what))
        if m is None:
            raise ImageError(f"{what}: {name} is missing from {self.path}")
        return io.BufferedReader(_Slice(self.fd, m[1], m[2]), 1 << 16)


class _DirBundle:
    def __init__(self, path: str, limits=None):
        from . import tarsafe
        self.path = path
        self.limits = limits or tarsafe.DEFAULT_LIMITS

    def close(self) -> None:
        pass

    def _p(self, name: str, what: str) -> str:
        p = os.path.join(self.path, _safe_rel(name, what))
        real = os.path.realpath(p)
        if not (real + "/").startswith(os.path.realpath(self.path) + "/"):
            raise ImageError(f"{what}: {name} points outside {self.path}")
        return real

    def exists(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self.path, name))

    def read(self, name: str, what: str) -> bytes:
        from . import tarsafe
        with self.open(name, what) as f:
            try:
                return tarsafe.read_bounded(f, self.limits.json, f"{what}: {name}")
            except tarsafe.TarLimitError as e:
                raise ImageError(str(e)) from None

    def size(self, name: str) -> Optional[int]:
        with contextlib.suppress(OSError):
            return os.path.getsize(os.path.join(self.path, name))
        return None

    def open(self, name: str, what: str) -> BinaryIO:
        try:
            fd = os.open(self._p(name, what), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise ImageError(f"{what}: {name} is not a regular file")
            return os.fdopen(fd, "rb")
        except FileNotFoundError:
            raise ImageError(f"{what}: {name} is missing from {self.path}") from None
        except OSError as e:
            raise ImageError(f"{what}: cannot read {name}: {e.strerror}") from None


def _blob_name(digest: str, what: str) -> str:
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise ImageError(f"{what}: unsupported or invalid digest {digest!r} (sha256 only)")
    return "blobs/sha256/" + digest.split(":", 1)[1]


def _read_blob(bundle, digest: str, what: str) -> bytes:
    data = bundle.read(_blob_name(digest, what), what)
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise ImageError(f"{what}: blob {digest[:19]} does not match its digest (corrupt layout)")
    return data


_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
_LAYER_OK = ("tar", "tar+gzip", "tar.gzip", "diff.tar", "diff.tar.gzip", "tar+bzip2", "tar+xz")


def _arch() -> str:
    m = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def _oci_source(bundle, ref: Optional[str], what: str) -> _ImageSource:
    layout = _json_loads(bundle.read("oci-layout", what), f"{what}: oci-layout", bundle.limits)
    if not isinstance(layout, dict) or not str(layout.get("imageLayoutVersion", "")).startswith("1."):
        raise ImageError(f"{what}: unsupported OCI layout version {layout!r}")
    index = _json_loads(bundle.read("index.json", what), f"{what}: index.json", bundle.limits)
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not manifests:
        raise ImageError(f"{what}: index.json lists no manifests")
    names: list[str] = []

    def pick(mans: list, depth: int = 0) -> dict:
        if depth > 4:
            raise ImageError(f"{what}: image index nesting too deep")
        cands = mans
        if ref:
            cands = [m for m in mans if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") in
                     (ref, ref.rsplit(":", 1)[-1])] or (mans if depth else [])
            if not cands:
                raise ImageError(f"{what}: no manifest with ref.name {ref!r}")
        plat = [m for m in cands if (m.get("platform") or {}).get("architecture") == _arch()]
        m = (plat or cands)[0]
        rn = (m.get("annotations") or {}).get("org.opencontainers.image.ref.name")
        if rn:
            names.append(rn)
        if m.get("mediaType") in _INDEX_TYPES:
            sub = _json_loads(_read_blob(bundle, m.get("digest"), what), f"{what}: image index", bundle.limits)
            return pick(sub.get("manifests") or [], depth + 1)
        return m

    mdesc = pick(manifests)
    manifest = _json_loads(_read_blob(bundle, mdesc.get("digest"), what), f"{what}: manifest", bundle.limits)
    if manifest.get("mediaType") in _INDEX_TYPES or "manifests" in manifest:
        manifest = _json_loads(_read_blob(bundle, pick(manifest["manifests"], 1).get("digest"), what),
                               f"{what}: manifest", bundle.limits)
    cdesc = manifest.get("config") or {}
    cbytes = _read_blob(bundle, cdesc.get("digest"), what)
    config = _json_loads(cbytes, f"{what}: image config", bundle.limits)
    diff_ids = ((config.get("rootfs") or {}).get("diff_ids")) or []
    ldescs = manifest.get("layers") or []
    if len(diff_ids) != len(ldescs):
        raise ImageError(f"{what}: manifest has {len(ldescs)} layers but the config {len(diff_ids)} diff_ids")
    layers = []
    for i, (ld, did) in enumerate(zip(ldescs, diff_ids)):
        mt = str(ld.get("mediaType", ""))
        if "zstd" in mt:
            raise ImageError(f"{what}: layer {i + 1} is zstd-compressed (not supported; recompress with gzip)")
        if "nondistributable" in mt or "foreign" in mt or not any(mt.endswith(s) for s in _LAYER_OK):
            raise ImageError(f"{what}: layer {i + 1} has unsupported media type {mt!r}")
        name = _blob_name(ld.get("digest"), what)
        _blob_name(did, what)
        layers.append(_LayerSource(open=lambda n=name: bundle.open(n, what), size=bundle.size(name),
                                   blob_digest=ld["digest"], diff_id=did))
    return _ImageSource(layers=layers, config=config, config_bytes=cbytes, names=names)


def _docker_source(bundle, what: str) -> _ImageSource:
    man = _json_loads(bundle.read("manifest.json", what), f"{what}: manifest.json", bundle.limits)
    if not isinstance(man, list) or not man or not isinstance(man[0], dict):
        raise ImageError(f"{what}: manifest.json is not a docker save manifest")
    m = man[0]
    cname = m.get("Config")
    cbytes = bundle.read(_safe_rel(cname, what), what)
    config = _json_loads(cbytes, f"{what}: image config", bundle.limits)
    diff_ids = ((config.get("rootfs") or {}).get("diff_ids")) or []
    lnames = m.get("Layers") or []
    if len(diff_ids) != len(lnames):
        raise ImageError(f"{what}: manifest.json has {len(lnames)} layers but the config {len(diff_ids)} diff_ids")
    layers = []
    for ln, did in zip(lnames, diff_ids):
        _safe_rel(ln, what)
        _blob_name(did, what)
        layers.append(_LayerSource(open=lambda n=ln: bundle.open(n, what), size=bundle.size(ln), diff_id=did))
    return _ImageSource(layers=layers, config=config, config_bytes=cbytes, names=list(m.get("RepoTags") or []))


def tree_to_tar(src: str, tf, what: str, on_entry=None, limits=None) -> None:
    """Add the tree below `src` to the open TarFile `tf` (PAX), walking it by descriptors
    (treewalk.walk_tree): the tree may be written by a hostile program while it is read (a rootfs
    directory, a sandbox's writable layer), and no symlink it plants -- a directory swapped for a
    link to a host directory -- is ever followed; headers describe the object actually opened.
    Hard links within the tree are kept. on_entry(entry, ti) -> list of TarInfo to add instead
    of ti (ti itself, with its data, when returned unchanged)."""
    from . import tarsafe, treewalk
    limits = limits or tarsafe.DEFAULT_LIMITS
    inodes: dict = {}
    try:
        for e in treewalk.walk_tree(src, max_entries=limits.members, max_depth=limits.depth):
            st = e.st
            ti = tarfile.TarInfo(e.arc)
            ti.mode, ti.uid, ti.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
            ti.mtime, ti.uname, ti.gname = int(st.st_mtime), "", ""
            mode = st.st_mode
            data = False
            if stat.S_ISREG(mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in inodes:
                    ti.type, ti.linkname = tarfile.LNKTYPE, inodes[key]
                else:
                    if st.st_nlink > 1:
                        inodes[key] = e.arc
                    ti.type, ti.size, data = tarfile.REGTYPE, st.st_size, True
            elif stat.S_ISDIR(mode):
                ti.type = tarfile.DIRTYPE
            elif stat.S_ISLNK(mode):
                ti.type, ti.linkname = tarfile.SYMTYPE, e.link
            elif stat.S_ISFIFO(mode):
                ti.type = tarfile.FIFOTYPE
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            else:
                continue                                  # sockets
            out = on_entry(e, ti) if on_entry else [ti]
            for t in out:
                if t is ti and data:
                    f = io.FileIO(e.fd, "rb", closefd=False)
                    try:
                        tf.addfile(ti, f)
                    except OSError as err:
                        if "unexpected end of data" in str(err):
                            raise ImageError(f"{what}: {e.arc} changed while being read") from None
                        raise
                else:
                    tf.addfile(t)
    except treewalk.TreeChanged as err:
        if isinstance(err, treewalk.TreeTooLarge):
            raise ImageError(f"{what}: {err}") from None
        raise ImageError(f"{what}: {err} (retry when nothing writes to it)") from None
    except OSError as err:
        raise ImageError(f"{what}: cannot read the directory ({one_line(err)})") from None


def _dir_to_tar(src: str, tmpdir: str, limits=None) -> str:
    """Pack a rootfs directory into a tar (symlinks stored as symlinks, never followed)."""
    fd, path = tempfile.mkstemp(prefix="rootfs.", suffix=".tar", dir=tmpdir)
    try:
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
            tree_to_tar(src, tf, src, limits=limits)
    except OSError as e:
        raise ImageError(f"{src}: cannot pack the directory ({one_line(e)})") from None
    return path


def _decompress_to(path: str, stage: str, what: str, limits) -> str:
    """A compressed archive, decompressed once into the staging directory (bounded: stream bytes,
    ratio, free space) so that it can be indexed and read at random."""
    from . import tarsafe
    out = os.path.join(stage, "archive.tar")
    room = _free_budget(stage)
    try:
        with open(path, "rb") as f, open(out, "wb") as o:
            dec, craw = open_decompressed(io.BufferedReader(f, 1 << 16), what, count=True)
            lim = tarsafe.LimitedReader(dec, limits.stream_bytes(), ratio=limits.ratio,
                                        compressed=(lambda: craw.n) if craw else None)
            while True:
                chunk = lim.read(1 << 20)
                if not chunk:
                    break
                if lim.n > room:
                    raise ImageError(f"{what}: decompresses to more than the {human_size(room)} free in the "
                                     f"image store")
                o.write(chunk)
    except ImageError:
        raise
    except tarsafe.TarLimitError as e:
        raise ImageError(f"{what}: {e}") from None
    except (EOFError, zlib.error, lzma.LZMAError, OSError, ValueError) as e:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise ImageError(f"{what}: no space left in the image store") from None
        raise ImageError(decompress_error(what, one_line(e))) from None
    return out


def _default_name(path: str) -> str:
    base = os.path.basename(os.path.normpath(path)).lower()
    for suf in (".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar", ".oci"):
        if base.endswith(suf):
            base = base[: -len(suf)]
    base = re.sub(r"[^a-z0-9._-]+", "-", base).strip("._-") or "imported"
    return normalize_name(base)


def _history_for(config: dict, nlayers: int, default_by: str) -> list[dict]:
    hist = config.get("history")
    if isinstance(hist, list) and sum(1 for h in hist if isinstance(h, dict) and not h.get("empty_layer")) == nlayers:
        out = []
        for h in hist:
            out.append({"created": str(h.get("created", "")), "created_by": str(h.get("created_by", "")),
                        "comment": str(h.get("comment", "")), "empty_layer": bool(h.get("empty_layer", False))})
        return out
    return [{"created": now(), "created_by": default_by, "comment": "", "empty_layer": False}
            for _ in range(nlayers)]


_CONFIG_KEYS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels", "ExposedPorts", "Volumes", "StopSignal")


def import_image(path: str, name: Optional[str] = None, *, store: Optional[Store] = None, ref: Optional[str] = None,
                 devices: str = "reject", progress: Optional[bool] = None, limits=None) -> tuple[str, dict]:
    """Import an OCI layout (dir or tar), a `docker save` tarball (or its unpacked dir), or a plain
    rootfs tarball/directory. Atomic: on any error the store is unchanged. Returns (name, record).
    `limits` (tarsafe.ImportLimits, default tarsafe.DEFAULT_LIMITS) bound what the archive may
    make this process read, hold and write; see docs/images.md."""
    from . import tarsafe
    limits = limits or tarsafe.DEFAULT_LIMITS
    store = store or Store()
    what = path
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file or directory")
    with store.locked():
        store.gc() if _stale_tmp(store) else None
        return import_locked(path, name, store=store, ref=ref, devices=devices, progress=progress, limits=limits)


def import_locked(path: str, name: Optional[str] = None, *, store: Store, ref: Optional[str] = None,
                  devices: str = "reject", progress: Optional[bool] = None, limits=None,
                  source: Optional[str] = None) -> tuple[str, dict]:
    """import_image for a caller that holds store.locked() (a registry pull, which stages the
    image it downloads below store.tmp under the same lock). `source`: the record's source and
    the prefix of its error messages (default: the path)."""
    from . import tarsafe
    limits = limits or tarsafe.DEFAULT_LIMITS
    stage = tempfile.mkdtemp(prefix="import.", dir=store.tmp)
    try:
        return _import_locked(path, name, store, ref, devices, progress, source or path, stage, limits)
    finally:
        rmtree(stage)


def _stale_tmp(store: Store) -> bool:
    with contextlib.suppress(OSError):
        return bool(os.listdir(store.tmp))
    return False


_MAX_LAYERS = 500          # overlayfs stacks at most 500 lower layers


def _import_locked(path, name, store, ref, devices, progress, what, stage, limits) -> tuple[str, dict]:
    kind = "rootfs"
    bundle = None
    tarpath = None
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "oci-layout")):
            kind, bundle = "oci", _DirBundle(path, limits)
        elif os.path.isfile(os.path.join(path, "manifest.json")) and not os.path.isdir(os.path.join(path, "bin")):
            kind, bundle = "docker", _DirBundle(path, limits)
    else:
        # a regular file only, opened without blocking: a FIFO would block the open, a device never end
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ImageError(f"{what}: not a regular file or a directory: not an image")
            head = f.read(512 + 262)
        compressed = head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00"
        if compressed:
            tarpath = _decompress_to(path, stage, what, limits)
        elif len(head) >= 262 and head[257:262] == b"ustar":
            tarpath = path
        elif head[:4] == b"\x28\xb5\x2f\xfd":
            raise ImageError(f"{path}: zstd-compressed archives are not supported (use gzip, xz or bzip2)")
        elif len(head) == 0:
            raise ImageError(f"{path}: empty file")
        else:
            raise ImageError(f"{path}: not a tar archive, OCI layout or docker save tarball")
        b = _TarBundle(tarpath, what, limits)       # one bounded pass: what kind of archive
        k = b.kind()
        if k:
            kind, bundle = k, b
        else:
            b.close()
    try:
        return _import_source(path, name, store, ref, devices, progress, what, stage, limits, kind, bundle, tarpath)
    finally:
        if bundle is not None:
            bundle.close()


def _import_source(path, name, store, ref, devices, progress, what, stage, limits, kind, bundle, tarpath):
    try:
        if kind == "oci":
            src = _oci_source(bundle, ref, what)
        elif kind == "docker":
            src = _docker_source(bundle, what)
        else:
            src = None
    except (AttributeError, TypeError, KeyError, IndexError) as e:
        raise ImageError(f"{what}: malformed image metadata ({type(e).__name__}: {one_line(e)})") from None
    if src is None:
        tarpath = _dir_to_tar(path, stage, limits) if os.path.isdir(path) else tarpath
        src = _ImageSource(layers=[_LayerSource(open=lambda: open(tarpath, "rb"), size=os.path.getsize(tarpath))],
                           created_by_default=f"pysandbox image import {os.path.basename(os.path.normpath(path))}")
    if len(src.layers) > _MAX_LAYERS:
        raise ImageError(f"{what}: {len(src.layers)} layers, more than the {_MAX_LAYERS} an overlay can stack")
    if not src.layers:
        raise ImageError(f"{what}: the image has no layers")
    total = sum(l.size or 0 for l in src.layers) or None
    bar = Progress(f"importing {os.path.basename(os.path.normpath(path))}", total, enabled=progress)
    budget = _free_budget(store.tmp)
    new_layers: list[tuple[str, str, dict]] = []   # (digest, staged dir, info)
    digests = []
    used = (0, 0)                                   # file bytes, decompressed bytes of this import
    try:
        for i, lsrc in enumerate(src.layers):
            lwhat = f"{what}: layer {i + 1}/{len(src.layers)}"
            if lsrc.diff_id and store.has_layer(lsrc.diff_id):
                store.check_layer(lsrc.diff_id)     # reused as stored: only if it is still what was checked
                digests.append(lsrc.diff_id)
                bar.update(lsrc.size or 0)
                continue
            if lsrc.diff_id and any(d == lsrc.diff_id for d, _, _ in new_layers):
                digests.append(lsrc.diff_id)
                continue
            dest = os.path.join(stage, f"layer{i}")
            os.mkdir(dest, 0o755)
            os.mkdir(os.path.join(dest, "diff"), 0o755)
            with lsrc.open() as rawf:
                counted = CountingReader(rawf, bar)
                info = extract_layer(io.BufferedReader(counted, 1 << 16), os.path.join(dest, "diff"),
                                     rootless=store.rootless, devices=devices, budget=budget, what=lwhat,
                                     limits=limits, used=used)
                counted.drain()
            budget -= info["size"]
            used = (used[0] + info["size"], used[1] + info.pop("stream"))
            if lsrc.blob_digest and "sha256:" + counted.hexdigest() != lsrc.blob_digest:
                raise ImageError(f"{lwhat}: blob does not match its digest {lsrc.blob_digest[:19]} (corrupt image)")
            if lsrc.diff_id and info["digest"] != lsrc.diff_id:
                raise ImageError(f"{lwhat}: content does not match the config's diff_id {lsrc.diff_id[:19]} "
                                 f"(corrupt image)")
            digest = info["digest"]
            digests.append(digest)
            if info.get("skipped_devices"):
                print(f"pysandbox: {lwhat}: skipped {info['skipped_devices']} device node(s)", file=sys.stderr)
            if not store.has_layer(digest) and all(d != digest for d, _, _ in new_layers):
                info = dict(info, created=now())
                info.pop("skipped_devices", None)
                new_layers.append((digest, dest, info))
    finally:
        bar.close()

    # Everything extracted and verified: build the record, then move the layers in and write the index.
    config = src.config or {}
    history = _history_for(config, len(digests), src.created_by_default or f"pysandbox image import {what}")
    if not src.config_bytes:
        config = {"architecture": _arch(), "os": "linux", "created": now(), "config": {},
                  "rootfs": {"type": "layers", "diff_ids": digests}, "history": history}
        src.config_bytes = json.dumps(config, sort_keys=True).encode()
    image_id = "sha256:" + hashlib.sha256(src.config_bytes).hexdigest()
    cfg = config.get("config") or {}
    names = [normalize_name(name)] if name else []
    if not names:
        for n in src.names:
            with contextlib.suppress(ImageError):
                names.append(normalize_name(n))
                break
    if not names:
        names = [_default_name(path)]
    record = {"id": image_id, "layers": digests, "history": history, "created": str(config.get("created") or now()),
              "source": os.path.abspath(path) if what == path else what, "format": kind,
              "config": {k: cfg[k] for k in _CONFIG_KEYS if cfg.get(k) is not None}}
    for digest, dest, info in new_layers:
        info["seal"] = seal_new(os.path.join(dest, "diff"), what)
        with open(os.path.join(dest, "layer.json"), "w") as f:
            json.dump(info, f, sort_keys=True)
    for digest, dest, info in new_layers:
        final = store.layer_dir(digest)
        try:
            os.rename(dest, final)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                continue
            raise ImageError(f"cannot move layer into the store: {e.strerror}") from None
    idx = store.read_index()
    for n in names:
        idx["images"][n] = dict(record, name=n)
    store.write_index(idx)
    return names[0], dict(record, name=names[0])


def add_layer_from_tar(tar_path: str, store: Store, what: str, limits=None) -> dict:
    """Import one layer tar into the store (used by commit). Caller holds the lock."""
    stage = tempfile.mkdtemp(prefix="layer.", dir=store.tmp)
    try:
        dest = os.path.join(stage, "l")
        os.makedirs(os.path.join(dest, "diff"), 0o755)
        with open(tar_path, "rb") as f:
            info = extract_layer(f, os.path.join(dest, "diff"), rootless=store.rootless, limits=limits,
                                 budget=_free_budget(store.tmp), what=what)
        info.pop("skipped_devices", None)
        info.pop("stream", None)
        info["created"] = now()
        info["seal"] = seal_new(os.path.join(dest, "diff"), what)
        if not store.has_layer(info["digest"]):
            with open(os.path.join(dest, "layer.json"), "w") as f:
                json.dump(info, f, sort_keys=True)
            os.rename(dest, store.layer_dir(info["digest"]))
        return info
    finally:
        rmtree(stage)


