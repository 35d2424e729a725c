"""Seccomp policy compilation (pure) and the generated BPF, checked with the BPF interpreter.

No filter is loaded here (see test_seccomp_kernel.py for that): the BPF program pysandbox
emits (sandbox/seccomp.py) is executed by sandbox.seccomp.run_bpf, a plain classic-BPF interpreter, and its
answers are compared with the plan's own decision (policies.seccomp_verdict.decide) and with an
independent reading of the profile / Docker JSON semantics written in this file.
"""
from __future__ import annotations

import copy
import errno
import itertools
import json
import random
from pathlib import Path

import pytest

from policies import syscalls as sc
from policies.docker_seccomp import convert, entry_applies, parse_kernel
from policies.errors import Location, ProfileError
from policies.plan import ArgCond, Seccomp, SyscallRule
from policies.seccomp import SEVERITY, compile_seccomp, describe_rule
from policies.seccomp_verdict import cond_matches, decide
from sandbox.seccomp import RET_ALLOW, RET_ERRNO, RET_KILL_PROCESS, RET_USER_NOTIF, _act, build_bpf, run_bpf

REPO = Path(__file__).resolve().parents[2]
DOCKER_JSON = REPO / "policies" / "data" / "docker-default-seccomp.json"
M64 = (1 << 64) - 1
DOCKER_CAPS = sc.DOCKER_DEFAULT_CAPS
KERNEL = (6, 18)


def locate(path):
    """A locator that encodes the path: line = len(path), col = last index + 1."""
    last = path[-1] if path and isinstance(path[-1], int) else 0
    return Location("test.yaml", len(path), last + 1)


def comp(section, caps=(), kernel=KERNEL):
    return compile_seccomp(section, capabilities=frozenset(caps), locate=locate, kernel=kernel)


def nr(name):
    return sc.resolve(name)


def bpf_says(bpf, name, args=()):
    return run_bpf(bpf, nr(name), list(args))


# --- groups, names, errno ---------------------------------------------------------

def test_groups_expand_and_project_groups():
    g = sc.groups()
    assert "@default" in g and "@system-service" in g and "@mount" in g
    assert "mount" in g["@mount"] and "umount2" in g["@mount"]
    assert sc.expand(["@namespace", "read"]) == ["read", "setns", "unshare"]
    with pytest.raises(KeyError):
        sc.expand(["@nosuchgroup"])


def test_name_classification_native_foreign_unknown():
    assert sc.classify("read") == "native" and sc.is_known("read")
    assert sc.classify("chown32") == "foreign"          # i386 only
    assert sc.classify("riscv_flush_icache") == "foreign"
    assert sc.classify("definitely_not_a_syscall") == "unknown"
    assert sc.resolve("read") == 0 and sc.syscall_name(0) == "read"


def test_errno_helpers():
    assert sc.errno_number("EPERM") == 1 and sc.errno_number("enosys") == 38
    assert sc.errno_number(13) == 13 and sc.errno_number("97") == 97
    assert sc.errno_name(38) == "ENOSYS"
    for bad in ("EWHAT", "PERM", -1, 5000, True, 1.5):
        with pytest.raises(ValueError):
            sc.errno_number(bad)


# --- errors: one line, with the location ------------------------------------------

@pytest.mark.parametrize("section,path_len,needle", [
    ({"allow": ["read", "nosuchcall"]}, 3, "unknown syscall 'nosuchcall'"),
    ({"allow": ["@nosuchgroup"]}, 3, "unknown syscall group '@nosuchgroup'"),
    ({"deny": [{"names": ["ptrace"], "errno": "EWHAT"}]}, 4, "unknown errno name 'EWHAT'"),
    ({"default_errno": "ENOTHING"}, 2, "unknown errno name"),
    ({"allow": [{"names": ["socket"], "args": [{"index": 0, "op": "like", "value": 1}]}]}, 6, "unknown comparison op"),
    ({"allow": [{"names": ["socket"], "args": [{"index": 0, "op": "masked_eq", "value": 1}]}]}, 5, "needs a 'mask'"),
    ({"allow": [{"names": ["socket"], "args": [{"index": 7, "op": "eq", "value": 1}]}]}, 6, "index must be 0..5"),
    ({"allow": [{"names": ["socket"], "args": [{"index": 0, "op": "eq", "value": "0xzz"}]}]}, 6, "not an integer"),
    ({"deny": [{"names": ["ptrace"], "action": "allow"}]}, 4, "deny action must be one of"),
    ({"deny": [{"names": ["ptrace"], "action": "kill", "errno": 1}]}, 4, "'errno' given for action kill"),
    ({"default_action": "maybe"}, 2, "default_action must be one of"),
    ({"allow": ["read"], "bogus": 1}, 2, "unknown key 'bogus'"),
])
def test_profile_errors_point_at_the_entry(section, path_len, needle):
    with pytest.raises(ProfileError) as ei:
        comp(section)
    e = ei.value
    assert needle in e.message, e.message
    assert e.location is not None and e.location.line == path_len, (e.location, e.message)
    assert "\n" not in str(e)


