"""The CLI's side of a running launch server (`pysandbox server start`, opt-in): find its socket,
connect to it safely, and run a cached plan through it (sandbox/cli/runner.py fast_run) — or say
"not here", and the CLI launches the sandbox itself as always.

The socket is <state dir>/server/launch.sock: the directory 0700, the socket 0600, both the
caller's, checked without following a symlink before connecting, and the server's uid
(SO_PEERCRED) checked after. The server, for its part, compares the caller with itself
(sandbox/server/peer.py) and serves only a caller exactly as confined as it is; the caller sends
its umask, rlimits and environment, which decide the sandbox on the ordinary path too.

Kept lean: a cached `run` imports this module (and wire, protocol, client), nothing of the
launcher. See docs/performance.md ("The CLI's launch server") and docs/security.md.
"""
from __future__ import annotations

import os
import signal
import socket
import stat
import struct

from audit.paths import state_dir

from . import client, protocol

SOCK_DIR, SOCK_NAME = "server", "launch.sock"
# the signals the CLI forwards to its sandbox (launcher.FORWARDED, the ordinary path's)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
MAX_ENVIRON = 1 << 20          # bytes of environment sent at most (more: the ordinary path)


class Refused(Exception):
    """The socket path cannot be trusted (or no server is there): one line saying why."""


def sock_path(where: "str | None" = None) -> str:
    return os.path.join(where or state_dir(), SOCK_DIR, SOCK_NAME)


def _ours(st, kind) -> bool:
    return kind(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def connect(path: "str | None" = None):
    """A connected socket to the launch server at path; Refused when the path or the server is
    not the caller's own (a symlink, another owner, group/other access), or nobody listens."""
    path = path or sock_path()
    d = os.path.dirname(path)
    try:
        if not _ours(os.lstat(d), stat.S_ISDIR):
            raise Refused(f"{d}: not a directory of yours with mode 0700; refusing it")
        if not _ours(os.lstat(path), stat.S_ISSOCK):
            raise Refused(f"{path}: not a socket of yours with mode 0600; refusing it")
    except FileNotFoundError:
        raise Refused("no launch server") from None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        s.connect(path)
        _pid, uid, _gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError as e:
        s.close()
        raise Refused(f"no launch server ({e.strerror})") from None
    if uid != os.geteuid():
        s.close()
        raise Refused(f"{path}: the server there is uid {uid}'s; refusing it")
    return s


def remove_if_dead(path: str) -> bool:
    """Remove the caller's own socket at path when nobody accepts on it (a dead server's): True when
    it is gone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    if not _ours(st, stat.S_ISSOCK):
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
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


def ask(msg: bytes, path: "str | None" = None) -> str:
    """`server stop|status`: the server's one-line answer."""
    s = connect(path)
    try:
        s.settimeout(10)
        s.send(msg)
        answer = protocol.recv(s).decode(errors="replace")
    except OSError as e:
        raise Refused(f"the launch server does not answer ({e.strerror or e})") from None
    finally:
        s.close()
    if not answer.startswith("pid "):
        raise Refused("the launch server does not answer")
    return answer


def run(plan, bpf, argv, sandbox_id: str, name, on_event, key: "str | None" = None):
    """Run a cached plan through the launch server. Returns the end (("result", fields) or
    ("error", code, message)), or None: not here (no server, a server that does not serve this
    caller or this run, or one that went away before the run began) — the caller launches it
    itself. A server that goes away during the run: ("error", 125, ...) (PID 1 dies with it).
    key: the plan's key (client.plan_key), stored with the cached plan (computing it here would
    import hashlib: OpenSSL's initialisation is ~7 ms); the server checks it against the plan."""
    try:
        ctl = connect()
    except Refused:
        return None
    try:
        environ = tuple(os.environ.items())
        if sum(len(k) + len(v) + 2 for k, v in environ) > MAX_ENVIRON:
            return None
        mask = os.umask(0o077)
        os.umask(mask)
        req = client.request(argv or (), sandbox_id, name, True)
        req["cli"] = {"umask": mask, "rlimits": protocol.rlimits(), "environ": environ}
        key = key or client.plan_key(plan, bpf)
        for with_plan in (False, True):
            try:
                mine = client.send_launch(ctl, key, plan, bpf, req, (0, 1, 2), with_plan)
            except OSError:
                return None
            try:
                end, n = _wait(mine, on_event)
            finally:
                mine.close()
            if end is None:
                if n == 0:
                    return None            # nothing started: the ordinary path
                return ("error", 125, "the launch server ended during the run; the sandbox was killed")
            if end[0] == "error" and end[1] == NEED_PLAN and not with_plan:
                continue
            if end[0] == "error" and end[1] in (NOT_HERE, NEED_PLAN):
                return None
            return end
        return None
    finally:
        ctl.close()


NOT_HERE, NEED_PLAN = -1, -2   # (sandbox/server/loop.py's; its test compares them)


def _wait(mine, on_event) -> tuple:
    """client.replies with the forwarded signals sent to the server for the sandbox."""
    def forward(sig, _frame=None):
        try:
            mine.send(b"K" + bytes((sig,)))
        except OSError:
            pass
    old = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        return client.replies(mine, on_event)
    except Exception:  # noqa: BLE001 - a malformed reply: as a server gone away
        return None, 1
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
