"""The audit event model: one JSON object per event.

Every event carries the common envelope

    time          RFC 3339 UTC with microseconds ("2026-11-23T00:25:18.123456Z")
    seq           per-sandbox sequence number, 1, 2, 3, ... (gaps mean lost events)
    sandbox_id    unique id of this sandbox run
    sandbox_name  human name of the sandbox (may equal the id)
    profile       name of the profile the sandbox runs under
    type          one of EVENT_TYPES
    severity      one of SEVERITIES (default per type, see DEFAULT_SEVERITY)

plus per-type fields (all optional unless the schema says otherwise):

    pid, sandbox_pid, tid, comm, exe          the process concerned
    syscall {name, nr, arch, args[6], decoded{...}}
    action  allow | errno | kill | log | trap | notify
    errno, errno_name                          the answer given to a denied call
    via     user_notif | kmsg | cgroup | supervisor | launcher
    technique, technique_id                    escape attempts
    limit {name, value, peak}                  oom_kill, pids_limit, timeout
    path                                       integrity violations, paths named by a syscall
    status {exit_code, signal}, duration, peaks{...}   sandbox_exit
    argv, message, detail
    count, first_time, last_time               a coalesced record: it stands for `count` calls
                                               (absent: 1) made between first_time and last_time
    suppressed [{type, syscall, technique_id, count}]   audit_suppressed: what was coalesced

The machine-readable contract is audit/schema/event.schema.json (documented in docs/audit.md).
This module is pure Python: it never imports `sandbox` or `policies`.
"""
from __future__ import annotations

import errno as _errno
import threading
import time

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Any, Iterable, Optional

SCHEMA_VERSION = 1

SEVERITIES = ("debug", "info", "notice", "warning", "error", "critical")

DEFAULT_SEVERITY = {
    "sandbox_start": "info",
    "sandbox_exit": "info",
    "seccomp_denied": "warning",
    "seccomp_killed": "error",
    "seccomp_logged": "notice",     # log rules, and every call observed in learn mode
    "oom_kill": "error",
    "pids_limit": "warning",
    "timeout": "warning",
    "limit_exceeded": "warning",    # other cgroup limits (cpu throttling, io), for the limits module
    "escape_attempt": "critical",
    "integrity_violation": "critical",
    "audit_lost": "error",          # the audit path itself lost records (e.g. kernel printk rate limit)
    "audit_suppressed": "warning",  # events over the sandbox's audit rate limit, counted not written (throttle.py)
    "egress.allowed": "info",       # the egress proxy let a connection to a name through (sandbox/network/egress/)
    "egress.denied": "warning",     # the egress proxy or its resolver refused a name, an address or a protocol
    "egress.closed": "info",        # a relayed (allowed) connection ended: bytes each way, duration
    # egress interception (sandbox/network/egress/intercept.py, docs/network.md "Secrets"): one per request
    "egress.http.allowed": "info",
    "egress.http.denied": "warning",
    "egress.http.upstream_error": "warning",
    "egress.secret_exfiltration": "critical",   # a secret's placeholder sent to a host it is not for
    "egress.secret_reflected": "error",         # an upstream's answer held a secret's value: cut off
    "landlock_denied": "warning",   # a Landlock denial from the kernel's audit records (sandbox/landlock.py)
}
EVENT_TYPES = tuple(DEFAULT_SEVERITY)

# Events that describe one denied/observed system call.
SYSCALL_TYPES = ("seccomp_denied", "seccomp_killed", "seccomp_logged", "escape_attempt")

VIA = ("user_notif", "kmsg", "cgroup", "supervisor", "launcher")
ACTIONS = ("allow", "errno", "kill", "log", "trap", "notify")

ENVELOPE = ("time", "seq", "sandbox_id", "sandbox_name", "profile", "type", "severity")


