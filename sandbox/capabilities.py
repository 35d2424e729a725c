"""Capabilities: reduce all five sets (bounding, permitted, effective, inheritable, ambient)
to the plan's list, with raw prctl/capset (sandbox._sys): every capability the compiler knows
(policies.compiler.CAPABILITIES, up to CHECKPOINT_RESTORE = 40), and the bounding set emptied up
to the kernel's last one (/proc/sys/kernel/cap_last_cap), whatever that is."""
from __future__ import annotations

from policies.plan import CAP_INDEX

from . import _sys

CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = CAP_INDEX["DAC_OVERRIDE"], CAP_INDEX["DAC_READ_SEARCH"]
CAP_SETPCAP, CAP_SYS_ADMIN = CAP_INDEX["SETPCAP"], CAP_INDEX["SYS_ADMIN"]
LAST = _sys.cap_last_cap()              # (read here, on the host, before any pivot_root)


def numbers(names) -> list[int]:
    return [CAP_INDEX[n] for n in names]


def mask(names) -> int:
    m = 0
    for c in numbers(names):
        m |= 1 << c
    return m


def drop_bounding(keep: int) -> None:
    """Every capability not in `keep` (a mask) out of the bounding set, up to the kernel's last
    (needs CAP_SETPCAP in the effective set: before the uid change)."""
    for cap in range(LAST + 1):
        if not keep >> cap & 1:
            _sys.capbset_drop(cap)


def set_sets(keep: int, *, uid_inside: int, seccomp_cap: bool = False) -> None:
    """After the uid change: permitted = effective = inheritable = `keep`; ambient = `keep` when the
    program runs as a non-zero uid (root gets its permitted set from the bounding set at execve).
    seccomp_cap: CAP_SYS_ADMIN stays in permitted/effective (never inheritable or ambient) so that
    the seccomp filter can be loaded without no_new_privs; it is outside the bounding set and the
    inheritable set, so the program's execve drops it (root or not)."""
    _sys.ambient_clear()
    pe = keep | (1 << CAP_SYS_ADMIN if seccomp_cap else 0)
    _sys.capset(pe, pe, keep)
    if uid_inside != 0:
        for cap in range(LAST + 1):
            if keep >> cap & 1:
                _sys.ambient_raise(cap)


def apply(keep: tuple[str, ...], *, uid_inside: int) -> None:
    """All five sets to `keep` (no uid change in between; PID 1's own drop and tests)."""
    m = mask(keep)
    drop_bounding(m)
    set_sets(m, uid_inside=uid_inside)


def drop_all() -> None:
    """Used by PID 1 after it started the program: it needs no privilege to reap and signal."""
    apply((), uid_inside=1)
