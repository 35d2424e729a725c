"""Two guarantees that nothing showed for real before (found while closing "PID 1 reachable"):

1. The program has no controlling terminal (without -t): even when the caller's own terminal is
   its stdin/stdout, open("/dev/tty") fails ENXIO and TIOCSTI (pushing input into the caller's
   terminal) is refused — nothing lands in the terminal's input queue; its output still reaches
   the caller. With -t it has a terminal: a pty of the sandbox's own devpts, not the caller's.
2. Seccomp user notification fails closed: when the supervisor that answers notified calls is
   killed (SIGKILL, while stopped with a call pending), the call never proceeds as allowed — the
   kernel answers it with an error and the whole sandbox dies with its supervisor (PID 1's parent
   death signal). Probe: a denied mkdir on a shared directory; had it proceeded, the directory
   would exist on the host.

Real terminals (a fresh pty whose slave is the caller's controlling terminal) and real
sandboxes, as root and rootless.
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import termios
import time

from conftest import HOST_PYTHON, PYSANDBOX

TTY_PROBE = r"""
import errno, fcntl, json, os, termios
out = {"sid_is_self": os.getsid(0) == os.getpid()}
try:
    os.close(os.open("/dev/tty", os.O_RDWR)); out["dev_tty"] = "ok"
except OSError as e:
    out["dev_tty"] = errno.errorcode[e.errno]
try:
    fcntl.ioctl(0, termios.TIOCSTI, b"X"); out["tiocsti"] = "ok"
except OSError as e:
    out["tiocsti"] = errno.errorcode[e.errno]
try:
    out["ttyname"] = os.ttyname(0)
except OSError:
    out["ttyname"] = None
st = os.fstat(0)
out["stdin_dev"], out["stdin_rdev"] = st.st_dev, st.st_rdev
print("RESULT" + json.dumps(out), flush=True)
"""


def _on_a_terminal(runner, args, timeout=30.0):
    """Run `pysandbox ARGS` with a fresh pty as its controlling terminal and stdio (as the runner's
    user). Returns (output, exit status, bytes left in the terminal's input queue, its stat)."""
    master, slave = os.openpty()
    if runner.user:
        os.fchown(slave, runner.uid, runner.gid)
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for t in (0, 1, 2):
                os.dup2(slave, t)
            os.close(master)
            if runner.user:
                os.setgroups([])
                os.setgid(runner.gid)
                os.setuid(runner.uid)
            os.chdir("/tmp")
            os.execve(PYSANDBOX, [PYSANDBOX, *args], runner.env())
        finally:
            os._exit(127)
    slave_st = os.fstat(slave)
    out = b""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            try:
                d = os.read(master, 4096)
            except OSError:
                d = b""
            out += d
        wpid, st = os.waitpid(pid, os.WNOHANG)
        if wpid:
            status = os.waitstatus_to_exitcode(st)
            while select.select([master], [], [], 0.2)[0]:
                try:
                    d = os.read(master, 4096)
                except OSError:
                    break
                if not d:
                    break
                out += d
            break
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    pending = struct.unpack("i", fcntl.ioctl(slave, termios.FIONREAD, b"\0" * 4))[0]
    os.close(slave)
    os.close(master)
    return out.decode(errors="replace"), status, pending, slave_st


def _result(out: str) -> dict:
    line = [l for l in out.splitlines() if l.startswith("RESULT")]
    assert line, out
    return json.loads(line[-1][len("RESULT"):])


def test_no_controlling_terminal(runner):
    out, status, pending, _ = _on_a_terminal(runner, ["run", "--profile", "strict", "--", HOST_PYTHON, "-c", TTY_PROBE])
    assert status == 0, out
    res = _result(out)                                   # its output reached the caller's terminal
    assert res["dev_tty"] == "ENXIO", res                # no controlling terminal
    assert res["tiocsti"] in ("EPERM", "EIO"), res       # cannot type into the caller's terminal
    assert res["sid_is_self"], res                       # a session of its own
    assert pending == 0                                  # and nothing was pushed into its input


def test_with_t_its_own_pty_only(runner):
    out, status, pending, caller = _on_a_terminal(runner, ["run", "-t", "--profile", "strict", "--",
                                                           HOST_PYTHON, "-c", TTY_PROBE])
    assert status == 0, out
    res = _result(out)
    assert res["dev_tty"] == "ok", res                   # it has a controlling terminal
    assert res["ttyname"] and res["ttyname"].startswith("/dev/pts/"), res
    # the sandbox's own devpts instance: another device than the caller's terminal
    assert (res["stdin_dev"], res["stdin_rdev"]) != (caller.st_dev, caller.st_rdev), (res, caller)
    assert res["stdin_dev"] != caller.st_dev, (res, caller)
    assert pending == 0


NOTIFY_PROBE = r"""
import errno, os, time
def attempt(path):
    try:
        os.mkdir(path)
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
open("/shared/early", "w").write(attempt("/shared/early-dir"))      # supervisor alive: denied
open("/shared/ready", "w").write(str(os.getpid()))
while not os.path.exists("/shared/go"):
    time.sleep(0.02)
r = attempt("/shared/proceeded")                                   # pending while it is stopped
open("/shared/result", "w").write(r)
time.sleep(30)
"""


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(k) for k in f.read().split()]
    except OSError:
        return []


def test_notified_call_fails_closed_when_supervisor_is_killed(runner, tmp_profile, shared_tmp):
    shared = shared_tmp / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    p = tmp_profile("version: 1\nextends: strict\nseccomp:\n  deny: !extend [mkdir, mkdirat]\n"
                    "  notify_denials: true\n")
    kw = dict(user=runner.uid, group=runner.gid, extra_groups=[]) if runner.user else {}
    sup = subprocess.Popen([PYSANDBOX, "run", "--profile", p, "-v", f"{shared}:/shared", "--",
                            HOST_PYTHON, "-c", NOTIFY_PROBE], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=runner.env(), cwd="/tmp", **kw)
    try:
        deadline = time.monotonic() + 30
        while not (shared / "ready").exists() and sup.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (shared / "ready").exists(), sup.communicate(timeout=10)
        # the legitimate side: with its supervisor there, the denied call fails EPERM
        assert (shared / "early").read_text() == "EPERM"
        assert not (shared / "early-dir").exists()
        sandbox = [q for q in _children(sup.pid)]           # PID 1 (and through it, the program)
        assert sandbox
        procs = sandbox + [c for q in sandbox for c in _children(q)]
        pidfds = [os.pidfd_open(q) for q in procs]          # held: their exit is an event
        os.kill(sup.pid, signal.SIGSTOP)                     # the supervisor cannot answer...
        (shared / "go").write_text("")
        time.sleep(1.0)                                      # ...the call is pending
        assert not (shared / "result").exists()
        assert not (shared / "proceeded").exists()
        os.kill(sup.pid, signal.SIGKILL)                     # ...and now it is gone
        sup.wait(timeout=10)
        deadline = time.monotonic() + 10
        for fd in pidfds:                                    # the sandbox died: every pidfd readable
            assert select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0], procs
            os.close(fd)
        assert not (shared / "proceeded").exists()           # the call never ran
        if (shared / "result").exists():                     # (if it returned before the end: an error)
            assert (shared / "result").read_text() != "ok"
    finally:
        try:
            os.kill(sup.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        sup.wait()
