"""Hole 7: socket address families.

`strict` lets socket()/socketpair() create AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK with
NETLINK_ROUTE only (AF_PACKET only when NET_RAW is granted); every other family - AF_ALG
(CVE-2026-31431), AF_RXRPC and AF_KEY (CVE-2026-43284), AF_VSOCK, AF_TIPC, AF_BLUETOOTH, AF_XDP,
... - and every other netlink protocol (NETLINK_KOBJECT_UEVENT, NETLINK_XFRM) gets EAFNOSUPPORT
and is recorded. `default` adds to Docker's filter the families Docker's current profile blocks,
the CVE ones, AF_PACKET without NET_RAW and every value Docker's `arg0 > 40` lets through with
high bits set. All calls are real syscalls in real sandboxes, as root and rootless.

Harmless if the hole is there: a socket of a denied family is only created and closed (this
kernel has no loadable modules, so nothing is autoloaded on the host either).
"""
from __future__ import annotations

import errno
import json
import os
import textwrap

import pytest

from conftest import HOST_PYTHON

import audit
from audit import reader

EAFNOSUPPORT = errno.EAFNOSUPPORT
SYS_SOCKET, SYS_SOCKETPAIR = 41, 53

# Runs inside the sandbox: argv[1] is a JSON list of [key, call, family, type, protocol];
# prints {key: errno (0: the call worked)}. Raw syscalls, so glibc cannot change the values.
PROBE = textwrap.dedent("""
    import ctypes, json, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    out = {}
    for key, call, fam, typ, proto in json.loads(sys.argv[1]):
        pair = (ctypes.c_int * 2)(-1, -1)
        extra = [ctypes.addressof(pair)] if call == 53 else []
        ctypes.set_errno(0)
        r = libc.syscall(ctypes.c_long(call), ctypes.c_ulong(fam), ctypes.c_ulong(typ),
                         ctypes.c_ulong(proto), *[ctypes.c_ulong(x) for x in extra])
        out[key] = ctypes.get_errno() if r < 0 else 0
        for fd in ([r] if call == 41 and r >= 0 else [fd for fd in pair if fd >= 0]):
            os.close(fd)
    print(json.dumps(out))
""")

FAMILIES = {   # linux/socket.h
    "AF_UNSPEC": 0, "AF_UNIX": 1, "AF_INET": 2, "AF_AX25": 3, "AF_IPX": 4, "AF_APPLETALK": 5,
    "AF_NETROM": 6, "AF_BRIDGE": 7, "AF_ATMPVC": 8, "AF_X25": 9, "AF_INET6": 10, "AF_ROSE": 11,
    "AF_DECnet": 12, "AF_NETBEUI": 13, "AF_SECURITY": 14, "AF_KEY": 15, "AF_NETLINK": 16,
    "AF_PACKET": 17, "AF_ASH": 18, "AF_ECONET": 19, "AF_ATMSVC": 20, "AF_RDS": 21, "AF_SNA": 22,
    "AF_IRDA": 23, "AF_PPPOX": 24, "AF_WANPIPE": 25, "AF_LLC": 26, "AF_IB": 27, "AF_MPLS": 28,
    "AF_CAN": 29, "AF_TIPC": 30, "AF_BLUETOOTH": 31, "AF_IUCV": 32, "AF_RXRPC": 33, "AF_ISDN": 34,
    "AF_PHONET": 35, "AF_IEEE802154": 36, "AF_CAIF": 37, "AF_ALG": 38, "AF_NFC": 39, "AF_VSOCK": 40,
    "AF_KCM": 41, "AF_QIPCRTR": 42, "AF_SMC": 43, "AF_XDP": 44, "AF_MCTP": 45,
}
NETLINK_ROUTE, NETLINK_XFRM, NETLINK_AUDIT, NETLINK_KOBJECT_UEVENT = 0, 6, 9, 15
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_SEQPACKET = 1, 2, 3, 5
ETH_P_ALL_BE = 0x0300
STRICT_ALLOWED = {"AF_UNIX", "AF_INET", "AF_INET6"}
CVE_FAMILIES = {"AF_ALG": 38, "AF_RXRPC": 33, "AF_KEY": 15}


