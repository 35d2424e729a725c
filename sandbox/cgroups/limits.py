"""From a plan's `Limits` to controllers: which logical controller each Docker flag needs, the
controllers' names in each cgroup version, and the checks a limit must pass before anything is
created. The per-version files and units are the drivers' (`v1.py`, `v2.py`).

Units follow Docker: `--memory-swap` is memory+swap (-1 unlimited; unset = twice --memory where swap
is accounted), `--cpus` is quota/period with a 100 ms period, `--cpu-shares` is v1 shares (v2 weight
= 1 + (shares-2)*9999/262142, policies/units.py), `--blkio-weight` 10..1000.
"""
from __future__ import annotations

import dataclasses

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path

from .files import CgroupError

if TYPE_CHECKING:  # pragma: no cover
    from policies.plan import Limits

PERIOD_US = 100_000             # Docker's CFS period for --cpus

# Logical controller -> (v1 name, v2 name). "io" is "blkio" in v1.
NAMES = {"memory": ("memory", "memory"), "cpu": ("cpu", "cpu"), "cpuset": ("cpuset", "cpuset"),
         "pids": ("pids", "pids"), "io": ("blkio", "io")}

# Limits field -> (logical controller, Docker flag) — used for error messages and doctor.
FIELDS = {
    "memory": ("memory", "--memory"),
    "memory_swap": ("memory", "--memory-swap"),
    "memory_reservation": ("memory", "--memory-reservation"),
    "cpus": ("cpu", "--cpus"),
    "cpu_shares": ("cpu", "--cpu-shares"),
    "cpuset_cpus": ("cpuset", "--cpuset-cpus"),
    "pids": ("pids", "--pids-limit"),
    "blkio_weight": ("io", "--blkio-weight"),
    "device_read_bps": ("io", "--device-read-bps"),
    "device_write_bps": ("io", "--device-write-bps"),
    "device_read_iops": ("io", "--device-read-iops"),
    "device_write_iops": ("io", "--device-write-iops"),
}


def flags_by_controller(limits: "Limits") -> dict[str, list[str]]:
    """logical controller -> the Docker flags that need it."""
    out: dict[str, list[str]] = {}
    for fname, (ctl, flag) in FIELDS.items():
        v = getattr(limits, fname)
        if v not in (None, ()):
            out.setdefault(ctl, []).append(flag)
    return out


def only(limits: "Limits", controllers: list[str]) -> "Limits":
    """`limits` with every field whose controller is not in `controllers` cleared."""
    clear = {f: (() if isinstance(getattr(limits, f), tuple) else None)
             for f, (ctl, _flag) in FIELDS.items() if ctl not in controllers}
    return dataclasses.replace(limits, **clear)


def precheck(limits: "Limits") -> None:
    """What no cgroup version can enforce, refused before anything is created."""
    if limits.memory_swap is not None:
        if limits.memory is None:
            raise CgroupError("memory", "--memory-swap needs --memory too")
        if limits.memory_swap != -1 and limits.memory_swap < limits.memory:
            raise CgroupError("memory", "--memory-swap (memory+swap) must be at least --memory")
    if limits.cpus is not None and int(round(limits.cpus * PERIOD_US)) < 1000:
        raise CgroupError("cpu", "--cpus below 0.01 cannot be enforced (CFS quota minimum 1 ms)")
