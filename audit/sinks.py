"""Where audit events go: an append-only JSONL file, a one-line stderr summary, syslog.

A sink is any object with `write(event: dict)` and `close()`. Sinks are driven by
`audit.events.Recorder`, which serialises calls (sinks need no locking of their own).
"""
from __future__ import annotations

import errno
import json
import os
import sys
from collections import Counter

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Any, Callable, Optional, TextIO

from . import paths
from .events import SYSCALL_TYPES

LOG_NAME = "audit.jsonl"


# Paths are plain strings (os.path): pathlib costs ~10 ms of imports on the launch path.

def state_dir(euid: Optional[int] = None) -> str:
    """pysandbox's state directory (audit/paths.py: $PYSANDBOX_STATE_DIR, /var/lib/pysandbox as
    root, else $XDG_DATA_HOME/pysandbox)."""
    if euid is None:
        euid = os.geteuid()
    return paths.state_dir(rootless=euid != 0)


def default_log_path(euid: Optional[int] = None) -> str:
    """The audit log used when no --audit-log is given ($PYSANDBOX_AUDIT_LOG overrides)."""
    env = os.environ.get("PYSANDBOX_AUDIT_LOG")
    if env:
        return env
    return os.path.join(state_dir(euid), LOG_NAME)


def _escape_text(s: str) -> str:
    """A str holding bytes that are not UTF-8 (Python's surrogateescape: argv, environment, paths
    from the program) -> text: each such byte as `\\xNN`, a literal backslash as `\\\\`."""
    out = []
    for ch in s.replace("\\", "\\\\"):
        o = ord(ch)
        if 0xD800 <= o <= 0xDFFF:
            out.append(f"\\x{o - 0xDC00:02x}" if 0xDC80 <= o <= 0xDCFF else f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _escape(value: Any, path: str, escaped: list) -> Any:
    if isinstance(value, str):
        if _has_surrogate(value):
            escaped.append(path)
            return _escape_text(value)
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            ek = _escape_text(k) if isinstance(k, str) and _has_surrogate(k) else k
            out[ek] = _escape(v, f"{path}.{ek}" if path else str(ek), escaped)
        return out
    if isinstance(value, (list, tuple)):
        return [_escape(v, f"{path}.{i}", escaped) for i, v in enumerate(value)]
    return value


def to_json(event: dict) -> str:
    """One event as JSON text that is always valid UTF-8. No input can make an event unwritable: a
    string with bytes that are not UTF-8 is written escaped (see _escape_text) and the event names
    it in `escaped` (dotted paths, e.g. ["argv.1"]). Decoding an escaped string: `\\\\` -> `\\`,
    `\\xNN` -> the byte NN."""
    text = json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str)
    if not _has_surrogate(text):
        return text
    return _escaped_json(event)


def _escaped_json(event: dict) -> str:
    escaped: list = []
    ev = _escape(event, "", escaped)
    ev["escaped"] = escaped
    text = json.dumps(ev, ensure_ascii=False, separators=(",", ":"), default=lambda o: _escape_text(str(o)))
    return text if not _has_surrogate(text) else text.encode("utf-8", "backslashreplace").decode()


def encode(event: dict) -> bytes:
    """One event -> one JSONL line (UTF-8, no embedded newlines, keys in insertion order)."""
    text = json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"
    try:
        return text.encode()                    # the common case: one encode, no extra walk
    except UnicodeEncodeError:
        return (_escaped_json(event) + "\n").encode()


DEFAULT_MAX_BYTES = 32 << 20     # the log is rotated when the next record would take it past this
DEFAULT_KEEP = 4                 # rotated files kept: audit.jsonl.1 (newest) .. audit.jsonl.4
MIN_MAX_BYTES = 64 << 10


def log_limits() -> tuple[int, int]:
    """(max_bytes, keep) of the audit log: the defaults, or $PYSANDBOX_AUDIT_LOG_MAX_BYTES and
    $PYSANDBOX_AUDIT_LOG_KEEP (the invoking user's setting, never the profile's). Bad values fall
    back to the defaults; the size is never below 64 KiB nor unbounded."""
    def env_int(name: str, default: int, lo: int, hi: int) -> int:
        try:
            return max(lo, min(int(os.environ.get(name, default)), hi))
        except ValueError:
            return default
    return (env_int("PYSANDBOX_AUDIT_LOG_MAX_BYTES", DEFAULT_MAX_BYTES, MIN_MAX_BYTES, 1 << 40),
            env_int("PYSANDBOX_AUDIT_LOG_KEEP", DEFAULT_KEEP, 1, 100))