def test_unknown_name_in_a_group_is_skipped_but_a_direct_one_is_an_error():
    s = comp({"allow": ["@default"]})
    assert "riscv_flush_icache" in s.skipped and "getuid32" in s.skipped
    assert all(sc.is_known(r.name) for r in s.rules)
    s2 = comp({"allow": ["chown32", "read"]})       # a real syscall, not on this arch: reported
    assert "chown32" in s2.skipped
    with pytest.raises(ProfileError):
        comp({"allow": ["chown33"]})


# --- semantics ----------------------------------------------------------------------

def test_deny_beats_allow_at_equal_specificity():
    s = comp({"allow": ["ptrace", "read"], "deny": ["ptrace"]})
    assert decide(s, "ptrace") == ("errno", errno.EPERM)
    assert decide(s, "read") == ("allow", None)
    s = comp({"allow": ["@default", "@debug"], "deny": ["@debug"]})      # groups too
    assert decide(s, "ptrace") == ("errno", errno.EPERM)


def test_more_specific_rule_wins_and_default_applies_elsewhere():
    # deny clone; allow it only without namespace flags: the conditional allow is more specific
    s = comp({"default_action": "errno", "default_errno": "ENOSYS",
              "allow": [{"names": ["clone"], "args": [{"index": 0, "op": "masked_eq", "mask": "0x7E020080", "value": 0}]}],
              "deny": ["clone"]})
    assert decide(s, "clone", [17]) == ("allow", None)
    assert decide(s, "clone", [0x10000011]) == ("errno", errno.EPERM)
    assert decide(s, "getpid") == ("errno", errno.ENOSYS)
    # conditional allow + default deny: other values get the default, not an allow
    s = comp({"allow": [{"names": ["personality"], "args": [{"index": 0, "op": "eq", "value": 0}]}]})
    assert decide(s, "personality", [0]) == ("allow", None)
    assert decide(s, "personality", [8]) == ("errno", errno.ENOSYS)


def test_allow_socket_and_deny_vsock_is_expressed_for_libseccomp():
    s = comp({"allow": ["socket"],
              "deny": [{"names": ["socket"], "errno": "EAFNOSUPPORT",
                        "args": [{"index": 0, "op": "eq", "value": 40}]}]})
    rules = [r for r in s.rules if r.name == "socket"]
    # no unconditional allow next to the conditional errno (libseccomp would drop the errno)
    assert all(r.args for r in rules), rules
    bpf = build_bpf(s)
    assert bpf_says(bpf, "socket", [2]) == RET_ALLOW
    assert bpf_says(bpf, "socket", [40]) == RET_ERRNO | errno.EAFNOSUPPORT
    assert bpf_says(bpf, "socket", [41]) == RET_ALLOW


def test_harsher_action_wins_among_denies_and_later_rule_breaks_ties():
    s = comp({"deny": [{"names": ["ptrace"], "action": "errno"}, {"names": ["ptrace"], "action": "kill"}]})
    assert decide(s, "ptrace") == ("kill", None)
    s = comp({"deny": [{"names": ["ptrace"], "errno": "EACCES"}, {"names": ["ptrace"], "errno": "EPERM"}]})
    assert decide(s, "ptrace") == ("errno", errno.EPERM)


