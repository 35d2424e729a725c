"""Named/detached sandboxes and their lifecycle (issue 8), through the real CLI, as root and as the
unprivileged test user: run -d -> ps -> exec (same pid namespace, same denials) -> logs -> stats ->
top -> inspect -> stop -> rm; a SIGKILLed supervisor shows as dead and `rm` cleans everything."""
from __future__ import annotations

import json
import os
import signal
import time

from conftest import HOST_PYTHON

PROBE = r'''
import ctypes, errno, sys
libc = ctypes.CDLL(None, use_errno=True)
def sc(nr, *a):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(x) for x in a])
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
st = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
print("probe", "mount=" + sc(165, 0, 0, 0, 0, 0), "ptrace=" + sc(101, 16, 1, 0, 0), "keyctl=" + sc(250, 0, 0, 0, 0),
      "bpf=" + sc(321, 0, 0, 0), "getpid=" + sc(39), "capeff=" + st["CapEff"].strip(),
      "capbnd=" + st["CapBnd"].strip(), "nnp=" + st["NoNewPrivs"].strip(), "seccomp=" + st["Seccomp"].strip(),
      "uid=" + str(__import__("os").getuid()), "host=" + __import__("socket").gethostname(), flush=True)
'''


def _name(runner, tag):
    return f"t{tag}-{os.getpid()}-{'u' if runner.rootless else 'r'}"


def _probe_line(text):
    return next(l for l in text.splitlines() if l.startswith("probe "))


def _inspect(runner, name):
    r = runner("inspect", name)
    assert r.returncode == 0, r
    return json.loads(r.stdout)[0]


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_detached_lifecycle(runner):
    name = _name(runner, "lc")
    script = PROBE + "print('started', flush=True); print('to-stderr', file=sys.stderr, flush=True)\nimport time; time.sleep(120)"
    try:
        r = runner("run", "-d", "--name", name, "--", HOST_PYTHON, "-c", script)
        assert r.returncode == 0 and r.stdout.strip() == name, r

        # ps
        ps = runner("ps")
        assert ps.returncode == 0 and name in ps.stdout and "running" in ps.stdout, ps
        rows = json.loads(runner("ps", "--json").stdout)
        row = [x for x in rows if x["name"] == name][0]
        assert row["status"] == "running" and row["profile"] == "strict" and row["pid"], row

        info = _inspect(runner, name)
        assert info["status"] == "running" and info["plan"]["name"] == "strict"
        assert set(info["namespaces"]) >= {"user", "mnt", "pid", "uts", "ipc", "net"}      # recorded from PID 1
        assert set(info["namespaces_dev"]) == set(info["namespaces"])
        assert info["cgroups"] and all(info["id"] in c for c in info["cgroups"]), info["cgroups"]
        assert any(m["target"] == "/tmp" and m["fstype"] == "tmpfs" for m in info.get("mounts", [])), info
        assert info["limits"]["memory"] == 1 << 30 and info["audit_log"]

        # logs: the program ran its probe
        assert _wait(lambda: "started" in runner("logs", name).stdout)
        logs = runner("logs", name)
        assert "to-stderr" in logs.stderr and "to-stderr" not in logs.stdout, logs
        inside = _probe_line(logs.stdout)

        # exec: same pid namespace (sees PID 1 and the program), same identity, same denials
        ex = runner("exec", name, "--", "/bin/sh", "-c", "readlink /proc/self/ns/pid; ps -e -o pid=,comm=")
        assert ex.returncode == 0, ex
        lines = ex.stdout.split()
        assert lines[0] == f"pid:[{info['namespaces']['pid']}]", ex
        procs = dict(zip(lines[1::2], lines[2::2]))
        assert procs.get("1") and procs.get("2") == "python3", ex      # PID 1 and the program
        ex = runner("exec", name, "--", HOST_PYTHON, "-c", PROBE)
        assert ex.returncode == 0, ex
        assert _probe_line(ex.stdout) == inside, (ex.stdout, inside)
        assert "mount=EPERM" in inside and "ptrace=EPERM" in inside and "getpid=ok" in inside
        assert "capeff=0000000000000000" in inside and "nnp=1" in inside and "seccomp=2" in inside
        assert "host=sandbox" in inside and "uid=0" in inside
        # ... and the exec'd command's denials are recorded by the sandbox's own supervisor: its
        # events, its sequence (one recorder: no duplicate, no gap)
        with open(info["audit_log"]) as f:
            evs = [json.loads(line) for line in f if info["id"] in line]
        evs = [e for e in evs if e["sandbox_id"] == info["id"]]
        mounts = [e for e in evs if e["type"] in ("seccomp_denied", "escape_attempt")
                  and e["syscall"]["name"] == "mount"]
        assert len({e["pid"] for e in mounts}) == 2, mounts       # the program's and the exec'd probe's
        assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1)), [e["seq"] for e in evs]

        # exec exit statuses
        assert runner("exec", name, "--", "/bin/sh", "-c", "exit 7").returncode == 7
        nf = runner("exec", name, "--", "/no/such/cmd")
        assert nf.returncode == 127 and "not found" in nf.stderr, nf
        # exec -w and -e
        sig = runner("exec", name, "--", "/bin/sh", "-c", "grep -E '^Sig(Ign|Blk)' /proc/self/status")
        assert sig.stdout.split() == ["SigBlk:", "0" * 16, "SigIgn:", "0" * 16], sig    # not the CLI's SIGPIPE
        ex = runner("exec", "-w", "/tmp", "-e", "FOO=bar", name, "--", "/bin/sh", "-c", 'echo "$PWD $FOO"')
        assert ex.stdout.strip() == "/tmp bar", ex

        # stats and top
        st = runner("stats", "--no-stream", "--json", name)
        assert st.returncode == 0, st
        s = json.loads(st.stdout.splitlines()[0])
        assert s["status"] == "running" and s["pids"] >= 2 and s["pids_limit"] == 512, s
        assert s["memory_limit"] == 1 << 30 and s["memory_usage"] > 0, s
        table = runner("stats", "--no-stream", name)
        assert name in table.stdout and "1.0GiB" in table.stdout, table
        top = runner("top", name)
        assert top.returncode == 0, top
        rows = [l.split() for l in top.stdout.splitlines()[1:]]
        assert {r[1] for r in rows} >= {"1", "2"} and any(r[1] == "2" and "/usr/bin/python3" in r for r in rows), top

        # stop: SIGTERM reaches the program (python dies of it: 128+15)
        t = time.monotonic()
        stop = runner("stop", "-t", "5", name)
        assert stop.returncode == 0, stop
        assert time.monotonic() - t < 5
        row = [x for x in json.loads(runner("ps", "-a", "--json").stdout) if x["name"] == name][0]
        assert row["status"] == "exited" and row["exit_code"] == 143, row
        assert name not in runner("ps").stdout
        state_dir = info["state_dir"]

        # rm: state and cgroups gone
        rm = runner("rm", name)
        assert rm.returncode == 0, rm
        assert not os.path.exists(state_dir)
        assert not any(os.path.exists(c) for c in info["cgroups"]), info["cgroups"]
        assert runner("inspect", name).returncode == 1
    finally:
        runner("rm", "-f", name)