def rotated_paths(path: str, keep: int = 100) -> list[str]:
    """The log's rotated files that exist, oldest first (path.N .. path.1), then path itself."""
    out = [f"{path}.{i}" for i in range(keep, 0, -1) if os.path.exists(f"{path}.{i}")]
    return out + [path]


class JsonlSink:
    """Append-only JSON Lines file. Each event is one write(2) on an O_APPEND descriptor, so
    it is in the kernel (safe from a crash of pysandbox) as soon as `write` returns, and
    concurrent sandboxes appending to the same log never interleave inside a line.
    With fsync=True every event is also forced to disk (survives a host crash).

    Size cap: when the next record would take the file past `max_bytes`, the file is rotated
    (path -> path.1 -> ... -> path.<keep>, the oldest dropped) and a new one started; None: no
    cap. Writers in other processes (sandboxes sharing the log) notice at their next record
    (their file is over the cap: it is path.1 now) and reopen; flock on the old file makes one
    of them rotate. A file passes the cap by at most one record per concurrent writer."""

    def __init__(self, path: os.PathLike | str, fsync: bool = False, mode: int = 0o600,
                 max_bytes: Optional[int] = None, keep: int = DEFAULT_KEEP):
        self.path = os.fspath(path)
        self.fsync = fsync
        self.mode = mode
        self.max_bytes = max_bytes
        self.keep = max(1, int(keep))
        self.rotations = 0
        parent = os.path.dirname(self.path) or "."
        if os.path.abspath(parent) == paths.state_dir():
            paths.ensure_state_dir()           # 0711, checked: never left to the umask
        elif not os.path.exists(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
        self.fd = self._open()

    def _open(self) -> int:
        # O_NONBLOCK for the open only: a FIFO nobody reads would block it for ever (ENXIO instead)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK,
                         self.mode)
        except OSError as e:
            if e.errno == errno.ENXIO:
                raise OSError(e.errno, "a FIFO nobody reads (or a device without its driver)") from None
            raise
        os.set_blocking(fd, True)
        return fd

    def describe(self) -> str:
        return str(self.path)

    def write(self, event: dict) -> None:
        if self.fd < 0:
            raise ValueError("audit log is closed")
        data = encode(event)
        if self.max_bytes is not None:
            self._cap(len(data))
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        if self.fsync:
            os.fsync(self.fd)

    def _cap(self, n: int) -> None:
        st = os.fstat(self.fd)
        if st.st_size + n <= self.max_bytes or st.st_size == 0:
            return
        import fcntl
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            try:
                cur = os.stat(self.path)
                live = (cur.st_ino, cur.st_dev) == (st.st_ino, st.st_dev)
            except FileNotFoundError:
                live = False
            if live and os.fstat(self.fd).st_size + n > self.max_bytes:
                for i in range(self.keep - 1, 0, -1):
                    try:
                        os.rename(f"{self.path}.{i}", f"{self.path}.{i + 1}")
                    except FileNotFoundError:
                        pass
                os.rename(self.path, f"{self.path}.1")
                self.rotations += 1
            fd = self._open()                 # the new file (ours, or the one another writer made)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def event_count(event: dict) -> int:
    """How many calls a record stands for: its `count` (a coalesced record), else 1."""
    c = event.get("count")
    return c if isinstance(c, int) and c > 0 and event.get("type") != "audit_suppressed" else 1


def _denied(event: dict) -> bool:
    return event.get("type") in SYSCALL_TYPES and event.get("action") not in ("allow", "log")


