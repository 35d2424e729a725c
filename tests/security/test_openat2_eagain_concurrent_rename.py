"""Hole: a path resolved inside the root failed when *anything else on the machine* renamed a file.

openat2 with RESOLVE_IN_ROOT or RESOLVE_BENEATH fails with EAGAIN when a walk through ".." meets a
rename or a mount anywhere on the machine (the kernel then cannot prove ".." stayed inside the root;
openat2(2): "the caller should retry"). The launcher resolves every path of an untrusted root this
way (sandbox/inroot.py), and passed the EAGAIN on: CI saw a sandbox's set-up fail with "mount point
/etc/hosts: openat2 etc/hosts: Resource temporarily unavailable" while another test started
sandboxes alongside (an `etc -> ../../..` link). A refusal for the wrong reason, and an unreliable
launch on any busy machine. Now sandbox._sys.openat2 retries EAGAIN (bounded: OPENAT2_TRIES), and
only for the scoped resolutions that produce it.

The storm is real: a process renaming a file in its own directory, back and forth (no root needed,
nothing outside a fresh temporary directory touched). The first test shows the storm does make the
raw system call fail (else the others would prove nothing); the second that the wrapper never does;
the last that launches whose masked path is reached through ".." all succeed under the storm, as
root and as an unprivileged user.
"""
from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
import tempfile
import time

import pytest

import imagebuild as ib
from sandbox import _sys

_STORM = """
import os, sys
d = sys.argv[1]
a, b = d + "/a", d + "/b"
open(a, "w").close()
while True:
    os.rename(a, b)
    os.rename(b, a)
"""
LINK = "w/../w/../w/../real"           # several ".." walks: each one is checked against the storm


@pytest.fixture
def storm():
    d = tempfile.mkdtemp(prefix="pysbx-test-storm-")
    p = subprocess.Popen([sys.executable, "-I", "-c", _STORM, d])
    time.sleep(0.2)
    yield
    p.kill()
    p.wait()
    for n in ("a", "b"):
        if os.path.exists(os.path.join(d, n)):
            os.unlink(os.path.join(d, n))
    os.rmdir(d)


def _tree(top: str) -> int:
    os.makedirs(os.path.join(top, "w"))
    os.makedirs(os.path.join(top, "real"))
    with open(os.path.join(top, "real", "f"), "w") as f:
        f.write("f\n")
    os.symlink(LINK, os.path.join(top, "l"))
    return os.open(top, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def test_rename_storm_makes_raw_openat2_fail(storm, shared_tmp):
    """The premise: without a retry, the storm makes openat2(RESOLVE_IN_ROOT) fail with EAGAIN."""
    rfd = _tree(str(shared_tmp / "t"))
    how = _sys._OpenHow(_sys.O_PATH | os.O_CLOEXEC, 0, _sys.RESOLVE_IN_ROOT)
    eagain = 0
    try:
        for _ in range(20000):
            fd = _sys._syscall(ctypes.c_long(_sys.NR_OPENAT2), ctypes.c_int(rfd), b"l/f", ctypes.byref(how),
                               ctypes.c_size_t(ctypes.sizeof(how)))
            if fd >= 0:
                os.close(fd)
                continue
            assert ctypes.get_errno() == errno.EAGAIN
            eagain += 1
            if eagain >= 5:
                break
    finally:
        os.close(rfd)
    assert eagain >= 5, eagain


def test_openat2_retries_eagain_under_rename_storm(storm, shared_tmp):
    """sandbox._sys.openat2 and inroot.resolve: 20 000 walks through ".." under the storm, none fails."""
    from sandbox import inroot
    rfd = _tree(str(shared_tmp / "t"))
    try:
        for _ in range(10000):
            os.close(_sys.openat2(rfd, "l/f", _sys.O_PATH, 0, _sys.RESOLVE_IN_ROOT))
            os.close(inroot.resolve(rfd, "/l/f", follow=True))
    finally:
        os.close(rfd)


def test_launch_with_dotdot_link_under_rename_storm(storm, runner, shared_tmp, tmp_profile):
    """A directory root whose masked path is reached through `l -> w/../w/../w/../real`: 25 launches
    under the storm all run and mask the file (before: some failed with exit 125, "Resource
    temporarily unavailable")."""
    os.chown(shared_tmp, runner.uid, runner.gid)
    root = ib.write_rootfs_dir(str(shared_tmp / "root"))
    os.close(_tree(root))
    prof = tmp_profile(f"extends: strict\nfilesystem:\n  root: {{path: {root}}}\n  masked_paths: [/l/f]\n")
    for i in range(25):
        r = runner("run", "--profile", prof, "--", "/bin/sh", "-c", "cat /real/f; echo done")
        assert r.returncode == 0 and r.stdout == "done\n", (i, r)
