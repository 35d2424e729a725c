"""The CLI's client of a running launch server (`pysandbox server start`, opt-in): the first thing
`pysandbox run OPTIONS -- CMD` tries (sandbox/cli/__init__.py). It sends the run as typed — the
options, the command, its working directory, environment, umask, rlimits and installation, with
its stdio — and the server does what the CLI's cached path would: the plan-cache lookup with this
caller's key, the audit session (log, syslog, the stderr summary on this caller's stderr), the
launch, the launcher's messages (sandbox/server/clirun.py). This process only forwards signals and
exits with the code it is sent. "Not here" (no server, a socket that is not the caller's, a caller
not exactly as confined as the server, a cache miss, a run the server does not make): None, and
the CLI goes on as always — nothing was started.

Lean on purpose: a Python process's import of `socket`, `signal`, `json` or `pickle` costs ~10 ms
of CPU each here (enum, re, collections: docs/performance.md); this module uses the C modules
`_socket` and `_signal` and `audit.paths` (a leaf) only.

Wire (AF_UNIX SOCK_SEQPACKET): client -> server, on a connection of its own: one message, MAGIC
then NUL-separated fields (encode), with four descriptors: the run's socket and stdin, stdout,
stderr. Server -> client on the run's socket: b"S" (the sandbox is set up: its program may run
from now on), then b"X" + the exit code; or, before b"S", b"N" + why (not here). Client -> server
on the run's socket: b"K" + one byte, a signal for the sandbox.
"""
from __future__ import annotations

import _signal
import _socket
import os
import sys

from audit.paths import state_dir

SOCK_DIR, SOCK_NAME = "server", "launch.sock"
MAGIC = b"PSBCLI1"
MAX_FIELDS = 1 << 16
# the signals forwarded to the sandbox (launcher.FORWARDED, the ordinary path's)
FORWARDED = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGUSR1,
             _signal.SIGUSR2)
GONE = b"pysandbox: the launch server ended during the run; the sandbox was killed\n"
DEBUG = "PYSANDBOX_SERVER_DEBUG"   # set: a run not served says why on stderr (server/clirun.py ignores it)
INSTALL = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Refused(Exception):
    """The socket path cannot be trusted, or no server is there: one line saying why."""


def sock_path(where: "str | None" = None) -> str:
    return os.path.join(where or state_dir(), SOCK_DIR, SOCK_NAME)


def _ours(st, dir_: bool) -> bool:
    kind = 0o040000 if dir_ else 0o140000                    # S_IFDIR, S_IFSOCK
    return st.st_mode & 0o170000 == kind and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def connect(path: "str | None" = None):
    """A connected _socket.socket to the launch server at path; Refused when the path or the server
    is not the caller's own (a symlink, another owner, group/other access), or nobody listens."""
    path = path or sock_path()
    d = os.path.dirname(path)
    try:
        if not _ours(os.lstat(d), True):
            raise Refused(f"{d}: not a directory of yours with mode 0700; refusing it")
        if not _ours(os.lstat(path), False):
            raise Refused(f"{path}: not a socket of yours with mode 0600; refusing it")
    except FileNotFoundError:
        raise Refused("no launch server") from None
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    try:
        s.connect(path)
        cred = s.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)     # pid, uid, gid
    except OSError as e:
        s.close()
        raise Refused(f"no launch server ({e.strerror})") from None
    uid = int.from_bytes(cred[4:8], sys.byteorder, signed=True)
    if uid != os.geteuid():
        s.close()
        raise Refused(f"{path}: the server there is uid {uid}'s; refusing it")
    return s


def ask(msg: bytes, path: "str | None" = None) -> str:
    """`server stop|status`: the server's one-line answer (Refused: none)."""
    s = connect(path)
    try:
        s.settimeout(10)
        s.send(msg)
        answer = s.recv(4096).decode(errors="replace")
    except OSError as e:
        raise Refused(f"the launch server does not answer ({e.strerror or e})") from None
    finally:
        s.close()
    if not answer.startswith("pid "):
        raise Refused("the launch server does not answer")
    return answer


