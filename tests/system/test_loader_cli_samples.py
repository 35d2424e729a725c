"""Issue 18 item 5 through the real CLI: a sample of the hostile profiles of
tests/unit/test_loader_fuzz.py (property-based, pure) is a one-line profile error (exit 2) for
`explain` and `run`, a PSB00x finding for `lint`, and the legitimate neighbour still runs."""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import PYSANDBOX


@pytest.mark.parametrize("text", [
    "version: 1\nextends: " + "a" * 300 + "\n",                 # was: ENAMETOOLONG, internal error 125
    "version: 1\nseccomp: {import: \"\\0\"}\n",                 # was: embedded null byte, 125
    "version: 1\nextends: \"a\\0b\"\n",
    "version: 1\nextends: " + "x/" * 2100 + "a.yaml\n",
    "version: 1\nlimits: {memory: 99999999999999999999999999999999G}\n",
    "version: 1\nfilesystem: {mounts: [{type: tmpfs, target: \"/a\\0b\"}]}\n",
    "version: 1\nfilesystem: {mounts: [{type: bind, source: \"/\\0\", target: /x}]}\n",
    "version: 1\nprocess: {cwd: \"/\\0\"}\n",
])
def test_cli_sample_is_one_line_exit_2(root_runner, shared_tmp, text):
    p = shared_tmp / "p.yaml"
    p.write_text(text)
    os.chmod(p, 0o644)
    for args in (("explain", "--profile", str(p)), ("run", "--profile", str(p), "--", "/bin/true")):
        r = root_runner(*args)
        assert r.returncode == 2, (args, r)
        assert "internal error" not in r.stderr and "Traceback" not in r.stderr, r
        assert all(ln.startswith(f"pysandbox: {p}:") for ln in r.stderr.strip().splitlines()), r
        assert str(p) in r.stderr, r
    r = subprocess.run([PYSANDBOX, "lint", str(p)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "PSB00" in r.stdout and "internal" not in r.stdout, r
    # the legitimate neighbour still compiles and runs
    ok = shared_tmp / "ok.yaml"
    ok.write_text("version: 1\nextends: strict\n")
    os.chmod(ok, 0o644)
    assert root_runner("run", "--profile", str(ok), "--", "/bin/true").returncode == 0
