"""Issue 20, item 7: seccomp argument rules in a profile extending `strict`.

How it failed: `{names: [socket], args: [{index: 0, op: eq, value: 10}]}` added to a profile
extending strict was refused with "too complex for libseccomp (more than 128 rules)", reported at
the `seccomp:` line. The compiler turns every syscall's overlapping rules into disjoint
single-comparison libseccomp rules (a decision tree over the arguments); strict's old masked
AF_VSOCK rule cut the first argument into bit-cubes, and an exact value carved out of those cost
up to 64 pieces each. Since socket families became exact values (socket_families), exact rules on
socket compose in a handful of pieces. What libseccomp could still not hold (a low-32-bit masked
comparison on the family beside strict's exact ones AND a second argument condition) was refused;
since pysandbox emits the BPF itself it loads and is enforced: tests/system/test_seccomp_two_arg_rules.py.
Real sandboxes, root and rootless.
"""
from __future__ import annotations

import errno
import json
import textwrap


PROBE = textwrap.dedent("""
    import ctypes, json, os
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    out = {}
    for key, fam, typ in [("inet", 2, 1), ("inet6", 10, 1), ("inet6_dgram", 10, 2), ("unix", 1, 1),
                          ("alg", 38, 5)]:
        ctypes.set_errno(0)
        r = libc.syscall(ctypes.c_long(41), ctypes.c_ulong(fam), ctypes.c_ulong(typ), ctypes.c_ulong(0))
        out[key] = ctypes.get_errno() if r < 0 else 0
        if r >= 0:
            os.close(r)
    print(json.dumps(out))
""")


def _derived(tmp_profile, rule: str, key: str = "deny") -> str:
    return tmp_profile(f"version: 1\nextends: strict\nseccomp:\n  {key}: !extend\n    - {rule}\n", "argrules.yaml")


def _probe(runner, prof):
    r = runner.py(PROBE, profile=prof)
    assert r.returncode == 0, r
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_issue_rule_eq_on_socket_family_in_a_derived_profile(runner, tmp_profile):
    # the issue's rule, as a deny: AF_INET6 refused by the derived profile, the rest as strict
    prof = _derived(tmp_profile, "{names: [socket], args: [{index: 0, op: eq, value: 10}]}")
    out = _probe(runner, prof)
    assert out["inet6"] == errno.EPERM and out["inet6_dgram"] == errno.EPERM, out
    assert out["inet"] == 0 and out["unix"] == 0, out
    assert out["alg"] == errno.EAFNOSUPPORT, out                    # strict's families still hold
    # ... and as an allow (what strict allows already): compiles, nothing changes
    prof = _derived(tmp_profile, "{names: [socket], args: [{index: 0, op: eq, value: 10}]}", "allow")
    out = _probe(runner, prof)
    assert out["inet6"] == 0 and out["inet"] == 0 and out["alg"] == errno.EAFNOSUPPORT, out


def test_two_argument_conditions_compose(runner, tmp_profile):
    # family AND type: only IPv6 datagram sockets refused
    prof = _derived(tmp_profile, "{names: [socket], args: [{index: 0, op: eq, value: 10}, "
                                 "{index: 1, op: masked_eq, mask: 0xff, value: 2}]}")
    out = _probe(runner, prof)
    assert out["inet6_dgram"] == errno.EPERM and out["inet6"] == 0 and out["inet"] == 0, out
    assert out["alg"] == errno.EAFNOSUPPORT, out