def _type(fam: int) -> int:
    return {1: SOCK_STREAM, 2: SOCK_STREAM, 10: SOCK_STREAM, 17: SOCK_RAW, 38: SOCK_SEQPACKET}.get(fam, SOCK_DGRAM)


def probe(runner, cases, *opts, profile="strict", audit_log=None):
    args = ["run", "--profile", profile, *opts]
    if audit_log is not None:
        args += ["--audit-log", str(audit_log)]
    r = runner(*args, "--", HOST_PYTHON, "-c", PROBE, json.dumps(cases))
    assert r.returncode == 0, r
    return json.loads(r.stdout.strip().splitlines()[-1]), r


def socket_events(log):
    evs = list(reader.read_events(str(log)))
    for e in evs:
        audit.validate(e)
    return [e for e in evs if e["type"] in ("seccomp_denied", "escape_attempt")
            and e["syscall"]["name"] in ("socket", "socketpair")]


@pytest.fixture
def logdir(shared_tmp, runner):
    d = shared_tmp / "sockfam-audit"
    d.mkdir()
    os.chown(d, runner.uid, runner.gid)
    return d


def test_strict_allows_the_family_allow_list_only_and_records_each_denial(runner, logdir):
    cases = [[name, SYS_SOCKET, fam, _type(fam), 0] for name, fam in FAMILIES.items() if name != "AF_NETLINK"]
    cases += [
        ["NETLINK_ROUTE", SYS_SOCKET, 16, SOCK_DGRAM, NETLINK_ROUTE],
        ["NETLINK_KOBJECT_UEVENT", SYS_SOCKET, 16, SOCK_DGRAM, NETLINK_KOBJECT_UEVENT],
        ["NETLINK_XFRM", SYS_SOCKET, 16, SOCK_RAW, NETLINK_XFRM],
        ["NETLINK_AUDIT", SYS_SOCKET, 16, SOCK_RAW, NETLINK_AUDIT],
        ["NETLINK_ROUTE_high_protocol", SYS_SOCKET, 16, SOCK_DGRAM, 1 << 32],   # the kernel reads 0
        ["AF_UNIX_high_bits", SYS_SOCKET, (1 << 32) | 1, SOCK_STREAM, 0],     # the kernel reads AF_UNIX
        ["AF_ALG_high_bits", SYS_SOCKET, (1 << 32) | 38, SOCK_SEQPACKET, 0],
        ["AF_MAX", SYS_SOCKET, 46, SOCK_DGRAM, 0],
        ["minus_one", SYS_SOCKET, (1 << 64) - 1, SOCK_DGRAM, 0],
        ["pair_AF_UNIX", SYS_SOCKETPAIR, 1, SOCK_STREAM, 0],
        ["pair_AF_ALG", SYS_SOCKETPAIR, 38, SOCK_SEQPACKET, 0],
        ["pair_AF_TIPC", SYS_SOCKETPAIR, 30, SOCK_DGRAM, 0],
        ["pair_AF_VSOCK", SYS_SOCKETPAIR, 40, SOCK_STREAM, 0],
    ]
    log = logdir / "audit.jsonl"
    out, r = probe(runner, cases, audit_log=log)
    allowed = {"AF_UNIX", "AF_INET", "AF_INET6", "NETLINK_ROUTE", "pair_AF_UNIX"}
    # the legitimate families work for real (fd returned)
    assert {k for k, v in out.items() if v == 0} == allowed, out
    # everything else: EAFNOSUPPORT from the filter, named in the checks below
    denied = {k: v for k, v in out.items() if k not in allowed}
    assert set(denied.values()) == {EAFNOSUPPORT}, denied
    for must in ("AF_ALG", "AF_RXRPC", "AF_KEY", "AF_PACKET", "AF_VSOCK", "AF_TIPC", "AF_BLUETOOTH",
                 "AF_XDP", "AF_CAN", "AF_SMC", "NETLINK_KOBJECT_UEVENT", "NETLINK_XFRM", "AF_ALG_high_bits"):
        assert out[must] == EAFNOSUPPORT, (must, out)
    # every denial recorded exactly once, answered EAFNOSUPPORT, through user notification
    evs = socket_events(log)
    assert len(evs) == len(denied), (len(evs), len(denied), r.stderr)
    by_arg0 = {}
    for e in evs:
        assert e["errno"] == EAFNOSUPPORT and e["errno_name"] == "EAFNOSUPPORT", e
        assert e["via"] == "user_notif" and e["action"] == "errno", e
        by_arg0.setdefault((e["syscall"]["name"], e["syscall"]["args"][0], e["syscall"]["args"][2]), e)
    for fam in CVE_FAMILIES.values():
        e = by_arg0[("socket", fam, 0)]
        assert e["syscall"]["decoded"]["family"] == {38: "AF_ALG", 33: "AF_RXRPC", 15: "AF_KEY"}[fam]
    assert ("socket", 16, NETLINK_KOBJECT_UEVENT) in by_arg0
    assert ("socketpair", 38, 0) in by_arg0
    assert by_arg0[("socket", 40, 0)]["type"] == "escape_attempt"          # vsock: a known technique
    assert "denial" in r.stderr


