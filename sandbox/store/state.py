"""Per-sandbox state of named/detached sandboxes.

Layout (one directory per sandbox, named after the sandbox):

    <state directory>/sandboxes/NAME/    (the state directory: audit/paths.py)
        state.json       the state (written atomically: temp file + rename, under `lock`)
        lock             flock'ed around every read-modify-write of state.json
        alive            flock'ed (shared) by the supervisor and PID 1 for as long as the sandbox lives:
                         whoever can take it exclusively knows the sandbox is gone (no pid reuse races)
        stdout.log, stderr.log   the program's output (detached sandboxes)
        supervisor.log   the supervisor's own messages
        seccomp.bpf      the sandbox's filter as loaded by `exec` (plain errno/kill actions)

Every directory is 0700 and every file 0600, owned by the caller; files that are not are refused
(a state directory someone else can write would be a way to make `exec` load another filter).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Iterator, Optional

from audit import paths

from .. import fsutil

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")   # \Z, not $: "$" lets "name\n" through


class StateError(Exception):
    """A state problem the CLI reports as one line (exit 1 unless .code says otherwise)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def state_root(euid: Optional[int] = None) -> Path:
    """<state directory>/sandboxes (the one resolver: audit/paths.py)."""
    euid = os.geteuid() if euid is None else euid
    return Path(paths.state_dir(rootless=euid != 0)) / "sandboxes"


def _trusted(st) -> bool:
    return st.st_uid == os.geteuid() and not (st.st_mode & 0o022)


def _root(create: bool = False) -> Path:
    root = state_root()
    if create:
        try:
            paths.ensure_state_dir()               # 0711, ours, not writable by others
            root.mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise StateError(f"{e.strerror or e}" if isinstance(e, paths.StateDirError)
                             else f"state directory {root}: cannot create it: {e.strerror}", code=125) from None
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return root
    if not _trusted(st):
        raise StateError(f"state directory {root} is not owned by this user or is writable by others; refusing it")
    return root


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise StateError(f"invalid sandbox name {name!r}: use letters, digits, '_', '.', '-' (max 63), "
                         f"starting with a letter or digit", code=2)
    return name


def sandbox_dir(name: str) -> Path:
    return _root() / check_name(name)


def create(name: str, data: dict) -> tuple[Path, int]:
    """Create NAME's directory and first state; StateError if the name is taken. Returns the
    directory and a descriptor holding a shared lock on `alive`, taken before the state exists:
    from its first moment the entry is seen as live (`starting`), never as dead. On any failure
    (disk full) nothing of it is left."""
    d = _root(create=True) / check_name(name)
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        raise StateError(f"the name {name!r} is already in use (pysandbox rm {name})", code=125) from None
    fd = -1
    try:
        for f in ("lock", "alive"):
            os.close(os.open(d / f, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
        fd = hold_alive(name)
        _write(d, data)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        shutil.rmtree(d, ignore_errors=True)
        raise
    return d, fd


def take_signals(name: str, _only_if_status: Optional[tuple] = None, **fields) -> list:
    """Under the lock: set fields and take the signals queued while the sandbox was starting
    (`pysandbox kill` before its program runs, sandbox/lifecycle.py). With _only_if_status, nothing
    is changed (and nothing taken) unless the status is one of those."""
    with locked(name) as d:
        data = read(name)
        if _only_if_status is not None and data.get("status") not in _only_if_status:
            return []
        queued = [int(x) for x in (data.get("queued_signals") or []) if isinstance(x, int)]
        data.update(fields, queued_signals=[])
        _write(d, data)
        return queued


def queue_signal(name: str, sig: int) -> bool:
    """Under the lock: queue sig if the sandbox is still `starting` (True), else False."""
    with locked(name) as d:
        data = read(name)
        if data.get("status") != "starting":
            return False
        data["queued_signals"] = (list(data.get("queued_signals") or []) + [int(sig)])[-16:]
        _write(d, data)
        return True


@contextlib.contextmanager
def locked(name: str) -> Iterator[Path]:
    d = sandbox_dir(name)
    try:
        fd = fsutil.lock(d / "lock", create=False)
    except FileNotFoundError:
        raise StateError(f"no such sandbox: {name}") from None
    try:
        yield d
    finally:
        os.close(fd)


def _write(d: Path, data: dict) -> None:
    fsutil.atomic_write_json(d / "state.json", data, indent=1, sort_keys=False, default=str)


def read(name: str) -> dict:
    d = sandbox_dir(name)
    try:
        fd = os.open(d / "state.json", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise StateError(f"no such sandbox: {name}") from None
    except OSError as e:
        raise StateError(f"sandbox {name}: cannot read its state: {e.strerror}") from None
    with os.fdopen(fd) as f:
        if not _trusted(os.fstat(f.fileno())):
            raise StateError(f"sandbox {name}: state file not owned by this user; refusing it")
        try:
            data = json.load(f)
        except ValueError:
            raise StateError(f"sandbox {name}: state file is corrupt") from None
    return data


def update(name: str, _only_if_status: Optional[tuple] = None, **fields) -> dict:
    """Read-modify-write under the lock; returns the new state. With _only_if_status, nothing is
    written unless the current status is one of those."""
    with locked(name) as d:
        data = read(name)
        if _only_if_status is not None and data.get("status") not in _only_if_status:
            return data
        data.update(fields)
        _write(d, data)
        return data


def names() -> list[str]:
    root = _root()
    try:
        return sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False) and NAME_RE.match(e.name))
    except FileNotFoundError:
        return []


def resolve(ref: str) -> str:
    """A name, or a unique prefix of a sandbox id -> the sandbox's name."""
    if NAME_RE.match(ref or "") and (_root() / ref / "state.json").exists():
        return ref
    hits = []
    for n in names():
        try:
            if read(n).get("id", "").startswith(ref) and ref:
                hits.append(n)
        except StateError:
            continue
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise StateError(f"{ref!r} matches several sandboxes: {', '.join(hits)}")
    raise StateError(f"no such sandbox: {ref}")


def hold_alive(name: str) -> int:
    """The supervisor takes a shared lock on `alive` and keeps the fd (PID 1, a fork, shares it)."""
    return fsutil.lock(sandbox_dir(name) / "alive", shared=True, create=False)


def is_alive(name: str) -> bool:
    """True while the supervisor or the sandbox's PID 1 holds `alive`."""
    try:
        fd = fsutil.lock(sandbox_dir(name) / "alive", create=False, blocking=False)
    except BlockingIOError:
        return True
    except OSError:
        return False
    os.close(fd)
    return False


def write_private(name: str, fname: str, data: bytes) -> Path:
    p = sandbox_dir(name) / fname
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return p


def read_private(name: str, fname: str) -> bytes:
    """A file of the state directory, only if it is the caller's and nobody else can write it."""
    p = sandbox_dir(name) / fname
    fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        if not _trusted(os.fstat(f.fileno())) or not _trusted(os.stat(p.parent)):
            raise StateError(f"{p}: not owned by this user or writable by others; refusing it", code=125)
        return f.read()


def remove(name: str) -> None:
    shutil.rmtree(sandbox_dir(name), ignore_errors=True)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
