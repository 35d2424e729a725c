"""Bounded reading of untrusted tar streams and JSON, and packing a hostile directory into a tar.

Everything an image archive contains is hostile. Python's tarfile reads a whole PAX extended
header or GNU long name/link into memory before looking at it, keeps every member it has seen,
accumulates global PAX headers, and follows GNU sparse maps of any length. Here:

* `bounded_tarinfo(limits)` is a TarInfo subclass that checks the *size field* of every
  extended header (PAX ``x``/``g``, GNU ``L``/``K``) before tarfile reads its data, counts
  members, bounds the chain of extended headers in front of one member and the global headers of
  the archive, refuses GNU sparse members (old and PAX forms) before their maps are read, and
  checks each member's name/link (length, component length, depth), size (non-negative, per file)
  and numeric fields;
* `members(tf)` iterates a TarFile without the list of every member tarfile keeps;
* `LimitedReader` bounds the decompressed bytes of a stream and its ratio to the compressed
  bytes read;
* `json_loads` bounds size and nesting depth before `json.loads`;
* (walking a directory by descriptors, for packing one into a tar: sandbox/treewalk.py.)

Limits are refused with `TarLimitError` (one line, naming the limit and how to raise it).
"""
from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional

from .treewalk import MAX_DEPTH, MAX_ENTRIES, _hint

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


class TarLimitError(Exception):
    """An archive exceeds a limit (or uses a refused feature). One line."""


@dataclass(frozen=True)
class ImportLimits:
    """Bounds for reading an image archive. `pysandbox image import --limit NAME=VALUE` raises them."""
    header: int = 1 * MiB          # bytes of extended headers (PAX x/g, GNU L/K) in front of one member,
                                   # and of all global PAX headers of an archive
    members: int = MAX_ENTRIES     # members of one tar stream (a layer, an archive)
    path: int = 4096               # bytes of a member's name or link target (PATH_MAX)
    depth: int = MAX_DEPTH         # path components of a member's name
    file_size: int = 16 * GiB      # bytes of one regular file
    size: int = 64 * GiB           # bytes of file data of one import (also capped by free space)
    stream: int = 0                # decompressed bytes of one import; 0: size + 1/8 + 256 MiB (headers, padding)
    ratio: int = 2000              # decompressed : compressed bytes (checked after the first 16 MiB); above
                                   # gzip's maximum (~1030): never refuses a gzip stream, stops bzip2/xz bombs
    json: int = 4 * MiB            # bytes of one manifest/index/config JSON document
    json_depth: int = 64           # nesting of a JSON document

    # names accepted by --limit, with their units
    NAMES = ("header", "members", "path", "depth", "file_size", "size", "stream", "ratio", "json", "json_depth")

    def stream_bytes(self) -> int:
        return self.stream or self.size + self.size // 8 + 256 * MiB

    def with_overrides(self, items) -> "ImportLimits":
        """items: iterable of 'name=value' strings (value: integer with optional k/M/G/T suffix)."""
        changes = {}
        for it in items:
            name, sep, val = str(it).partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in self.NAMES:
                raise ValueError(f"invalid limit {it!r} (NAME=VALUE, NAME one of {', '.join(self.NAMES)})")
            changes[name] = parse_size(val, name)
        return replace(self, **changes)


_SUFFIX = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1 << 40}