def test_group_deny_is_lifted_by_the_governing_capability_explicit_deny_is_not():
    section = {"allow": ["@chown", "@setuid"], "deny": ["@privileged"]}
    assert decide(comp(section), "fchownat") == ("errno", errno.EPERM)
    assert decide(comp(section, caps={"CHOWN"}), "fchownat") == ("allow", None)
    assert decide(comp(section, caps={"CAP_SETUID"}), "setresuid") == ("allow", None)
    assert decide(comp(section, caps={"CHOWN"}), "setresuid") == ("errno", errno.EPERM)
    explicit = {"allow": ["@chown"], "deny": ["fchownat"]}
    assert decide(comp(explicit, caps={"CHOWN"}), "fchownat") == ("errno", errno.EPERM)


def test_output_is_sorted_and_independent_of_input_order():
    a = {"allow": ["read", "write", "@default", {"names": ["personality"], "args": [{"index": 0, "op": "eq", "value": 8}]}],
         "deny": ["@mount", {"names": ["socket"], "args": [{"index": 0, "op": "eq", "value": 40}]}]}
    b = copy.deepcopy(a)
    b["allow"].reverse()
    b["deny"].reverse()
    sa, sb = comp(a), comp(b)
    assert sa == sb and hash(sa) == hash(sb)
    assert list(sa.rules) == sorted(sa.rules, key=lambda r: (r.name, r.action, r.errno or -1,
                                                               tuple((c.index, c.op, c.value, c.mask) for c in r.args)))


def test_disabled_and_missing_section():
    s = comp({"enabled": False, "allow": ["read"]})
    assert not s.enabled and s.rules == () and build_bpf(s) == b""
    s = comp(None)                                        # no section: Docker's default, like docker run
    assert decide(s, "mount") == ("errno", errno.EPERM) and decide(s, "read") == ("allow", None)


def test_notify_denials_turns_errno_rules_into_user_notification():
    s = comp({"allow": ["@default"], "deny": ["ptrace", {"names": ["clone3"], "errno": "ENOSYS"}],
              "notify_denials": True})
    bpf = build_bpf(s)
    assert bpf_says(bpf, "ptrace") == RET_USER_NOTIF
    assert bpf_says(bpf, "clone3") == RET_ERRNO | errno.ENOSYS       # compatibility answer, not notified
    assert bpf_says(bpf, "syslog") == RET_ERRNO | errno.ENOSYS
    assert bpf_says(bpf, "getpid") == RET_ALLOW
    assert run_bpf(build_bpf(s, notify_enosys=True), nr("clone3")) == RET_USER_NOTIF


def test_other_architectures_and_x32_are_killed():
    bpf = build_bpf(comp({"default_action": "allow"}))
    assert run_bpf(bpf, 0, arch=0x40000003) == RET_KILL_PROCESS          # i386
    assert run_bpf(bpf, 0x40000000 | 1) == RET_KILL_PROCESS              # x32 write


def _bpf_matches_plan(s, name, probes0, probes1):
    bpf = build_bpf(s)
    for a0, a1 in itertools.product(probes0, probes1):
        want = decide(s, name, [a0, a1])
        assert bpf_says(bpf, name, [a0, a1]) == _act(*want), (name, hex(a0), hex(a1), want)


def test_conditions_too_complex_for_libseccomp_compile_quickly_and_are_enforced():
    # issue 20 item 7: once refused as "too complex" (a ProfileError, never a hang); with our own
    # BPF emitter the syscall keeps its rules in priority order: compiled in bounded time, exact
    import time
    deny = [{"names": ["personality"], "args": [{"index": 0, "op": "ne", "value": v},
                                                 {"index": 1, "op": "masked_eq", "mask": 1 << b, "value": 1 << b}]}
            for v, b in zip(range(3, 3000, 97), range(40))]
    t = time.monotonic()
    s = comp({"allow": ["personality"], "deny": deny})
    assert time.monotonic() - t < 30
    rules = [r for r in s.rules if r.name == "personality"]
    # in priority order, not multiplied out: the denies, then the allow they beat
    assert len(rules) == len(deny) + 1 and rules[-1] == SyscallRule("personality", "allow", None, ())
    vs = [3, 4, 100, 2 + 97 * 5, 2999]
    _bpf_matches_plan(s, "personality", vs, [0, 1, 2, 1 << 5, 1 << 30, (1 << 31) | 1, M64])
    assert decide(s, "personality", [4, 1]) == ("errno", errno.EPERM)
    assert decide(s, "personality", [3, 1]) == ("allow", None)      # bit 0 only with v == 3: its ne fails


