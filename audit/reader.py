"""Reading the audit log back: filters, human formatting, summaries, follow (tail -f).

Used by `pysandbox audit show|tail|summary`. Lines that are not valid JSON objects
(e.g. a torn last line after a power loss) are skipped and counted, never fatal.
"""
from __future__ import annotations

import errno
import json
import os
import re
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

from .events import EVENT_TYPES, SEVERITIES, SYSCALL_TYPES, parse_time

_REL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*\Z")
_REL_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


class FilterError(ValueError):
    pass


def parse_since(text: str, now: Optional[float] = None) -> float:
    """'10m', '2h', '1d', '30s' (ago) or an RFC 3339 / ISO date -> epoch seconds."""
    m = _REL.match(text)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _REL_UNITS[m.group(2)]
    try:
        return parse_time(text)
    except ValueError:
        raise FilterError(f"--since: {text!r} is neither a duration (30s, 10m, 2h, 1d) "
                          f"nor an RFC 3339 time") from None


@dataclass
class Filter:
    sandboxes: tuple[str, ...] = ()     # id, id prefix, or name
    types: tuple[str, ...] = ()
    since: Optional[float] = None
    syscalls: tuple[str, ...] = ()
    min_severity: Optional[str] = None

    def __post_init__(self):
        for t in self.types:
            if t not in EVENT_TYPES and t != "denial":
                raise FilterError(f"--type: unknown event type {t!r} (one of {', '.join(EVENT_TYPES)}, denial)")
        if self.min_severity is not None and self.min_severity not in SEVERITIES:
            raise FilterError(f"--severity: unknown severity {self.min_severity!r}")

    def match(self, ev: dict) -> bool:
        if self.sandboxes:
            sid, name = str(ev.get("sandbox_id", "")), str(ev.get("sandbox_name", ""))
            if not any(s == name or sid.startswith(s) for s in self.sandboxes):
                return False
        if self.types:
            t = ev.get("type")
            ok = t in self.types or ("denial" in self.types and is_denial(ev))
            if not ok:
                return False
        if self.syscalls:
            sc = ev.get("syscall") or {}
            if sc.get("name") not in self.syscalls:
                return False
        if self.since is not None:
            try:
                if parse_time(str(ev.get("time", ""))) < self.since:
                    return False
            except ValueError:
                return False
        if self.min_severity is not None:
            sev = ev.get("severity", "info")
            if sev in SEVERITIES and SEVERITIES.index(sev) < SEVERITIES.index(self.min_severity):
                return False
        return True


def is_denial(ev: dict) -> bool:
    return ev.get("type") in SYSCALL_TYPES and ev.get("action") not in ("allow", "log")


@dataclass
class ReadStats:
    lines: int = 0
    bad: int = 0


MAX_LINE = 1 << 20          # a record longer than this is not one of ours: skipped (and counted) unread

# the types the readers and formatters rely on, per field (absent or None is always fine): a record
# of another shape — a log that is not pysandbox's, or edited — is skipped and counted as bad
_SHAPE = {**dict.fromkeys(("type", "time", "severity", "sandbox_id", "sandbox_name", "profile", "technique",
                           "comm", "via", "action", "errno_name", "first_time", "last_time"), str),
          **dict.fromkeys(("syscall", "limit", "status", "decoded"), dict),
          **dict.fromkeys(("pid", "sandbox_pid", "seq"), int),
          "duration": (int, float), "argv": list, "suppressed": list}


def well_formed(ev: dict) -> bool:
    """Whether a JSON object has the field types of a pysandbox audit record (see _SHAPE)."""
    for k, t in _SHAPE.items():
        v = ev.get(k)
        if v is not None and (not isinstance(v, t) or isinstance(v, bool)):
            return False
    sc = ev.get("syscall") or {}
    args = sc.get("args")
    return (isinstance(sc.get("name", ""), str) and isinstance(sc.get("decoded") or {}, dict)
            and (args is None or (isinstance(args, list) and all(type(a) is int for a in args)))
            and all(isinstance(a, str) for a in ev.get("argv") or ())
            and (ev.get("status") is None or isinstance(ev["status"].get("signal") or "", str)))


def parse_lines(lines: Iterable[str], stats: Optional[ReadStats] = None) -> Iterator[dict]:
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if stats is not None:
            stats.lines += 1
        try:
            ev = json.loads(line) if len(line) <= MAX_LINE else None
        except (ValueError, RecursionError):
            ev = None
        if not isinstance(ev, dict) or not well_formed(ev):
            if stats is not None:
                stats.bad += 1
            continue
        yield ev


def _bounded_lines(f) -> Iterator[str]:
    """f's lines, each at most MAX_LINE characters: a longer one is yielded as a marker that
    parse_lines counts as bad, its rest read in pieces and dropped (memory stays bounded)."""
    while True:
        line = f.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) > MAX_LINE and not line.endswith("\n"):
            while True:
                rest = f.readline(MAX_LINE)
                if not rest or rest.endswith("\n"):
                    break
            yield "-"
            continue
        yield line


