"""Layer extraction: a hostile tar stream into a layer directory."""
from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import sys
import time
from typing import BinaryIO, Optional

from ..fsutil import read_json_object
from .images import ImageError, LazyModule, human_size, one_line

bz2, gzip, hashlib, json, lzma, shutil, tarfile, zlib = (
    LazyModule(n, globals()) for n in ("bz2", "gzip", "hashlib", "json", "lzma", "shutil", "tarfile", "zlib"))


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


class CountingReader(io.RawIOBase):
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


def decompress_error(what: str, msg: str) -> str:
    if "Memory usage limit" in msg:
        return (f"{what}: the xz stream needs more than {_XZ_MEMLIMIT >> 20} MiB of memory to decompress "
                f"(its dictionary size)")
    return f"{what}: corrupt or truncated compressed data ({msg})"


def _xz_reader(f):
    """lzma.LZMAFile's reader with liblzma's memory limit set (LZMAFile has none)."""
    import _compression
    return io.BufferedReader(_compression.DecompressReader(f, lzma.LZMADecompressor, trailing_error=lzma.LZMAError,
                                                            memlimit=_XZ_MEMLIMIT), 1 << 16)


def open_decompressed(raw: BinaryIO, what: str, count: bool = False):
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
        # rootless: the owners the archive gives (the caller cannot chown), "a/b" -> [uid, gid] when
        # not 0:0; written next to the layer (owners.json) for uid-shifted copies (store/idshift.py)
        self.owners: dict[str, list[int]] = {}

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
                    self.owners.pop("/".join(pp[:i + 1]), None)     # a made parent: root's
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

    def _record_owner(self, parts: tuple, ti: tarfile.TarInfo) -> None:
        if self.rootless:
            key = "/".join(parts)
            if (ti.uid, ti.gid) == (0, 0):
                self.owners.pop(key, None)
            else:
                self.owners[key] = [int(ti.uid), int(ti.gid)]

    # ---- members
    def add(self, ti: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        orig = ti.name
        parts = self.split(ti.name, orig)
        if not parts:
            if ti.isdir():      # "./": the layer root itself
                self.dirs[()] = (ti.mode, ti.uid, ti.gid, ti.mtime, 0)
                self._record_owner((), ti)
                return
            raise self.fail(orig, "empty name")
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            return self._whiteout(parts, orig)
        if not (ti.ischr() or ti.isblk()):
            self._record_owner(parts, ti)
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


OWNERS = "owners.json"       # next to a rootless layer's diff/: the archive's owners (not 0:0)
OWNERS_MAX = 64 << 20


def write_owners(layer_dir: str, owners: dict) -> None:
    """owners.json of a rootless layer (written before the layer's record: part of the import)."""
    with open(os.path.join(layer_dir, OWNERS), "w") as f:
        json.dump(owners, f, separators=(",", ":"), sort_keys=True)


def read_owners(layer_dir: str) -> dict:
    """A rootless layer's recorded owners ({} for a layer imported before they were recorded: its
    files are then root's); bounded."""
    try:
        return read_json_object(os.path.join(layer_dir, OWNERS), OWNERS_MAX)
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise ImageError(f"{layer_dir}/{OWNERS}: {e} (re-import the image)") from None


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
            dec, craw = open_decompressed(raw, what, count=True)
            limited = tarsafe.LimitedReader(dec, limits.stream_bytes(), base=used[1], ratio=limits.ratio,
                                            compressed=(lambda: craw.n) if craw else None)
            counter = CountingReader(limited)
            with tarsafe.open_tar(io.BufferedReader(counter, 1 << 16), "r|", limits) as tf:
                for ti in tarsafe.members(tf):
                    ex.add(ti, tf)
                    # ti.size was written; tarfile skips the padding itself
            counter.drain()      # rest of the stream (end-of-archive blocks): part of the digest
            ex.finish()
            if rootless:
                write_owners(os.path.dirname(os.path.abspath(dest)), ex.owners)
        except ImageError:
            raise
        except tarsafe.TarLimitError as e:
            raise ImageError(f"{what}: {e}") from None
        except tarfile.TarError as e:
            raise ImageError(f"{what}: not a valid tar archive ({one_line(e)})") from None
        except (EOFError, zlib.error, lzma.LZMAError, OSError, ValueError) as e:
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                raise ImageError(f"{what}: no space left in the image store") from None
            msg = one_line(e)
            if isinstance(e, (EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)) or "gzip" in msg.lower():
                raise ImageError(decompress_error(what, msg)) from None
            raise ImageError(f"{what}: extraction failed: {msg}") from None
    finally:
        ex.close()
    return {"digest": "sha256:" + counter.hexdigest(), "size": ex.written, "files": ex.files,
            "skipped_devices": ex.skipped_devices, "stream": limited.n}


