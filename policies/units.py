"""Docker-compatible units: sizes (`100m`, `1g`, `512k`, bytes), CPUs (`0.5`), ulimits (`nofile=64:128`)."""
from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgtp]?)(i?b)?\s*$", re.IGNORECASE)
MAX_BYTES = (1 << 63) - 1             # what a cgroup or rlimit file takes
_MULT = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}

# The largest size a kernel limit holds as written: cgroup memory limits are a signed 64-bit count
# of pages (PAGE_COUNTER_MAX = LONG_MAX / PAGE_SIZE), so anything above 2**63 - PAGE_SIZE reads back
# as "unlimited". 64 KiB is the largest page size Linux uses; below this bound every page size reads
# back what was written (rounded down to a page).
MAX_BYTES = ((1 << 63) - 1) & ~0xFFFF


def parse_bytes(value) -> int:
    """`100m` -> 104857600 (Docker: binary multiples). Integers are bytes. -1 means unlimited."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}")
    if isinstance(value, int):
        if value < -1:
            raise ValueError(f"invalid size {value!r}")
        return _bounded(value, value)
    text = str(value)
    if text.strip() == "-1":
        return -1
    m = _SIZE_RE.match(text) if len(text) <= 64 else None
    if not m:
        raise ValueError(f"invalid size {text[:64]!r} (expected e.g. 512k, 100m, 1g)")
    num, unit = m.group(1), m.group(2).lower()
    if "." in num:
        whole, frac = num.split(".")
        n = int(whole) * _MULT[unit] + (int(frac) * _MULT[unit]) // (10 ** len(frac))
    else:
        n = int(num) * _MULT[unit]
    return _bounded(n, value)


def _bounded(n: int, value) -> int:
    if n > MAX_BYTES:
        raise ValueError(f"size {value!r} is too large (at most {MAX_BYTES} bytes, 8 EiB - 64 KiB: "
                         f"the kernel's 64-bit limit)")
    return n


def parse_cpus(value) -> float:
    try:
        cpus = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"invalid CPU count {value!r} (expected e.g. 0.5, 2)") from None
    if not (0 < cpus <= 4096):
        raise ValueError(f"invalid CPU count {value!r} (must be > 0 and at most 4096)")
    return cpus


RLIMIT_NAMES = ("as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice",
                "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack")


def _limit_value(v) -> int:
    if isinstance(v, str) and v.strip().lower() in ("unlimited", "-1", "infinity"):
        return -1
    if isinstance(v, int) and not isinstance(v, bool):
        n = v
    else:
        n = int(str(v).strip()[:40])
    if n < -1 or n > MAX_BYTES:
        raise ValueError(f"invalid limit {v!r}")
    return n


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


# --- cgroup limit values (issue 3): Docker's ranges -------------------------------------------

def parse_cpu_shares(value) -> int:
    """`--cpu-shares 512` -> 512. Docker/cgroup v1 range 2..262144 (v2 weight is derived from it)."""
    try:
        shares = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        shares = None
    if shares is None or not (2 <= shares <= 262144):
        raise ValueError(f"invalid CPU shares {value!r} (expected an integer 2..262144)")
    return shares


def cpu_shares_to_weight(shares: int) -> int:
    """cgroup v2 `cpu.weight` for v1 shares (the conversion runc/crun use): 2..262144 -> 1..10000."""
    return 1 + ((shares - 2) * 9999) // 262142


def parse_blkio_weight(value) -> int:
    """`--blkio-weight 500` -> 500. Docker range 10..1000."""
    try:
        weight = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        weight = None
    if weight is None or not (10 <= weight <= 1000):
        raise ValueError(f"invalid blkio weight {value!r} (expected an integer 10..1000)")
    return weight


def blkio_weight_to_io_weight(weight: int) -> int:
    """cgroup v2 `io.weight` for a v1 blkio weight (10..1000 -> 1..10000, as runc converts)."""
    return 1 + ((weight - 10) * 9999) // 990


def parse_pids_limit(value) -> int:
    """`--pids-limit 20` -> 20; 0 or -1 (Docker) -> -1 = unlimited."""
    try:
        n = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        n = None
    if n is None or n < -1:
        raise ValueError(f"invalid pids limit {value!r} (expected a positive integer, or -1 for unlimited)")
    return -1 if n == 0 else n


def parse_device_rate(spec, kind: str = "bps") -> tuple[str, int]:
    """`/dev/sda:1mb` (bps: Docker sizes) or `/dev/sda:100` (iops) -> ("/dev/sda", rate).

    Only the text is checked here; that the path is a block device is checked where the limit is
    applied (sandbox.cgroups), since that needs the file system.
    """
    text = str(spec)
    path, sep, rate = text.rpartition(":")
    if not sep or not path.startswith("/"):
        raise ValueError(f"invalid device rate {text!r} (expected /dev/DEVICE:RATE)")
    if kind == "bps":
        try:
            value = parse_bytes(rate)
        except ValueError:
            raise ValueError(f"invalid device rate {text!r} (rate like 1mb, 512k)") from None
    elif kind == "iops":
        try:
            value = int(rate.strip())
        except ValueError:
            raise ValueError(f"invalid device rate {text!r} (iops must be an integer)") from None
    else:
        raise ValueError(f"unknown device rate kind {kind!r}")
    if value <= 0:
        raise ValueError(f"invalid device rate {text!r} (rate must be > 0)")
    return path, value
