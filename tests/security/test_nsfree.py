"""The backend ladder and the namespace-free sandbox (issue 24), as root and as the unprivileged test
user.

"No user namespaces" is made for real, not mocked: pysandbox runs under a seccomp filter (loaded
by WRAP below, with no_new_privs, the way a container runtime's or a hardened distribution's
policy would deny it) that answers unshare(CLONE_NEWUSER) and clone(CLONE_NEWUSER) with EPERM and
clone3 with ENOSYS. There `strict` refuses with the message saying what is missing and what to
accept, and `--isolation landlock` (or a profile's `isolation: {minimum: landlock}`) confines the
program without any namespace.

The escape battery (the probes of tests/system/test_spine.py and the security tests: capability
sets, no_new_privs, escape system calls, writes to system directories and /proc tunables, handles
on PID 1, the host's secrets, a binary dropped in a writable directory) runs under the
namespace-free backend below; what it blocks is asserted, what it cannot block (the host's process
list, network namespace and /tmp) is asserted too, so docs/security.md's table stays true.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import PYSANDBOX, REPO
from probes import STEP

from sandbox import _sys

pytestmark = pytest.mark.skipif(_sys.landlock_abi() < 4, reason="needs Landlock ABI 4")

WRAP = r"""
import os, sys
import prctl
from policies.seccomp import compile_seccomp
from sandbox import _sys
from sandbox.seccomp import build_bpf
NEWUSER = {"index": 0, "op": "masked_eq", "mask": 0x10000000, "value": 0x10000000}
s = compile_seccomp({"default_action": "allow", "deny": [
    {"names": ["unshare"], "args": [NEWUSER]}, {"names": ["clone"], "args": [NEWUSER]},
    {"names": ["clone3"], "errno": "ENOSYS"}], "deny_errno": "EPERM"})
prctl.set_no_new_privs(1)
_sys.seccomp_load(build_bpf(s))
os.execv(sys.argv[1], sys.argv[1:])
"""

PROBE = STEP + r'''
import ctypes, errno, os, socket, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
def sc(nr, *a):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(x) for x in a])
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
NR = dict(mount=165, unshare=272, ptrace=101, keyctl=250, bpf=321, setns=308, open_by_handle_at=304,
          init_module=175)
for name, args in [("mount", (0, 0, 0, 0, 0)), ("unshare", (0x10000000,)), ("ptrace", (16, 1, 0, 0)),
                   ("keyctl", (0, 0, 0, 0)), ("bpf", (0, 0, 0)), ("setns", (0, 0)),
                   ("open_by_handle_at", (0, 0, 0)), ("init_module", (0, 0, 0))]:
    print("syscall:" + name, sc(NR[name], *args))
status = dict(l.split(":", 1) for l in open("/proc/self/status"))
print("caps", "ok" if all(int(status[k], 16) == 0 for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")) else "HELD")
print("nnp", status["NoNewPrivs"].strip(), "seccomp", status["Seccomp"].strip())
HOME = sys.argv[1]
tmp = f"/tmp/pysbx-nsfree-{os.getpid()}"
t("write:tmp", lambda: write(tmp))
t("write:home", lambda: write(HOME + "/pysbx-nsfree-x"))
t("write:usr", lambda: write("/usr/pysbx-nsfree-x"))
t("write:etc", lambda: write("/etc/pysbx-nsfree-x"))
t("open:/proc/sys/kernel/hostname", lambda: open("/proc/sys/kernel/hostname", "wb").close())
t("read:/etc/shadow", lambda: open("/etc/shadow").read())
t("read:/etc/passwd", lambda: open("/etc/passwd").read())
t("list:/", lambda: os.listdir("/"))
t("open:/proc/1/mem", lambda: os.close(os.open("/proc/1/mem", os.O_RDONLY)))
t("read:/proc/1/environ", lambda: open("/proc/1/environ").read())
t("copy:tmp", lambda: (open(tmp + "x", "wb").write(open("/usr/bin/true", "rb").read()), os.chmod(tmp + "x", 0o755)))
t("exec:tmp", lambda: subprocess.run([tmp + "x"], check=True))
t("exec:/usr/bin/true", lambda: subprocess.run(["/usr/bin/true"], check=True))
t("connect:tcp", lambda: socket.create_connection(("127.0.0.1", 22), timeout=3))
for p in (tmp, tmp + "x"):
    try:
        os.unlink(p)
    except OSError:
        pass
# what it cannot: the host's processes, network namespace and /tmp
print("sees-host-pid1", "yes" if os.path.exists("/proc/1/comm") and os.getpid() > 100 else "no")
print("netns", "host" if os.readlink("/proc/self/ns/net") == sys.argv[2] else "own")
'''


@pytest.fixture
def wrap(shared_tmp):
    p = shared_tmp / "wrap.py"
    p.write_text(WRAP)
    p.chmod(0o644)
    return str(p)


def run_without_userns(runner, wrap, *args, timeout=60):
    """`pysandbox ARGS` as the runner's user under the filter that denies new user namespaces."""
    kw = dict(user=runner.uid, group=runner.gid, extra_groups=[]) if runner.rootless else {}
    p = subprocess.run([sys.executable, "-I", wrap, PYSANDBOX, *args], capture_output=True, text=True,
                       timeout=timeout, env=runner.env(),
                       cwd="/tmp" if runner.rootless else str(REPO), **kw)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def battery(runner, run, *opts):
    home = runner.home
    r = run("run", "--profile", "strict", *opts, "--", "/usr/bin/python3", "-I", "-c", PROBE, home,
            os.readlink("/proc/self/ns/net"))
    assert r.returncode == 0, (r.stdout, r.stderr)
    return dict(line.rsplit(" ", 1) if not line.startswith("nnp") else ("nnp", line) for line in r.stdout.splitlines())


