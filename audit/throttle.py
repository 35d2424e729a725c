"""Per-sandbox audit rate limit: a token bucket, coalescing of repeats, a suppression summary.

A program in a sandbox decides how often it makes a denied call; without a bound, four threads
looping a denied `mount()` wrote 18 000 records (11 MiB) in 3 s. The supervisor that answers
the calls (sandbox/notify/supervisor.py) asks a Throttle about each event before it does the costly part
(reading /proc, building and writing the record):

    thr = Throttle(rate=20, burst=100)
    if thr.admit(etype, fields):     # True: write this event in full
        ...
    for etype, fields in thr.due():  # coalesced records whose time has come
        emit(etype, **fields)
    ... at the end of the sandbox:
    for etype, fields in thr.finish():   # every pending coalesced record + one audit_suppressed
        emit(etype, **fields)

Rules (docs/audit.md, "Rate limit"):
* The kind of an event is (type, syscall, technique, action, errno, args class); the args class is
  the decoded flags/request/command of the call (not pids, devices or strings read from memory).
* The first event of each kind is always written in full, whatever the bucket holds.
* A repeat is written in full while the bucket has a token (rate per second, burst at most);
  otherwise it is counted into its kind's coalesced record: the same type, the kind's fields,
  `count` (the calls it stands for), `first_time`, `last_time`. A kind coalescing stays so until
  its record is written: at most every `interval` seconds (a token each), and at finish().
* finish() writes one `audit_suppressed` record: how many events of each kind were coalesced.
  Counts add up: the `count`s of a sandbox's records (1 when absent) are the calls it made.
* Memory is bounded: at most MAX_KINDS kinds with their args class; beyond, the args class is
  dropped from the key (kinds then bounded by the syscall table), then everything new shares one
  overflow kind.

`pace()` bounds the supervisor's own work: coalesced events are answered at most `pace_rate`
per second (the caller waits the returned delay before answering), so a flooding program cannot
keep the supervisor's CPU busy either; its denied calls just become slower.

Pure Python: no `sandbox`/`policies` imports.
"""
from __future__ import annotations

import time

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

from .events import rfc3339

DEFAULT_RATE = 10.0          # full records per second per sandbox, sustained
DEFAULT_BURST = 100          # full records in a burst
MAX_RATE = 1000.0            # what a profile may ask for at most (the profile's author is not trusted)
MAX_BURST = 10000
COALESCE_INTERVAL = 2.0      # a kind's coalesced record at most every 2 s
PACE_RATE = 1000.0           # coalesced calls answered per second at most (supervisor CPU bound)
PACE_BURST = 200
MAX_KINDS = 256              # kinds keyed with their args class
MAX_COARSE = 2048            # kinds without it (bounded by the syscall table in practice)
MAX_LISTED = 64              # kinds listed in the audit_suppressed record

# per-call values that do not make a different kind of call
_NOT_CLASS = frozenset({"target_pid", "dev", "exit_signal"})
_OVERFLOW = ("*", "*", None, None, None, None)


class _Kind:
    __slots__ = ("template", "pending", "since", "first", "last", "total")

    def __init__(self):
        self.template: Optional[tuple] = None
        self.pending = 0           # calls counted since this kind's last coalesced record
        self.since = 0.0           # monotonic time of the first of them
        self.first = 0.0           # wall time of the first/last of them
        self.last = 0.0
        self.total = 0             # calls coalesced over the sandbox's life


def kind_key(etype: str, fields: dict, with_class: bool = True) -> tuple:
    sc = fields.get("syscall") or {}
    cls = None
    if with_class:
        dec = sc.get("decoded") or {}
        cls = tuple(sorted((k, str(v)) for k, v in dec.items() if k not in _NOT_CLASS)) or None
    return (etype, sc.get("name"), fields.get("technique_id"), fields.get("action"), fields.get("errno"), cls)


def _template(etype: str, fields: dict) -> tuple:
    """What a coalesced record says about its calls: the kind's fields, no per-call values."""
    sc = fields.get("syscall") or {}
    out_sc: dict[str, Any] = {k: sc[k] for k in ("name", "nr", "arch") if k in sc}
    dec = {k: v for k, v in (sc.get("decoded") or {}).items() if k not in _NOT_CLASS}
    if dec:
        out_sc["decoded"] = dec
    out: dict[str, Any] = {"syscall": out_sc}
    for k in ("action", "errno", "via", "rule", "technique", "technique_id", "killed"):
        if fields.get(k) is not None:
            out[k] = fields[k]
    return etype, out


