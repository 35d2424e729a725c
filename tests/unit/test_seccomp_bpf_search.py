"""The emitter's two searches (sandbox/seccomp.py, issue 23) answer as the plan's verdict:
  - a run of disjoint single-interval argument rules (eq, aligned masked_eq on one argument word)
    decided by a binary search over that word instead of rule after rule;
  - the syscall-number search weighted so that argument-checked numbers sit near the root.
Random rule sets (seeded) and every boundary of their conditions, run by the classic-BPF
interpreter (sandbox.seccomp.run_bpf): no root, no kernel."""
from __future__ import annotations

import random

import pytest

from policies import syscalls as sc
from policies.plan import ArgCond, Seccomp, SyscallRule
from sandbox.seccomp import _interval, _run_at, build_bpf, decode_bpf, run_bpf

from test_seccomp_bpf import _steps, answer, check

M32 = (1 << 32) - 1
M64 = (1 << 64) - 1


def _block(rng, index, high):
    k = rng.choice([0, 0, 1, 2, 4, 8, 12, 16])
    lo = rng.randrange(0, 1 << 16) << k & M32
    mask = (M32 ^ ((1 << k) - 1)) | (M32 << 32 if high is not None else 0)
    return ArgCond(index, "masked_eq", (lo | ((high or 0) << 32 if high is not None else 0)), mask)


def _rules(rng, name):
    out = []
    for _ in range(rng.randrange(3, 40)):
        kind = rng.random()
        action, errno = rng.choice([("allow", None), ("errno", 1), ("errno", 13), ("kill", None), ("log", None)])
        if kind < 0.6:
            conds = (_block(rng, 1, rng.choice([None, None, 0, 1])),)
        elif kind < 0.8:
            conds = (ArgCond(1, "eq", rng.choice([0, 5, 0x5401, 0x100005401, M32, rng.randrange(1 << 20)])),)
        elif kind < 0.9:
            conds = (ArgCond(1, rng.choice(["ge", "lt", "ne"]), rng.randrange(1 << 33)),)
        else:
            conds = (_block(rng, 1, None), ArgCond(2, "eq", rng.randrange(4)))
        out.append(SyscallRule(name, action, errno, conds))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_random_rule_sets_answer_as_the_verdict(seed):
    rng = random.Random(seed)
    rules = _rules(rng, "ioctl") + _rules(rng, "personality") + \
        [SyscallRule(n, "allow", None, ()) for n in ("read", "write", "getppid")]
    s = Seccomp(default_action="errno", default_errno=38, rules=tuple(rules))
    bpf = decode_bpf(build_bpf(s))
    for name in ("ioctl", "personality"):
        check(s, name, limit=3000, bpf=bpf)
        for _ in range(300):
            args = [rng.choice([rng.randrange(1 << 64), rng.randrange(1 << 32), rng.randrange(1 << 16)])
                    for _ in range(6)]
            assert run_bpf(bpf, sc.resolve(name), args) == answer(s, name, args), (seed, name, args)
    for nr in range(512):
        name = sc.syscall_name(nr)
        if name not in ("ioctl", "personality"):
            assert run_bpf(bpf, nr) == answer(s, name, []), (seed, nr, name)


def test_interval_shapes():
    assert _interval(ArgCond(1, "eq", 0x100005401)) == (1, 1, 0x5401, 0x5401)
    assert _interval(ArgCond(1, "masked_eq", 0x5400, 0xFFFFFF00)) == (1, None, 0x5400, 0x54FF)
    assert _interval(ArgCond(0, "masked_eq", 8, M64 ^ 7)) == (0, 0, 8, 15)
    assert _interval(ArgCond(0, "masked_eq", 4, M64 ^ 0xB)) is None            # not the low bits
    assert _interval(ArgCond(0, "masked_eq", 4, 0xFFFF0000FFFFFFFF)) is None      # part of the high word
    assert _interval(ArgCond(0, "ge", 4)) is None


def test_overlapping_rules_stay_in_order():
    rules = [SyscallRule("ioctl", "allow" if i % 2 else "errno", 1, (ArgCond(1, "masked_eq", 0x5400, 0xFF00),))
             for i in range(6)]
    assert _run_at(rules, 0) is None              # overlapping: first match in order, one by one
    s = Seccomp(default_action="errno", default_errno=38, rules=tuple(rules))
    check(s, "ioctl")


def test_strict_ioctl_is_one_search_and_argument_checked_calls_are_short():
    from policies.compiler import compile_profile

    s = compile_profile("strict", kernel=(6, 18)).plan.seccomp
    bpf = build_bpf(s)
    # libseccomp-like rule after rule took 34 instructions for ioctl(FIONREAD) under strict
    assert _steps(bpf, sc.resolve("ioctl"), [0, 0x541B]) <= 16
    assert _steps(bpf, sc.resolve("clone"), [0x1200011]) <= 16
