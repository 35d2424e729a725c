"""Regression: pysandbox-runtime read a container's state.json through a symbolic link (state.py's
load opened it with open()), so a link planted in the state directory made `state`, `kill` and
`delete` act on a record from anywhere. Now the Python CLI and the C front end (front.c) refuse a
link for the container's directory or its state.json, an oversized or damaged state file, and
the front end leaves to Python (which refuses or reads state.json itself) any state.front that is
not the companion of the state.json in place: never followed, never trusted.

The state directories here are made by the test (state.save, as the monitor writes them): the
recorded processes are a `sleep` the test starts, not a container; that is simulated, on purpose,
to plant what an attacker would. No root needed for what is checked, but run as root as the
runtime's other tests (the default --root of root is /run/pysandbox-runtime; each test has its own)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import VENV_BIN
from sandbox import procid
from sandbox.runtime import state as S

FRONT = str(VENV_BIN / "pysandbox-runtime")
PY = str(VENV_BIN / "pysandbox-runtime-py")


def both(root: str, *args) -> tuple:
    out = []
    for exe in (FRONT, PY):
        r = subprocess.run([exe, "--root", root, *args], capture_output=True, text=True, timeout=30)
        out.append((r.returncode, r.stdout, r.stderr))
    assert out[0] == out[1], args
    return out[0]


@pytest.fixture
def root():
    d = tempfile.mkdtemp(prefix="psbrt-hostile-", dir="/tmp")
    r = os.path.join(d, "root")
    os.mkdir(r, 0o700)
    yield r
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def sleeper():
    p = subprocess.Popen(["sleep", "60"])
    yield p
    p.kill()
    p.wait()


def record(root: str, cid: str, pid: int, start, status: str = "running") -> dict:
    os.makedirs(os.path.join(root, cid), 0o700, exist_ok=True)
    st = {"id": cid, "bundle": "/nonexistent", "annotations": {"a": "b"}, "status": status, "hooks": {},
          "pid": pid, "pid_start": start, "sandbox_pid": pid, "sandbox_pid_start": start, "cgroups": []}
    S.save(root, cid, st)
    return st


def test_a_consistent_record_is_read_alike(root, sleeper):
    record(root, "ok", sleeper.pid, procid.start_time(sleeper.pid))
    code, out, _ = both(root, "state", "ok")
    assert code == 0 and json.loads(out)["status"] == "running"


def test_symlinked_state_json_is_refused(root, sleeper):
    record(root, "real", sleeper.pid, procid.start_time(sleeper.pid))
    os.makedirs(os.path.join(root, "evil"), 0o700)
    os.symlink(os.path.join(root, "real", "state.json"), os.path.join(root, "evil", "state.json"))
    shutil.copy(os.path.join(root, "real", "state.front"), os.path.join(root, "evil", "state.front"))
    code, out, err = both(root, "state", "evil")
    assert code == 1 and out == "" and "damaged" in err
    code, _, _ = both(root, "kill", "evil", "KILL")
    assert code == 1 and sleeper.poll() is None                 # not signalled


def test_symlinked_container_directory_is_refused(root, sleeper):
    record(root, "real", sleeper.pid, procid.start_time(sleeper.pid))
    os.symlink(os.path.join(root, "real"), os.path.join(root, "link"))
    code, out, err = both(root, "state", "link")
    assert code == 1 and out == "" and "damaged" in err
    both(root, "delete", "--force", "link")
    assert os.path.exists(os.path.join(root, "real", "state.json"))


def test_oversized_and_garbage_state_files_are_refused(root, sleeper):
    record(root, "big", sleeper.pid, procid.start_time(sleeper.pid))
    with open(os.path.join(root, "big", "state.json"), "a") as f:
        f.write(" " * (S.MAX_STATE + 1))
    code, out, err = both(root, "state", "big")
    assert code == 1 and "damaged" in err
    record(root, "junk", sleeper.pid, procid.start_time(sleeper.pid))
    with open(os.path.join(root, "junk", "state.front"), "w") as f:
        f.write("pysandbox-runtime-front 1\nid junk\n\x00garbage")
    code, out, _ = both(root, "state", "junk")                 # the front end leaves it to Python
    assert code == 0 and json.loads(out)["status"] == "running"
    with open(os.path.join(root, "junk", "state.json"), "w") as f:
        f.write("{not json")
    code, out, err = both(root, "state", "junk")
    assert code == 1 and "damaged" in err


def test_a_companion_of_another_state_json_is_not_trusted(root, sleeper):
    """state.front says running (a live pid) but state.json in place says stopped: the record is
    state.json's (the front end sees the companion is not its companion, and Python answers)."""
    st = record(root, "c", sleeper.pid, procid.start_time(sleeper.pid))
    front = open(os.path.join(root, "c", S.FRONT)).read()
    st["status"] = "stopped"
    S.save(root, "c", st)
    with open(os.path.join(root, "c", S.FRONT), "w") as f:     # the old companion put back
        f.write(front)
    code, out, _ = both(root, "state", "c")
    assert code == 0 and json.loads(out)["status"] == "stopped"
    code, _, err = both(root, "kill", "c", "KILL")
    assert code == 1 and sleeper.poll() is None


def test_a_recycled_pid_is_not_signalled(root, sleeper):
    """The recorded start time is not the live process's: stopped, and `kill` signals nothing."""
    record(root, "r", sleeper.pid, procid.start_time(sleeper.pid) + 1)
    code, out, _ = both(root, "state", "r")
    assert json.loads(out)["status"] == "stopped"
    code, _, err = both(root, "kill", "r", "KILL")
    assert code == 1 and "stopped" in err
    time.sleep(0.05)
    assert sleeper.poll() is None
    assert sleeper.send_signal(signal.SIGCONT) is None
