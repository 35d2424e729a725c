"""Docker-compatible units: sizes (`100m`, `1g`, `512k`, bytes), CPUs (`0.5`), ulimits (`nofile=64:128`)."""
from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgtp]?)(i?b)?\s*$", re.IGNORECASE)
_MULT = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_bytes(value) -> int:
    """`100m` -> 104857600 (Docker: binary multiples). Integers are bytes. -1 means unlimited."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}")
    if isinstance(value, int):
        if value < -1:
            raise ValueError(f"invalid size {value!r}")
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"invalid size {value!r} (expected e.g. 512k, 100m, 1g)")
    num, unit = float(m.group(1)), m.group(2).lower()
    return int(num * _MULT[unit])


def parse_cpus(value) -> float:
    try:
        cpus = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"invalid CPU count {value!r} (expected e.g. 0.5, 2)") from None
    if not (0 < cpus <= 4096):
        raise ValueError(f"invalid CPU count {value!r} (must be > 0)")
    return cpus


RLIMIT_NAMES = ("as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice",
                "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack")


def _limit_value(v) -> int:
    if isinstance(v, str) and v.strip().lower() in ("unlimited", "-1", "infinity"):
        return -1
    if isinstance(v, int) and not isinstance(v, bool):
        if v < -1:
            raise ValueError(f"invalid limit {v!r}")
        return v
    return int(str(v).strip())


def parse_rlimit(name: str, value) -> tuple[int, int]:
    """Value `64`, `64:128`, [64, 128] or {soft:, hard:} -> (soft, hard); -1 = unlimited."""
    if name not in RLIMIT_NAMES:
        raise ValueError(f"unknown rlimit {name!r} (known: {', '.join(RLIMIT_NAMES)})")
    try:
        if isinstance(value, dict):
            soft, hard = _limit_value(value["soft"]), _limit_value(value.get("hard", value["soft"]))
        elif isinstance(value, (list, tuple)) and len(value) == 2:
            soft, hard = _limit_value(value[0]), _limit_value(value[1])
        elif isinstance(value, str) and ":" in value:
            a, b = value.split(":", 1)
            soft, hard = _limit_value(a), _limit_value(b)
        else:
            soft = hard = _limit_value(value)
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"invalid value {value!r} for rlimit {name}") from None
    if hard != -1 and (soft == -1 or soft > hard):
        raise ValueError(f"rlimit {name}: soft limit {soft} above hard limit {hard}")
    return soft, hard


def parse_ulimit(spec: str) -> tuple[str, int, int]:
    """`--ulimit nofile=64:128` -> ("nofile", 64, 128)."""
    if "=" not in spec:
        raise ValueError(f"invalid --ulimit {spec!r} (expected NAME=SOFT[:HARD])")
    name, value = spec.split("=", 1)
    soft, hard = parse_rlimit(name.strip().lower(), value)
    return name.strip().lower(), soft, hard
