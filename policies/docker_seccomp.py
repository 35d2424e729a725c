"""Import Docker / OCI seccomp JSON into pysandbox rules (pure).

Semantics follow moby's profile loader + runc:
  * `defaultAction` / `defaultErrnoRet` (errno defaults to EPERM);
  * `syscalls[]`: `names` (or the old single `name`), `action`, `errnoRet`, `args`;
  * `includes` / `excludes` by `caps` (all included caps must be kept; any kept
    excluded cap drops the rule), `arches` (Go names such as amd64, or SCMP_ARCH_*)
    and `minKernel` ("4.8": the rule applies from that kernel on);
  * args: {index, value, valueTwo, op: SCMP_CMP_*}; for SCMP_CMP_MASKED_EQ `value`
    is the mask and `valueTwo` the expected value; when two args of one entry use
    the same index, runc adds one rule per arg (OR) - so do we;
  * actions: ALLOW, ERRNO, KILL / KILL_THREAD / KILL_PROCESS (all -> kill: the whole
    process, never a lone thread), TRAP, LOG, TRACE (no tracer here: the kernel
    answers ENOSYS, so -> errno ENOSYS), NOTIFY (-> notify, answered with errnoRet
    or EPERM by the supervisor);
  * `architectures` / `archMap`: pysandbox filters the native architecture only and
    kills every other one, so they are accepted and otherwise ignored.
Syscall names this libseccomp cannot filter here are skipped and reported, not fatal.
"""
from __future__ import annotations

import errno as _errno
import json
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional

from . import syscalls as _sc
from .errors import Location, ProfileError
from .plan import ArgCond, SyscallRule

ACTIONS = {
    "SCMP_ACT_ALLOW": "allow",
    "SCMP_ACT_ERRNO": "errno",
    "SCMP_ACT_KILL": "kill",
    "SCMP_ACT_KILL_THREAD": "kill",
    "SCMP_ACT_KILL_PROCESS": "kill",
    "SCMP_ACT_TRAP": "trap",
    "SCMP_ACT_LOG": "log",
    "SCMP_ACT_TRACE": "trace",
    "SCMP_ACT_NOTIFY": "notify",
}
OPS = {
    "SCMP_CMP_NE": "ne", "SCMP_CMP_LT": "lt", "SCMP_CMP_LE": "le", "SCMP_CMP_EQ": "eq",
    "SCMP_CMP_GE": "ge", "SCMP_CMP_GT": "gt", "SCMP_CMP_MASKED_EQ": "masked_eq",
}
MAX64 = (1 << 64) - 1


@dataclass
class Imported:
    default_action: str
    default_errno: Optional[int]
    rules: list[SyscallRule] = field(default_factory=list)   # file order, not yet resolved
    skipped: set[str] = field(default_factory=set)


def parse_kernel(v) -> tuple[int, int]:
    """'4.8' / '5.10.0-1' / (6, 18) -> (4, 8) / (5, 10) / (6, 18)."""
    if isinstance(v, (tuple, list)):
        t = tuple(int(x) for x in v[:2])
        return t + (0,) * (2 - len(t))
    m = re.match(r"^\s*(\d+)(?:\.(\d+))?", str(v))
    if not m:
        raise ValueError(f"bad kernel version {v!r}")
    return (int(m.group(1)), int(m.group(2) or 0))


def _caps(v) -> set[str]:
    return {_sc.cap_name(c) for c in (v or [])}


def _arch_match(arches, native: frozenset[str]) -> bool:
    return any(a in native for a in arches)


def _kernel_ge(kernel: Optional[tuple], want) -> Optional[bool]:
    if kernel is None:
        return None
    return tuple(kernel[:2]) >= parse_kernel(want)


def entry_applies(entry: dict, caps: frozenset[str], kernel: Optional[tuple],
                  native: frozenset[str]) -> bool:
    """moby's rule filter: excludes first, then includes."""
    exc = entry.get("excludes") or {}
    inc = entry.get("includes") or {}
    if exc.get("arches") and _arch_match(exc["arches"], native):
        return False
    if exc.get("caps") and _caps(exc["caps"]) & caps:
        return False
    if exc.get("minKernel"):
        ge = _kernel_ge(kernel, exc["minKernel"])
        if ge:                       # unknown kernel: keep the rule
            return False
    if inc.get("arches") and not _arch_match(inc["arches"], native):
        return False
    if inc.get("caps") and not _caps(inc["caps"]) <= caps:
        return False
    if inc.get("minKernel"):
        ge = _kernel_ge(kernel, inc["minKernel"])
        if not ge:                   # unknown kernel: leave the (granting) rule out
            return False
    return True


def _int(v, what) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{what} must be an integer, got {v!r}")
    if not -(1 << 63) <= v <= MAX64:
        raise ValueError(f"{what} {v} does not fit in 64 bits")
    return v & MAX64


