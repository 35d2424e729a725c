"""One sandbox run's audit session: Recorder + default sinks + translation of the
launcher's and the limits module's outcome dicts into schema events.

    sess = open_session(sandbox_id, name, profile, log_path=None)   # JSONL + stderr summary + syslog
    launch(..., on_event=sess.emit)                                # launcher-style calls are translated
    sess.close()                                                   # prints the summary line

Pure Python (no `sandbox`/`policies` imports).
"""
from __future__ import annotations

import os
import signal as _signal

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Any, Optional, TextIO

from .events import Recorder, _warn
from .sinks import JsonlSink, SummarySink, SyslogSink, default_log_path, log_limits


class AuditLogError(OSError):
    """The audit log asked for cannot be opened."""


def _signame(sig) -> Optional[str]:
    if sig is None or sig == 0:
        return None
    if isinstance(sig, str):
        return sig
    try:
        return _signal.Signals(int(sig)).name
    except ValueError:
        return str(sig)


class Session:
    def __init__(self, recorder: Recorder, log_path: Optional[str]):
        self.recorder = recorder
        self.log_path = log_path
        self.sandbox_id = recorder.sandbox_id

    # --- the launcher's vocabulary -> schema events ---------------------------------
    def emit(self, type: str, **fields: Any) -> Optional[dict]:
        if type == "sandbox_start":
            fields.setdefault("uid", os.getuid())          # who started it
        if type == "sandbox_exit" and "status" not in fields:
            return self._exit(**fields)
        if type == "timeout" and "limit" not in fields:
            t = fields.pop("timeout", None)
            return self.recorder.emit("timeout", limit={"name": "timeout", "value": t, "unit": "s"},
                                      via=fields.pop("via", "launcher"),
                                      message=f"timed out after {t:g}s; sandbox killed" if t else None, **fields)
        if type == "integrity_violation" and "message" not in fields:
            fields["message"] = str(fields.pop("detail", "") or fields.get("what", "integrity violation"))
        return self.recorder.emit(type, **fields)

    def limit_events(self, events: list) -> dict:
        """Emit the limits module's outcome dicts; returns the resource peaks found."""
        peaks: dict[str, Any] = {}
        for ev in events or ():
            if isinstance(ev, dict) and ev.get("type") == "resources":
                peaks.update({k: v for k, v in ev.items() if k != "type" and isinstance(v, (int, float))})
        for ev in events or ():
            if not isinstance(ev, dict):
                continue
            t = ev.get("type")
            if t in ("oom_kill", "pids_limit", "cpu_throttled", "limit_exceeded"):
                name = ev.get("limit") if isinstance(ev.get("limit"), str) else t
                lim = ev.get("limit") if isinstance(ev.get("limit"), dict) else \
                    {"name": name, "value": ev.get("value"),
                     "peak": ev.get("peak") if ev.get("peak") is not None else peaks.get(f"{name}_peak")}
                detail = {k: v for k, v in ev.items()
                          if k not in ("type", "limit", "value", "peak", "via", "message")}
                self.recorder.emit("limit_exceeded" if t == "cpu_throttled" else t, limit=lim,
                                   via=ev.get("via", "cgroup"), detail=detail or None,
                                   message=ev.get("message"))
            elif t == "resources":
                pass                                  # collected above
            elif t in ("cgroup_cleanup_failed", "integrity_violation"):
                paths = ev.get("paths")
                msg = ev.get("message") or (f"cgroup left behind: {', '.join(paths)}" if paths
                                            else f"{ev.get('what', 'clean-up')}: {ev.get('detail', t)}")
                detail = ev.get("detail") if isinstance(ev.get("detail"), dict) else \
                    {k: v for k, v in ev.items() if k not in ("type", "message")}
                self.recorder.emit("integrity_violation", message=str(msg),
                                   path=paths[0] if isinstance(paths, list) and paths else ev.get("path"),
                                   pid=ev.get("pid"), comm=ev.get("comm"), detail=detail or None)
        return peaks

    def _exit(self, exit_code=None, signal=None, duration=0.0, events=None, **rest) -> dict:
        peaks = self.limit_events(events or [])
        return self.recorder.emit("sandbox_exit", status={"exit_code": exit_code, "signal": _signame(signal)},
                                  duration=max(0.0, float(duration or 0.0)), peaks=peaks or None, **rest)

    def close(self) -> None:
        self.recorder.close()


def open_session(sandbox_id: str, name: Optional[str], profile: Optional[str], *,
                 log_path: Optional[str] = None, summary: bool = True, syslog: bool = True,
                 syslog_min: str = "warning", stream: Optional[TextIO] = None) -> Session:
    """Recorder with the default sinks. An explicit log_path that cannot be opened raises
    AuditLogError; the default path failing only warns (the stderr summary stays). The log is
    size-capped and rotated (sinks.log_limits); syslog is rate-limited (sinks.SyslogSink)."""
    sinks: list = []
    path = log_path or str(default_log_path())
    max_bytes, keep = log_limits()
    try:
        sinks.append(JsonlSink(path, max_bytes=max_bytes, keep=keep))
    except OSError as e:
        if log_path:
            raise AuditLogError(e.errno, f"audit log {log_path}: {e.strerror}") from None
        _warn(f"audit log {path}: {e.strerror}; events are not written to a file")
        path = None
    if syslog and os.environ.get("PYSANDBOX_SYSLOG", "1") != "0":
        try:
            sinks.append(SyslogSink(min_severity=syslog_min))
        except Exception:  # noqa: BLE001
            pass
    if summary:
        sinks.append(SummarySink(path, stream=stream))
    return Session(Recorder(sandbox_id, name or sandbox_id, profile, sinks), path)