class Throttle:
    """One sandbox's rate limit (not thread-safe: one supervisor drives it)."""

    def __init__(self, rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST,
                 interval: float = COALESCE_INTERVAL, pace_rate: float = PACE_RATE,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.rate = max(0.001, min(float(rate), MAX_RATE))
        self.burst = max(1, min(int(burst), MAX_BURST))
        self.interval = float(interval)
        self.pace_rate = float(pace_rate)
        self._clock, self._wall = clock, wall
        now = clock()
        self._tokens = float(self.burst)
        self._stamp = now
        self._pace_tokens = float(PACE_BURST)
        self._pace_stamp = now
        self._kinds: dict[tuple, _Kind] = {}
        self._fine = 0
        self.written = 0             # events admitted in full
        self.coalesced = 0           # events counted into coalesced records
        self.records = 0             # coalesced records handed out
        self._first_wall = self._last_wall = 0.0

    # --- the bucket ----------------------------------------------------------------------
    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def _kind(self, etype: str, fields: dict) -> tuple[_Kind, bool]:
        key = kind_key(etype, fields)
        k = self._kinds.get(key)
        if k is not None:
            return k, False
        if self._fine >= MAX_KINDS:
            key = kind_key(etype, fields, with_class=False)
            k = self._kinds.get(key)
            if k is not None:
                return k, False
            if len(self._kinds) >= MAX_KINDS + MAX_COARSE:
                key = _OVERFLOW
                k = self._kinds.get(key)
                if k is not None:
                    return k, False
        else:
            self._fine += 1
        k = self._kinds[key] = _Kind()
        return k, True

    def admit(self, etype: str, fields: dict) -> bool:
        """True: record this event in full. False: it was counted into its kind's coalesced
        record (the caller answers the call and records nothing now)."""
        now = self._clock()
        self._refill(now)
        k, new = self._kind(etype, fields)
        if new:                                   # the first of each kind: always written
            self._tokens = max(0.0, self._tokens - 1.0)
            self.written += 1
            return True
        if k.pending == 0 and self._tokens >= 1.0:
            self._tokens -= 1.0
            self.written += 1
            return True
        wall = self._wall()
        if k.pending == 0:
            k.since, k.first = now, wall
            if k.template is None:
                k.template = _template(etype, fields)
        k.pending += 1
        k.total += 1
        k.last = wall
        if not self.coalesced:
            self._first_wall = wall
        self._last_wall = wall
        self.coalesced += 1
        return False

    def pace(self) -> float:
        """Seconds the supervisor should wait before answering the coalesced call it just
        counted (0 while under pace_rate)."""
        now = self._clock()
        if now > self._pace_stamp:
            self._pace_tokens = min(float(PACE_BURST), self._pace_tokens + (now - self._pace_stamp) * self.pace_rate)
            self._pace_stamp = now
        self._pace_tokens -= 1.0
        if self._pace_tokens >= 0:
            return 0.0
        return -self._pace_tokens / self.pace_rate

    # --- coalesced records -----------------------------------------------------------------
    def _record(self, k: _Kind) -> tuple[str, dict]:
        etype, tmpl = k.template
        fields = dict(tmpl)
        fields["count"] = k.pending
        fields["first_time"] = rfc3339(k.first)
        fields["last_time"] = rfc3339(k.last)
        fields["message"] = (f"{k.pending} call{'s' if k.pending != 1 else ''} coalesced "
                             f"(audit rate limit {self.rate:g}/s, burst {self.burst})")
        k.pending = 0
        self.records += 1
        return etype, fields

    def due(self, force: bool = False) -> list:
        """Coalesced records to write now: kinds whose record is `interval` old, one token
        each (all of them with force)."""
        out = []
        now = self._clock()
        self._refill(now)
        for k in self._kinds.values():
            if not k.pending:
                continue
            if not force:
                if now - k.since < self.interval or self._tokens < 1.0:
                    continue
                self._tokens -= 1.0
            out.append(self._record(k))
        return out

    def next_due(self) -> Optional[float]:
        """Monotonic time at which due() will have a record to give, or None (nothing pending):
        so that a flood that stopped still gets its coalesced record without a new call."""
        pending = [k.since for k in self._kinds.values() if k.pending]
        if not pending:
            return None
        now = self._clock()
        self._refill(now)
        token_at = now if self._tokens >= 1.0 else now + (1.0 - self._tokens) / self.rate
        return max(min(pending) + self.interval, token_at)

    def finish(self) -> list:
        """At the end of the sandbox: every pending coalesced record, then one
        `audit_suppressed` record (when anything was coalesced)."""
        out = self.due(force=True)
        if self.coalesced:
            kinds = sorted((k for k in self._kinds.values() if k.total), key=lambda k: -k.total)
            listed = []
            for k in kinds[:MAX_LISTED]:
                etype, t = k.template
                item = {"type": etype, "syscall": (t.get("syscall") or {}).get("name"), "count": k.total}
                if t.get("technique_id"):
                    item["technique_id"] = t["technique_id"]
                listed.append(item)
            fields: dict[str, Any] = {
                "count": self.coalesced, "suppressed": listed,
                "first_time": rfc3339(self._first_wall), "last_time": rfc3339(self._last_wall), "via": "supervisor",
                "limit": {"name": "audit_rate", "value": self.rate, "unit": "records/s"},
                "detail": {"burst": self.burst, "interval": self.interval, "written": self.written,
                           "coalesced_records": self.records, "kinds": len(kinds)},
                "message": (f"{self.coalesced} event{'s' if self.coalesced != 1 else ''} over the audit rate "
                            f"limit ({self.rate:g}/s, burst {self.burst}) were not recorded one by one: "
                            f"they are counted in {self.records} record{'s' if self.records != 1 else ''} "
                            f"with a 'count'"),
            }
            if len(kinds) > MAX_LISTED:
                fields["detail"]["kinds_not_listed"] = len(kinds) - MAX_LISTED
            out.append(("audit_suppressed", fields))
        return out
