"""Regression: a tmpfs mount asked read-only was mounted writable — a profile's
`filesystem.mounts: [{type: tmpfs, read_only: true}]` under `pysandbox run`, and a config.json
tmpfs with the `ro` option under pysandbox-runtime (sandbox/rootfs.py applied read_only to binds
only). Now both are MOUNT_ATTR_RDONLY: a write fails with EROFS and the mount says ro; a tmpfs
without it stays writable (both sides). Real sandboxes: the profile as root and rootless, the
bundle as root."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import VENV_BIN

RUNTIME = str(VENV_BIN / "pysandbox-runtime")
PROBE = ("touch /rot/x 2>&1 || true; touch /rwt/x && echo rwt-written; "
         "grep -E ' /(rot|rwt) ' /proc/self/mountinfo | cut -d' ' -f5,6")


def _check(out: str) -> None:
    assert "Read-only file system" in out and "rwt-written" in out, out
    opts = {ln.split()[0]: ln.split()[1].split(",") for ln in out.splitlines() if ln.startswith("/r")}
    assert "ro" in opts["/rot"] and "rw" in opts["/rwt"], out


def test_profile_tmpfs_read_only(runner, shared_tmp):
    prof = shared_tmp / "ro.yaml"
    prof.write_text("version: 1\nname: ro-tmpfs\nextends: default\nfilesystem:\n  mounts: !extend\n"
                    "    - {type: tmpfs, target: /rot, size: 1m, read_only: true}\n"
                    "    - {type: tmpfs, target: /rwt, size: 1m}\n")
    r = runner.sh(PROBE, profile=str(prof))
    assert r.returncode == 0, r
    _check(r.stdout + r.stderr)


@pytest.mark.skipif(os.geteuid() != 0, reason="the OCI runtime runs as root here")
def test_bundle_tmpfs_ro_option():
    d = Path(tempfile.mkdtemp(prefix="psbrt-rot-", dir="/tmp"))
    root, out = str(d / "root"), d / "out"
    try:
        os.chmod(d, 0o755)
        b = d / "b"
        (b / "rootfs" / "bin").mkdir(parents=True)
        shutil.copy("/bin/busybox", b / "rootfs" / "bin" / "busybox")
        for a in ("sh", "echo", "grep", "cut", "touch", "true"):
            os.symlink("busybox", b / "rootfs" / "bin" / a)
        subprocess.run(["crun", "spec"], cwd=b, check=True)
        cfg = json.loads((b / "config.json").read_text())
        cfg["process"].update(terminal=False, args=["/bin/sh", "-c", PROBE])
        cfg["mounts"] += [{"destination": "/rot", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m", "ro"]},
                          {"destination": "/rwt", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]}]
        (b / "config.json").write_text(json.dumps(cfg))
        with open(out, "wb") as o:                      # the container keeps its stdio: a file
            assert subprocess.run([RUNTIME, "--root", root, "create", "--bundle", str(b), "rot"], stdout=o,
                                  stderr=subprocess.STDOUT, timeout=60).returncode == 0, out.read_text()
        assert subprocess.run([RUNTIME, "--root", root, "start", "rot"]).returncode == 0
        deadline = time.monotonic() + 20
        while json.loads(subprocess.run([RUNTIME, "--root", root, "state", "rot"], capture_output=True,
                                        text=True).stdout)["status"] != "stopped":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        _check(out.read_text())
    finally:
        subprocess.run([RUNTIME, "--root", root, "delete", "--force", "rot"], capture_output=True, timeout=60)
        shutil.rmtree(d, ignore_errors=True)