BLOCKED = {
    **{f"syscall:{n}": "EPERM" for n in ("mount", "unshare", "ptrace", "keyctl", "bpf", "setns",
                                          "open_by_handle_at", "init_module")},
    "caps": "ok", "nnp": "nnp 1 seccomp 2",
    "write:tmp": "ok",                      # allowed: strict's writable /tmp (here the host's)
    "write:home": "EACCES", "write:usr": "EACCES", "write:etc": "EACCES",
    "open:/proc/sys/kernel/hostname": "EACCES",
    "read:/etc/shadow": "EACCES", "read:/etc/passwd": "ok", "list:/": "EACCES",
    "open:/proc/1/mem": "EACCES", "read:/proc/1/environ": "EACCES",
    "copy:tmp": "ok", "exec:tmp": "EACCES", "exec:/usr/bin/true": "ok",
    "connect:tcp": "EACCES",                # network: none -> Landlock TCP rules with no port
    # what it cannot do: no pid or network namespace of its own
    "sees-host-pid1": "yes", "netns": "host",
}


def test_strict_refuses_without_user_namespaces(runner, wrap):
    r = run_without_userns(runner, wrap, "run", "--profile", "strict", "--", "/bin/true")
    assert r.returncode == 125 and r.stderr.count("\n") == 1, r.stderr
    assert "requires namespaces" in r.stderr and "no user namespaces" in r.stderr, r.stderr
    assert "EPERM" in r.stderr and "--isolation landlock" in r.stderr, r.stderr


def test_isolation_landlock_confines_without_user_namespaces(runner, wrap):
    got = battery(runner, lambda *a: run_without_userns(runner, wrap, *a), "--isolation", "landlock")
    assert got == BLOCKED, got


def test_escape_battery_under_the_namespace_free_backend(runner):
    """The same battery where user namespaces work, the backend forced with --isolation landlock
    (root too: uid 0 without capabilities still owns the host's root-owned files, which only
    Landlock keeps it from: /etc/shadow, /root, /usr)."""
    got = battery(runner, runner, "--isolation", "landlock")
    assert got == BLOCKED, got


def test_a_profile_accepting_landlock_gets_the_ladder(runner, wrap, tmp_profile):
    """isolation: {minimum: landlock}: namespaces where they work, the namespace-free backend where
    not (explain and doctor say which and why)."""
    p = tmp_profile("version: 1\nextends: strict\nisolation: {minimum: landlock}\n")
    r = runner("explain", "--profile", p)
    assert "backend      namespaces: user namespaces work" in r.stdout, r
    r = run_without_userns(runner, wrap, "explain", "--profile", p)
    assert "backend      landlock: no user namespaces" in r.stdout, r.stdout
    r = run_without_userns(runner, wrap, "run", "--profile", p, "--", "/bin/sh", "-c",
                           "readlink /proc/self/ns/pid; echo x > /usr/x")
    assert r.returncode == 2 and "Permission denied" in r.stderr, r
    assert r.stdout.strip() == os.readlink("/proc/self/ns/pid"), r     # the host's pid namespace
    r = run_without_userns(runner, wrap, "doctor")
    assert "backend: strict" in r.stdout and "refused: the profile requires namespaces" in r.stdout, r.stdout


def test_what_the_namespace_free_backend_refuses(runner, tmp_profile):
    """Capabilities would be the host's: refused (exit 125, one line); so is an ABI above the
    kernel's, and a bind mount (there are no mounts); run -d needs the namespaces backend."""
    r = runner("run", "--profile", "strict", "--isolation", "landlock", "--cap-add", "NET_RAW", "--", "/bin/true")
    assert r.returncode == 125 and "capabilities: NET_RAW" in r.stderr and r.stderr.count("\n") == 1, r
    p = tmp_profile("version: 1\nextends: strict\nlandlock: {abi: 99}\n")
    r = runner("run", "--profile", p, "--isolation", "landlock", "--", "/bin/true")
    assert r.returncode == 125 and "abi 99" in r.stderr, r
    r = runner("run", "--profile", "strict", "--isolation", "landlock", "-v", "/tmp:/data", "--", "/bin/true")
    assert r.returncode == 125 and "mounts at /data need the namespaces backend" in r.stderr, r
    r = runner("run", "-d", "--profile", "strict", "--isolation", "landlock", "--", "/bin/true")
    assert r.returncode == 125 and "namespaces backend" in r.stderr, r


def test_timeout_and_limits_hold_without_namespaces(runner):
    """--timeout kills the program's session (exit 124); strict's pids limit is the same cgroup
    limit as in the namespaces backend (forks stop at it, the audit records it)."""
    r = runner("run", "--profile", "strict", "--isolation", "landlock", "--timeout", "1", "--",
               "/bin/sh", "-c", "sleep 30; echo not-killed")
    assert r.returncode == 124 and "not-killed" not in r.stdout, r
    r = runner("run", "--profile", "strict", "--isolation", "landlock", "--pids-limit", "20", "--",
               "/bin/sh", "-c", "for i in $(seq 40); do sleep 1 & done; wait; echo all-forked")
    assert r.returncode != 0 and "all-forked" not in r.stdout and "pids limit" in r.stderr, r   # audited
