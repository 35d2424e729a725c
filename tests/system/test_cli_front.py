"""`pysandbox`'s C front end (sandbox/cli/front.c): a served `run` without a Python interpreter,
byte for byte the message of the lean Python client (sandbox/server/lean.py), and `pysandbox-py`
(the Python CLI) exec'd for everything else.

The "server" of most tests is a socket this test binds itself in a state directory of its own
(simulated: it records what a client sends and answers as the launch server would, S / X<code> /
N<why>); the served run is also shown with the real server (launchserver.Server)."""
from __future__ import annotations

import array
import os
import socket
import struct
import subprocess

import pytest

import launchserver
from conftest import PYSANDBOX
from sandbox.server import lean

FRONT = os.path.realpath(PYSANDBOX)


@pytest.fixture
def fake(tmp_path):
    """A launch-server socket of root's (mode 0600 in a 0700 directory) in a fresh state directory."""
    state = tmp_path / "state"
    state.mkdir(mode=0o711)
    (state / "server").mkdir(mode=0o700)
    path = str(state / "server" / "launch.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(path)
    os.chmod(path, 0o600)
    s.listen(4)
    s.settimeout(30)
    yield s, state
    s.close()


def _env(state, **extra) -> dict:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "PYSANDBOX_STATE_DIR": str(state)}
    env.update(extra)
    return env


def _serve(listener, reply: list[bytes]):
    """Accept one client: (its pid, its executable, its message); REPLY sent on the run's socket."""
    conn, _ = listener.accept()
    with conn:
        pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        exe = os.readlink(f"/proc/{pid}/exe")
        fds = array.array("i")
        msg, anc, _, _ = conn.recvmsg(1 << 20, socket.CMSG_SPACE(4 * fds.itemsize))
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
        assert len(fds) == 4, fds
        run = socket.socket(fileno=fds[0])
        for fd in fds[1:]:
            os.close(fd)
        with run:
            for r in reply:
                run.send(r)
    return pid, exe, msg


def _pending(listener) -> bool:
    listener.settimeout(0)
    try:
        listener.accept()[0].close()
        return True
    except BlockingIOError:
        return False
    finally:
        listener.settimeout(30)


@pytest.mark.parametrize("locale", [{}, {"LANG": "C.UTF-8"}, {"LC_ALL": "C"}, {"LANG": "xx_YY.nonesuch"}],
                         ids=["no-locale", "LANG", "LC_ALL", "unknown-locale"])