def test_strict_real_programs_use_the_allowed_families(runner):
    # iproute2 (NETLINK_ROUTE), Python's socket module (its AF_INET6 probe, getaddrinfo), a unix
    # socketpair - and the library fallback a denied family gets: EAFNOSUPPORT, no crash
    code = textwrap.dedent("""
        import socket, subprocess
        a, b = socket.socketpair(); a.send(b"x"); assert b.recv(1) == b"x"
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(("::1", 0)); s.close()
        print("gai", len(socket.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)))
        print(subprocess.run(["ip", "-o", "link", "show", "lo"], capture_output=True, text=True).stdout.split()[1])
        try:
            socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET, 0)
        except OSError as e:
            print("alg", e.errno)
    """)
    r = runner.py(code)
    assert r.returncode == 0, r
    assert "gai 1" in r.stdout and "lo:" in r.stdout and f"alg {EAFNOSUPPORT}" in r.stdout, r


@pytest.mark.parametrize("profile,opts,allowed", [
    ("strict", (), False),
    ("strict", ("--cap-add", "NET_RAW"), True),
    ("default", (), True),                                  # Docker's capability set keeps NET_RAW
    ("default", ("--cap-drop", "NET_RAW"), False),
])
def test_af_packet_only_with_net_raw(runner, profile, opts, allowed):
    cases = [["packet", SYS_SOCKET, 17, SOCK_RAW, ETH_P_ALL_BE],
             ["unix", SYS_SOCKET, 1, SOCK_STREAM, 0]]
    out, r = probe(runner, cases, *opts, profile=profile)
    assert out["unix"] == 0, out
    # with NET_RAW granted the packet socket is created for real (in the sandbox's own network
    # namespace, whose user namespace holds the capability); without it the filter says no
    assert out["packet"] == (0 if allowed else EAFNOSUPPORT), (profile, opts, out, r.stderr)


