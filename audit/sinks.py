"""Where audit events go: an append-only JSONL file, a one-line stderr summary, syslog.

A sink is any object with `write(event: dict)` and `close()`. Sinks are driven by
`audit.events.Recorder`, which serialises calls (sinks need no locking of their own).
"""
from __future__ import annotations

import json
import os
import sys
from collections import Counter
from typing import Any, Callable, Optional, TextIO

from .events import SYSCALL_TYPES

LOG_NAME = "audit.jsonl"


# Paths are plain strings (os.path): pathlib costs ~10 ms of imports on the launch path.

def state_dir(euid: Optional[int] = None) -> str:
    """pysandbox's state directory: /var/lib/pysandbox as root, else $XDG_STATE_HOME/pysandbox
    (default ~/.local/state/pysandbox)."""
    if euid is None:
        euid = os.geteuid()
    if euid == 0:
        return "/var/lib/pysandbox"
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "pysandbox")
    return os.path.join(os.path.expanduser("~"), ".local", "state", "pysandbox")


def default_log_path(euid: Optional[int] = None) -> str:
    """The audit log used when no --audit-log is given ($PYSANDBOX_AUDIT_LOG overrides)."""
    env = os.environ.get("PYSANDBOX_AUDIT_LOG")
    if env:
        return env
    return os.path.join(state_dir(euid), LOG_NAME)


def encode(event: dict) -> bytes:
    """One event -> one JSONL line (UTF-8, no embedded newlines, keys in insertion order)."""
    return (json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str) + "\n").encode()


class JsonlSink:
    """Append-only JSON Lines file. Each event is one write(2) on an O_APPEND descriptor, so
    it is in the kernel (safe from a crash of pysandbox) as soon as `write` returns, and
    concurrent sandboxes appending to the same log never interleave inside a line.
    With fsync=True every event is also forced to disk (survives a host crash)."""

    def __init__(self, path: os.PathLike | str, fsync: bool = False, mode: int = 0o600):
        self.path = os.fspath(path)
        self.fsync = fsync
        parent = os.path.dirname(self.path) or "."
        if not os.path.exists(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, mode)

    def describe(self) -> str:
        return str(self.path)

    def write(self, event: dict) -> None:
        if self.fd < 0:
            raise ValueError("audit log is closed")
        data = encode(event)
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        if self.fsync:
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


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
        self.printed: Optional[str] = None

    def describe(self) -> str:
        return "stderr summary"

    def write(self, event: dict) -> None:
        if _denied(event):
            self.by_syscall[(event.get("syscall") or {}).get("name", "?")] += 1
            if event.get("type") == "escape_attempt":
                self.escapes += 1
        elif event.get("type") in self.NOTABLE:
            self.other[event["type"]] += 1

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
    return " ".join(bits) + " " + json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str)


class SyslogSink:
    """syslog(3) via Python's syslog module (journald reads /dev/log too). Events below
    min_severity are skipped. Without a syslog daemon the messages are dropped by libc."""

    def __init__(self, ident: str = "pysandbox", facility: Optional[int] = None,
                 min_severity: str = "info"):
        import syslog
        self._syslog = syslog
        self.facility = syslog.LOG_USER if facility is None else facility
        self.min_index = _SEV_ORDER.index(min_severity)
        syslog.openlog(ident, syslog.LOG_PID, self.facility)

    def describe(self) -> str:
        return "syslog"

    def write(self, event: dict) -> None:
        sev = event.get("severity", "info")
        if _SEV_ORDER.index(sev) < self.min_index:
            return
        self._syslog.syslog(self.facility | _SYSLOG_PRIO.get(sev, 6), syslog_message(event))

    def close(self) -> None:
        pass


class MemorySink:
    """Keeps events in a list (tests, learn mode). `limit` bounds memory: oldest dropped,
    `dropped` counts them."""

    def __init__(self, limit: Optional[int] = None):
        self.events: list[dict] = []
        self.limit = limit
        self.dropped = 0
        self.closed = False

    def describe(self) -> str:
        return "memory"

    def write(self, event: dict) -> None:
        self.events.append(event)
        if self.limit is not None and len(self.events) > self.limit:
            del self.events[0]
            self.dropped += 1

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