def open_log(path: str):
    """A log file for reading: a regular file only (opened without blocking: a FIFO or a device
    is refused at once, never read), as a text file."""
    import stat
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file: not an audit log", path)
        os.set_blocking(fd, True)
        return open(fd, "r", encoding="utf-8", errors="replace")
    except BaseException:
        os.close(fd)
        raise


def count(ev: dict) -> int:
    """The calls a record stands for: `count` of a coalesced record, else 1 (audit/throttle.py).
    An audit_suppressed record's count repeats what the coalesced records count: 1 here."""
    c = ev.get("count")
    if ev.get("type") == "audit_suppressed" or not isinstance(c, int) or isinstance(c, bool) or c < 1:
        return 1
    return c


def log_files(path: os.PathLike | str) -> list[str]:
    """The log and its rotated files (audit/sinks.py JsonlSink), oldest first."""
    from .sinks import rotated_paths
    return rotated_paths(os.fspath(path))


def read_events(path: os.PathLike | str, flt: Optional[Filter] = None,
                stats: Optional[ReadStats] = None, rotated: bool = False) -> Iterator[dict]:
    """Events of an audit log, oldest first, that pass the filter; with rotated=True its
    rotated files (path.N .. path.1) first. A rotated file that vanishes meanwhile is skipped."""
    paths = log_files(path) if rotated else [os.fspath(path)]
    for i, p in enumerate(paths):
        try:
            f = open_log(p)
        except FileNotFoundError:
            if i == len(paths) - 1:
                raise
            continue
        with f:
            for ev in parse_lines(_bounded_lines(f), stats):
                if flt is None or flt.match(ev):
                    yield ev


def last_events(path: os.PathLike | str, n: int, flt: Optional[Filter] = None,
                rotated: bool = False) -> list[dict]:
    from collections import deque
    return list(deque(read_events(path, flt, rotated=rotated), maxlen=n))


def follow(path: os.PathLike | str, flt: Optional[Filter] = None, from_end: bool = True,
           interval: float = 0.25, stop=None) -> Iterator[dict]:
    """Yield events appended to the log (like tail -f). Survives the file not existing
    yet and being replaced (log rotation). `stop()` returning True ends the loop."""
    path = os.fspath(path)
    f = None
    ino = None
    buf = ""
    first = True
    while True:
        if f is None:
            try:
                f = open_log(path)
                ino = os.fstat(f.fileno()).st_ino
                if first and from_end:
                    f.seek(0, os.SEEK_END)
                first = False
            except FileNotFoundError:
                f = None
                first = False
        if f is not None:
            chunk = f.read()
            if chunk:
                buf += chunk
                *complete, buf = buf.split("\n")
                for ev in parse_lines(complete):
                    if flt is None or flt.match(ev):
                        yield ev
                continue
            try:
                st = os.stat(path)
                if st.st_ino != ino or st.st_size < f.tell():
                    f.close()
                    f, buf = None, ""
                    continue
            except FileNotFoundError:
                pass
        if stop is not None and stop():
            break
        time.sleep(interval)
    if f is not None:
        f.close()


# --- formatting ----------------------------------------------------------------

def _short_time(t: str) -> str:
    # 2026-11-23T00:25:18.123456Z -> 2026-11-23 00:25:18
    return t[:19].replace("T", " ") if len(t) >= 19 else t


def format_syscall(ev: dict) -> str:
    sc = ev.get("syscall") or {}
    name = sc.get("name", "?")
    args = sc.get("args")
    dec = sc.get("decoded") or {}
    inner = []
    if dec:
        inner = [f"{k}={v}" for k, v in dec.items()]
    elif args is not None:
        inner = [hex(a) for a in args[:6]]
    s = f"{name}({', '.join(str(x) for x in inner)})"
    act = ev.get("action")
    if act in ("errno", "notify") and ev.get("errno_name"):
        s += f" -> {ev['errno_name']}"
    elif act:
        s += f" -> {act}"
    if ev.get("count") is not None and ev.get("type") != "audit_suppressed":
        s += f" ×{ev['count']} ({_short_time(str(ev.get('first_time', '')))[11:]}"
        s += f"..{_short_time(str(ev.get('last_time', '')))[11:]})"
    return s


_CTRL = {i: f"\\x{i:02x}" for i in list(range(0x20)) + [0x7f] + list(range(0x80, 0xa0))}


def safe(text) -> str:
    """Strings that came from inside a sandbox (paths, comm, argv) may carry terminal escape
    sequences: show control characters escaped, never raw."""
    return str(text).translate(_CTRL)


def format_event(ev: dict) -> str:
    """One human line per event (control characters escaped: see safe())."""
    return safe(_format_event(ev))


