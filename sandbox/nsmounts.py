"""The mount table of a mount namespace held by descriptor, with no process left in it: what
audit/integrity.py compares a mount that appeared on the host with, after a sandbox ended (a mount
is the sandbox's only if it is in a peer group of the sandbox's own namespace).

A forked child joins the namespace's user namespace (when it has one of its own: a rootless
caller owns it, root is above it) and the mount namespace, and copies its /proc/self/mountinfo
(opened through a descriptor of its /proc directory taken before: the sandbox's /proc, if any,
belongs to a pid namespace the child is not in) to a pipe. Bounded: MAX bytes, TIMEOUT seconds
(then the child is killed); always reaped. Only called when a host mount appeared meanwhile.
"""
from __future__ import annotations

import os
import select
import signal
import time

from . import _sys

MAX = 4 << 20          # (audit/integrity.MOUNTINFO_MAX)
TIMEOUT = 2.0


def mountinfo(ns_fds: dict) -> "str | None":
    """ns_fds: {"mnt": fd, "user": fd (optional)} -> that mount namespace's mountinfo text, or
    None when it cannot be read."""
    mnt, user = ns_fds.get("mnt"), ns_fds.get("user")
    if mnt is None:
        return None
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return None
    if pid == 0:                                     # the child: never returns
        code = 1
        try:
            os.close(r)
            proc = os.open("/proc/self", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            if user is not None:
                _sys.setns(user, _sys.CLONE_NEWUSER)
            _sys.setns(mnt, _sys.CLONE_NEWNS)
            fd = os.open("mountinfo", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
            left = MAX
            while left > 0:
                chunk = os.read(fd, min(65536, left))
                if not chunk:
                    break
                left -= len(chunk)
                while chunk:
                    chunk = chunk[os.write(w, chunk):]
            code = 0
        except BaseException:  # noqa: BLE001 - the exit status says it
            pass
        finally:
            os._exit(code)
    os.close(w)
    data, ok = b"", False
    try:
        poller = select.poll()
        poller.register(r, select.POLLIN)
        deadline = time.monotonic() + TIMEOUT
        while len(data) <= MAX:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(int(left * 1000) + 1):
                break
            chunk = os.read(r, 65536)
            if not chunk:
                ok = True
                break
            data += chunk
    finally:
        os.close(r)
        if not ok:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    if not ok or status != 0:
        return None
    return data[:MAX].decode("utf-8", "replace")
