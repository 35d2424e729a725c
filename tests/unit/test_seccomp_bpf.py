"""The one seccomp verdict (policies/seccomp_verdict.py) against the BPF pysandbox emits for it
(sandbox/seccomp.py), run by a classic-BPF interpreter (sandbox.seccomp.run_bpf): no root, no
kernel. A table of cases per comparison and 64-bit boundary, rule order, actions and
architectures, a program large enough to need jump trampolines, and the shipped profiles at
every boundary of their conditions (what the build verified at run time while libseccomp built
the program)."""
from __future__ import annotations

import errno
import itertools
from dataclasses import replace

import pytest

from policies import syscalls as sc
from policies.plan import ArgCond, Seccomp, SyscallRule
from policies.seccomp_verdict import decide, fixed_verdict, rule_for
from sandbox.seccomp import (RET_ALLOW, RET_ERRNO, RET_KILL_PROCESS, RET_LOG, RET_TRAP, RET_USER_NOTIF, _act,
                             _notified, build_bpf, decode_bpf, run_bpf)

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1
AUDIT_ARCH_I386 = 0x40000003
BOUNDS = [0, 1, 2, 0x7FFFFFFF, 0x80000000, M32 - 1, M32, 1 << 32, (1 << 32) + 1, (1 << 32) | M32,
          0x8000000000000000, M64 - 1, M64, 0x123456789, 0x5412, 0x100005412]


def answer(s, name, args, notify_enosys=False):
    """The return value the plan's verdict calls for (as the supervisor and the filter agree)."""
    a, e = decide(s, name, args)
    return RET_USER_NOTIF if _notified(a, e, s.notify_denials, notify_enosys) else _act(a, e)


def probes(conds):
    vals = set(BOUNDS)
    for c in conds:
        for v in (c.value, c.mask, c.value | (~c.mask & M64)):
            vals.update({v, (v - 1) & M64, (v + 1) & M64, v ^ (1 << 32), v ^ 1})
    return sorted(vals)


def check(s, name, *, notify_enosys=False, limit=20000, bpf=None):
    bpf = bpf or build_bpf(s, notify_enosys=notify_enosys)
    bpf = decode_bpf(bpf) if isinstance(bpf, bytes) else bpf
    nr = sc.resolve(name)
    rules = [r for r in s.rules if r.name == name]
    idxs = sorted({c.index for r in rules for c in r.args}) or [0]
    per = [probes([c for r in rules for c in r.args if c.index == i]) for i in idxs]
    n = 0
    for combo in itertools.product(*per):
        args = [0] * 6
        for i, v in zip(idxs, combo):
            args[i] = v
        assert run_bpf(bpf, nr, args) == answer(s, name, args, notify_enosys), (name, [hex(x) for x in args])
        n += 1
        if n >= limit:
            break
    return bpf


OPS = ["eq", "ne", "lt", "le", "gt", "ge"]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("value", [0, 1, M32, 1 << 32, 0x100005412, M64 - 1, M64])
def test_each_comparison_at_64_bit_boundaries(op, value):
    s = Seccomp(default_action="errno", default_errno=38,
                rules=(SyscallRule("personality", "errno", 1, (ArgCond(0, op, value),)),
                       SyscallRule("personality", "allow", None, ())))
    check(s, "personality")


@pytest.mark.parametrize("mask,value", [
    (M32, 0x5412), (M64, 0x100005412), (0xFF, 2), (0xFF00000000, 0x1200000000), (0x7E020080, 0),
    (0x10000000, 0x10000000), (0, 0), (0xFF, 0x100),            # a value bit outside the mask: never
    (0x8000000000000001, 0x8000000000000000)])
def test_masked_eq(mask, value):
    s = Seccomp(default_action="allow", default_errno=None,
                rules=(SyscallRule("ioctl", "errno", errno.EPERM, (ArgCond(1, "masked_eq", value, mask),)),))
    check(s, "ioctl")


def test_first_match_in_order_overlapping_rules_several_conditions():
    rules = (SyscallRule("socket", "errno", 13, (ArgCond(0, "masked_eq", 10, M32), ArgCond(1, "masked_eq", 2, 0xFF))),
             SyscallRule("socket", "allow", None, (ArgCond(0, "eq", 10),)),
             SyscallRule("socket", "kill", None, (ArgCond(0, "ge", 3), ArgCond(0, "le", 9), ArgCond(2, "ne", 0))),
             SyscallRule("socket", "errno", 97, (ArgCond(0, "gt", 16),)),
             SyscallRule("socket", "allow", None, ()),
             SyscallRule("socket", "errno", 1, ()))                    # never reached
    s = Seccomp(default_action="errno", default_errno=38, rules=rules)
    check(s, "socket")
    assert decide(s, "socket", [10, 2]) == ("errno", 13)
    assert decide(s, "socket", [10, 1]) == ("allow", None)
    assert decide(s, "socket", [(1 << 32) | 10, 2]) == ("errno", 13)   # the mask: low 32 bits
    assert decide(s, "socket", [(1 << 32) | 10, 1]) == ("errno", 97)
    assert decide(s, "socket", [5, 0, 1]) == ("kill", None)
    assert decide(s, "socket", [5, 0, 0]) == ("allow", None)
    assert rule_for(s, "socket", [5, 0, 0]) is rules[4]
    assert fixed_verdict(s, "socket") is None and fixed_verdict(s, "read") == ("errno", 38)


