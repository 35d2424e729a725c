"""Hole (second part): PID 1 ran without a seccomp filter of its own.

pysandbox-init now loads one (sandbox/pid1.c, pid1_filter) once it holds no privilege and before
it releases the program: the x86_64 calling convention only (i386's int 0x80 and x32's numbers
are killed), and only the calls it makes from then on — read, write, close, kill, rt_sigaction,
rt_sigprocmask, rt_sigreturn, wait4, waitid, clock_gettime, poll, ppoll, restart_syscall, exit,
exit_group (strace -f of a run with forwarded signals and a stopped and continued PID 1 shows
exactly these). Anything else kills PID 1, and with it the sandbox.

Shown for real: the running PID 1's Seccomp field (from inside, root and rootless, CLI and API);
the filter the host reads back from a running PID 1 with PTRACE_SECCOMP_GET_FILTER (root) is the
one `pysandbox-init filter` prints, and evaluated, it allows only that list; `pysandbox-init
filter-test` loads the very filter and makes one call under it: the ones PID 1 does not use die
of SIGSYS. The legitimate side: signals still reach the program, its status is still reported.
"""
from __future__ import annotations

import ctypes
import os
import signal
import struct
import subprocess
import threading
import time

import pytest

from conftest import PYSANDBOX

from sandbox.init import INIT_BINARY

AUDIT_ARCH_X86_64, AUDIT_ARCH_I386 = 0xC000003E, 0x40000003
X32 = 0x40000000
RET_ALLOW, RET_KILL_PROCESS = 0x7FFF0000, 0x80000000
USED = {"read": 0, "write": 1, "close": 3, "poll": 7, "rt_sigaction": 13, "rt_sigprocmask": 14,
        "rt_sigreturn": 15, "exit": 60, "wait4": 61, "kill": 62, "restart_syscall": 219,
        "clock_gettime": 228, "exit_group": 231, "waitid": 247, "ppoll": 271}
NOT_USED = {"getpid": 39, "openat": 257, "socket": 41, "ptrace": 101, "execve": 59, "mmap": 9,
            "process_vm_writev": 311, "pidfd_getfd": 438, "clone": 56, "seccomp": 317, "mprotect": 10,
            "setns": 308, "unshare": 272, "prctl": 157, "ioctl": 16}

x86_64 = pytest.mark.skipif(os.uname().machine != "x86_64", reason="the numbers here are x86_64's")
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="PTRACE_SECCOMP_GET_FILTER needs root")


def _status(text: str) -> dict:
    return {k: v.strip() for k, v in (l.split(":", 1) for l in text.splitlines() if ":" in l)}


def test_pid1_runs_under_its_filter(runner):
    """From inside: PID 1 is in seccomp mode 2 with one filter; the program's exit status is still
    reported, and a signal to the launcher still reaches the program through PID 1."""
    r = runner.sh("cat /proc/1/status; exit 7")
    assert r.returncode == 7, r
    st = _status(r.stdout)
    assert st["Seccomp"] == "2" and st["Seccomp_filters"] == "1", st
    assert st["NoNewPrivs"] == "1"
    # signals: forwarded by PID 1 (kill, rt_sigreturn under its filter)
    kw = {}
    if runner.user:
        kw = dict(user=runner.uid, group=runner.gid, extra_groups=[])
    p = subprocess.Popen([PYSANDBOX, "run", "--profile", "strict", "--", "/bin/sh", "-c",
                          "trap 'echo got-term; exit 3' TERM; echo up; sleep 20 & wait"],
                         stdout=subprocess.PIPE, text=True, env=runner.env(), cwd="/tmp", **kw)
    try:
        assert p.stdout.readline().strip() == "up"
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=20)
        assert p.returncode == 3 and "got-term" in out, (p.returncode, out)
    finally:
        p.kill()
        p.wait()


