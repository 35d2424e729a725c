"""A secret's value must not reach the sandbox by another way than the interception.

Two holes found while building network.secrets (docs/network.md, "Secrets"):
* env pass-through: `process.env.allow: [GH_*]` (or `-e GH_TOKEN`; also in `pysandbox exec`) copied the caller's variable
  that a secret reads (`from: env:GH_TOKEN`) into the program's environment: the value sat next to
  its placeholder. The launcher now drops every `env:` source variable from the program's
  environment.
* a `file:` secret the sandbox can read itself (below a bind source, a `root:` directory, a
  system directory or /etc entry of `root: host`; symlinks resolved): the launch now stops
  (exit 125, one line) instead of handing the sandbox both the placeholder and the file.

Through `pysandbox run` as root on a private network. SAFETY: the pytest process is moved into a
network namespace of its own (`testns`); the network and sandboxes live there.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import textwrap

import pytest

from conftest import PYSANDBOX

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="private networks need root")
NET = "secexp"


@pytest.fixture(scope="module")
def net(testns):
    r = subprocess.run([PYSANDBOX, "network", "create", NET], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    yield NET
    subprocess.run([PYSANDBOX, "network", "rm", NET], capture_output=True, timeout=60)


def _profile(tmp, source, allow="[GH_*]"):
    p = tmp / "p.yaml"
    p.write_text(textwrap.dedent(f"""\
        version: 1
        extends: default
        process:
          env:
            allow: {allow}
        network:
          mode: {NET}
          secrets:
            GITHUB_TOKEN: {{from: "{source}", hosts: [api.test]}}
          egress:
            allow: [{{host: api.test, ports: [443]}}]     # (the proxy only intercepts what a host rule allows)
        """))
    return str(p)


def test_secret_source_variable_not_passed_through(net, tmp_path):
    value = "v_" + secrets.token_hex(16)
    env = dict(os.environ, GH_PSB_SECRET=value, GH_OTHER="passed")
    r = subprocess.run([PYSANDBOX, "run", "--profile", _profile(tmp_path, "env:GH_PSB_SECRET"), "--",
                        "/bin/cat", "/proc/self/environ"], capture_output=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    environ = r.stdout.split(b"\0")
    assert b"GH_OTHER=passed" in environ                           # pass-through works for the others
    assert value.encode() not in r.stdout and not any(e.startswith(b"GH_PSB_SECRET=") for e in environ)
    assert any(e.startswith(b"GITHUB_TOKEN=pysandbox-secret:GITHUB_TOKEN:") for e in environ)
    # named explicitly (-e NAME, -e NAME=VALUE, env.allow: [NAME]): refused when compiled (exit 2)
    for extra, allow in ((("-e", "GH_PSB_SECRET"), "[]"), (("-e", f"GH_PSB_SECRET={value}"), "[]"),
                         ((), "[GH_PSB_SECRET]"), (("-e", "GITHUB_TOKEN=x"), "[]")):
        r = subprocess.run([PYSANDBOX, "run", "--profile", _profile(tmp_path, "env:GH_PSB_SECRET", allow), *extra,
                            "--", "/bin/true"], capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 2 and "(network.secrets); it is never set or passed into the sandbox" in r.stderr, r
        assert len(r.stderr.strip().splitlines()) == 1 and value not in r.stderr


def test_secret_file_the_sandbox_can_read_stops_the_launch(net, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "token").write_text("v_" + secrets.token_hex(16) + "\n")
    outside = tmp_path / "link"
    outside.symlink_to(d / "token")
    for src in (d / "token", outside):
        r = subprocess.run([PYSANDBOX, "run", "--profile", _profile(tmp_path, f"file:{src}"), "-v", f"{d}:/data:ro",
                            "--", "/bin/echo", "ran"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 125 and "ran" not in r.stdout
        assert r.stderr.strip().splitlines() == [
            f"pysandbox: network.secrets: secret GITHUB_TOKEN (file:{src}): the sandbox can read that file itself "
            f"(through {d}); keep the file outside what the sandbox sees"]
    # the same file, not bound: the launch goes on and the program sees the placeholder only
    r = subprocess.run([PYSANDBOX, "run", "--profile", _profile(tmp_path, f"file:{d / 'token'}"), "--",
                        "/bin/sh", "-c", "echo $GITHUB_TOKEN"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("pysandbox-secret:GITHUB_TOKEN:"), r.stderr


def test_exec_does_not_pass_the_secret_source_through(net, tmp_path):
    """`pysandbox exec` builds its command's environment from the recorded plan: a wildcard in
    env.allow must not pass a secret's source variable in either."""
    value = "v_" + secrets.token_hex(16)
    env = dict(os.environ, GH_PSB_SECRET=value, GH_OTHER="passed")
    name = "secexp-" + secrets.token_hex(3)
    r = subprocess.run([PYSANDBOX, "run", "-d", "--name", name, "--profile", _profile(tmp_path, "env:GH_PSB_SECRET"),
                        "--", "/bin/sleep", "30"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    try:
        r = subprocess.run([PYSANDBOX, "exec", name, "/bin/cat", "/proc/self/environ"], capture_output=True,
                           timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        assert b"GH_OTHER=passed" in r.stdout.split(b"\0") and value.encode() not in r.stdout
    finally:
        subprocess.run([PYSANDBOX, "rm", "-f", name], capture_output=True, timeout=60)
