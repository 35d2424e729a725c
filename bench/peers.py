"""The peers the benchmarks compare against, defined once.

bwrap gets the isolation closest to `strict`: every namespace, --die-with-parent, --new-session,
--cap-drop ALL, read-only /usr (+ usr-merge links), fresh /proc /dev /tmp, read-only /, and strict's
own seccomp filter (plain errno actions) through --seccomp FD.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile

BWRAP_ISOLATION = ["--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                   "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
                   "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/sbin", "/sbin",
                   "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--remount-ro", "/"]


@contextlib.contextmanager
def bwrap_true(bwrap: str, bpf: bytes):
    """Yields a function that runs /bin/true once under bwrap with the given filter."""
    fd, path = tempfile.mkstemp()
    try:
        os.write(fd, bpf)
        os.close(fd)

        def run() -> None:
            sfd = os.open(path, os.O_RDONLY)
            try:
                p = subprocess.run([bwrap, *BWRAP_ISOLATION, "--seccomp", str(sfd), "/bin/true"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=(sfd,))
            finally:
                os.close(sfd)
            if p.returncode != 0:
                raise SystemExit(f"bwrap failed: {p.stderr.decode()[-300:]}")
        yield run
    finally:
        os.unlink(path)