class SummarySink:
    """Counts denials while the sandbox runs; at close prints one line on stderr, e.g.

        pysandbox: 3 denials (mount ×2, ptrace ×1), 1 escape attempt — see /var/lib/pysandbox/audit.jsonl

    Nothing is printed when nothing noteworthy happened."""

    NOTABLE = ("oom_kill", "pids_limit", "timeout", "integrity_violation", "audit_lost", "limit_exceeded")
    MAX_NAMES = 8

    def __init__(self, log_path: Optional[os.PathLike | str] = None, stream: Optional[TextIO] = None,
                 sandbox: Optional[str] = None):
        self.log_path = str(log_path) if log_path is not None else None
        self.stream = stream
        self.sandbox = sandbox
        self.by_syscall: Counter[str] = Counter()
        self.escapes = 0
        self.other: Counter[str] = Counter()
        self.coalesced = 0
        self.printed: Optional[str] = None
        self.log_failed: Optional[str] = None      # why the audit log stopped taking events

    def sink_failed(self, sink: Any, error: BaseException, seq: int) -> None:
        """Called by the Recorder when another sink failed: if it is the log this summary points at,
        the summary says so instead of "see FILE" (and is printed even when nothing else is)."""
        if self.log_path is not None and getattr(sink, "path", None) is not None \
                and str(sink.path) == self.log_path and self.log_failed is None:
            self.log_failed = f"{error} (event #{seq} and later not written)"

    def describe(self) -> str:
        return "stderr summary"

    def write(self, event: dict) -> None:
        if _denied(event):
            n = event_count(event)
            self.by_syscall[(event.get("syscall") or {}).get("name", "?")] += n
            if event.get("type") == "escape_attempt":
                self.escapes += n
        elif event.get("type") in self.NOTABLE:
            self.other[event["type"]] += 1
        elif event.get("type") == "audit_suppressed" and isinstance(event.get("count"), int):
            self.coalesced += event["count"]

    def line(self) -> Optional[str]:
        n = sum(self.by_syscall.values())
        parts = []
        if n:
            names = self.by_syscall.most_common()
            shown = ", ".join(f"{k} ×{v}" for k, v in names[:self.MAX_NAMES])
            if len(names) > self.MAX_NAMES:
                shown += ", …"
            parts.append(f"{n} denial{'s' if n != 1 else ''} ({shown})")
            if self.escapes:
                parts.append(f"{self.escapes} escape attempt{'s' if self.escapes != 1 else ''}")
        for t, c in self.other.items():
            parts.append(f"{c} {t.replace('_', ' ')}{'s' if c != 1 and not t.endswith('s') else ''}")
        if self.coalesced:
            parts.append(f"{self.coalesced} coalesced by the audit rate limit")
        if self.log_failed is not None:
            who = f" [{self.sandbox}]" if self.sandbox else ""
            return (f"pysandbox{who}: error: audit log {self.log_path} failed: {self.log_failed}"
                    + (f"; {', '.join(parts)}" if parts else ""))
        if not parts:
            return None
        where = f" — see {self.log_path}" if self.log_path else ""
        who = f" [{self.sandbox}]" if self.sandbox else ""
        return f"pysandbox{who}: {', '.join(parts)}{where}"

    def close(self) -> None:
        text = self.line()
        if text and self.printed is None:
            self.printed = text
            stream = self.stream or sys.stderr
            try:
                stream.write(text + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass


_SYSLOG_PRIO = {"debug": 7, "info": 6, "notice": 5, "warning": 4, "error": 3, "critical": 2}
_SEV_ORDER = ("debug", "info", "notice", "warning", "error", "critical")


def syslog_message(event: dict) -> str:
    """Short human prefix + the full JSON event, as one syslog line."""
    bits = [f"sandbox={event.get('sandbox_name')}", f"type={event.get('type')}"]
    sc = event.get("syscall")
    if sc:
        bits.append(f"syscall={sc.get('name')}")
    if event.get("action"):
        bits.append(f"action={event['action']}")
    if event.get("technique_id"):
        bits.append(f"technique={event['technique_id']}")
    if event.get("pid"):
        bits.append(f"pid={event['pid']}")
    return _escape_text(" ".join(map(str, bits))) + " " + to_json(event)


SYSLOG_SOCKET = "/dev/log"
SYSLOG_RATE = 5.0        # messages per second per sandbox
SYSLOG_BURST = 20
SYSLOG_MAX_MESSAGE = 8192


class SyslogSink:
    """syslog: one datagram per event to the local syslog socket ($PYSANDBOX_SYSLOG_SOCKET, default
    /dev/log; journald reads it too), framed as libc's syslog(3) sends it. Events below
    min_severity are skipped. Bounded: at most `rate` messages per second (`burst` at once), each
    at most SYSLOG_MAX_MESSAGE bytes; what is over is counted (`suppressed`) and said in one
    message when the next one passes, and at close. Never blocks: a full or missing syslog socket
    drops the message (counted in `dropped`) instead of stalling the supervisor."""

    def __init__(self, ident: str = "pysandbox", facility: Optional[int] = None,
                 min_severity: str = "info", address: Optional[str] = None,
                 rate: float = SYSLOG_RATE, burst: int = SYSLOG_BURST):
        import socket
        import time
        self._time = time
        self.facility = (1 << 3) if facility is None else facility      # LOG_USER
        self.min_index = _SEV_ORDER.index(min_severity)
        self.ident = ident
        self.address = address or os.environ.get("PYSANDBOX_SYSLOG_SOCKET") or SYSLOG_SOCKET
        self.rate, self.burst = float(rate), int(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self.sent = 0
        self.suppressed = 0          # over the rate: not sent, said later
        self.dropped = 0             # the socket refused them (no syslog daemon, queue full)
        self._untold = 0
        self._last: Optional[dict] = None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)

    def describe(self) -> str:
        return "syslog"

    def _send(self, prio: int, msg: str) -> None:
        head = f"<{self.facility | prio}>{self._time.strftime('%b %e %H:%M:%S')} {self.ident}[{os.getpid()}]: "
        data = (head + msg).encode(errors="replace")[:SYSLOG_MAX_MESSAGE]
        try:
            self._sock.sendto(data, self.address)
            self.sent += 1
        except OSError:
            self.dropped += 1

    def _tell(self) -> None:
        if self._untold:
            n, self._untold = self._untold, 0
            name = (self._last or {}).get("sandbox_name")
            self._send(4, f"sandbox={name} type=audit_suppressed syslog: {n} message{'s' if n != 1 else ''} "
                          f"over the syslog rate limit ({self.rate:g}/s) not sent; the audit log has them")

    def write(self, event: dict) -> None:
        sev = event.get("severity", "info")
        if _SEV_ORDER.index(sev) < self.min_index:
            return
        now = self._time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1.0:
            self.suppressed += 1
            self._untold += 1
            self._last = event
            return
        self._tokens -= 1.0
        self._tell()
        self._send(_SYSLOG_PRIO.get(sev, 6), syslog_message(event))

    def close(self) -> None:
        self._tell()
        self._sock.close()


class MemorySink:
    """Keeps events in memory (tests, learn mode, the Python API). `limit` bounds it: the first
    limit/2 events are kept (the sandbox's start and its first denials) and the newest limit/2
    (a ring); `dropped` counts those in between. `events` is a list of what is kept, in order."""

    def __init__(self, limit: Optional[int] = None):
        from collections import deque
        self.limit = limit
        self._head: list[dict] = []
        self._headmax = None if limit is None else max(1, limit // 2)
        self._tail: deque = deque(maxlen=None if limit is None else max(1, limit - self._headmax))
        self.dropped = 0
        self.closed = False

    @property
    def events(self) -> list[dict]:
        return self._head + list(self._tail) if self._tail else self._head

    def clear(self) -> None:
        self._head.clear()
        self._tail.clear()

    def describe(self) -> str:
        return "memory"

    def write(self, event: dict) -> None:
        if self._headmax is None or len(self._head) < self._headmax:
            self._head.append(event)
            return
        if len(self._tail) == self._tail.maxlen:
            self.dropped += 1
        self._tail.append(event)

    def close(self) -> None:
        self.closed = True


class CallbackSink:
    """Calls fn(event) for every event."""

    def __init__(self, fn: Callable[[dict], Any]):
        self.fn = fn

    def describe(self) -> str:
        return getattr(self.fn, "__name__", "callback")

    def write(self, event: dict) -> None:
        self.fn(event)

    def close(self) -> None:
        pass
