"""The two file helpers every store shares: one atomic write, one lock.

atomic_write: a temporary file in the same directory (O_EXCL, O_NOFOLLOW, the final mode set
explicitly, not left to the umask), written, fsync'ed, renamed over the target: a reader sees the
old content or the new one, never a part, and a crash leaves at most a `.NAME.*.tmp` file.
lock / locked: flock on a lock file (exclusive by default); the lock goes with the descriptor.
read_json_object: the reading side of atomic_write_json for files a store or a caller hands us:
bounded in size, JSON, an object at the top.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Iterator, Optional, Union

if TYPE_CHECKING:
    _Path = Union[str, "os.PathLike[str]"]


def atomic_write(path: _Path, data: Union[bytes, str], *, mode: Optional[int] = 0o600, fsync: bool = True) -> None:
    """Replace path's content with data, atomically (see the module's docstring). mode=None: 0666
    less the umask (a file the user asked for, as open() would make it). fsync=False for a cache,
    or where the launch cannot wait for the disk (the rename stays atomic)."""
    path = os.fspath(path)
    d, base = os.path.split(path)
    tmp = os.path.join(d, f".{base}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    if isinstance(data, str):
        data = data.encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o666 if mode is None else mode)
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: _Path, obj, *, mode: Optional[int] = 0o600, fsync: bool = True, **dump) -> None:
    """atomic_write of json.dumps(obj, **dump)."""
    atomic_write(path, json.dumps(obj, **dump), mode=mode, fsync=fsync)


def read_json_object(path: _Path, limit: int) -> dict:
    """The JSON object in path, read at most `limit` bytes. OSError (FileNotFoundError…) as open
    raises it; ValueError with a short reason ("larger than N bytes", "not JSON: …", "not a JSON
    object") for the callers' one-line messages."""
    with open(path, "rb") as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise ValueError(f"larger than {limit} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def lock(path: _Path, *, shared: bool = False, create: bool = True, blocking: bool = True,
         mode: int = 0o600) -> int:
    """Open path (created with mode when create) and flock it; returns the descriptor, which holds
    the lock until it is closed (by this process and every fork that inherited it). OSError when it
    cannot be opened; BlockingIOError when blocking=False and someone else holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0), mode)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB))
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def locked(path: _Path, **kw) -> Iterator[int]:
    """`with locked(path):` — lock(path, **kw) for the block."""
    fd = lock(path, **kw)
    try:
        yield fd
    finally:
        os.close(fd)
