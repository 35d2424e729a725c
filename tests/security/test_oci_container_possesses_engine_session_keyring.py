"""Regression: pysandbox-runtime's containers stayed in the session keyring of whoever ran
`create` (podman, conmon, containerd's shim): the container's processes possessed the engine's
session keyring and every key in it (possession grants what the key's possessor permissions
allow, whatever the uid). runc gives each container a new session keyring unless
`--no-new-keyring`; now pysandbox-runtime does too, for PID 1's program and for `exec`'s processes.

The caller joins a named session keyring first (sandbox._sys, in a wrapper process that then
execs the runtime) and prints its serial; the container prints the serial of its own session
keyring (KEYCTL_GET_KEYRING_ID of KEY_SPEC_SESSION_KEYRING, through the host's python bound in).
Both sides: different by default, the caller's with --no-new-keyring. Real sandboxes, as root."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, VENV_BIN

RUNTIME = str(VENV_BIN / "pysandbox-runtime")
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the OCI runtime runs as root here")
PROBE = "import ctypes; l = ctypes.CDLL(None, use_errno=True); print('ring', l.syscall(250, 0, -3, 1), flush=True)"
WRAP = ("import os, sys; from sandbox import _sys; _sys.join_session_keyring('psbrt-kr'); "
        "print('caller', _sys.session_keyring(), flush=True); os.execv(sys.argv[1], sys.argv[1:])")


def _bundle(d: Path) -> Path:
    (d / "rootfs").mkdir(parents=True)
    for name in ("lib", "lib64", "bin"):
        if os.path.islink(f"/{name}"):
            os.symlink(os.readlink(f"/{name}"), d / "rootfs" / name)
    subprocess.run(["crun", "spec"], cwd=d, check=True)
    cfg = json.loads((d / "config.json").read_text())
    cfg["process"].update(terminal=False, args=["/usr/bin/python3", "-c", PROBE + "; import time; time.sleep(1000)"])
    cfg["mounts"].append({"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]})
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _rings(d: Path, b: Path, cid: str, *opts) -> tuple:
    """(the caller's session keyring, the container program's, an exec'd process's)."""
    root, out, err = str(d / "root"), d / f"{cid}.out", d / f"{cid}.err"
    try:
        with open(out, "ab") as o, open(err, "ab") as e:        # the container keeps them: files, not pipes
            r = subprocess.run([sys.executable, "-c", WRAP, RUNTIME, "--root", root, "create", *opts, "--bundle",
                                str(b), cid], stdout=o, stderr=e, timeout=60, cwd=str(REPO))
        assert r.returncode == 0, err.read_text()
        assert subprocess.run([RUNTIME, "--root", root, "start", cid]).returncode == 0
        deadline = time.monotonic() + 20
        while "ring " not in out.read_text():
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.02)
        ex = subprocess.run([RUNTIME, "--root", root, "exec", cid, "/usr/bin/python3", "-c", PROBE],
                            capture_output=True, text=True, timeout=60)
        assert ex.returncode == 0, ex.stderr
    finally:
        subprocess.run([RUNTIME, "--root", root, "delete", "--force", cid], capture_output=True, timeout=60)
    got = dict(line.split() for line in out.read_text().splitlines() if line.startswith(("caller ", "ring ")))
    return int(got["caller"]), int(got["ring"]), int(ex.stdout.split()[1])


def test_container_and_exec_get_a_session_keyring_of_their_own():
    d = Path(tempfile.mkdtemp(prefix="psbrt-kr-", dir="/tmp"))
    try:
        os.chmod(d, 0o755)
        b = _bundle(d / "b")
        caller, container, execd = _rings(d, b, "kr1")
        assert caller > 0 and container > 0 and execd > 0
        assert container != caller and execd != caller
        caller, container, _ = _rings(d, b, "kr2", "--no-new-keyring")
        assert container == caller
    finally:
        shutil.rmtree(d, ignore_errors=True)
