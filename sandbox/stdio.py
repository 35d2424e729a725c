"""Descriptors 0-2 closed by the caller (`<&-`, `>&-`): opened on /dev/null before anything else
is opened, for `pysandbox` and `pysandbox-runtime-py` alike. Otherwise the next file opened would
take that number (and could be handed to the sandbox as its stdin/stdout), and Python's
sys.stdout/stderr would be None (a traceback at the first write or flush)."""
from __future__ import annotations

import os
import sys


def ensure_open() -> None:
    import fcntl
    for fd in (0, 1, 2):
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
            continue
        except OSError:
            pass
        null = os.open("/dev/null", os.O_RDWR)      # the lowest free number: fd itself
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        os.set_inheritable(fd, True)                # (os.open's are close-on-exec)
        name = ("stdin", "stdout", "stderr")[fd]
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))