def test_default_blocks_dockers_families_the_cve_ones_and_high_bits(runner):
    from policies.compiler import compile_profile
    from policies.seccomp_verdict import decide
    docker = compile_profile("docker-default").plan.seccomp
    docker_blocks = {name for name, fam in FAMILIES.items() if decide(docker, "socket", [fam, 1, 0])[0] != "allow"}
    assert {"AF_ALG", "AF_VSOCK"} <= docker_blocks                  # what Docker's current JSON blocks
    cases = [[name, SYS_SOCKET, FAMILIES[name], _type(FAMILIES[name]), 0]
             for name in sorted(docker_blocks | set(CVE_FAMILIES))]
    cases += [
        ["AF_ALG_high_bits", SYS_SOCKET, (1 << 32) | 38, SOCK_SEQPACKET, 0],   # Docker's arg0 > 40 passes it
        ["AF_VSOCK_high_bits", SYS_SOCKET, (1 << 32) | 40, SOCK_STREAM, 0],
        ["AF_MAX", SYS_SOCKET, 46, SOCK_DGRAM, 0],
        ["pair_AF_ALG", SYS_SOCKETPAIR, 38, SOCK_SEQPACKET, 0],
        ["AF_UNIX", SYS_SOCKET, 1, SOCK_STREAM, 0],
        ["AF_INET", SYS_SOCKET, 2, SOCK_STREAM, 0],
        ["AF_INET6", SYS_SOCKET, 10, SOCK_DGRAM, 0],
        ["NETLINK_ROUTE", SYS_SOCKET, 16, SOCK_DGRAM, NETLINK_ROUTE],
        ["pair_AF_UNIX", SYS_SOCKETPAIR, 1, SOCK_STREAM, 0],
    ]
    out, r = probe(runner, cases, profile="default")
    works = {"AF_UNIX", "AF_INET", "AF_INET6", "NETLINK_ROUTE", "pair_AF_UNIX"}
    for k, v in out.items():
        assert v == (0 if k in works else EAFNOSUPPORT), (k, out)


def test_extending_the_allow_list_and_socket_rules_in_a_derived_profile(runner, tmp_profile):
    # A derived profile adds a family the usual way, and a Docker-style masked socket rule -
    # before the family rules, such a rule on top of strict's socket rules compiled to more
    # than 128 libseccomp rules (a profile error)
    prof = tmp_profile(textwrap.dedent("""
        version: 1
        extends: strict
        seccomp:
          socket_families:
            allow: !extend [AF_CAN]
          deny: !extend
            - {names: [socket], args: [{index: 0, op: masked_eq, mask: 0xffffffff, value: 38}]}
    """))
    cases = [["can", SYS_SOCKET, 29, SOCK_RAW, 1], ["alg", SYS_SOCKET, 38, SOCK_SEQPACKET, 0],
             ["alg_hi", SYS_SOCKET, (1 << 32) | 38, SOCK_SEQPACKET, 0],
             ["tipc", SYS_SOCKET, 30, SOCK_DGRAM, 0], ["unix", SYS_SOCKET, 1, SOCK_STREAM, 0]]
    out, r = probe(runner, cases, profile=prof)
    assert out["unix"] == 0 and out["tipc"] == EAFNOSUPPORT, out
    assert out["alg"] == errno.EPERM and out["alg_hi"] == errno.EPERM, out      # the derived rule
    # AF_CAN passes the filter: whatever the kernel answers is not the filter's EAFNOSUPPORT...
    # unless this kernel has no CAN, which also answers EAFNOSUPPORT: tell them apart by the plan
    from policies.compiler import compile_profile
    from policies.seccomp_verdict import decide
    s = compile_profile(prof).plan.seccomp
    assert decide(s, "socket", [29, 3, 1]) == ("allow", None)
    explain = runner("explain", "--profile", prof)
    assert "socket families allowed: AF_UNIX AF_INET AF_INET6 AF_NETLINK(NETLINK_ROUTE) AF_CAN" in explain.stdout, explain