def test_rules_libseccomp_looped_on_build_exactly():
    # libseccomp 2.5.4 looped forever adding these two rules (64-bit masked_eq below a range); it
    # had a watchdog. Our emitter builds them at once, and the program answers as the plan does.
    rules = tuple(SyscallRule("personality", "errno", 1, (ArgCond(0, "le", 6), ArgCond(2, "masked_eq", v, m)))
                  for m, v in ((0xffffffff90000000, 0x80000000), (0xffffffff10000000, 0x100000000)))
    s = Seccomp(rules=rules)
    bpf = build_bpf(s)
    for a0 in (0, 6, 7, M64):
        for a2 in (0, 0x80000000, 0x90000000, 0x100000000, 0x110000000, 0xffffffff80000000, M64):
            assert bpf_says(bpf, "personality", [a0, 0, a2]) == _act(*decide(s, "personality", [a0, 0, a2]))
    assert bpf_says(bpf, "personality", [6, 0, 0x80000000]) == RET_ERRNO | 1


# --- exactness: the plan and the BPF agree with the written semantics ------------------

def _reference(section, args):
    """The documented rule semantics, read directly off the section (one syscall)."""
    ents = []
    for o, it in enumerate(section.get("allow", [])):
        conds = [] if isinstance(it, str) else [ArgCond(a["index"], a["op"], a["value"], a.get("mask", 0))
                                                for a in it.get("args", [])]
        ents.append(((len(conds), False, 0, o), "allow", None, conds))
    for o, it in enumerate(section.get("deny", []), start=100):
        act = it.get("action", "errno")
        conds = [ArgCond(a["index"], a["op"], a["value"], a.get("mask", 0)) for a in it.get("args", [])]
        ents.append(((len(conds), True, SEVERITY[act], o), act, it.get("errno", 1) if act == "errno" else None, conds))
    ents.sort(key=lambda e: e[0], reverse=True)
    a = list(args) + [0] * 6
    for _, act, err, conds in ents:
        if all(cond_matches(c, a[c.index]) for c in conds):
            return act, err
    return "errno", errno.ENOSYS


def test_random_policies_plan_matches_semantics_and_bpf_matches_plan():
    rng = random.Random(1234)
    values = [0, 1, 2, 7, 8, 40, 41, 0xff, 0x10000000, 0xffffffff]
    built = 0
    for trial in range(60):
        def cond():
            i = rng.choice([0, 0, 1])
            op = rng.choice(["eq", "ne", "masked_eq", "lt", "gt"])
            if op == "masked_eq":
                m = rng.choice([0xff, 0x7E020080, 0x10000000, 3])
                return {"index": i, "op": op, "mask": m, "value": rng.choice([0, m, 1 & m])}
            return {"index": i, "op": op, "value": rng.choice(values)}
        section = {"default_action": "errno", "default_errno": "ENOSYS",
                   "allow": [rng.choice(["personality", {"names": ["personality"], "args": [cond()]}])
                             for _ in range(rng.randint(1, 3))],
                   "deny": [dict({"names": ["personality"], "args": [cond() for _ in range(rng.randint(0, 2))]},
                                 **rng.choice([{}, {"action": "kill"}, {"errno": 13}]))
                            for _ in range(rng.randint(0, 2))]}
        s = comp(section)              # nothing is refused for a libseccomp limit any more
        bpf = build_bpf(s)
        built += 1
        probes = sorted({v2 for v in values for v2 in (v, v - 1 & M64, v + 1)} | {M64})
        for a0, a1 in itertools.product(probes, repeat=2):
            want = _reference(section, [a0, a1])
            assert decide(s, "personality", [a0, a1]) == want, (section, a0, a1)
            assert bpf_says(bpf, "personality", [a0, a1]) == _act(*want), (section, hex(a0), hex(a1))
    assert built == 60, built


# --- shipped profiles ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def strict():
    from policies.compiler import compile_profile
    return compile_profile("strict", kernel=KERNEL).plan.seccomp


@pytest.fixture(scope="module")
def strict_bpf(strict):
    return build_bpf(strict)


CLONE_NEWUSER, CLONE_NEWNS, SIGCHLD = 0x10000000, 0x20000, 17


