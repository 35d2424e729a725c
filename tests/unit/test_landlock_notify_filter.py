"""The Landlock fallback's filter (sandbox/notify/landlock_fallback.py, notify_bpf): which calls
leave the kernel, asked of the rewritten BPF through the project's interpreter (seccomp.run_bpf;
no filter is loaded). Read-only opens never reach the supervisor; write, create and truncate opens,
exec and the other file-changing calls do; what the plan denies keeps its own answer; the
supervisor's decision for a notified call is the plan's `allow` (a Landlock question)."""
from __future__ import annotations

import os
from dataclasses import replace

from policies import syscalls
from policies.compiler import compile_profile
from policies.plan import SyscallRule
from sandbox import seccomp
from sandbox.notify.decision import decide
from sandbox.notify.landlock_fallback import _NR, CALLS, NET_CALLS, notify_bpf

STRICT = compile_profile("strict", None).plan.seccomp
NOTIF, ALLOW = seccomp.RET_USER_NOTIF, seccomp.RET_ALLOW


def _answer(bpf, name, *args):
    return seccomp.run_bpf(bpf, syscalls.resolve(name), args) & seccomp.RET_ACTION_FULL


def test_only_changing_opens_and_exec_are_notified():
    bpf = seccomp.build_bpf(STRICT)
    b = notify_bpf(bpf)
    assert _answer(b, "openat", -100, 0, os.O_RDONLY) == ALLOW
    assert _answer(b, "openat", -100, 0, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY) == ALLOW
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_WRONLY | os.O_CLOEXEC):
        assert _answer(b, "openat", -100, 0, flags) == NOTIF, flags
    assert _answer(b, "open", 0, os.O_RDONLY) == ALLOW and _answer(b, "open", 0, os.O_WRONLY) == NOTIF
    for name in ("execve", "mkdir", "unlinkat", "renameat2", "symlink", "truncate", "openat2"):
        assert _answer(b, name) == NOTIF, name
    assert _answer(b, "read") == ALLOW and _answer(b, "connect") == ALLOW     # no TCP rules: not notified
    assert _answer(notify_bpf(bpf, network=True), "connect") == NOTIF
    assert _answer(notify_bpf(bpf, filesystem=False, network=True), "openat", -100, 0, os.O_WRONLY) == ALLOW


def test_every_other_answer_is_the_programs_own():
    bpf = seccomp.build_bpf(STRICT)
    b = notify_bpf(bpf)
    for name in ("mount", "ptrace", "keyctl", "getpid", "read", "clone3", "socket"):
        assert _answer(b, name, 16) == _answer(bpf, name, 16), name
    denying = replace(STRICT, notify_denials=False,
                      rules=(SyscallRule("mkdir", "errno", 1),) + tuple(r for r in STRICT.rules if r.name != "mkdir"))
    assert _answer(notify_bpf(seccomp.build_bpf(denying)), "mkdir") == seccomp.RET_ERRNO   # the plan's EPERM


def test_the_numbers_are_this_machines():
    """The fallback's own table (no libseccomp on a warm launch) agrees with libseccomp's."""
    table = _NR[os.uname().machine]
    for name in set(CALLS) | set(NET_CALLS):
        assert table.get(name) == syscalls.resolve(name), name


def test_a_notified_call_is_one_the_plan_allows():
    bpf = seccomp.build_bpf(STRICT)
    b = notify_bpf(bpf, network=True)
    for name in set(CALLS) | set(NET_CALLS):
        if syscalls.resolve(name) is None:
            continue
        args = (0, 0, os.O_WRONLY, 0, 0, 0)
        if _answer(b, name, *args) == NOTIF and _answer(bpf, name, *args) != NOTIF:
            assert decide(STRICT, name, args).policy_action in ("allow", "log"), name
