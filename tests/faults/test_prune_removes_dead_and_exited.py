"""`pysandbox prune` (issue 18 item 6): removes what dead supervisors left and every detached
sandbox that is not running — exited or dead: state directory and logs — as `docker container
prune` does, printing their names; a running sandbox is left alone and goes on working. Root and
rootless."""
from __future__ import annotations

import os

from faults_helpers import cgroup_leaves, read_state, records, sigkill, state_path, wait_for


def test_prune(runner):
    tag = f"{'u' if runner.rootless else 'r'}-{os.getpid()}"
    done, dead, live = f"faults-pr-done-{tag}", f"faults-pr-dead-{tag}", f"faults-pr-live-{tag}"
    try:
        for n, argv in ((done, ["/bin/true"]), (dead, ["/bin/sleep", "60"]), (live, ["/bin/sleep", "60"])):
            r = runner("run", "-d", "--name", n, "--memory", "64m", "--audit-log", "/dev/null", "--", *argv)
            assert r.returncode == 0, r
        assert wait_for(lambda: (read_state(runner, done) or {}).get("status") == "exited")
        st = read_state(runner, dead)
        sigkill(st["supervisor_pid"])
        assert wait_for(lambda: not os.path.exists(f"/proc/{st['supervisor_pid']}/stat")
                        or open(f"/proc/{st['supervisor_pid']}/stat").read().split(") ")[1][0] == "Z", 5)
        r = runner("prune")
        assert r.returncode == 0, r
        assert sorted(r.stdout.split()) == sorted([done, dead]), r
        for n in (done, dead):
            assert not os.path.exists(state_path(runner, n))
        assert st["id"] not in records(runner) and cgroup_leaves(runner, st["id"]) == []
        assert read_state(runner, live)["status"] == "running"
        assert runner("exec", live, "--", "/bin/true").returncode == 0
    finally:
        for n in (done, dead, live):
            runner("rm", "-f", n)