@pytest.mark.parametrize("name,args,want", [
    ("mount", [], ("errno", errno.EPERM)),
    ("umount2", [], ("errno", errno.EPERM)),
    ("unshare", [CLONE_NEWUSER], ("errno", errno.EPERM)),
    ("setns", [], ("errno", errno.EPERM)),
    ("ptrace", [16, 1], ("errno", errno.EPERM)),
    ("keyctl", [], ("errno", errno.EPERM)),
    ("bpf", [], ("errno", errno.EPERM)),
    ("userfaultfd", [], ("errno", errno.EPERM)),
    ("perf_event_open", [], ("errno", errno.EPERM)),
    ("open_by_handle_at", [], ("errno", errno.EPERM)),
    ("init_module", [], ("errno", errno.EPERM)),
    ("kexec_load", [], ("errno", errno.EPERM)),
    ("swapon", [], ("errno", errno.EPERM)),
    ("iopl", [], ("errno", errno.EPERM)),
    ("settimeofday", [], ("errno", errno.EPERM)),
    ("io_uring_setup", [], ("errno", errno.EPERM)),
    ("personality", [0x1234], ("errno", errno.EPERM)),
    ("personality", [0], ("allow", None)),
    ("personality", [0xffffffff], ("allow", None)),
    ("clone", [SIGCHLD], ("allow", None)),
    ("clone", [0x3d0f00], ("allow", None)),                   # glibc pthread_create flags
    ("clone", [CLONE_NEWUSER | SIGCHLD], ("errno", errno.EPERM)),
    ("clone", [CLONE_NEWNS | SIGCHLD], ("errno", errno.EPERM)),
    ("clone3", [], ("errno", errno.ENOSYS)),
    ("socket", [40], ("errno", errno.EAFNOSUPPORT)),          # AF_VSOCK: outside the family allow-list
    ("socket", [1], ("allow", None)),
    ("ioctl", [0, 0x5412], ("errno", errno.EPERM)),           # TIOCSTI
    ("ioctl", [0, 0x5401], ("allow", None)),                  # TCGETS
    ("memfd_secret", [], ("errno", errno.ENOSYS)),            # unlisted
    ("read", [], ("allow", None)),
    ("execve", [], ("allow", None)),
])
def test_strict_decisions_in_plan_and_bpf(strict, strict_bpf, name, args, want):
    assert decide(strict, name, args) == want
    s = strict
    ret = RET_USER_NOTIF if (s.notify_denials and want[0] == "errno" and want[1] != errno.ENOSYS) else _act(*want)
    assert bpf_says(strict_bpf, name, args) == ret


def test_strict_rules_are_what_libseccomp_can_hold(strict):
    for name, rules in itertools.groupby(strict.rules, key=lambda r: r.name):
        rules = list(rules)
        if any(not r.args for r in rules):
            assert len(rules) == 1, rules                   # unconditional: alone
        for r in rules:
            assert len({c.index for c in r.args}) == len(r.args), r   # one comparison per argument
    assert "ptrace -> errno(EPERM)" in [describe_rule(r) for r in strict.rules]


# --- Docker import ----------------------------------------------------------------------------

def _docker():
    return json.loads(DOCKER_JSON.read_text())


def _docker_reference(data, name, args, caps, kernel=KERNEL):
    """Docker's documented semantics, independently: the first matching applicable rule
    (Docker's default has no conflicts); same-index args are ORed, like runc."""
    capset = {"CAP_" + c for c in caps}
    ops = {"SCMP_CMP_EQ": lambda a, v, v2: a == v, "SCMP_CMP_NE": lambda a, v, v2: a != v,
           "SCMP_CMP_LT": lambda a, v, v2: a < v, "SCMP_CMP_LE": lambda a, v, v2: a <= v,
           "SCMP_CMP_GT": lambda a, v, v2: a > v, "SCMP_CMP_GE": lambda a, v, v2: a >= v,
           "SCMP_CMP_MASKED_EQ": lambda a, v, v2: a & v == v2}
    for e in data["syscalls"]:
        if name not in e["names"]:
            continue
        inc, exc = e.get("includes") or {}, e.get("excludes") or {}
        if exc.get("caps") and set(exc["caps"]) & capset:
            continue
        if exc.get("arches") and "amd64" in exc["arches"]:
            continue
        if inc.get("arches") and "amd64" not in inc["arches"]:
            continue
        if inc.get("caps") and not set(inc["caps"]) <= capset:
            continue
        if inc.get("minKernel") and kernel < parse_kernel(inc["minKernel"]):
            continue
        conds = e.get("args") or []
        a = list(args) + [0] * 6
        hits = [ops[c["op"]](a[c["index"]], c["value"], c.get("valueTwo", 0)) for c in conds]
        same_index = len({c["index"] for c in conds}) != len(conds)
        if conds and not (any(hits) if same_index else all(hits)):
            continue
        act = e["action"]
        if act == "SCMP_ACT_ALLOW":
            return "allow", None
        if act == "SCMP_ACT_ERRNO":
            return "errno", e.get("errnoRet", errno.EPERM)
        raise AssertionError(act)
    return "errno", data.get("defaultErrnoRet", errno.EPERM)