@pytest.mark.parametrize("action,errno_,ret", [("allow", None, RET_ALLOW), ("errno", 13, RET_ERRNO | 13),
                                                ("kill", None, RET_KILL_PROCESS), ("trap", None, RET_TRAP),
                                                ("log", None, RET_LOG), ("notify", None, RET_USER_NOTIF)])
def test_actions_and_default(action, errno_, ret):
    s = Seccomp(default_action="errno", default_errno=38,
                rules=(SyscallRule("ptrace", action, errno_, ()),
                       SyscallRule("clone", action, errno_, (ArgCond(0, "masked_eq", 0x10000000, 0x10000000),))))
    bpf = build_bpf(s)
    assert run_bpf(bpf, sc.resolve("ptrace")) == ret
    assert run_bpf(bpf, sc.resolve("clone"), [0x10000011]) == ret
    assert run_bpf(bpf, sc.resolve("clone"), [17]) == RET_ERRNO | 38
    assert run_bpf(bpf, sc.resolve("read")) == RET_ERRNO | 38


def test_notify_denials_and_notify_enosys():
    s = Seccomp(default_action="errno", default_errno=38, notify_denials=True,
                rules=(SyscallRule("ptrace", "errno", 1, ()), SyscallRule("clone3", "errno", 38, ()),
                       SyscallRule("read", "allow", None, ())))
    bpf = build_bpf(s)
    assert run_bpf(bpf, sc.resolve("ptrace")) == RET_USER_NOTIF
    assert run_bpf(bpf, sc.resolve("clone3")) == RET_ERRNO | 38
    assert run_bpf(bpf, sc.resolve("read")) == RET_ALLOW
    assert run_bpf(build_bpf(s, notify_enosys=True), sc.resolve("clone3")) == RET_USER_NOTIF
    assert run_bpf(build_bpf(s, notify_enosys=True), sc.resolve("getpid")) == RET_USER_NOTIF


def test_architectures_as_libseccomp_had_them():
    # i386 (int 0x80) and x32 numbers are killed; -1 is not an x32 number (the default answers)
    s = Seccomp(default_action="allow", default_errno=None, rules=(SyscallRule("ptrace", "errno", 1, ()),))
    bpf = build_bpf(s)
    assert run_bpf(bpf, 0, arch=AUDIT_ARCH_I386) == RET_KILL_PROCESS
    for nr in (0x40000000, 0x40000000 | 1, 0x7FFFFFFF, -2, -(1 << 31)):
        assert run_bpf(bpf, nr) == RET_KILL_PROCESS, nr
    assert run_bpf(bpf, -1) == RET_ALLOW and run_bpf(bpf, 0x3FFFFFFF) == RET_ALLOW
    assert run_bpf(bpf, sc.resolve("ptrace")) == RET_ERRNO | 1
    assert build_bpf(replace(s, enabled=False)) == b""


def test_a_large_program_with_far_jumps():
    # argument rules on many syscalls: the blocks lie well over 255 instructions from the search
    names = [n for n in sorted(sc.groups()["@system-service"]) if sc.is_known(n)][:120]
    rules = []
    for i, n in enumerate(names):
        rules.append(SyscallRule(n, "errno", 1 + i % 30, (ArgCond(i % 6, "gt", i * 1000), ArgCond(0, "ne", 7))))
        rules.append(SyscallRule(n, "allow", None, ()) if i % 2 else SyscallRule(n, "kill", None, (ArgCond(1, "eq", i),)))
    s = Seccomp(default_action="errno", default_errno=38, rules=tuple(rules))
    bpf = build_bpf(s)
    prog = decode_bpf(bpf)
    # conditional jumps (8-bit offsets) through `ja` trampolines right after them
    tramps = [i for i, (code, jt, jf, _) in enumerate(prog)
              if code in (0x15, 0x25, 0x35) and prog[i + 1][0] == 0x05 and 0 in (jt, jf) and (jt, jf) != (0, 0)]
    assert len(prog) > 1000 and len(tramps) > 10, (len(prog), len(tramps))
    for n in names:
        check(s, n, limit=300, bpf=bpf)


def test_over_the_kernels_instruction_limit_is_refused():
    rules = tuple(SyscallRule("personality", "errno", 1, (ArgCond(0, "eq", v), ArgCond(1, "ne", v)))
                  for v in range(700))
    with pytest.raises(ValueError, match="4096"):
        build_bpf(Seccomp(rules=rules))


@pytest.fixture(scope="module", params=["strict", "default", "docker-default"])
def shipped(request):
    from policies.compiler import compile_profile
    return compile_profile(request.param, kernel=(6, 18)).plan.seccomp


def test_shipped_profiles_every_number_and_every_boundary(shipped):
    bpf = decode_bpf(build_bpf(shipped))
    for nr in range(1024):
        name = sc.syscall_name(nr)
        assert run_bpf(bpf, nr) == answer(shipped, name, []), (nr, name)
    for name in sorted({r.name for r in shipped.rules if r.args}):
        check(shipped, name, limit=5000, bpf=bpf)


def _steps(bpf, nr, args=()):
    class Counting(list):
        n = 0

        def __getitem__(self, i):
            Counting.n += 1
            return list.__getitem__(self, i)
    run_bpf(Counting(decode_bpf(bpf)), nr, args)
    return Counting.n


def test_allowed_calls_take_few_instructions(shipped):
    # libseccomp's program took 13-17 instructions for an allowed call (read: 14 under strict)
    bpf = build_bpf(shipped)
    for name in ("read", "write", "close", "futex", "mmap", "openat", "fstat", "exit_group"):
        assert _steps(bpf, sc.resolve(name)) <= 11, name
