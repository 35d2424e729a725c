"""Issue 18 item 3: a starting sandbox is not dead. `run -d` creates the state entry as `starting`
with its `alive` lock already held (by the CLI, then the supervisor and PID 1), so from its first
moment `kill`, `stop` and `rm` see it live:
  kill/stop  the signal is queued in the state under its lock and delivered the moment PID 1
             exists (SIGKILL: the launch is aborted before PID 1 is released, nothing runs) or the
             program runs (other signals, forwarded by PID 1) — never dropped;
  rm         refused (exit 1, "NAME is starting: stop it first or use rm -f"), as Docker refuses to
             remove a running container; the sandbox goes on and runs;
  rm -f      SIGKILL as above, waits for the supervisor (bounded), removes everything.
kill is sent at once after the state entry appears, and 10 ms / 100 ms / 1 s later (the start-up
phases: supervisor forking, launch, PID 1 cloned, running); stop, rm and rm -f at once. As root and rootless."""
from __future__ import annotations

import os
import time

import pytest

from faults_helpers import cgroup_leaves, pids_alive, read_state, records, start_cli, state_path, wait_for

# kill (SIGKILL: queued, aborts the launch) at each phase; stop (SIGTERM: queued, delivered when the
# program runs, then SIGKILL after the grace); rm; rm -f
CASES = [("kill", d) for d in (0, 0.01, 0.1, 1.0)] + [("rm -f", 0), ("rm", 0), ("stop -t 5", 0)]


def _status(runner, name):
    st = read_state(runner, name)
    return None if st is None else (st["status"], st.get("exit_code"))


def _log(runner, name):
    try:
        with open(os.path.join(state_path(runner, name), "supervisor.log")) as f:
            return f.read()[-2000:]
    except OSError:
        return None


@pytest.mark.parametrize("action,delay", CASES, ids=[f"{a.replace(' ', '')}-{d}" for a, d in CASES])
def test_action_at_each_startup_phase(runner, action, delay):
    name = f"faults-st-{action.split()[0]}-{int(delay * 1000)}-{'u' if runner.rootless else 'r'}-{os.getpid()}"
    before = records(runner)
    p = start_cli(runner, "run", "-d", "--name", name, "--memory", "64m", "--audit-log", "/dev/null", "--",
                  "/bin/sleep", "60")
    try:
        assert wait_for(lambda: os.path.exists(os.path.join(state_path(runner, name), "state.json")),
                        step=0.0005), "the state entry never appeared"
        if delay:
            time.sleep(delay)
        phase = (read_state(runner, name) or {}).get("status")
        r = runner(*action.split(), name)
        out, err = p.communicate(timeout=60)
        # the launch never fails with a raw errno because of what the user did meanwhile
        assert "Errno" not in err and "No such file" not in err and "Traceback" not in err, err
        st = read_state(runner, name) or {}
        sid = st.get("id") or next((s for s in records(runner) if s not in before), None)
        if action == "rm":
            assert r.returncode == 1, r
            assert r.stderr.strip() in (f"pysandbox: {name} is starting: stop it first or use rm -f",
                                        f"pysandbox: {name} is running: stop it first or use rm -f"), r
            assert p.returncode == 0 and out.strip() == name, (out, err)
            assert _status(runner, name) == ("running", None)      # untouched: it runs
            assert runner("ps").stdout.count(name) == 1
            return
        assert r.returncode == 0, (phase, r)
        if action == "rm -f":
            assert not os.path.exists(state_path(runner, name))
            assert _status(runner, name) is None
        else:
            want = 137 if action == "kill" else 143
            assert wait_for(lambda: _status(runner, name) == ("exited", want), 30), \
                (phase, read_state(runner, name), _log(runner, name), out, err)
        assert wait_for(lambda: not pids_alive(st.get("pid1"), st.get("program_pid")), 10)
        if sid:                         # the supervisor removes its record just after the exit
            assert wait_for(lambda: sid not in records(runner), 10)
            assert cgroup_leaves(runner, sid) == []
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        runner("rm", "-f", name)