def _filter_test(*args, user=None) -> int:
    kw = dict(user=user[0], group=user[1], extra_groups=[]) if user else {}
    p = subprocess.run([INIT_BINARY, "filter-test", *map(str, args)], capture_output=True, text=True,
                       timeout=10, **kw)
    return p.returncode if p.returncode else (0 if p.stdout.startswith(("errno ", "ok")) else 99)


@x86_64
def test_filter_refuses_what_pid1_does_not_use(runner):
    """`pysandbox-init filter-test NR` loads PID 1's filter and makes that call (every argument -1):
    the calls PID 1 uses come back with an error of their own (EBADF, ...), every other dies of
    SIGSYS; so does a call PID 1 uses made with i386's int 0x80 or x32's numbers. (Calls that would
    not return with -1 arguments — exit, rt_sigreturn, restart_syscall — are left out here; the
    BPF test below covers them.)"""
    user = (runner.uid, runner.gid) if runner.user else None
    for name, nr in USED.items():
        if name in ("exit", "exit_group", "rt_sigreturn", "restart_syscall", "poll", "ppoll", "wait4", "waitid"):
            continue
        assert _filter_test(nr, user=user) == 0, name
    for name, nr in NOT_USED.items():
        assert _filter_test(nr, user=user) == -signal.SIGSYS, name
    assert _filter_test("int80", 3, user=user) == -signal.SIGSYS          # i386 read == x86_64 close
    assert _filter_test(X32 | 3, user=user) == -signal.SIGSYS             # x32 close
    assert _filter_test(3, user=user) == 0                                # (x86_64 close: allowed)


# --- the filter of a running PID 1, read back by the host -------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT, PTRACE_SECCOMP_GET_FILTER = 17, 0x4206, 0x4207, 0x420C


def _get_filter(pid: int) -> bytes:
    """PID 1's (only) filter, as the kernel holds it: seize, interrupt, read, detach."""
    if _libc.ptrace(PTRACE_SEIZE, pid, None, None) < 0:
        raise OSError(ctypes.get_errno(), "seize")
    try:
        _libc.ptrace(PTRACE_INTERRUPT, pid, None, None)
        os.waitpid(pid, 0x40000000)                       # __WALL: the ptrace stop
        n = _libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, None, None)
        if n <= 0:
            raise OSError(ctypes.get_errno(), "PTRACE_SECCOMP_GET_FILTER")
        buf = ctypes.create_string_buffer(n * 8)
        assert _libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, None, buf) == n
        return buf.raw
    finally:
        _libc.ptrace(PTRACE_DETACH, pid, None, None)


