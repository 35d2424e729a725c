"""Image layer store: content-addressed layers, safe import, image records.

Layout of the state directory (``/var/lib/pysandbox`` as root, ``$XDG_DATA_HOME/pysandbox``
rootless, ``$PYSANDBOX_STATE_DIR`` when set)::

    layers/<sha256 hex>/diff         the extracted layer (an overlay lower directory)
    layers/<sha256 hex>/layer.json   {digest, size, files, created}
    images.json                      {"images": {"name:tag": record}}   (replaced atomically)
    containers/<id>/                 per-sandbox upper/work dirs (sandbox.overlay)
    volumes/<name>/_data             named volumes (sandbox.volumes)
    tmp/                             staging area for imports (same filesystem: rename is atomic)
    .lock                            flock: one writer at a time

A layer is addressed by the sha256 of its *uncompressed* tar stream (the OCI ``diff_id``).
An image record lists its layers bottom first, a ``history`` (created, created_by, empty_layer)
and the image config subset we use (Env, Cmd, Entrypoint, WorkingDir, User).

Extraction never trusts the archive: member names are normalised and refused when absolute
or containing ``..``; every parent directory is opened relative to the layer root with
O_NOFOLLOW, so a symlink planted by the archive can never redirect a later write; device nodes
are refused (or skipped on request); claimed sizes are checked against the space left before a
byte is written; OCI whiteouts become overlay whiteouts (char 0:0 device, ``overlay.opaque``
xattr). Everything is extracted into ``tmp/`` and renamed into place only when every layer of
the import succeeded, so a corrupt or malicious archive leaves the store as it was. Tar headers,
member counts, names, sizes, decompressed bytes and metadata JSON are bounded before anything is
allocated (``sandbox.tarsafe``, ``--limit``); directories are packed by descriptors
(``tree_to_tar``). Each extracted layer is sealed (``tree_seal``: inode and change time of every
entry) and checked before every launch (``Store.check_layer``).
"""
from __future__ import annotations

import contextlib
import errno
import importlib
import io
import json
import os
import re
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Optional

from audit import paths as _paths

from . import fsutil


class _Lazy:
    """A module imported on first use: `run --image` needs none of the archive/compression code."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        mod = importlib.import_module(self._name)
        globals()[self._name] = mod
        return getattr(mod, attr)


bz2, gzip, hashlib, lzma, shutil, tarfile, tempfile, zlib = (
    _Lazy(n) for n in ("bz2", "gzip", "hashlib", "lzma", "shutil", "tarfile", "tempfile", "zlib"))


class ImageError(Exception):
    """One-line error about images, layers, volumes or containers (CLI: exit 125 at launch, 2 for bad input)."""



_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})\Z")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9._/-]{0,200}[a-z0-9])?(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?\Z")


def normalize_name(name: str) -> str:
    """'busybox' -> 'busybox:latest'. Raises ImageError on an invalid name."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name or "//" in name:
        raise ImageError(f"invalid image name {name!r} (lowercase letters, digits, . _ - /, optional :tag)")
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else name + ":latest"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def human_size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.3g}{unit}"
        n /= 1000
    return str(n)


# --------------------------------------------------------------------------- the store

