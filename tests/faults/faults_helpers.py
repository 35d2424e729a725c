"""Shared by the faults tier (tests/faults/): where a sandbox's leftovers would be, by its id.

Every check is by the names and ids the dead sandbox had (its id, its veth, its name), never a
host-wide scan that other tests' sandboxes disturb. The ids come from the registry each launch
writes before creating anything (sandbox/reclaim.py: <state dir>/owners/<id>.<pid>.<start>), which
also names the owner — the process a test SIGKILLs."""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import time

from conftest import PYSANDBOX

REC = re.compile(r"^(.+)\.(\d+)\.(\d+)$")


def base_dir(runner, env=None) -> str:
    """The state directory RUNNER's commands use: its environment's (the test's own, tests/conftest.py)."""
    env = runner.env(env)
    if env.get("PYSANDBOX_STATE_DIR"):
        return env["PYSANDBOX_STATE_DIR"]
    if runner.rootless:
        return os.path.join(runner.home, ".local", "share", "pysandbox")
    return "/var/lib/pysandbox"


def records(runner, env=None) -> dict:
    """{sandbox id: [owner pid, ...]} from the registry."""
    d = os.path.join(base_dir(runner, env), "owners")
    out: dict = {}
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return out
    for n in names:
        m = REC.match(n)
        if m:
            out.setdefault(m.group(1), []).append(int(m.group(2)))
    return out


def state_path(runner, name, env=None) -> str:
    return os.path.join(base_dir(runner, env), "sandboxes", name)


def read_state(runner, name, env=None):
    try:
        with open(os.path.join(state_path(runner, name, env), "state.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def cgroup_leaves(runner, sid: str) -> list[str]:
    """The sandbox's cgroup directories, wherever pysandbox puts them for this caller."""
    pats = [f"/sys/fs/cgroup/*/pysandbox/{sid}", f"/sys/fs/cgroup/*/pysandbox-user-{runner.uid}/sandboxes/{sid}"]
    out = [p for pat in pats for p in glob.glob(pat)]
    for root, dirs, _ in os.walk("/sys/fs/cgroup/unified"):
        if sid in dirs:
            out.append(os.path.join(root, sid))
    return sorted(set(out))


def pids_alive(*pids) -> list[int]:
    return [p for p in pids if p and os.path.exists(f"/proc/{p}")]


def wait_for(pred, timeout=20.0, step=0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def start_cli(runner, *args, env=None):
    """`pysandbox ARGS` started in the background as the runner's user (Popen)."""
    kw = {}
    if runner.user:
        kw = dict(user=runner.uid, group=runner.gid, extra_groups=[])
        runner("ps")                               # (re)creates the delegated cgroups if needed
    return subprocess.Popen([PYSANDBOX, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=runner.env(env), cwd="/tmp" if runner.user else None, **kw)


def new_record(runner, before: dict, owner=None, env=None, timeout=20.0):
    """Wait for a registry record not in `before` (optionally owned by pid `owner`): (sid, pid)."""
    def find():
        for sid, pids in records(runner, env).items():
            for pid in pids:
                if sid not in before and (owner is None or pid == owner):
                    return sid, pid
        return None
    return wait_for(find, timeout)


def sigkill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def mounts_naming(sid: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [l for l in f if sid in l]
