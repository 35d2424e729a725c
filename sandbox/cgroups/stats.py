"""What a sandbox's cgroups say after it ran: the drivers' figures merged, turned into the events
the audit records (`oom_kill`, `pids_limit`, `cpu_throttled`, `resources`), and the one line the
launcher prints when a limit was hit."""
from __future__ import annotations

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path

from .files import UNLIMITED

if TYPE_CHECKING:  # pragma: no cover
    from typing import Optional
    from policies.plan import Limits

    from .driver import Driver


def merged(drivers: "list[Driver]") -> dict:
    """Every driver's figures in one dict: v1 figures come from the controllers that enforce the
    limits; v2 fills in the rest."""
    out: dict = {}
    for drv in sorted(drivers, key=lambda d: d.version):
        for k, v in drv.stats().items():
            out.setdefault(k, v)
    return out


def events(limits: "Limits", s: dict) -> list[dict]:
    """The audit events of one sandbox's figures `s` (`merged`), the `resources` summary last."""
    out: list[dict] = []
    L = limits
    if s.get("oom_kill", 0) > 0:
        out.append({"type": "oom_kill", "limit": "memory",
                    "value": L.memory if L.memory is not None else s.get("memory_limit"),
                    "peak": s.get("memory_peak"), "count": s["oom_kill"]})
    if s.get("pids_max_events", 0) > 0:
        out.append({"type": "pids_limit", "limit": "pids",
                    "value": L.pids if L.pids is not None else s.get("pids_limit"),
                    "count": s["pids_max_events"]})
    if L.cpus is not None and s.get("nr_throttled", 0) > 0:
        out.append({"type": "cpu_throttled", "limit": "cpus", "value": L.cpus,
                    "nr_throttled": s["nr_throttled"], "throttled_usec": s.get("throttled_usec", 0)})
    res = {"type": "resources"}
    for k in ("memory_peak", "memory_failcnt", "cpu_usage_usec", "nr_periods", "nr_throttled",
              "throttled_usec", "pids_peak"):
        if k in s:
            res[k] = s[k]
    out.append(res)
    return out


def fmt_bytes(n: Optional[int]) -> str:
    if n is None:
        return "?"
    if n < 0 or n >= UNLIMITED:
        return "unlimited"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if abs(v - round(v)) < 0.05 else f"{v:.1f} {unit}"
    return f"{n} B"


def summary_line(events: list[dict]) -> Optional[str]:
    """One line for stderr when a limit was hit, else None."""
    parts = []
    for ev in events:
        if ev.get("type") == "oom_kill":
            parts.append(f"killed by OOM (limit {fmt_bytes(ev.get('value'))}, "
                         f"peak {fmt_bytes(ev.get('peak'))})")
        elif ev.get("type") == "pids_limit":
            n = ev.get("count", 0)
            parts.append(f"pids limit {ev.get('value')} reached ({n} fork{'s' if n != 1 else ''} refused)")
    if not parts:
        return None
    return "pysandbox: " + "; ".join(parts)
