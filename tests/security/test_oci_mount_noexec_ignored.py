"""Regression: pysandbox-runtime accepted a bind or tmpfs mount's `noexec` option (config.json
`mounts[].options`, e.g. podman's `--tmpfs` default "rw,noexec,nosuid,nodev") and mounted it
exec-able: a program could run what the bundle said must not run. Now the option is carried by the
plan (policies.plan.Mount.noexec) and applied as MOUNT_ATTR_NOEXEC. Both sides: with `noexec` a
script there cannot be executed (EACCES) and the mount says noexec; without it the same script
runs. Real sandbox, as root."""
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
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the OCI runtime runs as root here")
SCRIPT = ("printf '#!/bin/sh\\necho ran-$1\\n' > /t/x.sh; chmod +x /t/x.sh; "
          "/b/x.sh bind || echo bind-denied; /t/x.sh tmpfs || echo tmpfs-denied; "
          "grep -E ' /(b|t) ' /proc/self/mountinfo | cut -d' ' -f5,6")


def _run(d: Path, cid: str, noexec: bool) -> list:
    b = d / cid
    (b / "rootfs" / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", b / "rootfs" / "bin" / "busybox")
    for a in ("sh", "echo", "grep", "cut", "printf", "chmod"):
        os.symlink("busybox", b / "rootfs" / "bin" / a)
    src = d / f"{cid}-src"
    src.mkdir()
    (src / "x.sh").write_text("#!/bin/sh\necho ran-$1\n")
    (src / "x.sh").chmod(0o755)
    subprocess.run(["crun", "spec"], cwd=b, check=True)
    cfg = json.loads((b / "config.json").read_text())
    cfg["process"].update(terminal=False, args=["/bin/sh", "-c", SCRIPT])
    extra = ["noexec"] if noexec else []
    cfg["mounts"] += [{"destination": "/b", "type": "bind", "source": str(src), "options": ["rbind", "ro", *extra]},
                      {"destination": "/t", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m", *extra]}]
    (b / "config.json").write_text(json.dumps(cfg))
    root, out = str(d / "root"), d / f"{cid}.out"
    try:
        with open(out, "wb") as o:                      # the container keeps its stdio: a file
            assert subprocess.run([RUNTIME, "--root", root, "create", "--bundle", str(b), cid], stdout=o,
                                  stderr=subprocess.STDOUT, timeout=60).returncode == 0, out.read_text()
        assert subprocess.run([RUNTIME, "--root", root, "start", cid]).returncode == 0
        deadline = time.monotonic() + 20
        while json.loads(subprocess.run([RUNTIME, "--root", root, "state", cid], capture_output=True,
                                        text=True).stdout)["status"] != "stopped":
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        subprocess.run([RUNTIME, "--root", root, "delete", "--force", cid], capture_output=True, timeout=60)
    return out.read_text().splitlines()


def test_noexec_bind_and_tmpfs_cannot_execute_and_exec_ones_can():
    d = Path(tempfile.mkdtemp(prefix="psbrt-nx-", dir="/tmp"))
    try:
        os.chmod(d, 0o755)
        out = _run(d, "nx1", True)
        assert "bind-denied" in out and "tmpfs-denied" in out and not any(x.startswith("ran-") for x in out), out
        opts = {ln.split()[0]: ln.split()[1].split(",") for ln in out if ln.startswith("/")}
        assert "noexec" in opts["/b"] and "noexec" in opts["/t"], out
        out = _run(d, "nx2", False)
        assert "ran-bind" in out and "ran-tmpfs" in out, out
        assert not any(x.endswith("-denied") for x in out), out
    finally:
        shutil.rmtree(d, ignore_errors=True)
