"""Regression: pysandbox-runtime's first startContainer hooks ran with PID 1's privileges (host
root's full capability set, no no_new_privs) — and the hook is a file of the container's image
(its path resolves in the container). Now the hook gets the program's credentials: a bundle whose
process keeps no capability gives its startContainer hook none. Real sandbox, as root."""
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


def test_start_container_hook_gets_the_programs_capabilities_not_pid1s():
    d = Path(tempfile.mkdtemp(prefix="psbrt-sec-", dir="/tmp"))
    try:
        os.chmod(d, 0o755)
        (d / "rootfs" / "bin").mkdir(parents=True)
        shutil.copy("/bin/busybox", d / "rootfs" / "bin" / "busybox")
        for a in ("sh", "grep", "true"):
            os.symlink("busybox", d / "rootfs" / "bin" / a)
        (d / "out").mkdir()
        (d / "rootfs" / "hook.sh").write_text("#!/bin/sh\ngrep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status"
                                             " > /out/hook\n")
        (d / "rootfs" / "hook.sh").chmod(0o755)
        subprocess.run(["crun", "spec"], cwd=d, check=True)
        cfg = json.loads((d / "config.json").read_text())
        cfg["process"].update(terminal=False, args=["/bin/true"], capabilities={})
        cfg["mounts"].append({"destination": "/out", "type": "bind", "source": str(d / "out"), "options": ["rbind"]})
        cfg["hooks"] = {"startContainer": [{"path": "/hook.sh"}]}
        (d / "config.json").write_text(json.dumps(cfg))
        rt = [RUNTIME, "--root", str(d / "state")]
        with open(d / "log", "w") as log:
            subprocess.run(rt + ["create", "--bundle", str(d), "sec1"], check=True, stdout=log, stderr=log, timeout=60)
            subprocess.run(rt + ["start", "sec1"], check=True, timeout=60)
            deadline = time.monotonic() + 30
            while json.loads(subprocess.run(rt + ["state", "sec1"], capture_output=True, text=True).stdout)["status"] \
                    != "stopped":
                assert time.monotonic() < deadline
                time.sleep(0.02)
            subprocess.run(rt + ["delete", "sec1"], check=True, timeout=60)
        got = dict(ln.split(":", 1) for ln in (d / "out" / "hook").read_text().splitlines())
        assert int(got["CapEff"], 16) == 0 and int(got["CapBnd"], 16) == 0
        assert got["NoNewPrivs"].strip() == "1"
    finally:
        subprocess.run([RUNTIME, "--root", str(d / "state"), "delete", "--force", "sec1"], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)
