"""`pysandbox server start|stop|status` (sandbox/cli/server.py): the server's life — started once per
state directory (a second start finds it), detached (its own session, stdio /dev/null, working
directory /), ended by `stop` (its running sandbox killed, the CLI told), by SIGTERM, or after its
idle time, each time removing its socket; a dead server's socket is replaced by the next start."""
from __future__ import annotations

import os
import select
import signal
import subprocess

import launchserver
from conftest import PYSANDBOX, SandboxProcs, audit_log


def _exited(pid: int, timeout: float) -> bool:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        return bool(p.poll(int(timeout * 1000)))
    finally:
        os.close(fd)


def test_start_status_second_start_and_detachment(root_runner, own_state_dir):
    s = launchserver.Server(root_runner)
    try:
        again = root_runner("server", "start")
        assert again.returncode == 0 and again.stdout.startswith(f"already running: pid {s.pid} "), again
        st = s.status()
        assert st.returncode == 0 and st.stdout.startswith(f"running: pid {s.pid} sandboxes 0 "), st
        assert os.getsid(s.pid) == s.pid                                  # a session of its own
        for fd in (0, 1, 2):
            assert os.readlink(f"/proc/{s.pid}/fd/{fd}") == "/dev/null"
        assert os.readlink(f"/proc/{s.pid}/cwd") == "/"
    finally:
        s.stop()
    assert _exited(s.pid, 30) and not os.path.lexists(s.sock)
    st = s.status()
    assert st.returncode == 1 and st.stdout.startswith("not running"), st


def test_idle_time_and_sigterm_end_it(root_runner, own_state_dir):
    s = launchserver.Server(root_runner, idle=1)
    assert _exited(s.pid, 30), "the idle server did not exit"
    assert not os.path.lexists(s.sock)
    s = launchserver.Server(root_runner)
    os.kill(s.pid, signal.SIGTERM)
    assert _exited(s.pid, 30) and not os.path.lexists(s.sock)


def test_stop_kills_a_running_sandbox_and_a_dead_servers_socket_is_replaced(root_runner, own_state_dir):
    launchserver.run(root_runner, ["/bin/true"])                        # the plan cached
    s = launchserver.Server(root_runner)
    log = audit_log(root_runner)
    cli = subprocess.Popen([PYSANDBOX, "run", "--profile", "strict", "--", "/bin/sleep", "60"],
                           env=root_runner.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd="/tmp")          # (the plan cache key holds the working directory)
    try:
        procs = SandboxProcs.from_log(log)
        s.stop()
        out, err = cli.communicate(timeout=30)
        assert cli.returncode == 137, (out, err)                         # killed, as `pysandbox kill` would
        assert procs.gone(10)
        procs.close()
    finally:
        cli.kill()
        cli.wait()
    s = launchserver.Server(root_runner)
    os.kill(s.pid, signal.SIGKILL)                                       # its socket stays behind
    assert _exited(s.pid, 30) and os.path.lexists(s.sock)
    p, via = launchserver.run(root_runner, ["/bin/true"])
    assert p.returncode == 0 and not via, p                             # the ordinary path
    s = launchserver.Server(root_runner)                                 # replaces it
    try:
        p, via = launchserver.run(root_runner, ["/bin/true"])
        assert p.returncode == 0 and via, p
    finally:
        s.stop()


def test_a_cache_miss_is_not_served_the_next_run_is_and_a_relative_audit_log_is_the_callers(
        root_runner, own_state_dir, tmp_path):
    """The server serves cache hits only (a miss: the CLI compiles, stores, launches as always);
    a relative --audit-log is the caller's working directory's, as on the ordinary path."""
    os.chmod(tmp_path, 0o755)
    opts = ("--profile", "strict", "--hostname", f"miss-{os.urandom(4).hex()}", "--audit-log", "rel.jsonl")
    s = launchserver.Server(root_runner)
    try:
        first, via = launchserver.run(root_runner, ["/bin/hostname"], opts=opts, cwd=str(tmp_path))
        assert first.returncode == 0 and not via, first
        second, via = launchserver.run(root_runner, ["/bin/hostname"], opts=opts, cwd=str(tmp_path))
        assert second.returncode == 0 and via, second
    finally:
        s.stop()
    assert first.stdout == second.stdout == opts[3] + "\n"
    with open(tmp_path / "rel.jsonl") as f:
        assert sum(1 for line in f if '"sandbox_start"' in line) == 2
