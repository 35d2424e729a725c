"""Landlock: a profile's ruleset (plan.landlock, policies/landlock.py) built and checked.

`check(plan)` (launcher.preflight, and the namespace-free backend) refuses a kernel whose ABI is
below the profile's `abi` or below what its rules need. `build(plan)` runs where the program's
paths are its own (after pivot_root: init.landlock_rules; the namespace-free backend: the host's)
and returns a ruleset descriptor; the program's process enters it with landlock_restrict_self just
before it drops its privileges (init.confine; pysandbox-init: pid1.c program(), the descriptor
passed in the PROGRAM section). The ruleset always scopes abstract unix sockets as well (ABI >= 6,
what init.confine did alone before: PID 1 out of the program's reach).

Every file system right this kernel knows is handled (denied unless a rule grants it); rights a
kernel does not know are not handled there (Landlock's best effort: `abi:` refuses such kernels
instead). Raw system calls: sandbox/_sys.py.
"""
from __future__ import annotations

import os
import stat

from policies import plan as P

from . import _sys

FS_BIT = {name: 1 << i for i, (name, _abi) in enumerate(P.LANDLOCK_FS_RIGHTS)}
FS_ABI = dict(P.LANDLOCK_FS_RIGHTS)
FILE_MASK = sum(FS_BIT[n] for n in P.LANDLOCK_FILE_RIGHTS)
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_BIT = {"abstract_unix_socket": 1, "signal": 2}
RESTRICT_SELF_LOG_NEW_EXEC_ON = 2          # ABI 7: audit the denials of the program execve'd after
LOG_ABI = 7


class LandlockError(Exception):
    """A Landlock control the profile asks for cannot be enforced here (exit 125)."""


def required_abi(plan) -> int:
    ll = plan.landlock
    return 0 if ll is None else max(ll.abi, ll.needs_abi)


def check(plan, abi: "int | None" = None) -> None:
    """Refuse a kernel below the profile's Landlock ABI (one line; the launcher exits 125)."""
    need = required_abi(plan)
    have = _sys.landlock_abi() if abi is None else abi
    if need and have < need:
        ll = plan.landlock
        why = (f"the profile asks for abi {ll.abi}" if ll.abi >= ll.needs_abi
               else f"its rules need ABI {ll.needs_abi} (network: 4, scope: 6)")
        raise LandlockError(f"landlock: this kernel has {f'Landlock ABI {have}' if have else 'no Landlock'}; "
                            f"{why}")


def handled_fs(abi: int) -> int:
    return sum(bit for name, bit in FS_BIT.items() if FS_ABI[name] <= abi)


def mask(access: tuple) -> int:
    return sum(FS_BIT[a] for a in set(access))


def restrict_flags(abi: "int | None" = None) -> int:
    """landlock_restrict_self's flags: on ABI 7 the program's denials are logged (kernel audit)."""
    return RESTRICT_SELF_LOG_NEW_EXEC_ON if (_sys.landlock_abi() if abi is None else abi) >= LOG_ABI else 0


def build(plan, root: str = "") -> int:
    """The plan's ruleset as a descriptor (-1: no rules; the caller then confines itself as
    before, init.confine). Paths are opened (O_PATH, following symlinks: the program would) under
    `root` ("" : this process's root). A rule on a path that does not exist: a write or execute rule
    refuses the launch (the profile means a path we cannot show it); a read rule, or a rule derived
    from the mounts (`required` false), is skipped: it would grant nothing."""
    ll = plan.landlock
    if ll is None:
        return -1
    abi = _sys.landlock_abi()
    check(plan, abi)
    fs_bits = handled_fs(abi) if ll.filesystem else 0
    net_bits = NET_BIND_TCP | NET_CONNECT_TCP if ll.network else 0
    scoped = sum(SCOPE_BIT[s] for s in ll.scope)
    if abi >= _sys.LANDLOCK_SCOPE_ABI:
        scoped |= SCOPE_BIT["abstract_unix_socket"]
    if not (fs_bits or net_bits or scoped):
        return -1                              # nothing to restrict (a bare `abi:`)
    fd = _sys.landlock_create_ruleset(fs_bits, net_bits, scoped)
    try:
        for rule in ll.paths:
            allowed = mask(rule.access) & fs_bits
            try:
                pfd = os.open(root + rule.path, os.O_PATH | os.O_CLOEXEC)
            except OSError as e:
                if rule.required:
                    raise LandlockError(f"landlock: {rule.path}: {e.strerror} in the sandbox (a write or "
                                        f"execute rule must name a path that exists)") from None
                continue
            try:
                if not stat.S_ISDIR(os.fstat(pfd).st_mode):
                    allowed &= FILE_MASK
                if allowed:
                    _sys.landlock_add_path(fd, allowed, pfd)
            finally:
                os.close(pfd)
        for port in ll.bind:
            _sys.landlock_add_port(fd, NET_BIND_TCP, port)
        for port in ll.connect:
            _sys.landlock_add_port(fd, NET_CONNECT_TCP, port)
    except BaseException:
        os.close(fd)
        raise
    return fd


def build_recorded(plan: dict) -> int:
    """build() for a recorded sandbox's plan (its state's JSON: `pysandbox exec`, after joining its
    mount namespace, so that the paths are the sandbox's)."""
    ll = plan.get("landlock")
    if not ll:
        return -1
    paths = tuple(P.LandlockPath(p["path"], tuple(p["access"]), bool(p.get("required", True)))
                  for p in ll.get("paths") or ())
    rec = P.Landlock(abi=int(ll.get("abi", 1)), needs_abi=int(ll.get("needs_abi", 1)),
                     filesystem=bool(ll.get("filesystem")), paths=paths, derived=bool(ll.get("derived")),
                     network=bool(ll.get("network")), bind=tuple(ll.get("bind") or ()),
                     connect=tuple(ll.get("connect") or ()), scope=tuple(ll.get("scope") or ()))
    return build(_Recorded(rec))


class _Recorded:
    """(what build() reads of a plan)"""
    def __init__(self, landlock):
        self.landlock = landlock


def enter(fd: int) -> None:
    """The calling thread enters the ruleset `fd` (closed)."""
    try:
        _sys.landlock_restrict_self(fd, restrict_flags())
    finally:
        os.close(fd)
