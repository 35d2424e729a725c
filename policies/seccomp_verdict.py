"""The seccomp verdict: what a plan answers for one syscall and its arguments (pure, cheap).

The plan keeps, per syscall, rules in the order they are tried; the first whose conditions all
hold decides, calls no rule matches get the default (policies/seccomp.py compiles the rules so).
This module is that decision, the only copy of it: the BPF emitter (sandbox/seccomp.py) emits
the same rules in the same order, the notification supervisor (sandbox/notify/decision.py) answers with
it, `explain` and `learn` read it. It imports nothing, so the launch path can use it without
loading the compiler.
"""
from __future__ import annotations

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path

if TYPE_CHECKING:
    from typing import Iterable, Optional
    from .plan import ArgCond, Seccomp, SyscallRule

MAX64 = (1 << 64) - 1


def cond_matches(c: "ArgCond", value: int) -> bool:
    """One argument comparison, on the 64-bit value the kernel passes."""
    v = value & MAX64
    if c.op == "eq":
        return v == c.value
    if c.op == "ne":
        return v != c.value
    if c.op == "lt":
        return v < c.value
    if c.op == "le":
        return v <= c.value
    if c.op == "gt":
        return v > c.value
    if c.op == "ge":
        return v >= c.value
    if c.op == "masked_eq":
        return (v & c.mask) == c.value
    raise ValueError(c.op)


def rule_for(s: "Seccomp", name: Optional[str], args: Iterable[int] = ()) -> Optional["SyscallRule"]:
    """The rule that decides `name(args...)`: the first of the plan's rules for `name` whose
    conditions all hold (missing arguments read as 0); None: the default decides."""
    if not s.enabled:
        return None
    a = list(args) + [0] * 6
    for r in s.rules:
        if r.name == name and all(cond_matches(c, a[c.index]) for c in r.args):
            return r
    return None


def decide(s: "Seccomp", name: Optional[str], args: Iterable[int] = ()) -> tuple[str, Optional[int]]:
    """(action, errno) the plan gives `name(args...)`: rule_for, else the default."""
    if not s.enabled:
        return ("allow", None)
    r = rule_for(s, name, args)
    return (r.action, r.errno) if r is not None else (s.default_action, s.default_errno)


def fixed_verdict(s: "Seccomp", name: str) -> Optional[tuple[str, Optional[int]]]:
    """(action, errno) when the plan answers `name` the same whatever its arguments (no rule
    for it, or its first rule unconditional); None when the arguments decide."""
    if not s.enabled:
        return ("allow", None)
    for r in s.rules:
        if r.name == name:
            return None if r.args else (r.action, r.errno)
    return (s.default_action, s.default_errno)