@pytest.mark.parametrize("body,where,msg", [
    ("allow: [AF_UNIX, AF_NOPE]", "4:", "unknown socket family 'AF_NOPE'"),
    ("allow: [{family: AF_NETLINK, protocols: [NETLINK_NOPE]}]", "4:", "unknown netlink protocol"),
    ("allow: [{family: AF_INET, protocols: [NETLINK_ROUTE]}]", "4:", "only understood for AF_NETLINK"),
    ("allow: [{family: AF_PACKET, capability: NET_NOPE}]", "4:", "unknown capability"),
    ("{allow: [AF_UNIX], deny: [AF_ALG]}", "4:", "either 'allow'"),
])
def test_bad_family_lists_are_one_line_profile_errors(root_runner, tmp_profile, body, where, msg):
    prof = tmp_profile(f"version: 1\nextends: strict\nseccomp:\n  socket_families:\n    {body}\n"
                       if not body.startswith("{") else
                       f"version: 1\nextends: strict\nseccomp:\n  socket_families: {body}\n")
    r = root_runner("explain", "--profile", prof)
    assert r.returncode == 2, r
    line = r.stderr.strip()
    assert "\n" not in line and msg in line and f"{prof}:" in line, r


# --- the compiled plan and its BPF, without a sandbox (fast; the kernel tests are above) ----

def _plan(profile, **ov):
    from policies.compiler import Overrides, compile_profile
    return compile_profile(profile, Overrides(**ov) if ov else None).plan.seccomp


@pytest.mark.parametrize("profile", ["strict", "default"])
def test_plan_and_bpf_agree_on_every_family_protocol_and_high_bit_value(profile):
    from policies.seccomp_verdict import decide
    from sandbox.seccomp import RET_ALLOW, RET_ERRNO, RET_USER_NOTIF, build_bpf, run_bpf
    s = _plan(profile)
    bpf = build_bpf(s)
    values = [f | hi for f in range(0, 70) for hi in (0, 1 << 32, 1 << 63)] + [(1 << 64) - 1, 0xFFFFFFFF]
    for call, nr in (("socket", SYS_SOCKET), ("socketpair", SYS_SOCKETPAIR)):
        for fam in values:
            for proto in (0, 4, 15, 31, 32, 1 << 32):
                action, err = decide(s, call, [fam, 1, proto])
                got = run_bpf(bpf, nr, [fam, 1, proto])
                if action == "allow":
                    assert got == RET_ALLOW, (call, hex(fam), proto)
                    assert fam < 46, (call, hex(fam))           # nothing beyond AF_MAX, no high bits
                else:
                    assert err == EAFNOSUPPORT, (call, hex(fam), proto, action, err)
                    assert got in (RET_ERRNO | err, RET_USER_NOTIF), (call, hex(fam), proto, hex(got))
    # the allowed families of strict, exactly
    if profile == "strict":
        allowed = {(f, p) for f in range(46) for p in range(32) if decide(s, "socket", [f, 1, p])[0] == "allow"}
        assert allowed == {(1, p) for p in range(32)} | {(2, p) for p in range(32)} | \
            {(10, p) for p in range(32)} | {(16, 0)}


def test_capability_decides_af_packet_in_both_list_kinds():
    from policies.seccomp_verdict import decide
    assert decide(_plan("strict"), "socket", [17, 3, 0]) == ("errno", EAFNOSUPPORT)
    assert decide(_plan("strict", cap_add=("NET_RAW",)), "socket", [17, 3, 0]) == ("allow", None)
    assert decide(_plan("default"), "socket", [17, 3, 0]) == ("allow", None)
    assert decide(_plan("default", cap_drop=("NET_RAW",)), "socket", [17, 3, 0]) == ("errno", EAFNOSUPPORT)
    # docker-default: Docker's filter only (AF_PACKET left to the kernel's CAP_NET_RAW check)
    assert decide(_plan("docker-default", cap_drop=("NET_RAW",)), "socket", [17, 3, 0]) == ("allow", None)
    assert decide(_plan("docker-default"), "socket", [(1 << 32) | 38, 5, 0]) == ("allow", None)   # Docker's hole


def test_socket_families_null_drops_the_list(tmp_profile):
    from policies.seccomp_verdict import decide
    prof = tmp_profile("version: 1\nextends: strict\nseccomp:\n  socket_families: null\n", name="sf-null.yaml")
    s = _plan(prof)
    assert decide(s, "socket", [38, 5, 0]) == ("allow", None)     # strict's @system-service allows socket