def _run_bpf(prog: bytes, nr: int, arch: int) -> int:
    """Classic BPF as seccomp runs it, for the four instructions the filter uses."""
    ins = [struct.unpack("=HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    data = struct.pack("=iI", nr, arch) + b"\0" * 56
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = ins[pc]
        if code == 0x20:                                   # BPF_LD | BPF_W | BPF_ABS
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif code in (0x15, 0x35):                         # JEQ / JGE, K
            hit = acc == k if code == 0x15 else acc >= k
            pc += 1 + (jt if hit else jf)
        elif code == 0x06:                                 # RET K
            return k
        else:
            raise AssertionError(f"unexpected BPF instruction {code:#x}")


def _check_filter(prog: bytes) -> None:
    printed = subprocess.run([INIT_BINARY, "filter"], capture_output=True, timeout=10).stdout
    assert prog == printed                                 # the very filter pid1.c builds
    for name, nr in USED.items():
        assert _run_bpf(prog, nr, AUDIT_ARCH_X86_64) == RET_ALLOW, name
        assert _run_bpf(prog, nr | X32, AUDIT_ARCH_X86_64) == RET_KILL_PROCESS, name
        assert _run_bpf(prog, nr, AUDIT_ARCH_I386) == RET_KILL_PROCESS, name
    allowed = [nr for nr in range(0, 1024) if _run_bpf(prog, nr, AUDIT_ARCH_X86_64) == RET_ALLOW]
    assert sorted(allowed) == sorted(USED.values())        # nothing else, among all numbers


def _pysandbox_init_children(parent: int) -> list[int]:
    out = []
    for k in open(f"/proc/{parent}/task/{parent}/children").read().split():
        try:
            if open(f"/proc/{k}/comm").read().strip() == "pysandbox-init":
                out.append(int(k))
        except OSError:
            pass
    return out


def _wait_for(fn, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out")


@x86_64
@root_only
def test_running_pid1_has_exactly_that_filter_cli():
    p = subprocess.Popen([PYSANDBOX, "run", "--profile", "strict", "--", "/bin/sh", "-c", "sleep 3; exit 5"])
    try:
        pid1 = _wait_for(lambda: _pysandbox_init_children(p.pid))[0]
        _wait_for(lambda: "Seccomp:\t2" in open(f"/proc/{pid1}/status").read())
        _check_filter(_get_filter(pid1))
        assert p.wait(timeout=30) == 5                      # PID 1 went on after the host's look
    finally:
        p.kill()
        p.wait()


@x86_64
@root_only
def test_running_pid1_has_exactly_that_filter_api():
    """Through the launch server: a fresh PID 1, then PID 1s that were spares with a root built ahead."""
    from sandbox.server.client import Client
    from sandbox.api import Sandbox
    sb = Sandbox("strict")
    sb.run(["/bin/true"])
    server = Client.get().proc.pid
    for _ in range(3):
        res = {}
        t = threading.Thread(target=lambda: res.setdefault("r", sb.run(["/bin/sh", "-c", "sleep 1.5; exit 4"])))
        t.start()
        try:
            def running():
                for pid in _pysandbox_init_children(server):
                    st = open(f"/proc/{pid}/status").read()
                    if "Seccomp:\t2" in st:
                        return pid
                return None
            _check_filter(_get_filter(_wait_for(running)))
        finally:
            t.join(30)
        assert res["r"].exit_code == 4, res


@root_only
def test_python_pid1_without_the_binary_has_a_filter_too(monkeypatch):
    """No pysandbox-init (not built): PID 1 stays the Python process to the end, and loads a filter
    of the same shape (sandbox/init.py, pid1_filter) once it dropped its privileges. From inside:
    seccomp mode 2; a signal to PID 1 still reaches the program (its Python handler's kill)."""
    from policies.compiler import compile_profile
    from sandbox import init, launcher
    monkeypatch.setattr(init, "INIT_BINARY", "/nonexistent/pysandbox-init")
    monkeypatch.setattr(init, "_INIT", [None, None])
    plan = compile_profile("strict").plan
    r, w = os.pipe()
    try:
        res = launcher.launch(plan, ["/bin/sh", "-c", "trap 'echo got-term; exit 3' TERM; cat /proc/1/comm "
                                     "/proc/1/status; sleep 2 & kill -TERM 1; wait; echo no-term"], stdout=w)
    finally:
        os.close(w)
    out = os.read(r, 100000).decode()
    os.close(r)
    assert res.exit_code == 3 and "got-term" in out, (res, out)
    comm, status = out.split("\n", 1)
    assert comm != "pysandbox-init"
    st = _status(status)
    assert st["Seccomp"] == "2" and st["Seccomp_filters"] == "1", st


@x86_64
def test_python_pid1_filter_allows_only_its_list():
    from sandbox import init
    prog = init.pid1_filter()
    want = set(init._PID1_CALLS["x86_64"][2].values())
    assert {nr for nr in range(1024) if _run_bpf(prog, nr, AUDIT_ARCH_X86_64) == RET_ALLOW} == want
    for nr in want:
        assert _run_bpf(prog, nr | X32, AUDIT_ARCH_X86_64) == RET_KILL_PROCESS
        assert _run_bpf(prog, nr, AUDIT_ARCH_I386) == RET_KILL_PROCESS
    assert set(USED.values()) <= want                       # pysandbox-init's list, plus the allocator's
