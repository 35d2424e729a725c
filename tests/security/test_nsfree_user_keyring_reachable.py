"""Hole: in the namespace-free backend the program could reach the caller's user keyring.

Without a user namespace the program is the caller's uid in the caller's user namespace, and the
kernel finds a uid's *user keyring* (KEY_SPEC_USER_KEYRING) by uid in that namespace: a new session
keyring (test_session_keyring_shared_with_caller.py) does not hide it. Under a profile allowing
keyctl, `--isolation landlock` let the program search the caller's user keyring and find its keys.
The namespaces backend is not affected: a user namespace has a user-keyring register of its own.
Now the namespace-free backend refuses a filter that may let keyctl, add_key or request_key through
(exit 125, one line; sandbox/launch/nsfree.py `refusal`). Both sides, as root and rootless: the same
profile under the namespaces backend runs and does not find the caller's key; under
`--isolation landlock` it is refused; strict (which denies the calls) still runs namespace-free.
"""
from __future__ import annotations

import subprocess
import sys

from conftest import PYSANDBOX

CALLER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
assert libc.syscall(248, b"user", b"pysbx-ukey-probe", b"U", ctypes.c_size_t(1), ctypes.c_long(-4)) > 0
os.execv(sys.argv[1], sys.argv[1:])
"""
PROBE = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
k = libc.syscall(250, ctypes.c_long(10), ctypes.c_long(-4), b"user", b"pysbx-ukey-probe", ctypes.c_long(0))
print("user-keyring", "found" if k >= 0 else os.strerror(ctypes.get_errno()))
"""
PROFILE = """extends: default
capabilities: {drop: [ALL], add: []}
seccomp:
  allow: [keyctl, add_key, request_key]
"""


def _run(runner, *args):
    kw = dict(user=runner.uid, group=runner.gid, extra_groups=[]) if runner.rootless else {}
    return subprocess.run([sys.executable, "-I", "-c", CALLER, PYSANDBOX, "run", *args], capture_output=True,
                          text=True, timeout=60, env=runner.env(), cwd="/tmp", **kw)


def test_namespace_free_backend_refuses_keyring_calls(runner, tmp_profile):
    prof = tmp_profile(PROFILE)
    r = _run(runner, "--profile", prof, "--", "/usr/bin/python3", "-c", PROBE)
    assert r.returncode == 0 and r.stdout == "user-keyring Required key not available\n", r
    r = _run(runner, "--isolation", "landlock", "--profile", prof, "--", "/usr/bin/python3", "-c", PROBE)
    assert r.returncode == 125 and r.stdout == "", r                        # (before: "user-keyring found")
    assert r.stderr.count("\n") == 1 and "keyctl add_key request_key allowed" in r.stderr, r
    r = _run(runner, "--isolation", "landlock", "--profile", "strict", "--", "/bin/true")
    assert r.returncode == 0, r
