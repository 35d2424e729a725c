"""The Landlock fallback's filter (sandbox/notify/landlock_fallback.py, notify_plan): which calls
leave the kernel, asked of the generated BPF through the project's interpreter (seccomp.run_bpf;
no filter is loaded). Read-only opens never reach the supervisor; write, create and truncate opens
and exec do; what the plan denies keeps its own answer; the supervisor's decision for a notified
call is the plan's `allow` (a Landlock question), never a denial's."""
from __future__ import annotations

import os

from policies import syscalls
from policies.compiler import compile_profile
from sandbox import seccomp
from sandbox.notify.decision import decide
from sandbox.notify.landlock_fallback import CALLS, NET_CALLS, notify_plan

STRICT = compile_profile("strict", None).plan.seccomp
NOTIF, ALLOW = seccomp.RET_USER_NOTIF, seccomp.RET_ALLOW


def _answer(s, name, *args):
    return seccomp.run_bpf(seccomp.build_bpf(s), syscalls.resolve(name), args) & seccomp.RET_ACTION_FULL


def test_only_changing_opens_and_exec_are_notified():
    s = notify_plan(STRICT)
    assert _answer(s, "openat", -100, 0, os.O_RDONLY) == ALLOW
    assert _answer(s, "openat", -100, 0, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY) == ALLOW
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_WRONLY | os.O_CLOEXEC):
        assert _answer(s, "openat", -100, 0, flags) == NOTIF, flags
    assert _answer(s, "open", 0, os.O_RDONLY) == ALLOW and _answer(s, "open", 0, os.O_WRONLY) == NOTIF
    for name in ("execve", "mkdir", "unlinkat", "renameat2", "symlink", "truncate"):
        assert _answer(s, name) == NOTIF, name
    assert _answer(s, "read") == ALLOW and _answer(s, "connect") == ALLOW     # no TCP rules: not notified
    assert _answer(notify_plan(STRICT, network=True), "connect") == NOTIF
    assert _answer(notify_plan(STRICT, filesystem=False, network=True), "openat", -100, 0, os.O_WRONLY) == ALLOW


def test_the_plans_own_denials_keep_their_answer():
    from dataclasses import replace
    from policies.plan import SyscallRule
    denying = replace(STRICT, notify_denials=False,
                      rules=(SyscallRule("mkdir", "errno", 1),) + tuple(r for r in STRICT.rules if r.name != "mkdir"))
    assert _answer(notify_plan(denying), "mkdir") == seccomp.RET_ERRNO            # the plan's EPERM, in the kernel
    s = notify_plan(STRICT)
    assert _answer(s, "mount") == _answer(STRICT, "mount")
    for name in set(CALLS) | set(NET_CALLS):
        if syscalls.resolve(name) is None:
            continue
        d = decide(STRICT, name, (0, 0, os.O_WRONLY, 0, 0, 0))
        if _answer(s, name, 0, 0, os.O_WRONLY) == NOTIF and _answer(STRICT, name, 0, 0, os.O_WRONLY) == ALLOW:
            assert d.policy_action in ("allow", "log"), name                  # the supervisor asks Landlock
