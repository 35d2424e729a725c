"""Issue 20 item 7 in the compiler: rules the compiler cannot resolve into few disjoint
libseccomp rules stay in priority order (first match) instead of being refused; what reads the
plan reads them that way - the verdict, the BPF, learn mode - and export refuses them (libseccomp
would read overlapping rules otherwise). Pure: no root, no kernel."""
from __future__ import annotations

import errno
import itertools
from types import SimpleNamespace

import pytest

from policies import syscalls as sc
from policies.export import ExportError, seccomp_section
from policies.seccomp import compile_seccomp, disjoint
from policies.seccomp_verdict import decide
from sandbox.learn import learning_seccomp
from sandbox.seccomp import RET_ALLOW, RET_USER_NOTIF, _act, build_bpf, run_bpf

M32 = (1 << 32) - 1
SECTION = {"default_action": "errno", "default_errno": "ENOSYS", "allow": ["socket", "read"],
           "socket_families": {"allow": ["AF_UNIX", "AF_INET", "AF_INET6",
                                         {"family": "AF_NETLINK", "protocols": ["NETLINK_ROUTE"]}]},
           # the rule issue 20 item 7 found refused: low-32-bit family mask AND the type
           "deny": [{"names": ["socket"], "args": [{"index": 0, "op": "masked_eq", "mask": M32, "value": 10},
                                                   {"index": 1, "op": "masked_eq", "mask": 0xFF, "value": 2}]}]}


@pytest.fixture(scope="module")
def plan():
    return compile_seccomp(SECTION)


def test_kept_in_priority_order_and_decided_first_match(plan):
    rules = [r for r in plan.rules if r.name == "socket"]
    assert not disjoint(rules) and len(rules) < 10, rules            # not multiplied out
    assert disjoint([r for r in plan.rules if r.name == "read"])
    assert decide(plan, "socket", [10, 2]) == ("errno", errno.EPERM)
    assert decide(plan, "socket", [(1 << 32) | 10, 0x80802]) == ("errno", errno.EPERM)
    assert decide(plan, "socket", [10, 1]) == ("allow", None)
    assert decide(plan, "socket", [2, 2]) == ("allow", None)
    assert decide(plan, "socket", [38, 5]) == ("errno", errno.EAFNOSUPPORT)
    assert decide(plan, "socket", [16, 3, 0]) == ("allow", None)
    assert decide(plan, "socket", [16, 3, 15]) == ("errno", errno.EAFNOSUPPORT)


def test_the_bpf_answers_as_the_verdict(plan):
    bpf = build_bpf(plan)
    nr = sc.resolve("socket")
    fams = [0, 1, 2, 10, 16, 38, (1 << 32) | 10, (1 << 32) | 2, M32]
    types = [0, 1, 2, 0x802, 0x102, (1 << 40) | 2]
    for f, t, p in itertools.product(fams, types, [0, 1, 15]):
        assert run_bpf(bpf, nr, [f, t, p]) == _act(*decide(plan, "socket", [f, t, p])), (hex(f), hex(t), p)


def test_learn_mode_observes_what_the_rules_in_order_deny(plan):
    ls = learning_seccomp(plan)
    assert decide(ls, "socket", [10, 2])[0] == "notify"               # denied in order: observed
    assert decide(ls, "socket", [38, 5])[0] == "notify"
    assert decide(ls, "socket", [10, 1]) == ("allow", None)
    assert decide(ls, "read") == ("allow", None)
    bpf = build_bpf(ls, notify_enosys=True)
    assert run_bpf(bpf, sc.resolve("socket"), [10, 2]) == RET_USER_NOTIF
    assert run_bpf(bpf, sc.resolve("socket"), [10, 1]) == RET_ALLOW


def test_export_refuses_rules_libseccomp_would_read_otherwise(plan):
    with pytest.raises(ExportError, match="socket"):
        seccomp_section(SimpleNamespace(seccomp=plan))
    resolvable = compile_seccomp({k: v for k, v in SECTION.items() if k != "deny"})
    assert seccomp_section(SimpleNamespace(seccomp=resolvable))[0]["defaultAction"] == "SCMP_ACT_ERRNO"