def test_supervisor_crash_shows_dead_and_rm_cleans_up(runner):
    name = _name(runner, "crash")
    try:
        r = runner("run", "-d", "--name", name, "--", "/bin/sleep", "120")
        assert r.returncode == 0, r
        info = _inspect(runner, name)
        sup, pid1 = info["supervisor_pid"], info["pid1"]
        assert sup and pid1
        os.kill(sup, signal.SIGKILL)                       # the supervisor vanishes without a word
        assert _wait(lambda: not os.path.exists(f"/proc/{pid1}")), "PID 1 must die with its supervisor"
        row = [x for x in json.loads(runner("ps", "-a", "--json").stdout) if x["name"] == name][0]
        assert row["status"] == "dead", row
        assert runner("exec", name, "--", "/bin/true").returncode == 1
        rm = runner("rm", name)
        assert rm.returncode == 0, rm
        assert not os.path.exists(info["state_dir"])
        assert not any(os.path.exists(c) for c in info["cgroups"]), info["cgroups"]
        assert name not in runner("ps", "-a").stdout
    finally:
        runner("rm", "-f", name)


def test_kill_signal_logs_follow_and_rm_running(runner):
    name = _name(runner, "kill")
    try:
        r = runner("run", "-d", "--name", name, "--", "/bin/sh", "-c",
                   "trap 'echo got-usr1; exit 5' USR1; echo ready; while :; do sleep 0.1; done")
        assert r.returncode == 0, r
        assert _wait(lambda: "ready" in runner("logs", name).stdout)
        assert runner("rm", name).returncode == 1                     # running: needs -f
        assert runner("kill", "-s", "USR1", name).returncode == 0
        f = runner("logs", "-f", name, timeout=20)                    # returns when the sandbox ends
        assert "got-usr1" in f.stdout, f
        row = [x for x in json.loads(runner("ps", "-a", "--json").stdout) if x["name"] == name][0]
        assert row["status"] == "exited" and row["exit_code"] == 5, row
        assert runner("kill", name).returncode == 1                   # not running any more
    finally:
        runner("rm", "-f", name)


