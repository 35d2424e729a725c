"""The test session's clean-up of a state directory (tests/conftest.py, _remove_state_dirs): a
named or detached sandbox a test left running is removed the way a user would (`pysandbox rm -f`)
before its directory goes. It looked in `containers/` (kept image containers) for them, where
`ps` lists `sandboxes/`: a detached sandbox outlived its test (and its state directory), root
and rootless. Simulated: the "test" is this function, which leaves the sandbox running on purpose."""
from __future__ import annotations

import os

import conftest
from conftest import STATE_ENV, SandboxProcs


def test_a_sandbox_left_running_is_removed_with_its_directory(runner):
    dirs = conftest._new_state_dirs("cleanup")
    sd = dirs["user" if runner.rootless else "root"]
    procs = None
    try:
        r = runner("run", "-d", "--name", "left-running", "--profile", "strict", "--", "/bin/sleep", "60",
                   env={STATE_ENV: sd})
        assert r.returncode == 0, r
        procs = SandboxProcs.from_log(os.path.join(sd, "audit.jsonl"))
        assert not procs.gone(timeout=0), "the sandbox is not running"
        conftest._remove_state_dirs(dirs)
        assert not os.path.exists(dirs["base"])
        assert procs.gone(timeout=20), "the sandbox outlived its state directory"
    finally:
        if procs is not None:
            procs.kill()
            procs.close()
        if os.path.exists(dirs["base"]):
            conftest._remove_state_dirs(dirs)
