"""Issue 20 item 7, the root fix: argument conditions on two arguments of one syscall that
libseccomp could not hold now load, and both conditions are enforced. Real sandboxes, root and
rootless.

How it failed: a low-32-bit `masked_eq` on socket's family beside strict's exact families, AND
a condition on the type, came to more than 128 disjoint libseccomp rules: the profile was
refused (exit 2, "too complex for libseccomp"). pysandbox now emits the BPF itself: such a
syscall keeps its rules in priority order (first match, policies/seccomp_verdict.py), so no
combination of valid rules is refused for a libseccomp limit.
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
    for key, fam, typ in [("inet6_dgram", 10, 2), ("inet6_stream", 10, 1), ("inet_dgram", 2, 2),
                          ("inet_stream", 2, 1), ("unix", 1, 1), ("alg", 38, 5),
                          ("inet6_dgram_cloexec", 10, 2 | 0o2000000),
                          ("inet6_dgram_high_type", 10, 2 | (1 << 40))]:
        ctypes.set_errno(0)
        r = libc.syscall(ctypes.c_long(41), ctypes.c_ulong(fam), ctypes.c_ulong(typ), ctypes.c_ulong(0))
        out[key] = ctypes.get_errno() if r < 0 else 0
        if r >= 0:
            os.close(r)
    print(json.dumps(out))
""")

# the rule issue 20 item 7 refused under strict: family (low 32 bits) == AF_INET6 AND type & 0xff == SOCK_DGRAM
RULE = ("{names: [socket], args: [{index: 0, op: masked_eq, mask: 0xffffffff, value: 10}, "
        "{index: 1, op: masked_eq, mask: 0xff, value: 2}]}")


def test_two_masked_argument_rules_once_refused_now_load_and_are_enforced(runner, tmp_profile):
    prof = tmp_profile(f"version: 1\nextends: strict\nseccomp:\n  deny: !extend\n    - {RULE}\n",
                       "two_arg_rules.yaml")
    r = runner.py(PROBE, profile=prof)
    assert r.returncode == 0 and "too complex" not in r.stderr, r
    out = json.loads(r.stdout.strip().splitlines()[-1])
    # both conditions hold: denied with the deny rule's errno (flags above the mask do not matter)
    assert out["inet6_dgram"] == errno.EPERM, out
    assert out["inet6_dgram_cloexec"] == errno.EPERM, out
    assert out["inet6_dgram_high_type"] == errno.EPERM, out
    # only one of them holds: allowed, as strict allows it
    assert out["inet6_stream"] == 0 and out["inet_dgram"] == 0, out
    assert out["inet_stream"] == 0 and out["unix"] == 0, out
    # strict's own family allow-list still holds
    assert out["alg"] == errno.EAFNOSUPPORT, out


def test_explain_reads_a_plan_with_rules_in_priority_order(runner, tmp_profile):
    prof = tmp_profile(f"version: 1\nextends: strict\nseccomp:\n  deny: !extend\n    - {RULE}\n",
                       "two_arg_rules_explain.yaml")
    r = runner("explain", "--profile", prof)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r
    assert "socket families allowed: AF_UNIX AF_INET AF_INET6" in r.stdout, r.stdout
