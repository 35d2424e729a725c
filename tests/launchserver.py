"""Helpers for the tests of the CLI's launch server (`pysandbox server`, sandbox/server/lean.py):
start one for a runner (root or the test user) in the running test's own state directory, stop it,
and run `pysandbox run` telling which path it took.

Which path: the real entry script run by its interpreter with `-X importtime` (every module imported
is listed on stderr): the ordinary path imports sandbox.plancache and sandbox.launcher, the
server's path neither (sandbox/server/lean.py: the server looks the plan up and launches it).
Nothing is simulated."""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import PYSANDBOX_PY, Runner

with open(PYSANDBOX_PY) as _f:
    PYTHON = _f.readline()[2:].split()[0]          # the entry script's #! interpreter


class Server:
    """A launch server of RUNNER's; stop() (always: a fixture's finaliser) ends it."""

    def __init__(self, runner: Runner, idle: float = 120):
        self.runner = runner
        r = runner("server", "start", "--idle", str(idle))
        assert r.returncode == 0 and r.stdout.startswith("started: pid "), r
        self.pid = int(r.stdout.split()[2])
        self.state = runner.env()["PYSANDBOX_STATE_DIR"]
        self.sock = os.path.join(self.state, "server", "launch.sock")

    def status(self):
        return self.runner("server", "status")

    def stop(self) -> None:
        self.runner("server", "stop")
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return
        try:                                        # (a test that broke its socket: still ended)
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass


def run(runner: Runner, argv, *, prefix=(), opts=("--profile", "strict"), input=None, env=None,
        timeout=60, cwd="/tmp") -> tuple:
    """`pysandbox run OPTS -- ARGV` as RUNNER (behind PREFIX, e.g. setpriv): (CompletedProcess, True
    when it went through the launch server). stdout/stderr as text; stderr without the
    importtime lines."""
    kw = {}
    if runner.user:
        kw = dict(user=runner.uid, group=runner.gid, extra_groups=[])
    p = subprocess.run([*prefix, PYTHON, "-I", "-S", "-X", "importtime", PYSANDBOX_PY, "run", *opts, "--", *argv],
                       input=input, capture_output=True, text=True, timeout=timeout, env=runner.env(env),
                       cwd=cwd, **kw)
    lines = p.stderr.splitlines()
    imported = {ln.rsplit("|", 1)[1].strip() for ln in lines if ln.startswith("import time:")}
    p.stderr = "".join(ln + "\n" for ln in lines if not ln.startswith("import time:"))
    assert "sandbox.cli" in imported, p.stderr
    return p, "sandbox.launcher" not in imported and "sandbox.plancache" not in imported


@pytest.fixture
def server(root_runner):
    """Root's launch server in the test's own state directory, the strict plan cached (the server
    serves cache hits only); stopped after the test. (Import it into a test module to use it.)"""
    run(root_runner, ["/bin/true"])
    s = Server(root_runner)
    yield s
    s.stop()
