"""`pysandbox server start|stop|status`: the caller's launch server for the CLI (opt-in).

Started, a detached process (its own session, stdio /dev/null, working directory /) listens on
<state dir>/server/launch.sock (directory 0700, socket 0600, the caller's) and starts the
sandboxes of `pysandbox run` with a cached plan for callers exactly as confined as itself
(sandbox/server/lean.py, peer.py): the CLI's interpreter then imports no launcher, and PID 1 is
cloned from a warm template (docs/performance.md, "The CLI's launch server"). It is the API's
launch server loop (sandbox/server/loop.py); each connection is a control connection of its own.
It ends after --idle seconds with no sandbox and no connection, on `stop`, or on SIGTERM.

Exit codes: 0 done (status: running); 1 not running (status, stop) or cannot start (one line).
"""
from __future__ import annotations

import os
import stat
import sys
import time

import click

from ..server import lean

DEFAULT_IDLE = 600.0


def _fail(msg: str) -> None:
    sys.stderr.write(f"pysandbox server: {msg}\n")
    raise SystemExit(1)


@click.group("server")
def server():
    """A launch server for `pysandbox run` (opt-in; see docs/performance.md)."""


@server.command("start")
@click.option("--idle", type=click.FloatRange(min=1.0), default=DEFAULT_IDLE, show_default=True,
              help="Seconds without a sandbox or a connection after which the server exits.")
def start(idle):
    """Start the caller's launch server (nothing if one runs already)."""
    from audit.paths import StateDirError, ensure_state_dir
    try:
        where = ensure_state_dir()
    except StateDirError as e:
        _fail(str(e))
    d = os.path.join(where, lean.SOCK_DIR)
    path = lean.sock_path(where)
    try:
        os.mkdir(d, 0o700)
        os.chmod(d, 0o700)                              # not left to the umask
    except FileExistsError:
        pass
    except OSError as e:
        _fail(f"{d}: {e.strerror}")
    if os.path.lexists(path):
        try:
            click.echo(f"already running: {lean.ask(b'STATUS', path)}")
            return 0
        except lean.Refused as e:
            if "refusing" in str(e) or not lean.remove_if_dead(path):
                _fail(str(e))
    try:
        st = os.lstat(d)
    except OSError as e:
        _fail(f"{d}: {e.strerror}")
    if not (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077):
        _fail(f"{d}: not a directory of yours with mode 0700; refusing it")
    _spawn(where, path, idle)
    try:
        click.echo(f"started: {lean.ask(b'STATUS', path)}")
    except lean.Refused as e:
        lean.remove_if_dead(path)
        _fail(f"started, but {e}")
    return 0


def _spawn(where: str, path: str, idle: float) -> None:
    """Bind the socket here (0600: created under umask 0177), hand it to a detached server."""
    import socket
    import subprocess

    from ..server.client import BOOT, module_roots
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as e:
        _fail(f"{path}: {e.strerror}")
    finally:
        os.umask(old)
    sock.listen(64)
    st = os.lstat(path)
    args = (f"listen_fd={sock.fileno()}, idle={idle!r}, sock_path={path!r}, "
            f"sock_id={(st.st_dev, st.st_ino)!r}")
    # its environment is ours: a client with another HOME, XDG_* or PYSANDBOX_* is not served
    # (server/clirun.py), and the state directory is resolved from it as ours was
    env = dict(os.environ)
    subprocess.Popen([sys.executable, "-I", "-S", "-c", BOOT.format(paths=module_roots(), fd=args)],
                     pass_fds=(sock.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True, cwd="/", env=env)
    sock.close()


@server.command("stop")
def stop():
    """Stop the caller's launch server (its running sandboxes are killed)."""
    try:
        answer = lean.ask(b"STOP")
    except lean.Refused as e:
        click.echo(f"not running: {e}", err=True)
        raise SystemExit(1)
    pid = int(answer.split()[1])
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        fd = None
    if fd is not None:                                   # wait (bounded) until it has exited
        import select
        p = select.poll()
        p.register(fd, select.POLLIN)
        end = time.monotonic() + 30
        while not p.poll(100) and time.monotonic() < end:
            pass
        os.close(fd)
    click.echo(f"stopped: pid {pid}")
    return 0


@server.command("status")
def status():
    """Whether the caller's launch server runs (pid, sandboxes, connections, idle timeout)."""
    try:
        click.echo(f"running: {lean.ask(b'STATUS')}, socket {lean.sock_path()}")
    except lean.Refused as e:
        click.echo(f"not running: {e}")
        raise SystemExit(1)
    return 0


COMMANDS = [server]
