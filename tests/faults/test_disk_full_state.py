"""Disk full: the state directory (PYSANDBOX_STATE_DIR) on a small tmpfs that is full. A launch that
must record something (a detached sandbox's state; a cgroup's registry record, written before the
cgroup exists) fails with one clear line and exit 125 — never a traceback — and nothing
half-written is left: no state entry, no registry record, no temporary file. With the space back,
the same commands work. As root and rootless (the state dir then belongs to the user). The tmpfs is
mounted by the test and unmounted at its end."""
from __future__ import annotations

import os
import subprocess
import tempfile

import pytest


@pytest.fixture
def full_state_dir(runner):
    mnt = tempfile.mkdtemp(prefix="faults-df-", dir="/tmp")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "faults-df", mnt], check=True)
    try:
        d = os.path.join(mnt, "state")
        os.mkdir(d, 0o700)
        os.chown(d, runner.uid, runner.gid)
        filler = os.path.join(mnt, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        yield d, filler
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)
        os.rmdir(mnt)


def _leftovers(d):
    out = []
    for root, dirs, files in os.walk(d):
        out += [os.path.join(root, n) for n in files if n != ".lock"]
        out += [os.path.join(root, n) for n in dirs if n not in ("owners", "sandboxes")]
    return out


def test_disk_full_fails_cleanly_and_leaves_nothing(runner, full_state_dir):
    d, filler = full_state_dir
    env = {"PYSANDBOX_STATE_DIR": d}
    name = f"faults-df-{'u' if runner.rootless else 'r'}-{os.getpid()}"
    r = runner("run", "-d", "--name", name, "--audit-log", "/dev/null", "--", "/bin/sleep", "5", env=env)
    assert r.returncode == 125, r
    assert len(r.stderr.strip().splitlines()) == 1 and "No space left on device" in r.stderr, r
    r2 = runner("run", "--memory", "64m", "--audit-log", "/dev/null", "--", "/bin/true", env=env)
    assert r2.returncode == 125, r2
    assert r2.stderr.strip().startswith("pysandbox: state: cannot record the sandbox's resources"), r2
    assert "No space left on device" in r2.stderr and len(r2.stderr.strip().splitlines()) == 1, r2
    assert _leftovers(d) == [], "half-written state left on the full disk"
    assert runner("ps", "-a", env=env).stdout.count(name) == 0
    # the space is back: the same commands work
    os.unlink(filler)
    r = runner("run", "-d", "--name", name, "--audit-log", "/dev/null", "--", "/bin/sleep", "0.2", env=env)
    assert r.returncode == 0 and r.stdout.strip() == name, r
    r2 = runner("run", "--memory", "64m", "--audit-log", "/dev/null", "--", "/bin/true", env=env)
    assert r2.returncode == 0, r2
    assert runner("rm", "-f", name, env=env).returncode == 0
    assert _leftovers(d) == []
