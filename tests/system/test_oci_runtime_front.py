"""pysandbox-runtime's C front end (sandbox/runtime/front.c): `state`, `start`, `kill` and the
`delete` of a stopped container without Python, everything else handed to the Python CLI
(`pysandbox-runtime-py`) with the same argv.

Both sides of the one decision: for a real container (created, running, stopped, deleted) the
front end's `state` prints byte for byte what the Python CLI prints, with the same exit code; a
copy of the front end with no Python CLI beside it still runs the whole lifecycle (so it did the
work itself) and fails, naming the missing fallback, for everything it does not handle. Real
sandboxes, as root (a bundle made by `crun spec`, rootfs: the host's static busybox)."""
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

FRONT = str(VENV_BIN / "pysandbox-runtime")
PY = str(VENV_BIN / "pysandbox-runtime-py")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the OCI runtime tests run as root")


def run(exe: str, root: str, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([exe, "--root", root, *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, **kw)


def create(exe: str, root: str, bundle: str, cid: str) -> int:
    """create: the container holds its stdio after create returns (never a pipe read to its end)."""
    return subprocess.run([exe, "--root", root, "create", "--bundle", bundle, cid], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60).returncode


def same(root: str, *args) -> subprocess.CompletedProcess:
    """The front end and the Python CLI give the same stdout, stderr and exit code."""
    a, b = run(FRONT, root, *args), run(PY, root, *args)
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr), args
    return a


@pytest.fixture
def work():
    d = Path(tempfile.mkdtemp(prefix="psbrt-front-", dir="/tmp"))
    os.chmod(d, 0o755)
    b = d / "bundle"
    (b / "rootfs" / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", b / "rootfs" / "bin" / "busybox")
    for a in ("sh", "sleep", "true"):
        os.symlink("busybox", b / "rootfs" / "bin" / a)
    subprocess.run(["crun", "spec"], cwd=b, check=True)
    cfg = json.loads((b / "config.json").read_text())
    cfg["process"].update(terminal=False, args=["/bin/sleep", "60"])
    (b / "config.json").write_text(json.dumps(cfg))
    root = str(d / "root")
    yield d, str(b), root
    if os.path.isdir(root):
        for cid in os.listdir(root):
            run(PY, root, "delete", "--force", cid)
    shutil.rmtree(d, ignore_errors=True)


def wait_stopped(root: str, cid: str) -> None:
    deadline = time.monotonic() + 30
    while json.loads(run(FRONT, root, "state", cid).stdout)["status"] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_the_entry_is_the_front_end():
    with open(FRONT, "rb") as f:
        assert f.read(4) == b"\x7fELF", "make setup builds sandbox/runtime/front.c into the venv"
    assert os.access(PY, os.X_OK)


def test_state_is_the_python_clis_in_every_status(work):
    _, bundle, root = work
    assert create(FRONT, root, bundle, "c1") == 0
    assert json.loads(same(root, "state", "c1").stdout)["status"] == "created"
    assert run(FRONT, root, "start", "c1").returncode == 0
    out = json.loads(same(root, "state", "c1").stdout)
    assert out["status"] == "running" and out["pid"] > 0
    assert run(FRONT, root, "kill", "c1", "KILL").returncode == 0
    wait_stopped(root, "c1")
    assert "pid" not in json.loads(same(root, "state", "c1").stdout)
    assert run(FRONT, root, "delete", "c1").returncode == 0
    assert not os.path.exists(os.path.join(root, "c1"))
    r = same(root, "state", "c1")                       # missing: the Python CLI's error, exit 1
    assert r.returncode == 1 and "does not exist" in r.stderr
    for bad in (["state"], ["state", "a", "b"], ["state", "../x"], ["state", "--nope", "c1"],
                ["kill", "c1", "SIGNOPE"], ["delete", "-x", "c1"], ["start"], ["nope"]):
        assert same(root, *bad).returncode in (1, 2), bad


def test_the_front_end_does_the_lifecycle_itself_and_falls_back_for_the_rest(work):
    """A copy of the front end with no Python CLI beside it: what it handles works, the rest fails
    naming the missing fallback (so the fallback is an exec of it, with nothing done first)."""
    d, bundle, root = work
    lone = d / "lone"
    lone.mkdir()
    shutil.copy(FRONT, lone / "pysandbox-runtime")
    alone = str(lone / "pysandbox-runtime")
    assert create(PY, root, bundle, "c2") == 0
    assert json.loads(run(alone, root, "state", "c2").stdout)["status"] == "created"
    assert run(alone, root, "start", "c2").returncode == 0
    assert json.loads(run(alone, root, "state", "c2").stdout)["status"] == "running"
    for args in (["features"], ["--version"], ["delete", "c2"],          # delete: not stopped
                 ["start", "c2"], ["kill", "c2", "NOSUCH"], ["state", "nosuch"], ["exec", "c2", "true"]):
        r = run(alone, root, *args)
        assert r.returncode == 1 and "cannot run the Python implementation" in r.stderr, args
    assert run(alone, root, "kill", "c2", "9").returncode == 0
    wait_stopped(root, "c2")
    deadline = time.monotonic() + 30                # stopped once PID 1 is gone; the monitor records
    while json.loads(open(os.path.join(root, "c2", "state.json")).read()).get("status") != "stopped":
        assert time.monotonic() < deadline          # the end a moment later (then delete is the front's)
        time.sleep(0.02)
    r = run(alone, root, "kill", "c2")                                  # stopped: Python says so
    assert "cannot run the Python implementation" in r.stderr
    assert run(alone, root, "delete", "--force", "c2").returncode == 0
    assert not os.path.exists(os.path.join(root, "c2"))


def test_global_flags_are_honoured(work):
    """--root=DIR, a relative --root, --log and --log-format json as the Python CLI takes them;
    an error the front end reports itself is not needed here: every error is the Python CLI's."""
    d, bundle, root = work
    assert create(FRONT, root, bundle, "c3") == 0
    a = subprocess.run([FRONT, f"--root={root}", "--log", str(d / "log"), "--log-format", "json", "state", "c3"],
                       capture_output=True, text=True, timeout=30)
    b = subprocess.run([FRONT, "--root", "root", "state", "c3"], capture_output=True, text=True, timeout=30, cwd=d)
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout
    assert json.loads(a.stdout)["status"] == "created"
    r = subprocess.run([FRONT, "--root", root, "--log", str(d / "log"), "--log-format", "json", "state", "nosuch"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    rec = json.loads((d / "log").read_text().splitlines()[-1])
    assert rec["level"] == "error" and "nosuch" in rec["msg"]
    assert run(FRONT, root, "delete", "--force", "c3").returncode == 0


def test_rootless_state_and_lifecycle_through_the_front_end(work, user_runner):
    """The unprivileged test user, its default --root ($XDG_RUNTIME_DIR/pysandbox-runtime): the
    front end's `state` is the Python CLI's in created, running and stopped, and it starts, kills
    and deletes the user's own container."""
    d, bundle, _ = work
    u = user_runner

    def edit(c):
        c["linux"]["namespaces"] = [{"type": t} for t in ("pid", "network", "ipc", "uts", "user", "mount")]
        c["linux"]["uidMappings"] = [{"containerID": 0, "hostID": u.uid, "size": 1}]
        c["linux"]["gidMappings"] = [{"containerID": 0, "hostID": u.gid, "size": 1}]
        c["linux"].pop("resources", None)
    cfg = json.loads(Path(bundle, "config.json").read_text())
    edit(cfg)
    Path(bundle, "config.json").write_text(json.dumps(cfg))
    xdg = d / "xdg"
    xdg.mkdir(mode=0o700)
    os.chown(xdg, u.uid, u.gid)
    env = u.env({"XDG_RUNTIME_DIR": str(xdg)})
    as_user = dict(env=env, user=u.uid, group=u.gid, extra_groups=[], timeout=60, stdin=subprocess.DEVNULL)

    def cmd(exe, *args, **kw):
        return subprocess.run([exe, *args], **as_user, **kw)

    def same_state(want):
        a, b = (cmd(e, "state", "u1", capture_output=True, text=True) for e in (FRONT, PY))
        assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr)
        assert json.loads(a.stdout)["status"] == want

    try:
        assert cmd(FRONT, "create", "--bundle", bundle, "u1", stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL).returncode == 0
        assert os.path.isfile(xdg / "pysandbox-runtime" / "u1" / "state.front")
        same_state("created")
        assert cmd(FRONT, "start", "u1").returncode == 0
        same_state("running")
        assert cmd(FRONT, "kill", "u1", "SIGKILL").returncode == 0
        deadline = time.monotonic() + 30
        while json.loads(cmd(FRONT, "state", "u1", capture_output=True, text=True).stdout)["status"] != "stopped":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        same_state("stopped")
        assert cmd(FRONT, "delete", "u1").returncode == 0
        assert not (xdg / "pysandbox-runtime" / "u1").exists()
    finally:
        cmd(PY, "delete", "--force", "u1", capture_output=True)