def _docker_probes(data, name):
    vals = {0, 1, 17, M64}
    for e in data["syscalls"]:
        if name in e["names"]:
            for c in e.get("args") or []:
                for v in (c["value"], c.get("valueTwo", 0)):
                    vals.update({v, (v - 1) & M64, (v + 1) & M64})
                if c["op"] == "SCMP_CMP_MASKED_EQ":
                    vals.update({1 << b for b in range(64) if c["value"] >> b & 1})
    vals.update({0x10000000 | 17, 0x20000 | 17, 0x3d0f00})
    return sorted(vals)


@pytest.mark.parametrize("caps", [frozenset(), DOCKER_CAPS, DOCKER_CAPS | {"SYS_ADMIN"},
                                  DOCKER_CAPS | {"SYS_PTRACE"}], ids=["none", "docker14", "+SYS_ADMIN", "+SYS_PTRACE"])
def test_docker_import_parity_for_every_syscall(caps):
    data = _docker()
    s = comp({"import": str(DOCKER_JSON)}, caps=caps)
    bpf = build_bpf(s)
    names = sorted({n for e in data["syscalls"] for n in e["names"]})
    checked = 0
    for name in names:
        if not sc.is_known(name):
            continue                    # other architectures' names (reported in skipped when applicable)
        for v in _docker_probes(data, name):
            want = _docker_reference(data, name, [v], caps)
            assert decide(s, name, [v]) == want, (name, hex(v), sorted(caps))
            assert bpf_says(bpf, name, [v]) == _act(*want), (name, hex(v))
            checked += 1
    assert checked > 1000
    assert {"chown32", "_llseek"} <= set(s.skipped)
    # spot checks of the documented semantics
    assert decide(s, "clone3", []) == (("allow", None) if "SYS_ADMIN" in caps else ("errno", errno.ENOSYS))
    assert decide(s, "ptrace", []) == ("allow", None)                       # minKernel 4.8
    assert decide(s, "mount", []) == (("allow", None) if "SYS_ADMIN" in caps else ("errno", errno.EPERM))
    assert decide(s, "socket", [40])[0] == "errno" and decide(s, "socket", [2])[0] == "allow"
    assert decide(s, "personality", [0xffffffff]) == ("allow", None)


def test_docker_min_kernel_and_unknown_kernel():
    assert decide(comp({"import": str(DOCKER_JSON)}, kernel=(4, 7)), "ptrace") == ("errno", errno.EPERM)
    assert decide(comp({"import": str(DOCKER_JSON)}, kernel=(4, 8)), "ptrace") == ("allow", None)
    assert decide(comp({"import": str(DOCKER_JSON)}, kernel=None), "ptrace") == ("errno", errno.EPERM)
    assert entry_applies({"excludes": {"minKernel": "5.0"}}, frozenset(), (4, 19), frozenset({"amd64"}))
    assert not entry_applies({"excludes": {"minKernel": "5.0"}}, frozenset(), (5, 0), frozenset({"amd64"}))