def _errno_ret(entry: dict, what: str) -> int:
    v = entry.get("errnoRet")
    if v is None:
        return _errno.EPERM
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _sc.MAX_ERRNO:
        raise ValueError(f"{what}: errnoRet must be 0..{_sc.MAX_ERRNO}, got {v!r}")
    return v


def _action(name, errno_ret: int, what: str) -> tuple[str, Optional[int]]:
    if name not in ACTIONS:
        raise ValueError(f"{what}: unknown action {name!r}")
    a = ACTIONS[name]
    if a == "trace":
        return "errno", _errno.ENOSYS
    if a in ("errno", "notify"):
        return a, errno_ret
    return a, None


def convert(data: dict, *, capabilities: Iterable[str] = (), kernel: Optional[tuple] = None,
            native: Optional[frozenset[str]] = None) -> Imported:
    """Docker/OCI seccomp JSON (parsed) -> Imported. Raises ValueError on bad content."""
    if not isinstance(data, dict):
        raise ValueError("top level must be a JSON object")
    caps = frozenset(_sc.cap_name(c) for c in capabilities)
    native = native if native is not None else _sc.native_arch_names()
    da = data.get("defaultAction", "SCMP_ACT_ERRNO")
    if da not in ACTIONS:
        raise ValueError(f"defaultAction: unknown action {da!r}")
    d_errno = data.get("defaultErrnoRet")
    if d_errno is None:
        d_errno = _errno.EPERM
    elif isinstance(d_errno, bool) or not isinstance(d_errno, int) or not 0 <= d_errno <= _sc.MAX_ERRNO:
        raise ValueError(f"defaultErrnoRet must be 0..{_sc.MAX_ERRNO}, got {d_errno!r}")
    dflt, dflt_errno = _action(da, d_errno, "defaultAction")
    if dflt == "notify":           # no supervisor contract for a default: plain errno
        dflt = "errno"
    out = Imported(default_action=dflt, default_errno=dflt_errno if dflt == "errno" else None)

    syscalls = data.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise ValueError("syscalls must be a list")
    for i, entry in enumerate(syscalls):
        what = f"syscalls[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{what} must be an object")
        names = entry.get("names")
        if names is None and "name" in entry:
            names = [entry["name"]]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{what}: names must be a list of strings")
        action, err = _action(entry.get("action"), _errno_ret(entry, what), what)
        conds = []
        for j, a in enumerate(entry.get("args") or []):
            w = f"{what}.args[{j}]"
            if not isinstance(a, dict):
                raise ValueError(f"{w} must be an object")
            idx = a.get("index")
            if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx <= 5:
                raise ValueError(f"{w}: index must be 0..5, got {idx!r}")
            op = a.get("op")
            if op not in OPS:
                raise ValueError(f"{w}: unknown op {op!r}")
            value = _int(a.get("value", 0), f"{w}.value")
            two = _int(a.get("valueTwo", 0), f"{w}.valueTwo")
            if OPS[op] == "masked_eq":
                conds.append(ArgCond(idx, "masked_eq", two, value))
            else:
                conds.append(ArgCond(idx, OPS[op], value))
        if not entry_applies(entry, caps, kernel, native):
            continue
        indexes = [c.index for c in conds]
        groups = [(c,) for c in conds] if len(set(indexes)) != len(indexes) else [tuple(conds)]
        for n in names:
            if _sc.classify(n) != "native":
                out.skipped.add(n)
                continue
            for g in groups:
                out.rules.append(SyscallRule(name=n, action=action, errno=err, args=g))
    return out


# the top-level keys of Docker's and the OCI runtime spec's seccomp JSON
_TOP_KEYS = frozenset({"defaultAction", "defaultErrnoRet", "architectures", "archMap", "syscalls", "flags",
                       "listenerPath", "listenerMetadata"})


def load_json(path: str, location: Optional[Location] = None) -> dict:
    from .loader import read_bounded      # regular files only (never blocks on a FIFO), bounded
    try:
        text = read_bounded(path, "seccomp JSON")
    except ProfileError as e:
        raise ProfileError(f"seccomp import: {path}: {e.message}", location) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ProfileError(f"seccomp import: bad JSON: {e.msg}", Location(path, e.lineno, e.colno)) from None


def import_file(path: str, *, capabilities: Iterable[str] = (), kernel: Optional[tuple] = None,
                location: Optional[Location] = None) -> Imported:
    """Read and convert a Docker/OCI seccomp JSON file; errors are ProfileErrors."""
    data = load_json(path, location)
    if not (isinstance(data, dict) and data.keys() & {"defaultAction", "syscalls"}
            and data.keys() <= _TOP_KEYS):
        # quote nothing of a file that is not a seccomp profile (it may be anything readable)
        raise ProfileError(f"seccomp import: {path}: not a Docker/OCI seccomp profile (a JSON object "
                           f"with defaultAction or syscalls; known keys: {', '.join(sorted(_TOP_KEYS))})",
                           location)
    try:
        return convert(data, capabilities=capabilities, kernel=kernel)
    except ValueError as e:
        raise ProfileError(f"seccomp import {path}: {e}", location) from None