def test_front_and_python_client_send_the_same_message_and_N_falls_back(fake, tmp_path, locale):
    """The front's message (then "N": it execs pysandbox-py, same pid) and the Python client's
    (then S, X7: it exits 7) are the same bytes, PEP 538's locale coercion included."""
    listener, state = fake
    env = _env(state, PYSANDBOX_SERVER_DEBUG="1", ODD="a\tb=c", **locale)
    cli = subprocess.Popen([PYSANDBOX, "run", "--profile", "strict", "-e", "X=1", "--", "/bin/echo", "a b", "--"],
                           env=env, cwd=str(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        pid1, exe1, front = _serve(listener, [b"Nnot today"])
        pid2, exe2, python = _serve(listener, [b"S", b"X7"])
        out, err = cli.communicate(timeout=60)
    finally:
        cli.kill()
        cli.wait()
    assert cli.returncode == 7, err
    assert pid1 == pid2 == cli.pid and exe1 == FRONT and exe2 != FRONT and "python" in exe2
    assert b"pysandbox: launch server: not here: not today\n" in err        # the front's, with DEBUG
    assert front == python
    f = lean.decode(front)
    assert f["options"] == ["--profile", "strict", "-e", "X=1"] and f["cmd"] == ["/bin/echo", "a b", "--"]
    assert f["cwd"] == str(tmp_path) and f["environ"]["ODD"] == "a\tb=c" and f["rlimits"] == lean.rlimits()
    if not locale:
        assert f["environ"]["LC_CTYPE"] == "C.UTF-8"                      # as Python coerced its own


def test_a_served_run_starts_no_python(fake, tmp_path):
    """S then X0: the front exits 0 having connected once, as itself (no exec of anything)."""
    listener, state = fake
    cli = subprocess.Popen([PYSANDBOX, "run", "--profile", "strict", "--", "/bin/true"], env=_env(state),
                           cwd=str(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        pid, exe, _ = _serve(listener, [b"S", b"X0"])
        out, err = cli.communicate(timeout=60)
    finally:
        cli.kill()
        cli.wait()
    assert cli.returncode == 0 and (out, err) == (b"", b"") and exe == FRONT and pid == cli.pid
    assert not _pending(listener)


def test_the_server_gone_after_S_is_125(fake, tmp_path):
    listener, state = fake
    p = subprocess.Popen([PYSANDBOX, "run", "--profile", "strict", "--", "/bin/true"], env=_env(state),
                         cwd=str(tmp_path), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _serve(listener, [b"S"])
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
        p.wait()
    assert p.returncode == 125 and err == lean.GONE, err
    assert not _pending(listener)


@pytest.mark.parametrize("case", ["no-socket", "group-mode", "dir-symlink", "not-run", "no-dashdash"])
def test_everything_else_execs_the_python_cli(fake, tmp_path, case):
    """A profile that does not exist: the Python CLI's own one-line error, exit 2 (the front never
    writes one); the refused socket is never connected to."""
    listener, state = fake
    sock = state / "server" / "launch.sock"
    argv = ["run", "--profile", str(tmp_path / "nonesuch.yaml"), "--", "/bin/true"]
    if case == "no-socket":
        sock.unlink()
    elif case == "group-mode":
        os.chmod(sock, 0o660)
    elif case == "dir-symlink":
        os.rename(state / "server", state / "elsewhere")
        os.symlink("elsewhere", state / "server")
    elif case == "not-run":
        argv = ["lint", str(tmp_path / "nonesuch.yaml")]
    elif case == "no-dashdash":
        argv = ["run", "--profile", str(tmp_path / "nonesuch.yaml"), "/bin/true"]
    p = subprocess.run([PYSANDBOX, *argv], env=_env(state), cwd=str(tmp_path), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.startswith("pysandbox") and "nonesuch" in p.stderr, p
    assert p.stderr.count("\n") == 1, p.stderr
    assert not _pending(listener)


def test_the_real_server_serves_the_front_without_python(runner):
    """The real launch server, root's and the test user's: while the sandbox runs, its client is the
    front (comm "pysandbox"); its exit code is the program's."""
    launchserver.run(runner, ["/bin/true"])                      # the plan cached (cwd /tmp)
    s = launchserver.Server(runner)
    kw = dict(user=runner.uid, group=runner.gid, extra_groups=[]) if runner.user else {}
    cli = subprocess.Popen([PYSANDBOX, "run", "--profile", "strict", "--", "/bin/sh", "-c", "echo ready; read x; exit 5"],
                           env=runner.env(), cwd="/tmp", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, **kw)
    try:
        assert cli.stdout.readline() == b"ready\n", cli.stderr.read() if cli.poll() is not None else ""
        assert os.readlink(f"/proc/{cli.pid}/exe") == FRONT
        with open(f"/proc/{cli.pid}/comm") as f:
            assert f.read() == "pysandbox\n"
        _, err = cli.communicate(b"go\n", timeout=60)
    finally:
        cli.kill()
        cli.wait()
        s.stop()
    assert cli.returncode == 5, err


def test_a_peer_of_another_uid_is_refused_rootless(user_runner, shared_tmp):
    """The test user's own directory and socket file (lstat passes) with root listening behind it:
    SO_PEERCRED says uid 0, the front sends nothing and execs the Python CLI (which refuses too)."""
    state = shared_tmp / "state"
    state.mkdir(mode=0o711)
    (state / "server").mkdir(mode=0o700)
    path = str(state / "server" / "launch.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        listener.bind(path)
        listener.listen(4)
        os.chmod(path, 0o600)
        for p in (state, state / "server", path):
            os.chown(p, user_runner.uid, user_runner.gid)
        r = subprocess.run([PYSANDBOX, "run", "--profile", str(shared_tmp / "nonesuch.yaml"), "--", "/bin/true"],
                           env=user_runner.env({"PYSANDBOX_STATE_DIR": str(state)}), cwd="/tmp",
                           capture_output=True, text=True, timeout=60, user=user_runner.uid,
                           group=user_runner.gid, extra_groups=[])
        assert r.returncode == 2 and "nonesuch" in r.stderr and r.stderr.count("\n") == 1, r
        listener.settimeout(0)
        for _ in range(2):                          # the front's connection, then Python's
            conn = listener.accept()[0]
            conn.settimeout(10)
            assert conn.recv(16) == b""                 # closed, nothing sent
            conn.close()
    finally:
        listener.close()