def parse_size(val: str, name: str = "value") -> int:
    m = re.fullmatch(r"\s*(\d{1,15})\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(val))
    if not m:
        raise ValueError(f"invalid {name} {val!r} (a number, optionally with k, M, G or T)")
    n = int(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if n <= 0:
        raise ValueError(f"invalid {name} {val!r} (must be positive)")
    return n


DEFAULT_LIMITS = ImportLimits()


def human(n: int) -> str:
    """1000-based, like images.human_size."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.3g}{unit}"
        n /= 1000
    return str(n)




_EXT_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
              tarfile.SOLARIS_XHDTYPE)
_MAX_EXT_CHAIN = 8            # extended headers in front of one member (GNU L, K, PAX x ... in any order)
_MAX_ID = (1 << 32) - 2


class _State:
    __slots__ = ("members", "chain", "chain_bytes", "global_bytes")

    def __init__(self):
        self.members = self.chain = self.chain_bytes = self.global_bytes = 0


class _BoundedTarInfo(tarfile.TarInfo):
    """See the module docstring. `limits` is set on a per-archive subclass (bounded_tarinfo)."""
    limits: ImportLimits = DEFAULT_LIMITS

    def _proc_member(self, tf):
        L = self.limits
        st = tf.__dict__.get("_pysbx_state")
        if st is None:
            st = tf.__dict__["_pysbx_state"] = _State()
        if self.size < 0:
            raise TarLimitError(f"member header at offset {self.offset} has a negative size")
        if self.type in _EXT_TYPES:
            st.chain += 1
            st.chain_bytes += self.size
            if st.chain > _MAX_EXT_CHAIN:
                raise TarLimitError(f"more than {_MAX_EXT_CHAIN} extended headers in front of one member "
                                    f"(at offset {self.offset})")
            if st.chain_bytes > L.header:
                raise TarLimitError(f"extended header at offset {self.offset} declares {human(self.size)}, more "
                                    f"than the {human(L.header)} allowed in front of one member {_hint('header')}")
            if self.type == tarfile.XGLTYPE:
                st.global_bytes += self.size
                if st.global_bytes > L.header:
                    raise TarLimitError(f"global PAX headers exceed {human(L.header)} {_hint('header')}")
        elif self.type == tarfile.GNUTYPE_SPARSE:
            raise TarLimitError(f"GNU sparse member at offset {self.offset} (sparse files are not supported)")
        else:
            st.chain = st.chain_bytes = 0
            st.members += 1
            if st.members > L.members:
                raise TarLimitError(f"more than {L.members} members {_hint('members')}")
        ti = super()._proc_member(tf)
        if ti is not self or self.type not in _EXT_TYPES:
            _check_member(ti, L)
        return ti

    # GNU sparse in PAX form: refused before tarfile reads a map of any length
    def _proc_gnusparse_00(self, next, raw_headers):
        raise TarLimitError(f"GNU sparse member {next.name[:100]!r} (sparse files are not supported)")

    _proc_gnusparse_01 = _proc_gnusparse_00

    def _proc_gnusparse_10(self, next, pax_headers, tarfile):
        raise TarLimitError(f"GNU sparse member {next.name[:100]!r} (sparse files are not supported)")


def _check_member(ti: tarfile.TarInfo, L: ImportLimits) -> None:
    name = ti.name
    shown = name[:100] + ("..." if len(name) > 100 else "")
    for what, v in (("name", name), ("link target", ti.linkname)):
        b = len(v.encode("utf-8", "surrogateescape"))
        if b > L.path:
            raise TarLimitError(f"member {shown!r}: {what} is {b} bytes, more than {L.path} {_hint('path')}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if len(parts) > L.depth:
        raise TarLimitError(f"member {shown!r}: {len(parts)} path components, more than {L.depth} {_hint('depth')}")
    for p in parts:
        if len(p.encode("utf-8", "surrogateescape")) > 255:
            raise TarLimitError(f"member {shown!r}: a path component is longer than 255 bytes")
    if ti.size < 0:
        raise TarLimitError(f"member {shown!r}: negative size")
    if ti.isreg() and ti.size > L.file_size:
        raise TarLimitError(f"member {shown!r}: claims {human(ti.size)}, more than the {human(L.file_size)} allowed "
                            f"for one file {_hint('file_size')}")
    if ti.sparse is not None:
        raise TarLimitError(f"member {shown!r}: sparse files are not supported")
    for f in ("uid", "gid"):
        v = getattr(ti, f)
        if not isinstance(v, int) or not 0 <= v <= _MAX_ID:
            raise TarLimitError(f"member {shown!r}: invalid {f} {v!r}")
    m = ti.mtime
    if not isinstance(m, (int, float)) or m != m or not -(1 << 40) < m < (1 << 40):
        ti.mtime = 0
    else:
        ti.mtime = int(m)
    for f in ("devmajor", "devminor"):
        v = getattr(ti, f)
        if not isinstance(v, int) or not 0 <= v < (1 << 32):
            raise TarLimitError(f"member {shown!r}: invalid {f} {v!r}")


def bounded_tarinfo(limits: ImportLimits = DEFAULT_LIMITS) -> type:
    return type("BoundedTarInfo", (_BoundedTarInfo,), {"limits": limits})


def open_tar(fileobj, mode: str, limits: ImportLimits = DEFAULT_LIMITS) -> tarfile.TarFile:
    """tarfile.open for reading with the bounds above (mode 'r|' streaming or 'r:' random access)."""
    return tarfile.open(fileobj=fileobj, mode=mode, tarinfo=bounded_tarinfo(limits))


def members(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members of an open TarFile, one at a time, without keeping them (tarfile's own
    iteration appends every TarInfo, with its PAX headers, to tf.members)."""
    while True:
        ti = tf.next()
        tf.members.clear()
        if ti is None:
            return
        ti.pax_headers = {}
        yield ti


class LimitedReader(io.RawIOBase):
    """A decompressed stream, refused beyond `max_bytes` or a decompressed:compressed ratio
    above `ratio` (compressed bytes from `compressed()`; checked once `grace` bytes came out)."""

    def __init__(self, f, max_bytes: int, *, compressed: Optional[Callable[[], int]] = None, ratio: int = 0,
                 grace: int = 16 * MiB, base: int = 0):
        self.f, self.max, self.compressed, self.ratio, self.grace = f, max_bytes, compressed, ratio, grace
        self.n = 0
        self.base = base          # bytes already decompressed by earlier streams of the same import

    def readable(self):
        return True

    def readinto(self, b):
        want = len(b)
        if self.base + self.n + want > self.max + 1:
            want = max(1, self.max + 1 - self.base - self.n)
        data = self.f.read(want)
        if not data:
            return 0
        n = len(data)
        b[:n] = data
        self.n += n
        if self.base + self.n > self.max:
            raise TarLimitError(f"the archive decompresses to more than {human(self.max)} {_hint('stream')}")
        if self.compressed and self.ratio and self.n > self.grace:
            c = max(1, self.compressed())
            if self.n > c * self.ratio:
                raise TarLimitError(f"the archive decompresses to more than {self.ratio} times its compressed size "
                                    f"(a compression bomb?) {_hint('ratio')}")
        return n


class CountingRaw(io.RawIOBase):
    """Counts the bytes read from a file (the compressed side of LimitedReader's ratio)."""

    def __init__(self, f):
        self.f, self.n = f, 0

    def readable(self):
        return True

    def readinto(self, b):
        data = self.f.read(len(b))
        n = len(data)
        b[:n] = data
        self.n += n
        return n


# --------------------------------------------------------------------------- JSON

def json_loads(data: bytes, what: str, limits: ImportLimits = DEFAULT_LIMITS):
    """json.loads with the size and nesting of an untrusted document bounded. Raises
    TarLimitError for a bound, ValueError for bad JSON."""
    if len(data) > limits.json:
        raise TarLimitError(f"{what} is {human(len(data))}, more than {human(limits.json)} {_hint('json')}")
    try:
        doc = json.loads(data)
    except RecursionError:
        doc = None
        deep = True
    else:
        deep = _depth_over(doc, limits.json_depth)
    if deep:
        raise TarLimitError(f"{what} is nested more than {limits.json_depth} levels {_hint('json_depth')}")
    return doc


def _depth_over(doc, limit: int) -> bool:
    stack = [(doc, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (list, dict)):
            if d > limit:
                return True
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return False


def read_bounded(f, limit: int, what: str, name: str = "json") -> bytes:
    data = f.read(limit + 1)
    if len(data) > limit:
        raise TarLimitError(f"{what} is more than {human(limit)} {_hint(name)}")
    return data