def test_docker_actions_args_and_unknown_names(tmp_path):
    data = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"names": ["read", "write", "no_such_call", "chown32"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["ptrace"], "action": "SCMP_ACT_KILL"},
                {"names": ["getpid"], "action": "SCMP_ACT_TRACE"},
                {"names": ["getppid"], "action": "SCMP_ACT_LOG"},
                {"names": ["kill"], "action": "SCMP_ACT_NOTIFY", "errnoRet": 13},
                {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]},
                {"names": ["mknod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                 "args": [{"index": 1, "value": 0o170000, "valueTwo": 0o020000, "op": "SCMP_CMP_MASKED_EQ"}]},
            ]}
    imp = convert(data)
    assert {"no_such_call", "chown32"} <= imp.skipped
    p = tmp_path / "s.json"
    p.write_text(json.dumps(data))
    s = comp({"import": str(p), "allow": ["mknod"]})
    assert decide(s, "ptrace") == ("kill", None)
    assert decide(s, "getpid") == ("errno", errno.ENOSYS)
    assert decide(s, "getppid") == ("log", None)
    assert decide(s, "kill") == ("notify", 13)
    assert decide(s, "socket", [1]) == decide(s, "socket", [2]) == ("allow", None)     # same index: OR (runc)
    assert decide(s, "socket", [3]) == ("errno", 38)
    # the section's allow sits on top of the import: mknod allowed, the imported errno is replaced
    assert decide(s, "mknod", [0, 0o020000]) == ("allow", None)
    s2 = comp({"import": str(p), "deny": ["read"]})
    assert decide(s2, "read") == ("errno", errno.EPERM) and decide(s2, "write") == ("allow", None)


def test_docker_json_errors_are_profile_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"defaultAction": "SCMP_ACT_ERRNO",\n  "syscalls": [ }')
    with pytest.raises(ProfileError) as ei:
        comp({"import": str(bad)})
    assert ei.value.location.file == str(bad) and ei.value.location.line == 2
    bad.write_text(json.dumps({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_PARTY"}]}))
    with pytest.raises(ProfileError, match="unknown action"):
        comp({"import": str(bad)})
    with pytest.raises(ProfileError, match="cannot read"):
        comp({"import": str(tmp_path / "missing.json")})


def _bpf_agrees_with_plan(s, bpf):
    """What build_bpf verified while libseccomp built the program: every syscall the plan names,
    and those with argument conditions at every boundary of them, answer as the plan does."""
    from sandbox.seccomp import decode_bpf
    prog = decode_bpf(bpf)
    for name in sorted({r.name for r in s.rules}):
        conds = [c for r in s.rules if r.name == name for c in r.args]
        idxs = sorted({c.index for c in conds}) or [0]
        per = []
        for i in idxs:
            vals = {0, 1, M64}
            for c in conds:
                if c.index == i:
                    for v in (c.value, c.mask, c.value | (~c.mask & M64)):
                        vals.update({v, (v - 1) & M64, (v + 1) & M64})
            per.append(sorted(vals))
        for combo in itertools.islice(itertools.product(*per), 3000):
            args = [0] * 6
            for i, v in zip(idxs, combo):
                args[i] = v
            want = decide(s, name, args)
            ret = RET_USER_NOTIF if s.notify_denials and want[0] == "errno" and want[1] != errno.ENOSYS else _act(*want)
            assert run_bpf(prog, nr(name), args) == ret, (name, [hex(a) for a in args])


def test_every_docker_capability_and_strict_cap_lift_builds_and_verifies():
    """No capability set makes a wrong or unbuildable filter for the shipped policies: each
    program is checked against its plan (_bpf_agrees_with_plan)."""
    import yaml
    data = _docker()
    caps = sorted({c[4:] for e in data["syscalls"]
                   for c in (e.get("includes") or {}).get("caps", []) + (e.get("excludes") or {}).get("caps", [])})
    assert "SYS_ADMIN" in caps and "SYS_PTRACE" in caps
    for c in caps:
        s = comp({"import": str(DOCKER_JSON)}, caps=DOCKER_CAPS | {c})
        _bpf_agrees_with_plan(s, build_bpf(s))
    strict_section = yaml.safe_load((REPO / "profiles" / "strict.yaml").read_text())["seccomp"]
    for c in (set(), {"CHOWN"}, {"SETUID", "SETGID"}, {"SETPCAP"}, DOCKER_CAPS | set(caps)):
        s = comp(strict_section, caps=c)
        _bpf_agrees_with_plan(s, build_bpf(s))
        assert decide(s, "fchownat", [0xffffff9c, 0, 0, 0])[0] == "allow"      # to root:root inside
        # giving files away: left to the kernel's CAP_CHOWN check whatever the plan keeps
        # (tests/system/test_strict_noops.py shows the kernel's EPERM without it)
        assert decide(s, "fchownat", [0xffffff9c, 0, 1, 1])[0] == "allow"
        assert decide(s, "setresuid", [1, 1, 1])[0] == "allow" and decide(s, "capset", [0, 0])[0] == "allow"
        assert decide(s, "sethostname", [0, 0])[0] == "errno"              # the rest of @privileged
