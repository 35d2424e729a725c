"""The hand-over of a seccomp listener: the program's process (or an exec'd command) sends the
descriptor it got from SECCOMP_FILTER_FLAG_NEW_LISTENER to its supervisor with SCM_RIGHTS.
Imported by sandbox/launch/sequence.py before the program's pivot_root (its last steps send)."""
from __future__ import annotations

import errno as _errno
import os
import socket

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Optional

_MAGIC = b"pysandbox-seccomp-listener"


def send_listener(sock: socket.socket | int, listener_fd: int) -> None:
    """Child side: hand the listener fd to the supervisor (SCM_RIGHTS). Caller closes it after."""
    if isinstance(sock, int):
        s = socket.socket(fileno=sock)
        try:
            socket.send_fds(s, [_MAGIC], [listener_fd])
        finally:
            s.detach()
    else:
        socket.send_fds(sock, [_MAGIC], [listener_fd])


def recv_listener(sock: socket.socket | int, timeout: Optional[float] = 10.0) -> int:
    """Supervisor side: receive the listener fd. Raises OSError on timeout/EOF/garbage."""
    own = isinstance(sock, int)
    s = socket.socket(fileno=sock) if own else sock
    try:
        s.settimeout(timeout)
        try:
            msg, fds, _flags, _addr = socket.recv_fds(s, len(_MAGIC), 4)
        except socket.timeout:
            raise OSError(_errno.ETIMEDOUT, "seccomp listener fd not received in time") from None
        finally:
            s.settimeout(None)
        if not msg or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise OSError(_errno.EPROTO, "seccomp listener fd: the sandbox sent no listener")
        os.set_inheritable(fds[0], False)
        return fds[0]
    finally:
        if own:
            s.detach()
