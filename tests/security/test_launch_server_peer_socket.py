"""The CLI's launch server's socket (docs/security.md, "The CLI's launch server"): another user can
never connect (the directory 0700, the socket 0600 — and, with both loosened, the server's own
SO_PEERCRED check closes the connection); a symlink or a socket that is not the caller's planted at
the socket path is refused by `run` (the ordinary path), `server status` and `server start`; the
server's death during a run kills the sandbox (PID 1 dies with it) and the CLI says so (exit 125)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest

import launchserver
from launchserver import server  # noqa: F401  (a fixture)
from conftest import HOST_PYTHON, PYSANDBOX, SandboxProcs, audit_log, ensure_test_user


CONNECT = ("import socket, sys\n"
           "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
           "try:\n"
           "    s.connect(sys.argv[1])\n"
           "except OSError as e:\n"
           "    print('connect', e.errno); sys.exit(0)\n"
           "s.settimeout(10)\n"
           "try:\n"
           "    s.send(b'STATUS')\n"
           "    print('answer', repr(s.recv(256)))\n"
           "except OSError as e:\n"
           "    print('recv', e.errno)\n")


def _as_test_user(path: str) -> str:
    pw = ensure_test_user()
    return subprocess.run([HOST_PYTHON, "-c", CONNECT, path], user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                          capture_output=True, text=True, timeout=30, cwd="/tmp").stdout.strip()


def test_another_user_cannot_connect(server):
    assert _as_test_user(server.sock) == "connect 13"                 # EACCES: the 0700 directory
    d = os.path.dirname(server.sock)
    os.chmod(d, 0o711)
    os.chmod(server.sock, 0o666)
    try:   # the file system lets it connect now: the server closes the connection unanswered
        out = _as_test_user(server.sock)
        assert out in ("answer b''", "recv 104", "recv 32"), out
        assert server.status().returncode == 1                        # and the owner's CLI refuses it
    finally:
        os.chmod(server.sock, 0o600)
        os.chmod(d, 0o700)
    assert server.status().returncode == 0


def test_a_planted_symlink_is_refused(root_runner, server):
    real = server.sock + ".real"
    os.rename(server.sock, real)
    os.symlink(real, server.sock)
    try:
        p, via = launchserver.run(root_runner, ["/bin/true"])
        assert p.returncode == 0 and not via, p                       # the ordinary path
        st = server.status()
        assert st.returncode == 1 and "refusing" in st.stdout, st
        r = root_runner("server", "start")
        assert r.returncode == 1 and "refusing" in r.stderr, r
        assert os.path.islink(server.sock)                            # left as it was found
    finally:
        os.unlink(server.sock)
        os.rename(real, server.sock)
    p, via = launchserver.run(root_runner, ["/bin/true"])
    assert p.returncode == 0 and via, p


@pytest.mark.parametrize("how", ["owner", "mode"])
def test_a_socket_not_the_callers_is_refused(root_runner, server, how):
    pw = ensure_test_user()
    if how == "owner":
        os.chown(server.sock, pw.pw_uid, pw.pw_gid)
    else:
        os.chmod(server.sock, 0o660)
    try:
        p, via = launchserver.run(root_runner, ["/bin/true"])
        assert p.returncode == 0 and not via, p
        st = server.status()
        assert st.returncode == 1 and "refusing" in st.stdout, st
    finally:
        os.chown(server.sock, 0, 0)
        os.chmod(server.sock, 0o600)


def test_the_servers_death_kills_the_sandbox_and_the_cli_says_so(root_runner, server):
    p, via = launchserver.run(root_runner, ["/bin/true"])
    assert via, p
    log = audit_log(root_runner)
    cli = subprocess.Popen([PYSANDBOX, "run", "--profile", "strict", "--", "/bin/sleep", "60"],
                           env=root_runner.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd="/tmp")          # (the plan cache key holds the working directory)
    try:
        starts = sum(1 for line in open(log) if '"sandbox_start"' in line)
        procs = _nth_start(log, starts)
        os.kill(server.pid, signal.SIGKILL)
        out, err = cli.communicate(timeout=30)
        assert cli.returncode == 125, (out, err)
        assert "the launch server ended during the run; the sandbox was killed" in err, err
        assert procs.gone(10)                                          # PID 1 and everything under it
        procs.close()
    finally:
        cli.kill()
        cli.wait()


def _nth_start(log: str, n: int) -> SandboxProcs:
    import json
    import time
    deadline = time.monotonic() + 30
    while True:
        with open(log) as f:
            starts = [json.loads(line) for line in f if '"sandbox_start"' in line]
        if len(starts) > n:
            return SandboxProcs(starts[n])
        assert time.monotonic() < deadline, "no sandbox_start"
        time.sleep(0.02)


def test_the_servers_socket_is_0600_in_a_0700_directory(server):
    st = os.lstat(server.sock)
    assert oct(st.st_mode & 0o777) == "0o600" and st.st_uid == os.geteuid()
    d = os.lstat(os.path.dirname(server.sock))
    assert oct(d.st_mode & 0o777) == "0o700" and d.st_uid == os.geteuid()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)          # the owner: answered
    s.connect(server.sock)
    s.send(b"STATUS")
    assert s.recv(256).startswith(b"pid %d " % server.pid)
    s.close()