class Store:
    """The on-disk layer/image store. Writers hold the exclusive lock (``with store.locked():``)."""

    def __init__(self, root: Optional[str] = None, *, rootless: Optional[bool] = None):
        if rootless is None:
            rootless = os.geteuid() != 0
        self.rootless = rootless
        self.root = root or _paths.state_dir(rootless)
        self.layers = os.path.join(self.root, "layers")
        self.containers = os.path.join(self.root, "containers")
        self.volumes = os.path.join(self.root, "volumes")
        self.tmp = os.path.join(self.root, "tmp")
        self.index = os.path.join(self.root, "images.json")
        self._lock_fd: Optional[int] = None
        self._lock_depth = 0

    def ensure(self) -> None:
        try:
            # The store's root is 0711 (audit/paths.py): a private network's hosts file below it must be
            # reachable by a sandbox's mapped root; it is never listable or writable by others.
            if os.path.abspath(self.root) == _paths.state_dir(self.rootless):
                _paths.ensure_state_dir(self.rootless)
            else:
                os.makedirs(self.root, mode=0o711, exist_ok=True)
            for d in (self.layers, self.containers, self.volumes, self.tmp):
                os.makedirs(d, mode=0o700, exist_ok=True)
            # Private: layers hold setuid binaries of images and containers/volumes files written
            # by sandboxes; no local user may reach them. (Sandboxes whose root is an unprivileged
            # host uid get the layers, writable layer and volumes as detached mount trees.)
            for d in (self.layers, self.containers, self.volumes, self.tmp):
                if stat.S_IMODE(os.stat(d).st_mode) != 0o700:
                    os.chmod(d, 0o700)
        except _paths.StateDirError as e:
            raise ImageError(str(e)) from None
        except OSError as e:
            raise ImageError(f"cannot create image store {e.filename or self.root}: {e.strerror}") from None

    @contextlib.contextmanager
    def locked(self, shared: bool = False):
        self.ensure()
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield self
            finally:
                self._lock_depth -= 1
            return
        fd = fsutil.lock(os.path.join(self.root, ".lock"), shared=shared)
        try:
            self._lock_fd, self._lock_depth = fd, 1
            yield self
        finally:
            self._lock_fd, self._lock_depth = None, 0
            os.close(fd)

    # ---- images.json
    def read_index(self) -> dict:
        try:
            with open(self.index, "rb") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {"images": {}}
        except (OSError, ValueError) as e:
            raise ImageError(f"image index {self.index} is unreadable: {e}") from None
        data.setdefault("images", {})
        return data

    def write_index(self, data: dict) -> None:
        fsutil.atomic_write_json(self.index, data, indent=1, sort_keys=True)

    def images(self) -> dict:
        return self.read_index()["images"]

    def resolve(self, ref: str) -> tuple[str, dict]:
        """name[:tag] or an image id prefix (>= 4 hex chars) -> (name, record)."""
        images = self.images()
        if not isinstance(ref, str) or not ref:
            raise ImageError("empty image name")
        with contextlib.suppress(ImageError):
            n = normalize_name(ref)
            if n in images:
                return n, images[n]
        h = ref[7:] if ref.startswith("sha256:") else ref
        if re.fullmatch(r"[0-9a-f]{4,64}", h):
            hits = [(n, r) for n, r in images.items() if r["id"].split(":", 1)[1].startswith(h)]
            if len({r["id"] for _, r in hits}) == 1:
                return sorted(hits)[0]
            if hits:
                raise ImageError(f"image id prefix {ref!r} is ambiguous")
        raise ImageError(f"no such image: {ref} (see `pysandbox image ls`)")

    # ---- layers
    def layer_dir(self, digest: str) -> str:
        m = _DIGEST.match(digest)
        if not m:
            raise ImageError(f"invalid layer digest {digest!r}")
        return os.path.join(self.layers, m.group(1))

    def layer_diff(self, digest: str) -> str:
        return os.path.join(self.layer_dir(digest), "diff")

    def has_layer(self, digest: str) -> bool:
        return os.path.isfile(os.path.join(self.layer_dir(digest), "layer.json"))

    def layer_info(self, digest: str) -> dict:
        try:
            with open(os.path.join(self.layer_dir(digest), "layer.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            raise ImageError(f"layer {digest[:19]} is missing from the store {self.root} "
                             f"(store damaged? re-import the image)") from None

    def check_layer(self, digest: str) -> dict:
        """A layer about to be used: its record names this digest and its tree is exactly as it was
        extracted -- sealed at import (tree_seal: every entry's inode and change time, which any
        write, chmod, chown, rename, link or unlink updates and no unprivileged process can set
        back). Raises ImageError (the launch stops) otherwise. Costs one lstat per entry."""
        info = self.layer_info(digest)
        short = digest[:19]
        if info.get("digest") != digest:
            raise ImageError(f"layer {short} in the store {self.root} records the digest "
                             f"{str(info.get('digest'))[:19]}: the store is damaged (re-import the image)")
        try:
            seal = tree_seal(self.layer_diff(digest))
        except OSError as e:
            raise ImageError(f"layer {short} in the store {self.root} is unreadable ({_one_line(e)}): "
                             f"re-import the image") from None
        if info.get("seal") is None:         # stored by a version without seals: sealed on first use
            info["seal"] = seal
            with contextlib.suppress(OSError):
                fsutil.atomic_write_json(os.path.join(self.layer_dir(digest), "layer.json"), info, mode=0o644,
                                         fsync=False, sort_keys=True)
        elif info["seal"] != seal:
            raise ImageError(f"layer {short} in the store {self.root} was modified after it was imported "
                             f"(its files no longer match its digest): remove the image and import it again")
        return info

    def image_size(self, rec: dict) -> int:
        return sum(self.layer_info(d).get("size", 0) for d in rec["layers"])

    # ---- garbage collection
    def referenced_layers(self) -> set[str]:
        refs = set()
        for rec in self.images().values():
            refs.update(rec["layers"])
        with contextlib.suppress(FileNotFoundError):
            for cid in os.listdir(self.containers):
                with contextlib.suppress(OSError, ValueError):
                    with open(os.path.join(self.containers, cid, "container.json")) as f:
                        refs.update(json.load(f).get("layers", []))
        return refs

    def gc(self) -> list[str]:
        """Remove layers no image and no container references. Returns removed digests."""
        removed = []
        with self.locked():
            refs = self.referenced_layers()
            with contextlib.suppress(FileNotFoundError):
                for h in os.listdir(self.layers):
                    if _HEX64.match(h) and f"sha256:{h}" not in refs:
                        rmtree(os.path.join(self.layers, h))
                        removed.append(f"sha256:{h}")
            with contextlib.suppress(FileNotFoundError):
                for t in os.listdir(self.tmp):   # stale staging dirs of crashed imports
                    rmtree(os.path.join(self.tmp, t))
        return removed

    def remove_image(self, ref: str) -> tuple[str, list[str]]:
        with self.locked():
            name, _ = self.resolve(ref)
            idx = self.read_index()
            del idx["images"][name]
            self.write_index(idx)
            return name, self.gc()

    def tag(self, src: str, dst: str) -> str:
        with self.locked():
            _, rec = self.resolve(src)
            dst = normalize_name(dst)
            idx = self.read_index()
            idx["images"][dst] = dict(rec, name=dst)
            self.write_index(idx)
            return dst


def tree_seal(root: str) -> str:
    """sha256 over (name, inode, change time, mode, size) of `root` and every entry below it, walked
    by descriptors in name order. The kernel updates an inode's change time on every change to
    its data or metadata, and a replaced entry has a new inode: a layer whose seal is unchanged
    is the tree extracted (and digest-checked) at import. Directories the caller cannot list
    (mode 000, rootless) are sealed by their own inode and change time."""
    from .treewalk import TreeChanged, walk_tree
    h = hashlib.sha256()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        h.update(b"%d %d %o\n" % (st.st_ino, st.st_ctime_ns, st.st_mode))
        for e in walk_tree(fd, max_entries=None, max_depth=None, open_files=False, unreadable_dirs=True):
            arc = e.arc.encode("utf-8", "surrogateescape")          # os.fsencode, without its call
            if e.unreadable:
                h.update(b"/%s\0unreadable\n" % arc)
            else:
                est = e.st
                h.update(b"/%s\0%d %d %o %d\n" % (arc, est.st_ino, est.st_ctime_ns, est.st_mode, est.st_size))
    except TreeChanged as e:
        raise OSError(errno.ESTALE, str(e), root) from None
    finally:
        os.close(fd)
    return "sha256:" + h.hexdigest()


def _seal_new(diff: str, what: str) -> str:
    try:
        return tree_seal(diff)
    except OSError as e:
        raise ImageError(f"{what}: cannot seal the extracted layer ({_one_line(e)})") from None


def rmtree(path: str) -> None:
    """Remove a tree, also one with unwritable directories (overlay work dirs, 0555 dirs in layers),
    best effort (an entry that cannot be removed is left). The trees are often written by a
    sandbox (its writable layer, a volume): no symlink is ever followed (every step relative to a
    directory descriptor opened O_NOFOLLOW; '..' checked against the directory it must be), and no
    recursion — a program can nest directories deeper than Python's recursion limit (shutil.rmtree
    then failed, the writable layer stayed, and every later image launch of the store failed while
    reclaiming it). One descriptor open at a time, whatever the depth."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
            return
        parent = os.path.dirname(os.path.abspath(path)) or "/"
        name = os.path.basename(os.path.abspath(path))
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    # one level per directory on the way down: (its name, the (dev, ino) of its parent, names left)
    levels: list = []
    try:
        fd = _rm_descend(fd, name, levels)
        while fd >= 0 and levels:
            names = levels[-1][2]
            if names is None:
                try:
                    names = levels[-1][2] = os.listdir(fd)
                except OSError:
                    names = levels[-1][2] = []
            if names:
                n = names.pop()
                try:
                    st = os.stat(n, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    fd = _rm_descend(fd, n, levels)
                    continue
                if not _rm_retry(lambda: os.unlink(n, dir_fd=fd), fd):
                    continue
            else:                              # empty now (or what is left cannot go): up, rmdir
                name, pid, _ = levels.pop()
                try:
                    up = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError:
                    up = -1
                os.close(fd)
                fd = up
                if fd < 0:
                    break
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != pid:            # moved meanwhile: stop, touch nothing else
                    break
                _rm_retry(lambda: os.rmdir(name, dir_fd=fd), fd)
    finally:
        if fd >= 0:
            os.close(fd)


def _rm_descend(fd: int, name: str, levels: list) -> int:
    """Open the directory `name` in `fd` (never a symlink; made searchable if it is not) and go
    into it; stays at fd when it cannot be opened. Returns the current directory's descriptor."""
    st = os.fstat(fd)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        child = os.open(name, flags, dir_fd=fd)
    except PermissionError:
        try:
            sub = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            try:
                os.chmod(f"/proc/self/fd/{sub}", 0o700)
            finally:
                os.close(sub)
            child = os.open(name, flags, dir_fd=fd)
        except OSError:
            return fd
    except OSError:
        return fd
    os.close(fd)
    levels.append([name, (st.st_dev, st.st_ino), None])
    return child


def _rm_retry(op, fd: int) -> bool:
    """op() in the directory fd; on EACCES/EPERM make fd writable (0700) and try once more."""
    try:
        op()
        return True
    except FileNotFoundError:
        return True
    except PermissionError:
        try:
            os.fchmod(fd, 0o700)
            op()
            return True
        except OSError:
            return False
    except OSError:
        return False


# --------------------------------------------------------------------------- progress

class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal and the work takes > 0.5 s."""

    def __init__(self, label: str, total: Optional[int], stream=None, enabled: Optional[bool] = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label, self.total, self.done = label, total, 0
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.start < 0.5 or now - self.last < 0.1:
            return
        self.last = now
        self.shown = True
        width = 30
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * width)
            line = f"\r{self.label} [{bar:<{width}}] {frac * 100:3.0f}% {human_size(self.done)}"
        else:
            line = f"\r{self.label} {human_size(self.done)}"
        self.stream.write(line[:120])
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()


class _CountingReader(io.RawIOBase):
    """Wraps a raw file: counts bytes (progress) and hashes them (digest verification)."""

    def __init__(self, f: BinaryIO, progress: Optional[Progress] = None, hash_it: bool = True):
        self.f, self.progress = f, progress
        self.h = hashlib.sha256() if hash_it else None
        self.n = 0

    def readable(self):
        return True

    def readinto(self, b):
        data = self.f.read(len(b))
        if not data:
            return 0
        n = len(data)
        b[:n] = data
        self.n += n
        if self.h:
            self.h.update(data)
        if self.progress:
            self.progress.update(n)
        return n

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    def hexdigest(self) -> str:
        return self.h.hexdigest()


_XZ_MEMLIMIT = 256 << 20     # xz -9 needs 65 MiB; a header may declare a 4 GiB dictionary (memory it fills)


def _decompress_error(what: str, msg: str) -> str:
    if "Memory usage limit" in msg:
        return (f"{what}: the xz stream needs more than {_XZ_MEMLIMIT >> 20} MiB of memory to decompress "
                f"(its dictionary size)")
    return f"{what}: corrupt or truncated compressed data ({msg})"


def _xz_reader(f):
    """lzma.LZMAFile's reader with liblzma's memory limit set (LZMAFile has none)."""
    import _compression
    return io.BufferedReader(_compression.DecompressReader(f, lzma.LZMADecompressor, trailing_error=lzma.LZMAError,
                                                            memlimit=_XZ_MEMLIMIT), 1 << 16)


def _open_decompressed(raw: BinaryIO, what: str, count: bool = False):
    """Detect gzip/bzip2/xz by magic and return a decompressing reader (or raw for plain tar).
    count=True: (reader, counter of the compressed bytes read, or None when not compressed)."""
    from .tarsafe import CountingRaw
    head = raw.peek(6)[:6] if hasattr(raw, "peek") else b""
    opener = None
    if head[:2] == b"\x1f\x8b":
        opener = lambda f: gzip.GzipFile(fileobj=f, mode="rb")
    elif head[:3] == b"BZh":
        opener = lambda f: bz2.BZ2File(f, "rb")
    elif head[:6] == b"\xfd7zXZ\x00":
        opener = _xz_reader
    elif head[:4] == b"\x28\xb5\x2f\xfd":
        raise ImageError(f"{what}: zstd-compressed layers are not supported (recompress with gzip)")
    if opener is None:
        return (raw, None) if count else raw
    craw = CountingRaw(raw)
    dec = opener(io.BufferedReader(craw, 1 << 16))
    return (dec, craw) if count else dec


# --------------------------------------------------------------------------- safe extraction

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


class Extractor:
    """Extract one layer tar stream into an empty directory, safely.

    All file system operations are relative to directory descriptors opened with O_NOFOLLOW
    from the layer root: the archive cannot make us write outside `dest`, whatever symlinks it
    contains. `budget` bounds the bytes written (claimed sizes are checked before writing).
    """

    def __init__(self, dest: str, *, rootless: bool, devices: str = "reject", budget: Optional[int] = None,
                 what: str = "layer", size_left: Optional[int] = None):
        if devices not in ("reject", "skip"):
            raise ValueError(devices)
        self.dest, self.rootless, self.devices, self.what = dest, rootless, devices, what
        self.root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.budget = budget
        self.size_left = size_left              # --limit size: file bytes this layer may still write
        self.written = 0
        self.files = 0
        self.skipped_devices = 0
        self.dirs: dict[tuple, tuple] = {}       # parts -> (mode, uid, gid, mtime, seq): applied at the end
        self.replaced: dict[tuple, int] = {}     # parts -> seq: a directory removed by a later member
        self._seq = 0
        self._cache: tuple[tuple, int] | None = None

    def close(self) -> None:
        self._drop_cache()
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    def _drop_cache(self) -> None:
        if self._cache:
            os.close(self._cache[1])
            self._cache = None

    def fail(self, name: str, why: str) -> "ImageError":
        return ImageError(f"{self.what}: member {name!r}: {why}")

    # ---- names
    def split(self, name: str, orig: str) -> tuple[str, ...]:
        if "\x00" in name:
            raise self.fail(orig, "NUL byte in name")
        if name.startswith("/"):
            raise self.fail(orig, "absolute path (path traversal)")
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if ".." in parts:
            raise self.fail(orig, "'..' in path (path traversal)")
        return parts

    def parent_fd(self, parts: tuple[str, ...], orig: str, create: bool = True) -> int:
        """fd of the directory parts[:-1] under the root, never following a symlink. Borrowed: do not close."""
        pp = parts[:-1]
        if not pp:
            return self.root_fd
        if self._cache and self._cache[0] == pp:
            return self._cache[1]
        fd = self.root_fd
        try:
            for i, comp in enumerate(pp):
                try:
                    st = os.lstat(comp, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise self.fail(orig, f"parent {'/'.join(pp[:i + 1])} does not exist") from None
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    st = os.lstat(comp, dir_fd=fd)
                    if not self.rootless:
                        os.chown(comp, 0, 0, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise self.fail(orig, f"parent {'/'.join(pp[:i + 1])} is a symlink (refusing to write through it)")
                if not stat.S_ISDIR(st.st_mode):
                    raise self.fail(orig, f"parent {'/'.join(pp[:i + 1])} is not a directory")
                nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                if fd != self.root_fd:
                    os.close(fd)
                fd = nfd
        except BaseException:
            if fd != self.root_fd:
                os.close(fd)
            raise
        self._drop_cache()
        self._cache = (pp, fd)
        return fd

    def _clear(self, pfd: int, base: str, keep_dir: bool, parts: tuple = ()) -> Optional[os.stat_result]:
        """Remove an existing entry (tar semantics: a later member replaces an earlier one)."""
        try:
            st = os.lstat(base, dir_fd=pfd)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return st
            self._drop_cache()   # the cached parent may live below the removed directory
            # the metadata recorded for it and below it so far is stale (finish skips it): O(1)
            # here, where a scan of every recorded directory made each member cost O(directories)
            self._seq += 1
            self.replaced[parts] = self._seq
            shutil.rmtree(base, dir_fd=pfd)
        else:
            os.unlink(base, dir_fd=pfd)
        return None

    def _own(self, pfd: int, base: str, ti: tarfile.TarInfo) -> None:
        if not self.rootless:
            os.chown(base, ti.uid, ti.gid, dir_fd=pfd, follow_symlinks=False)

    # ---- members
    def add(self, ti: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        orig = ti.name
        parts = self.split(ti.name, orig)
        if not parts:
            if ti.isdir():      # "./": the layer root itself
                self.dirs[()] = (ti.mode, ti.uid, ti.gid, ti.mtime, 0)
                return
            raise self.fail(orig, "empty name")
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            return self._whiteout(parts, orig)
        pfd = self.parent_fd(parts, orig)
        if ti.isdir():
            self._clear(pfd, base, keep_dir=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(base, 0o700, dir_fd=pfd)
            self._own(pfd, base, ti)
            self._seq += 1
            self.dirs[parts] = (ti.mode, ti.uid, ti.gid, ti.mtime, self._seq)
        elif ti.isreg():
            if self.size_left is not None and self.written + ti.size > self.size_left:
                raise self.fail(orig, f"claims {human_size(ti.size)}: the import would unpack more than the size "
                                      f"limit (limit size; raise it with --limit size=N)")
            if self.budget is not None and self.written + ti.size > self.budget:
                raise self.fail(orig, f"claims {human_size(ti.size)}, more than the "
                                      f"{human_size(max(0, self.budget - self.written))} left for this import")
            self._clear(pfd, base, keep_dir=False, parts=parts)
            fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=pfd)
            try:
                src = tf.extractfile(ti)
                left = ti.size
                while left > 0:
                    chunk = src.read(min(left, 1 << 20))
                    if not chunk:
                        raise self.fail(orig, "archive ends inside the file data (truncated or size lies)")
                    os.write(fd, chunk)
                    left -= len(chunk)
                self.written += ti.size
                if not self.rootless:
                    os.fchown(fd, ti.uid, ti.gid)
                os.fchmod(fd, ti.mode & 0o7777)
                os.utime(fd, (ti.mtime, ti.mtime))
            finally:
                os.close(fd)
        elif ti.issym():
            if "\x00" in ti.linkname:
                raise self.fail(orig, "NUL byte in symlink target")
            self._clear(pfd, base, keep_dir=False, parts=parts)
            os.symlink(ti.linkname, base, dir_fd=pfd)
            self._own(pfd, base, ti)
            with contextlib.suppress(OSError):
                os.utime(base, (ti.mtime, ti.mtime), dir_fd=pfd, follow_symlinks=False)
        elif ti.islnk():
            tparts = self.split(ti.linkname.lstrip("/") if ti.linkname.startswith("/") else ti.linkname, orig)
            if not tparts:
                raise self.fail(orig, "hard link to the layer root")
            tpfd_own = os.dup(self.parent_fd(tparts, orig, create=False))
            try:
                try:
                    st = os.lstat(tparts[-1], dir_fd=tpfd_own)
                except FileNotFoundError:
                    raise self.fail(orig, f"hard link target {ti.linkname!r} is not in the archive") from None
                if stat.S_ISDIR(st.st_mode):
                    raise self.fail(orig, "hard link to a directory")
                pfd = self.parent_fd(parts, orig)
                self._clear(pfd, base, keep_dir=False, parts=parts)
                os.link(tparts[-1], base, src_dir_fd=tpfd_own, dst_dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(tpfd_own)
        elif ti.isfifo():
            self._clear(pfd, base, keep_dir=False, parts=parts)
            os.mkfifo(base, ti.mode & 0o777, dir_fd=pfd)
            self._own(pfd, base, ti)
        elif ti.ischr() or ti.isblk():
            kind = "character" if ti.ischr() else "block"
            if self.devices == "skip":
                self.skipped_devices += 1
                return
            raise self.fail(orig, f"{kind} device node {ti.devmajor}:{ti.devminor} not allowed in images "
                                  f"(import with --devices skip to drop device nodes)")
        else:
            raise self.fail(orig, f"unsupported tar member type {ti.type!r}")
        self.files += 1

    def _whiteout(self, parts: tuple[str, ...], orig: str) -> None:
        base = parts[-1]
        pfd = self.parent_fd(parts, orig)
        if base == OPAQUE_MARKER:
            self._set_opaque(pfd)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):   # other AUFS metadata (.wh..wh.plnk ...)
            return
        target = base[len(WHITEOUT_PREFIX):]
        if target in ("", ".", ".."):
            raise self.fail(orig, "invalid whiteout name")
        self._clear(pfd, target, keep_dir=False, parts=parts[:-1] + (target,))
        # char 0:0 is the overlay whiteout; the kernel lets unprivileged users create it (5.8+).
        try:
            os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=pfd)
        except OSError as e:
            raise self.fail(orig, f"cannot create overlay whiteout: {e.strerror}") from None
        self.files += 1

    def _set_opaque(self, dirfd: int) -> None:
        # trusted.* is read by overlay mounted in the initial user namespace, user.* with userxattr
        # (every mount inside a user namespace). Root writes both, rootless can only write user.*.
        names = ["user.overlay.opaque"] if self.rootless else ["trusted.overlay.opaque", "user.overlay.opaque"]
        for n in names:
            try:
                os.setxattr(dirfd, n, b"y")
            except OSError as e:
                raise ImageError(f"{self.what}: cannot mark an opaque directory ({n}): {e.strerror} "
                                 f"(the store's file system must support xattrs)") from None

    def finish(self) -> None:
        """Apply directory modes/owners/mtimes, deepest first (modes like 0555 would block creation)."""
        self._drop_cache()
        for parts in sorted(self.dirs, key=len, reverse=True):
            mode, uid, gid, mtime, seq = self.dirs[parts]
            if self.replaced and any(self.replaced.get(parts[:i], -1) > seq for i in range(1, len(parts) + 1)):
                continue                         # removed (and maybe made again) after it was recorded
            if parts:
                pfd = self.parent_fd(parts, "/".join(parts), create=False)
                fd = os.open(parts[-1], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            else:
                fd = os.dup(self.root_fd)
            try:
                if not self.rootless:
                    os.fchown(fd, uid, gid)
                os.fchmod(fd, mode & 0o7777)
                os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)
        self._drop_cache()


def extract_layer(stream: BinaryIO, dest: str, *, rootless: bool, devices: str = "reject",
                  budget: Optional[int] = None, what: str = "layer", limits=None, used: tuple = (0, 0)) -> dict:
    """Extract an (uncompressed or compressed) layer tar from `stream` into the empty dir `dest`.

    `limits` (tarsafe.ImportLimits) bound headers, members, names, sizes and the decompressed
    stream; `used` = (file bytes, decompressed bytes) of earlier layers of the same import.
    Returns {"digest": "sha256:<diff_id>", "size": bytes written, "files": n, "stream": bytes}.
    Raises ImageError (one line) for anything malformed, unsafe or beyond a limit.
    """
    from . import tarsafe
    limits = limits or tarsafe.DEFAULT_LIMITS
    raw = stream if hasattr(stream, "peek") else io.BufferedReader(stream, 1 << 16)
    ex = Extractor(dest, rootless=rootless, devices=devices, budget=budget, what=what,
                   size_left=limits.size - used[0])
    try:
        try:
            dec, craw = _open_decompressed(raw, what, count=True)
            limited = tarsafe.LimitedReader(dec, limits.stream_bytes(), base=used[1], ratio=limits.ratio,
                                            compressed=(lambda: craw.n) if craw else None)
            counter = _CountingReader(limited)
            with tarsafe.open_tar(io.BufferedReader(counter, 1 << 16), "r|", limits) as tf:
                for ti in tarsafe.members(tf):
                    ex.add(ti, tf)
                    # ti.size was written; tarfile skips the padding itself
            counter.drain()      # rest of the stream (end-of-archive blocks): part of the digest
            ex.finish()
        except ImageError:
            raise
        except tarsafe.TarLimitError as e:
            raise ImageError(f"{what}: {e}") from None
        except tarfile.TarError as e:
            raise ImageError(f"{what}: not a valid tar archive ({_one_line(e)})") from None
        except (EOFError, zlib.error, lzma.LZMAError, OSError, ValueError) as e:
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                raise ImageError(f"{what}: no space left in the image store") from None
            msg = _one_line(e)
            if isinstance(e, (EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)) or "gzip" in msg.lower():
                raise ImageError(_decompress_error(what, msg)) from None
            raise ImageError(f"{what}: extraction failed: {msg}") from None
    finally:
        ex.close()
    return {"digest": "sha256:" + counter.hexdigest(), "size": ex.written, "files": ex.files,
            "skipped_devices": ex.skipped_devices, "stream": limited.n}


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
        raise ImageError(f"{what} is not valid JSON ({_one_line(e)})") from None


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
            raise ImageError(f"{what}: not a readable tar archive ({_one_line(e)})") from None

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
    if not isinstance(digest, str) or not _DIGEST.match(digest):
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
        raise ImageError(f"{what}: cannot read the directory ({_one_line(err)})") from None


def _dir_to_tar(src: str, tmpdir: str, limits=None) -> str:
    """Pack a rootfs directory into a tar (symlinks stored as symlinks, never followed)."""
    fd, path = tempfile.mkstemp(prefix="rootfs.", suffix=".tar", dir=tmpdir)
    try:
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
            tree_to_tar(src, tf, src, limits=limits)
    except OSError as e:
        raise ImageError(f"{src}: cannot pack the directory ({_one_line(e)})") from None
    return path


def _decompress_to(path: str, stage: str, what: str, limits) -> str:
    """A compressed archive, decompressed once into the staging directory (bounded: stream bytes,
    ratio, free space) so that it can be indexed and read at random."""
    from . import tarsafe
    out = os.path.join(stage, "archive.tar")
    room = _free_budget(stage)
    try:
        with open(path, "rb") as f, open(out, "wb") as o:
            dec, craw = _open_decompressed(io.BufferedReader(f, 1 << 16), what, count=True)
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
        raise ImageError(_decompress_error(what, _one_line(e))) from None
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
    return [{"created": _now(), "created_by": default_by, "comment": "", "empty_layer": False}
            for _ in range(nlayers)]


_CONFIG_KEYS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels")


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
        stage = tempfile.mkdtemp(prefix="import.", dir=store.tmp)
        try:
            return _import_locked(path, name, store, ref, devices, progress, what, stage, limits)
        finally:
            rmtree(stage)


def _one_line(e: BaseException) -> str:
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(msg).split())[:200]


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
        with open(path, "rb") as f:
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
        raise ImageError(f"{what}: malformed image metadata ({type(e).__name__}: {_one_line(e)})") from None
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
                counted = _CountingReader(rawf, bar)
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
                info = dict(info, created=_now())
                info.pop("skipped_devices", None)
                new_layers.append((digest, dest, info))
    finally:
        bar.close()

    # Everything extracted and verified: build the record, then move the layers in and write the index.
    config = src.config or {}
    history = _history_for(config, len(digests), src.created_by_default or f"pysandbox image import {what}")
    if not src.config_bytes:
        config = {"architecture": _arch(), "os": "linux", "created": _now(), "config": {},
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
    record = {"id": image_id, "layers": digests, "history": history, "created": str(config.get("created") or _now()),
              "source": os.path.abspath(path), "format": kind,
              "config": {k: cfg[k] for k in _CONFIG_KEYS if cfg.get(k) is not None}}
    for digest, dest, info in new_layers:
        info["seal"] = _seal_new(os.path.join(dest, "diff"), what)
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
        info["created"] = _now()
        info["seal"] = _seal_new(os.path.join(dest, "diff"), what)
        if not store.has_layer(info["digest"]):
            with open(os.path.join(dest, "layer.json"), "w") as f:
                json.dump(info, f, sort_keys=True)
            os.rename(dest, store.layer_dir(info["digest"]))
        return info
    finally:
        rmtree(stage)


def add_image_record(store: Store, name: str, record: dict) -> None:
    with store.locked():
        idx = store.read_index()
        idx["images"][name] = dict(record, name=name)
        store.write_index(idx)


def iter_images(store: Store) -> Iterable[tuple[str, dict]]:
    return sorted(store.images().items())
