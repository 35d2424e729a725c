"""Hole: the sandboxed program possessed the caller's session keyring.

Kernel keys are not namespaced. A process *possesses* every key reachable from its session keyring,
and possession grants the key's possessor permissions (for a `user` key: view, read, write, search,
link) whatever its uid — a user namespace changes nothing. The program inherited the session keyring
of whoever ran `pysandbox run` (or a launch server, or an engine): under a profile that allows the
keyring calls (keyctl, add_key, request_key: strict, default and docker-default deny them, a custom
profile may not), it could find and read the caller's keys (Kerberos tickets, ecryptfs or dm-crypt
keys, tokens stored with `keyctl`). Found 2026-12-08 after the OCI runtime's equivalent (containers
joined the engine's keyring: test_oci_container_possesses_engine_session_keyring.py).

Now the program's last steps (pid1.c `program`, sequence.last_steps) join a new anonymous session
keyring (runc's default for containers), unless the OCI runtime's `create --no-new-keyring` asks to
keep the caller's. Both sides, as root and rootless, under a profile that allows the keyring calls:
the caller's key is not found from inside (ENOKEY), while the program's own keyring works (a key it
adds is read back).
"""
from __future__ import annotations

import subprocess
import sys

from conftest import PYSANDBOX

# the caller: a session keyring of its own with a secret in it, then the sandbox (as the same user)
CALLER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
L = ctypes.c_long
assert libc.syscall(250, L(1), None) > 0                       # KEYCTL_JOIN_SESSION_KEYRING, anonymous
assert libc.syscall(248, b"user", b"pysbx-keyring-probe", b"CALLER-SECRET", ctypes.c_size_t(13), L(-3)) > 0
os.execv(sys.argv[1], sys.argv[1:])
"""

# inside: look the caller's key up; add a key of our own and read it back
PROBE = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
L = ctypes.c_long
k = libc.syscall(249, b"user", b"pysbx-keyring-probe", None, L(0))          # request_key
print("caller-key", "found" if k >= 0 else os.strerror(ctypes.get_errno()))
own = libc.syscall(248, b"user", b"own", b"MINE", ctypes.c_size_t(4), L(-3))  # add_key to our session
buf = ctypes.create_string_buffer(16)
n = libc.syscall(250, L(11), L(own), buf, L(16)) if own > 0 else -1         # KEYCTL_READ
print("own-key", buf.raw[:n].decode() if n > 0 else os.strerror(ctypes.get_errno()))
"""

PROFILE = """extends: default
seccomp:
  allow: [keyctl, add_key, request_key]
"""


def test_program_does_not_possess_the_callers_session_keyring(runner, tmp_profile):
    prof = tmp_profile(PROFILE)
    kw = dict(user=runner.uid, group=runner.gid, extra_groups=[]) if runner.rootless else {}
    p = subprocess.run([sys.executable, "-I", "-c", CALLER, PYSANDBOX, "run", "--profile", prof, "--",
                        "/usr/bin/python3", "-c", PROBE], capture_output=True, text=True, timeout=60,
                       env=runner.env(), cwd="/tmp", **kw)
    assert p.returncode == 0, p
    lines = p.stdout.split("\n")
    assert lines[0] == "caller-key Required key not available", p       # (before: "caller-key found")
    assert lines[1] == "own-key MINE", p


INPROCESS = r"""
import sys
sys.path.insert(0, sys.argv[1])
from sandbox import init, launcher
from policies.compiler import compile_profile
if sys.argv[2] == "python":                    # the program's last steps in Python (no pysandbox-init)
    init.INIT_BINARY = "/nonexistent/pysandbox-init"
    init._INIT = [None, None]
probe = "import sys\n" + sys.argv[4] + "\nsys.exit(0 if k < 0 and own > 0 and n == 4 else 3)\n"
res = launcher.launch(compile_profile(sys.argv[3]).plan, ["/usr/bin/python3", "-c", probe])
print("exit", res.exit_code)
"""


def test_both_implementations_of_the_last_steps_join_a_keyring(root_runner, tmp_profile):
    """pid1.c `program` (C) and sequence.last_steps (Python, used without the binary) alike."""
    from conftest import REPO
    prof = tmp_profile(PROFILE)
    for impl in ("binary", "python"):
        p = subprocess.run([sys.executable, "-I", "-c", CALLER, sys.executable, "-I", "-c", INPROCESS, str(REPO),
                            impl, prof, PROBE.replace("print(", "(")], capture_output=True, text=True, timeout=60,
                           env=root_runner.env(), cwd="/tmp")
        assert p.returncode == 0 and p.stdout.split() == ["exit", "0"], (impl, p)