def _format_event(ev: dict) -> str:
    t = ev.get("type", "?")
    parts = [_short_time(str(ev.get("time", ""))), str(ev.get("sandbox_name") or ev.get("sandbox_id", "?")),
             f"{ev.get('severity', ''):8}", f"{t:19}"]
    if ev.get("syscall"):
        parts.append(format_syscall(ev))
    if ev.get("technique"):
        parts.append(f"[{ev['technique']}]")
    lim = ev.get("limit")
    if lim and t != "audit_suppressed":
        parts.append(f"{lim.get('name')} limit {lim.get('value')} peak {lim.get('peak')}")
    if ev.get("path"):
        parts.append(f"path={ev['path']}")
    st = ev.get("status")
    if st:
        if st.get("signal"):
            parts.append(f"killed by {st['signal']}")
        else:
            parts.append(f"exit {st.get('exit_code')}")
        if ev.get("duration") is not None:
            parts.append(f"after {ev['duration']:.3f}s")
    if t == "sandbox_start" and ev.get("argv"):
        parts.append(" ".join(ev["argv"]))
    if ev.get("pid") is not None:
        who = f"pid {ev['pid']}"
        if ev.get("sandbox_pid") is not None:
            who += f"/{ev['sandbox_pid']}"
        if ev.get("comm"):
            who += f" {ev['comm']}"
        parts.append(f"({who})")
    if t == "audit_suppressed" and isinstance(ev.get("suppressed"), list):
        parts.append(", ".join(f"{x.get('syscall') or x.get('type')} ×{x.get('count')}"
                               for x in ev["suppressed"][:8] if isinstance(x, dict)))
    if ev.get("message") and not ev.get("syscall"):
        parts.append(str(ev["message"]))
    if ev.get("via") and ev.get("via") != "user_notif" and ev.get("syscall"):
        parts.append(f"via {ev['via']}")
    return "  ".join(parts)


@dataclass
class SandboxSummary:
    sandbox_id: str
    name: str
    profile: Optional[str] = None
    first: Optional[str] = None
    last: Optional[str] = None
    types: Counter = field(default_factory=Counter)
    denials: Counter = field(default_factory=Counter)
    techniques: Counter = field(default_factory=Counter)
    exit: Optional[dict] = None
    suppressed: int = 0             # events coalesced by the rate limit (counted in the denials)

    def to_dict(self) -> dict:
        return {"sandbox_id": self.sandbox_id, "sandbox_name": self.name, "profile": self.profile,
                "first": self.first, "last": self.last, "events": dict(self.types),
                "denials": dict(self.denials.most_common()), "techniques": dict(self.techniques.most_common()),
                "exit": self.exit, "coalesced": self.suppressed}


def summarize(events: Iterable[dict]) -> list[SandboxSummary]:
    by: "OrderedDict[str, SandboxSummary]" = OrderedDict()
    for ev in events:
        sid = str(ev.get("sandbox_id", "?"))
        s = by.get(sid)
        if s is None:
            s = by[sid] = SandboxSummary(sid, str(ev.get("sandbox_name") or sid), ev.get("profile"))
        s.first = s.first or ev.get("time")
        s.last = ev.get("time")
        s.types[ev.get("type", "?")] += 1                  # records
        n = count(ev)                                      # calls (a coalesced record: its count)
        if is_denial(ev):
            s.denials[(ev.get("syscall") or {}).get("name", "?")] += n
        if ev.get("technique"):
            s.techniques[ev["technique"]] += n
        c = ev.get("count")
        if ev.get("type") == "audit_suppressed" and isinstance(c, int) and not isinstance(c, bool) and c > 0:
            s.suppressed += c
        if ev.get("type") == "sandbox_exit":
            s.exit = {"status": ev.get("status"), "duration": ev.get("duration")}
    return list(by.values())


def format_summary(summaries: list[SandboxSummary]) -> str:
    if not summaries:
        return "no events"
    out = []
    total = Counter()
    for s in summaries:
        total.update(s.denials)
        head = f"{s.name}"
        if s.name != s.sandbox_id:
            head += f" ({s.sandbox_id})"
        if s.profile:
            head += f" profile={s.profile}"
        head += f"  {_short_time(s.first or '')} .. {_short_time(s.last or '')}"
        out.append(head)
        out.append("  events: " + ", ".join(f"{k} {v}" for k, v in s.types.most_common()))
        if s.denials:
            out.append("  denials: " + ", ".join(f"{k} ×{v}" for k, v in s.denials.most_common()))
        for tech, c in s.techniques.most_common():
            out.append(f"  escape attempt ×{c}: {tech}")
        if s.suppressed:
            out.append(f"  rate limit: {s.suppressed} events coalesced into records with a count")
        if s.exit and s.exit.get("status"):
            st = s.exit["status"]
            out.append(f"  exit: {('signal ' + str(st['signal'])) if st.get('signal') else st.get('exit_code')}")
    out.append(f"{len(summaries)} sandbox{'es' if len(summaries) != 1 else ''}, "
               f"{sum(total.values())} denials"
               + (f" ({', '.join(f'{k} ×{v}' for k, v in total.most_common(8))})" if total else ""))
    return safe("\n".join(out)).replace("\\x0a", "\n")
