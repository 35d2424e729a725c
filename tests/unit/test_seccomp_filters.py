"""The filters of a run, decided in one place (sandbox.seccomp.filters, exec_filters), and the one
syscall number -> name lookup (policies.syscalls.syscall_name): what the program loads, how its
denials reach the supervisor, run -d's two filters for `exec`. The kernel's support for user
notification is set per test (seccomp.user_notif_available); the programs are read with the
classic-BPF interpreter: no root, no kernel."""
from __future__ import annotations

import errno

import pytest

from policies import syscalls as sc
from policies.plan import Seccomp, SyscallRule
from sandbox import seccomp
from sandbox.seccomp import RET_ERRNO, RET_KILL_PROCESS, RET_USER_NOTIF, build_bpf, run_bpf

DENY = (SyscallRule("mount", "errno", errno=errno.EPERM), SyscallRule("keyctl", "errno", errno=errno.EACCES))
AUDITED = Seccomp(default_action="allow", rules=DENY, notify_denials=True)
WITH_KILL = Seccomp(default_action="allow", rules=DENY + (SyscallRule("add_key", "kill"),), notify_denials=True)
QUIET = Seccomp(default_action="allow", rules=DENY)


@pytest.fixture(params=[True, False], ids=["user_notif", "no_user_notif"])
def user_notif(request, monkeypatch):
    monkeypatch.setattr(seccomp, "user_notif_available", lambda: request.param)
    return request.param


def says(bpf, name):
    return run_bpf(bpf, sc.resolve(name))


def test_seccomp_off_loads_nothing(user_notif):
    f = seccomp.filters(Seccomp(enabled=False), None, audit=True)
    assert f == seccomp.Filters(None) and f.mode is None and not f.log


def test_without_audit_the_program_loads_the_plan_s_own_filter(user_notif):
    bpf = build_bpf(WITH_KILL)
    f = seccomp.filters(WITH_KILL, bpf, audit=False)
    assert f.program is bpf and f.mode is None and not f.log
    built = seccomp.filters(WITH_KILL, None, audit=False)       # built when not given
    assert built.program == bpf


def test_a_plan_that_notifies_nothing_is_not_supervised(user_notif):
    bpf = build_bpf(QUIET)
    f = seccomp.filters(QUIET, bpf, audit=True)
    assert f.program is bpf and f.mode is None and not f.log


def test_user_notification_hands_the_listener_over(monkeypatch):
    monkeypatch.setattr(seccomp, "user_notif_available", lambda: True)
    bpf = build_bpf(AUDITED)
    f = seccomp.filters(AUDITED, bpf, audit=True)
    assert f.program is bpf and f.mode == "user_notif" and not f.log
    assert says(f.program, "mount") == RET_USER_NOTIF


def test_kill_rules_reach_the_supervisor_first(monkeypatch):
    monkeypatch.setattr(seccomp, "user_notif_available", lambda: True)
    bpf = build_bpf(WITH_KILL)
    assert says(bpf, "add_key") == RET_KILL_PROCESS
    f = seccomp.filters(WITH_KILL, bpf, audit=True)
    assert f.mode == "user_notif"
    assert says(f.program, "add_key") == RET_USER_NOTIF and says(f.program, "mount") == RET_USER_NOTIF
    assert seccomp.filters(WITH_KILL, bpf, audit=True).program is f.program      # built once per plan
    learn = seccomp.filters(WITH_KILL, bpf, audit=True, learn=True)             # learn: its own program
    assert learn.program is bpf and learn.mode == "user_notif"


def test_a_plan_denying_the_hand_over_is_refused(monkeypatch):
    monkeypatch.setattr(seccomp, "user_notif_available", lambda: True)
    s = Seccomp(rules=(SyscallRule("close", "errno", errno=1), SyscallRule("mount", "errno", errno=1)),
                default_action="allow", notify_denials=True)
    with pytest.raises(seccomp.FilterError, match="notify_denials needs close allowed"):
        seccomp.filters(s, build_bpf(s), audit=True)
    assert not seccomp.plan_allows(s, "close") and seccomp.plan_allows(s, "sendmsg")


def test_without_user_notification_the_kernel_logs_plain_denials(monkeypatch):
    monkeypatch.setattr(seccomp, "user_notif_available", lambda: False)
    f = seccomp.filters(WITH_KILL, build_bpf(WITH_KILL), audit=True)
    assert f.mode == "kmsg" and f.log
    assert says(f.program, "mount") == RET_ERRNO | errno.EPERM
    assert says(f.program, "keyctl") == RET_ERRNO | errno.EACCES
    assert says(f.program, "add_key") == RET_KILL_PROCESS
    assert f.program is seccomp.plain_bpf(WITH_KILL)
    with pytest.raises(OSError) as e:
        seccomp.filters(AUDITED, build_bpf(AUDITED), audit=True, learn=True)
    assert e.value.errno == errno.ENOSYS


def test_exec_filters_of_a_detached_sandbox(user_notif):
    bpf = build_bpf(WITH_KILL)
    plain, notify = seccomp.exec_filters(WITH_KILL, bpf)
    assert says(plain, "mount") == RET_ERRNO | errno.EPERM and says(plain, "add_key") == RET_KILL_PROCESS
    if user_notif:
        assert notify == seccomp.filters(WITH_KILL, bpf, audit=True).program
        assert says(notify, "add_key") == RET_USER_NOTIF
    else:
        assert notify == b""
    quiet = build_bpf(QUIET)
    assert seccomp.exec_filters(QUIET, quiet) == (quiet, b"")
    assert seccomp.exec_filters(WITH_KILL, None)[1] == b""      # no filter of the run's: none recorded


def test_syscall_names_one_lookup():
    native = sc.syscall_table(top=64)
    arch = next(iter(native))[0]
    assert native[(arch, 0)] == "read"
    assert sc.syscall_name(0) == "read" and sc.syscall_name(0, arch) == "read"
    assert sc.syscall_name(1, 0x40000003) == "exit"            # a foreign architecture's number
    assert sc.syscall_name(100000) is None
    sc.seed_syscall_names({(0x1234, 7): "seeded"})             # a launch server's table: no libseccomp
    assert sc.syscall_name(7, 0x1234) == "seeded"