def test_rm_force_kills_a_running_sandbox(runner):
    name = _name(runner, "rmf")
    r = runner("run", "-d", "--name", name, "--", "/bin/sleep", "120")
    assert r.returncode == 0, r
    info = _inspect(runner, name)
    rm = runner("rm", "-f", name)
    assert rm.returncode == 0, rm
    assert _wait(lambda: not os.path.exists(f"/proc/{info['pid1']}"))
    assert not os.path.exists(info["state_dir"])
    assert not any(os.path.exists(c) for c in info["cgroups"])


def test_auto_remove_and_names(runner):
    name = _name(runner, "auto")
    try:
        r = runner("run", "-d", "--rm", "--name", name, "--", "/bin/sh", "-c", "sleep 0.2")
        assert r.returncode == 0, r
        assert _wait(lambda: name not in runner("ps", "-a").stdout), "--rm removes the state at the end"
        # a name in use is refused; a bad name is a usage error
        r = runner("run", "-d", "--name", name, "--", "/bin/sleep", "30")
        assert r.returncode == 0, r
        again = runner("run", "-d", "--name", name, "--", "/bin/true")
        assert again.returncode == 125 and "already in use" in again.stderr, again
        bad = runner("run", "-d", "--name", "../evil", "--", "/bin/true")
        assert bad.returncode == 2 and "invalid sandbox name" in bad.stderr, bad
        nf = runner("run", "-d", "--name", name + "x", "--", "/no/such/cmd")
        assert nf.returncode == 127 and "not found" in nf.stderr, nf
        assert name + "x" not in runner("ps", "-a").stdout
        missing = runner("exec", "no-such-sandbox-xyz", "--", "/bin/true")
        assert missing.returncode == 1 and "no such sandbox" in missing.stderr, missing
    finally:
        runner("rm", "-f", name)
        runner("rm", "-f", name + "x")


# --- terminals ------------------------------------------------------------------------------

def _pty_session(runner, args, steps, timeout=20.0):
    """Run `pysandbox ARGS` on a fresh pty (as the runner's user); steps: [(wait_for, action)]
    where action is bytes to type or a (rows, cols) resize. Returns (output, exit status)."""
    import fcntl
    import pty
    import struct
    import termios
    from conftest import PYSANDBOX
    pid, fd = pty.fork()
    if pid == 0:
        try:
            env = runner.env()
            if runner.user:
                os.setgroups([])
                os.setgid(runner.gid)
                os.setuid(runner.uid)
            os.chdir("/tmp")
            os.execve(PYSANDBOX, [PYSANDBOX, *args], env)
        finally:
            os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    out = b""
    deadline = time.monotonic() + timeout
    steps = list(steps)
    import select
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                d = os.read(fd, 4096)
            except OSError:
                break
            if not d:
                break
            out += d
        while steps and steps[0][0].encode() in out:
            _, action = steps.pop(0)
            if isinstance(action, tuple):
                fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", action[0], action[1], 0, 0))
                os.kill(pid, signal.SIGWINCH)
            else:
                os.write(fd, action)
    else:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return out.decode(errors="replace"), os.waitstatus_to_exitcode(status)


def test_run_tty_is_the_sandboxs_own_pty_with_resize(runner):
    script = ('tty; stty size; test -t 0 && echo isatty; '
              'trap "stty size; echo RESIZED; touch /tmp/r" WINCH; echo READY; '
              'i=0; while [ ! -e /tmp/r ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; '
              'read x; echo got=$x; exit 3')
    out, code = _pty_session(runner, ["run", "-t", "--", "/bin/sh", "-c", script],
                             [("READY", (44, 120)), ("RESIZED", b"hello\n")])
    assert "/dev/pts/0" in out and "33 101" in out and "isatty" in out, out   # the sandbox's devpts
    assert "44 120" in out, out                                               # resize forwarded
    assert "got=hello" in out and code == 3, (out, code)                      # input relayed, status kept


def test_run_tty_ctrl_c_reaches_the_program(runner):
    out, code = _pty_session(runner, ["run", "-it", "--", "/bin/sh", "-c", "echo READY; exec sleep 30"],
                             [("READY", b"\x03")])
    assert "READY" in out and code == 130, (out, code)                       # SIGINT from the pty


def test_exec_tty(runner):
    name = _name(runner, "tty")
    try:
        assert runner("run", "-d", "--name", name, "--", "/bin/sleep", "60").returncode == 0
        out, code = _pty_session(runner, ["exec", "-it", name, "--", "/bin/sh", "-c",
                                          "tty; stty size; echo READY; read x; echo got=$x"],
                                 [("READY", b"hello\n")])
        assert "/dev/pts/" in out and "33 101" in out and "got=hello" in out and code == 0, (out, code)
    finally:
        runner("rm", "-f", name)
