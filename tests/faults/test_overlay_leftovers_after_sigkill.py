"""Issue 18 item 6, image roots: the supervisor of a detached `--image` sandbox is SIGKILLed once
its overlay container directory (`<store>/containers/<id>`) exists, and once its program runs.
The next command — `ps`, or `rm NAME` straight away (which used to leave `containers/<id>`) —
removes the container directory, the registry record and (a sandbox still starting) the state
entry; no mount naming the sandbox is left on the host. The image store keeps working. As root
(layers through idmapped mounts or uid-shifted copies) and rootless, each with its own store."""
from __future__ import annotations

import os

import pytest

import imagebuild as ib
from faults_helpers import mounts_naming, read_state, records, sigkill, start_cli, state_path, wait_for


@pytest.fixture
def store(img):
    """The state directory's environment of conftest's `img` (busybox:test imported)."""
    return {"PYSANDBOX_STATE_DIR": img[1]}


@pytest.mark.parametrize("step,next_cmd", [("overlay", "ps"), ("running", "ps"), ("running", "rm")])
def test_overlay_dir_removed_by_next_command(runner, store, step, next_cmd):
    env = store
    name = f"faults-ov-{step}-{next_cmd}-{os.getpid()}"
    containers = os.path.join(env["PYSANDBOX_STATE_DIR"], "containers")
    before = records(runner, env)
    p = start_cli(runner, "run", "-d", "--name", name, "--profile", "strict", "--image", "busybox:test",
                  "--audit-log", "/dev/null", "--", "/bin/sleep", "60", env=env)
    try:
        sid = wait_for(lambda: next((s for s in records(runner, env) if s not in before), None))
        assert sid, "no registry record"
        sup = wait_for(lambda: next((pid for pid in records(runner, env).get(sid, []) if pid != p.pid), None))
        cdir = os.path.join(containers, sid)
        if step == "overlay":
            assert wait_for(lambda: os.path.isdir(cdir), step=0.0005)
        else:
            assert wait_for(lambda: (read_state(runner, name, env) or {}).get("status") == "running")
            assert os.path.isdir(cdir)
        sigkill(sup)
        p.communicate(timeout=30)
        was_running = (read_state(runner, name, env) or {}).get("status") == "running"
        r = runner(*([next_cmd, name] if next_cmd == "rm" else [next_cmd]), env=env)
        assert r.returncode == 0, r
        assert not os.path.lexists(cdir), os.listdir(cdir)
        assert sid not in records(runner, env)
        assert mounts_naming(sid) == []
        if next_cmd == "ps" and was_running:
            assert read_state(runner, name, env)["status"] == "dead"
            assert runner("rm", name, env=env).returncode == 0
        assert not os.path.exists(state_path(runner, name, env))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        runner("rm", "-f", name, env=env)
    r = runner("run", "--profile", "strict", "--image", "busybox:test", "--audit-log", "/dev/null", "--",
               "/bin/cat", "/etc/motd", env=env)
    assert r.returncode == 0 and r.stdout == ib.MOTD.decode(), r
    assert os.listdir(containers) == []
