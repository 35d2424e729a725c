"""Capabilities: reduce all five sets (bounding, permitted, effective, inheritable, ambient)
to the plan's list, with python-prctl (ambient through sandbox._sys)."""
from __future__ import annotations

import prctl

from . import _sys


def numbers(names) -> list[int]:
    return [getattr(prctl, "CAP_" + n) for n in names]


def apply(keep: tuple[str, ...], *, uid_inside: int) -> None:
    """Called in the program's process just before no_new_privs/seccomp/execve.

    Bounding: everything not kept is dropped (no way back, also not through file caps or setuid).
    Permitted/effective/inheritable: exactly `keep`. Ambient: `keep` when the program runs as a
    non-zero uid (root gets its permitted set from the bounding set at execve anyway)."""
    keep_n = set(numbers(keep))
    for cap in prctl.ALL_CAPS:
        if cap not in keep_n:
            prctl.capbset_drop(cap)
    _sys.ambient_clear()
    drop = [c for c in prctl.ALL_CAPS if c not in keep_n]
    kept = sorted(keep_n)
    prctl.set_caps((kept, prctl.CAP_PERMITTED, True), (kept, prctl.CAP_EFFECTIVE, True),
                   (kept, prctl.CAP_INHERITABLE, True),
                   (drop, prctl.CAP_PERMITTED, False), (drop, prctl.CAP_EFFECTIVE, False),
                   (drop, prctl.CAP_INHERITABLE, False))
    if uid_inside != 0:
        for cap in kept:
            _sys.ambient_raise(cap)


def drop_all() -> None:
    """Used by PID 1 after it started the program: it needs no privilege to reap and signal."""
    apply((), uid_inside=1)