def rfc3339(ts: Optional[float] = None) -> str:
    """Seconds since the epoch -> '2026-11-23T00:25:18.123456Z' (UTC)."""
    if ts is None:
        ts = time.time()
    sec = int(ts // 1)
    usec = int(round((ts - sec) * 1e6))
    if usec >= 1000000:
        sec, usec = sec + 1, usec - 1000000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{usec:06d}Z"


def parse_time(text: str) -> float:
    """RFC 3339 / ISO 8601 timestamp -> seconds since the epoch. Naive times are UTC."""
    from datetime import datetime, timezone
    t = text.strip()
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    dt = datetime.fromisoformat(t)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def errno_name(num: Optional[int]) -> Optional[str]:
    if num is None:
        return None
    return _errno.errorcode.get(num, str(num))


class EventError(ValueError):
    """An event that does not fit the model (unknown type, bad field)."""


class Recorder:
    """Builds events for one sandbox and hands each to every sink, in order.

    Thread-safe: `emit` may be called from the launcher, the seccomp supervisor
    thread and the limits watcher at once; events get consecutive `seq` numbers
    and reach every sink in that order. A failing sink is reported once on
    stderr and then skipped: auditing never takes the sandbox down.
    """

    def __init__(self, sandbox_id: str, name: Optional[str] = None, profile: Optional[str] = None,
                 sinks: Iterable[Any] = ()):
        self.sandbox_id = str(sandbox_id)
        self.name = str(name) if name is not None else self.sandbox_id
        self.profile = profile
        self.sinks = list(sinks)
        self._lock = threading.Lock()
        self._seq = 0
        self._closed = False
        self._broken: set[int] = set()
        self.counts: dict[str, int] = {}

    def add_sink(self, sink: Any) -> None:
        with self._lock:
            self.sinks.append(sink)

    def build(self, type: str, **fields: Any) -> dict:
        """The event dict (without seq), validated against the model; does not record it."""
        if type not in DEFAULT_SEVERITY:
            raise EventError(f"unknown audit event type {type!r}")
        sev = fields.pop("severity", None) or DEFAULT_SEVERITY[type]
        if sev not in SEVERITIES:
            raise EventError(f"unknown severity {sev!r}")
        ts = fields.pop("time", None)
        ev: dict[str, Any] = {
            "time": ts if isinstance(ts, str) else rfc3339(ts),
            "seq": 0,
            "sandbox_id": self.sandbox_id,
            "sandbox_name": self.name,
            "profile": self.profile,
            "type": type,
            "severity": sev,
        }
        for k, v in fields.items():
            if v is None:
                continue
            if k in ENVELOPE:
                raise EventError(f"field {k!r} is part of the envelope")
            ev[k] = v
        if "errno" in ev and "errno_name" not in ev:
            ev["errno_name"] = errno_name(ev["errno"])
        return ev

    def emit(self, type: str, **fields: Any) -> dict:
        """Record one event on every sink; returns the event dict."""
        ev = self.build(type, **fields)
        with self._lock:
            if self._closed:
                raise EventError("recorder is closed")
            self._seq += 1
            ev["seq"] = self._seq
            self.counts[type] = self.counts.get(type, 0) + 1
            for i, sink in enumerate(self.sinks):
                if i in self._broken:
                    continue
                try:
                    sink.write(ev)
                except Exception as e:  # noqa: BLE001 - a sink must never kill the sandbox
                    self._broken.add(i)
                    _warn(f"audit sink {getattr(sink, 'describe', lambda: sink.__class__.__name__)()} "
                          f"failed, disabled: {e}")
                    for j, other in enumerate(self.sinks):     # the summary must not say "see FILE"
                        hook = getattr(other, "sink_failed", None)
                        if j != i and j not in self._broken and hook is not None:
                            try:
                                hook(sink, e, ev["seq"])
                            except Exception:  # noqa: BLE001
                                pass
        return ev

    @property
    def seq(self) -> int:
        return self._seq

    def close(self) -> None:
        """Close every sink (the summary sink prints its line now). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sinks = list(self.sinks)
        for sink in sinks:
            try:
                sink.close()
            except Exception as e:  # noqa: BLE001
                _warn(f"audit sink close failed: {e}")

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _warn(msg: str) -> None:
    import sys
    try:
        sys.stderr.write(f"pysandbox: warning: {msg}\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001
        pass


def syscall_event_fields(name: Optional[str], nr: Optional[int], args: Optional[Iterable[int]],
                         action: str, *, errno: Optional[int] = None, via: str = "user_notif",
                         arch: Optional[str] = None, decoded: Optional[dict] = None,
                         clone3_flags: Optional[int] = None, **extra: Any) -> tuple[str, dict]:
    """Classify one denied/observed call: -> (event type, fields) ready for Recorder.emit.

    A call in the escape set (audit.techniques) becomes `escape_attempt` with its
    technique label; otherwise `seccomp_killed` (kill/trap), `seccomp_logged`
    (log/allow: learn mode) or `seccomp_denied` (errno).
    """
    from .techniques import classify, decode_args

    argl = [int(a) & 0xFFFFFFFFFFFFFFFF for a in args] if args is not None else None
    sc: dict[str, Any] = {"name": name or (f"syscall_{nr}" if nr is not None else "unknown"), "nr": nr}
    if arch:
        sc["arch"] = arch
    if argl is not None:
        sc["args"] = argl
    dec = decode_args(sc["name"], argl) if argl is not None else {}
    if decoded:
        dec.update(decoded)
    if clone3_flags is not None:
        from .techniques import CLONE_FLAGS, flag_names
        dec["flags"] = "|".join(flag_names(clone3_flags, CLONE_FLAGS)) or "0"
    if dec:
        sc["decoded"] = dec
    fields: dict[str, Any] = {"syscall": sc, "action": action, "via": via}
    if errno is not None and action in ("errno", "notify"):
        fields["errno"] = errno
    tech = (classify(sc["name"], argl, clone3_flags=clone3_flags)
            if action not in ("allow", "log") else None)
    if tech is not None:
        fields["technique_id"], fields["technique"] = tech
        etype = "escape_attempt"
    elif action in ("kill", "trap"):
        etype = "seccomp_killed"
    elif action in ("allow", "log"):
        etype = "seccomp_logged"
    else:
        etype = "seccomp_denied"
    if action == "kill" and etype == "escape_attempt":
        fields["killed"] = True
    fields.update({k: v for k, v in extra.items() if v is not None})
    return etype, fields