def remove_if_dead(path: str) -> bool:
    """Remove the caller's own socket at path when nobody accepts on it (a dead server's): True when
    it is gone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    if not _ours(st, False):
        return False
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    try:
        s.connect(path)
        return False                                     # someone listens (maybe not answering yet)
    except ConnectionRefusedError:
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def rlimits() -> tuple:
    """Every resource limit of this process, in `resource`'s order of names: compared with the
    server's own (sandbox/server/loop.py)."""
    import resource
    return tuple(resource.getrlimit(getattr(resource, n)) for n in sorted(dir(resource))
                 if n.startswith("RLIMIT_"))


def encode(options, cmd, cwd: str, environ, umask: int, limits, install: str) -> bytes:
    """The run as one message (see the module's docstring); decode() reads it back."""
    out = [MAGIC, b"%d" % umask, os.fsencode(cwd), os.fsencode(install)]
    for items in (options, cmd):
        out.append(b"%d" % len(items))
        out += [os.fsencode(a) for a in items]
    out.append(b"%d" % len(environ))
    out += [k + b"=" + v for k, v in environ]
    out.append(b"%d" % len(limits))
    out += [b"%d %d" % lim for lim in limits]
    return b"\0".join(out)


def decode(msg: bytes) -> dict:
    """-> {"umask", "cwd", "install", "options", "cmd", "environ", "rlimits"}; ValueError."""
    f = msg.split(b"\0", MAX_FIELDS)
    if len(f) > MAX_FIELDS or f[0] != MAGIC or any(not a for a in f[2:4]):
        raise ValueError("not a CLI run")
    it = iter(f[1:])

    def some():
        n = int(next(it))
        if not 0 <= n <= MAX_FIELDS:
            raise ValueError("a count out of bounds")
        return [next(it) for _ in range(n)]
    out = {"umask": int(next(it)), "cwd": os.fsdecode(next(it)), "install": os.fsdecode(next(it))}
    out["options"] = [os.fsdecode(a) for a in some()]
    out["cmd"] = [os.fsdecode(a) for a in some()]
    env = {}
    for kv in some():
        k, sep, v = kv.partition(b"=")
        if not sep or not k:
            raise ValueError("a malformed environment entry")
        env[os.fsdecode(k)] = os.fsdecode(v)
    out["environ"] = env
    out["rlimits"] = tuple(tuple(int(x) for x in lim.split(b" ", 1)) for lim in some())
    if next(it, None) is not None:
        raise ValueError("trailing fields")
    return out


def run(options, cmd):
    """`pysandbox run OPTIONS -- CMD` through the caller's launch server: its exit code, or None
    (not here: nothing was started, the CLI takes its ordinary path)."""
    try:
        ctl = connect()
    except (Refused, OSError):
        return None
    mine = theirs = None
    old = {}
    try:
        mask = os.umask(0o077)
        os.umask(mask)
        msg = encode(options, cmd, os.getcwd(), tuple(os.environb.items()), mask, rlimits(), INSTALL)
        mine, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
        fds = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in (theirs.fileno(), 0, 1, 2))
        try:
            ctl.sendmsg([msg], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        except OSError:
            return None
        theirs.close()
        theirs = None

        def forward(sig, _frame=None):
            try:
                mine.send(b"K" + bytes((sig,)))
            except OSError:
                pass
        for sig in FORWARDED:
            old[sig] = _signal.signal(sig, forward)
        started = False
        while True:
            try:
                data = mine.recv(256)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if not data:
                if not started:
                    return None                       # nothing began: the ordinary path
                os.write(2, GONE)
                return 125
            if data == b"S":
                started = True
            elif data[:1] == b"N" and not started:
                if os.environ.get(DEBUG):             # why (the ordinary path says nothing of it)
                    os.write(2, b"pysandbox: launch server: not here: " + data[1:] + b"\n")
                return None
            elif data[:1] == b"X":
                return int(data[1:])
    finally:
        for sig, h in old.items():
            _signal.signal(sig, h)
        for s in (ctl, mine, theirs):
            if s is not None:
                s.close()
