"""Issue 18 item 6: a supervisor SIGKILLed at any launch step leaves nothing behind the next
command of any kind (here `pysandbox ps`): no process, cgroup leaf, registry record, mount or
state entry of the dead sandbox (a detached sandbox that was running stays listed as `dead` until
`rm`/`prune`, as Docker keeps a dead container's record).

How each step is reached (no test-only code in the launcher): the test watches what the launch
itself makes observable and SIGKILLs the supervisor the moment it appears —
  registered  the supervisor's own record in <state>/owners (before the launch creates anything)
  cgroup      the sandbox's cgroup leaf exists (created, limits written; PID 1 not cloned yet or
              just cloned: the window is short, so this step may land a little later)
  pid1        the state records PID 1 (cloned, before or just after its release)
  running     the state says `running` (the program has exec'd)
The foreground `run` (the CLI is the supervisor) is killed when the leaf appears and when the
program runs. As root and as the unprivileged user (cgroups under its delegation)."""
from __future__ import annotations

import os

import pytest

from faults_helpers import (cgroup_leaves, mounts_naming, new_record, pids_alive, read_state, records, sigkill,
                            start_cli, state_path, wait_for)

STEPS = ("registered", "cgroup", "pid1", "running")


def _check_nothing_left(runner, sid, pids, name=None, was_running=False):
    r = runner("ps")                                        # the next command, of any kind
    assert r.returncode == 0, r
    assert sid not in records(runner), "registry record of the dead sandbox survived"
    assert cgroup_leaves(runner, sid) == [], "cgroup leaf survived"
    assert wait_for(lambda: not pids_alive(*pids), 5), f"processes survived: {pids_alive(*pids)}"
    assert mounts_naming(sid) == []
    if name is not None:
        st = read_state(runner, name)
        if was_running:                                    # its record stays, marked dead
            assert st is not None and st["status"] == "dead", st
            assert runner("rm", name).returncode == 0
        assert not os.path.exists(state_path(runner, name)), "state entry survived"


@pytest.mark.parametrize("step", STEPS)
def test_detached_supervisor_sigkill_at_each_step(runner, step):
    name = f"faults-sk-{step}-{'u' if runner.rootless else 'r'}-{os.getpid()}"
    before = records(runner)
    p = start_cli(runner, "run", "-d", "--name", name, "--memory", "64m", "--audit-log", "/dev/null", "--",
                  "/bin/sleep", "60")
    try:
        got = new_record(runner, before, owner=None)
        assert got, "no registry record appeared"
        sid = got[0]
        sup = wait_for(lambda: next((pid for pid in records(runner).get(sid, []) if pid != p.pid), None))
        assert sup, "the supervisor did not register"
        if step == "cgroup":
            assert wait_for(lambda: cgroup_leaves(runner, sid), step=0.0005)
        elif step == "pid1":
            assert wait_for(lambda: (read_state(runner, name) or {}).get("pid1"), step=0.0005)
        elif step == "running":
            assert wait_for(lambda: (read_state(runner, name) or {}).get("status") == "running")
        st = read_state(runner, name) or {}
        sigkill(sup)
        out, err = p.communicate(timeout=30)
        assert "Traceback" not in err, err
        was_running = step == "running" or (read_state(runner, name) or {}).get("status") == "running"
        pid1 = (read_state(runner, name) or st).get("pid1")
        _check_nothing_left(runner, sid, [sup, pid1], name=name, was_running=was_running)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        runner("rm", "-f", name)
    if step == "running":     # the legitimate use still works: the name is free, a sandbox runs under it
        r = runner("run", "-d", "--rm", "--name", name, "--memory", "64m", "--audit-log", "/dev/null", "--",
                   "/bin/true")
        assert r.returncode == 0 and r.stdout.strip() == name, r


@pytest.mark.parametrize("step", ("cgroup", "running"))
def test_foreground_supervisor_sigkill(runner, step):
    """`pysandbox run` is its own supervisor: SIGKILL it once the leaf exists / the program runs."""
    before = records(runner)
    p = start_cli(runner, "run", "--memory", "64m", "--audit-log", "/dev/null", "--", "/bin/sleep", "60")
    try:
        got = new_record(runner, before, owner=p.pid)
        assert got, "the launch did not register its resources"
        sid = got[0]
        leaves = wait_for(lambda: cgroup_leaves(runner, sid), step=0.0005)
        assert leaves
        procs = []
        if step == "running":
            def program():
                for leaf in cgroup_leaves(runner, sid):
                    try:
                        with open(os.path.join(leaf, "cgroup.procs")) as f:
                            pids = [int(x) for x in f.read().split()]
                    except OSError:
                        continue
                    for pid in pids:
                        try:
                            if os.readlink(f"/proc/{pid}/exe").endswith("sleep"):
                                return pids
                        except OSError:
                            pass
                return None
            procs = wait_for(program)
            assert procs, "the program never ran"
        sigkill(p.pid)
        p.wait(10)
        _check_nothing_left(runner, sid, [p.pid, *procs])
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    r = runner("run", "--memory", "64m", "--audit-log", "/dev/null", "--", "/bin/true")
    assert r.returncode == 0, r
