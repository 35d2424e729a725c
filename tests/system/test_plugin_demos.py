"""Seccomp and capability demonstrations written with the `pysandbox` pytest fixture
(sandbox/pytest_plugin.py, installed as the `pytest11` entry point `pysandbox`).

Real sandboxes, as root (in-process API) and as the unprivileged test user (the same API in a
worker process run as that user). Each control shows both sides: denied in `strict` (errno and the
recorded denial event), allowed where the profile grants it.
"""
from __future__ import annotations

import os

import pytest

PROBE = r'''
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def sc(nr, *a):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(x) for x in a])
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
'''


@pytest.fixture(params=["root", "rootless"])
def sbx(request, pysandbox):
    if os.geteuid() != 0:
        pytest.skip("needs root (to create the unprivileged test user)")
    if request.param == "root":
        return pysandbox
    request.getfixturevalue("delegated_cgroups")       # conftest: what an admin delegates to the user
    from conftest import TEST_USER
    return pysandbox.as_user(TEST_USER)


# --- seccomp ----------------------------------------------------------------------------

def test_mount_is_denied_and_recorded(sbx):
    r = sbx.py(PROBE + "print(sc(165, 0, 0, 0, 0, 0))")          # mount(2)
    assert r.exit_code == 0 and r.stdout.strip() == "EPERM", r
    assert r.denied("mount"), r
    ev = [e for e in r.denials if e["syscall"]["name"] == "mount"][0]
    assert ev["errno"] == 1 and ev["sandbox_id"] == r.sandbox_id


@pytest.mark.parametrize("name,nr,args", [("ptrace", 101, (16, 1, 0, 0)), ("keyctl", 250, (0, 0, 0, 0)),
                                          ("bpf", 321, (0, 0, 0)), ("init_module", 175, (0, 0, 0))])
def test_escape_syscalls_are_denied_and_recorded(sbx, name, nr, args):
    r = sbx.py(PROBE + f"print(sc({nr}, *{args!r}))")
    assert r.exit_code == 0 and r.stdout.strip() == "EPERM", r
    assert r.denied(name), r


def test_allowed_syscalls_are_not_denials(sbx):
    r = sbx.py(PROBE + "print(sc(39), open('/etc/hostname').read() if os.path.exists('/etc/hostname') else 'x')")
    assert r.exit_code == 0 and r.stdout.startswith("ok"), r
    assert not r.denied(), r                                     # nothing denied in a normal run


def test_unconfined_seccomp_allows_what_strict_denies(sbx):
    # --security-opt seccomp=unconfined: no filter, so keyctl reaches the kernel (which answers
    # it itself); strict answers EPERM from the filter and records it.
    code = PROBE + "print(sc(250, 0, 0, 0, 0))"                 # keyctl(KEYCTL_GET_KEYRING_ID, 0)
    strict = sbx.py(code)
    assert strict.stdout.strip() == "EPERM" and strict.denied("keyctl"), strict
    open_ = sbx.py(code, security_opt=["seccomp=unconfined"])
    assert open_.exit_code == 0 and open_.stdout.strip() in ("ok", "EINVAL", "ENOKEY"), open_
    assert not open_.denied(), open_


# --- capabilities ---------------------------------------------------------------------------

def test_no_capabilities_and_no_new_privs(sbx):
    r = sbx.sh("grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status")
    assert r.exit_code == 0, r
    caps = dict(l.split(":\t") for l in r.stdout.splitlines())
    assert int(caps["CapEff"], 16) == int(caps["CapPrm"], 16) == int(caps["CapBnd"], 16) == 0, r
    assert caps["NoNewPrivs"] == "1"


def test_bind_port_80_needs_net_bind_service(sbx):
    code = "import socket\ns=socket.socket(); s.bind(('127.0.0.1', 80)); print('bound')"
    denied = sbx.py(code)
    assert denied.exit_code != 0 and "Permission denied" in denied.stderr, denied
    assert not denied.denied(), denied                           # a capability check, not seccomp
    allowed = sbx.py(code, cap_add=["NET_BIND_SERVICE"])
    assert allowed.exit_code == 0 and allowed.stdout.strip() == "bound", allowed


def test_raw_socket_needs_net_raw(sbx):
    code = "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print('raw')"
    denied = sbx.py(code)
    assert denied.exit_code != 0 and "Operation not permitted" in denied.stderr, denied
    allowed = sbx.py(code, cap_add=["NET_RAW"])
    assert allowed.exit_code == 0 and "raw" in allowed.stdout, allowed


def test_cap_add_shows_in_the_capability_sets(sbx):
    r = sbx.sh("grep -E '^CapEff' /proc/self/status", cap_add=["NET_BIND_SERVICE"])
    assert int(r.stdout.split()[1], 16) == 1 << 10, r           # CAP_NET_BIND_SERVICE only


def test_chown_needs_cap_chown(pysandbox):
    # root only: as root the sandbox maps 65536 ids, so chown to another mapped id is a real test of
    # CAP_CHOWN (rootless maps one id: any other id is EINVAL whatever the capabilities).
    if os.geteuid() != 0:
        pytest.skip("needs root")
    script = "touch /tmp/f && chown 1000:1000 /tmp/f && stat -c %u /tmp/f"
    denied = pysandbox.sh(script)
    assert denied.exit_code != 0 and "Operation not permitted" in denied.stderr, denied
    allowed = pysandbox.sh(script, cap_add=["CHOWN"])
    assert allowed.exit_code == 0 and allowed.stdout.strip() == "1000", allowed


@pytest.mark.pysandbox("default")
def test_marker_selects_the_profile(pysandbox):
    assert pysandbox.profile == "default"
    r = pysandbox.sh("echo hi")
    assert r.exit_code == 0 and r.stdout == "hi\n", r
