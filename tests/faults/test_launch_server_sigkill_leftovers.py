"""Issue 18 item 6, the Python API: the launch server (sandbox/server/) SIGKILLed while it
supervises a sandbox. Its sandboxes die with it (PDEATHSIG), and the next command of any kind
(`pysandbox ps`), or the API's next launch (which starts a new server), removes their cgroup
leaves and registry records; nothing of the server's session
(template, spare PID 1s, sandboxes) is left; a new launch server starts and runs the next sandbox.
The server's pid comes from the API's client object; the sandbox's id from the registry record the
server wrote (owner = the server) before creating its cgroup. As root (the API as another user is
the same code under that user's state dir)."""
from __future__ import annotations

import os
import subprocess
import threading

import pytest

from faults_helpers import cgroup_leaves, new_record, pids_alive, records, sigkill, wait_for


def _session(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=,stat=", "-s", str(sid)], capture_output=True, text=True).stdout
    return [int(l.split()[0]) for l in out.splitlines() if l.split() and not l.split()[1].startswith("Z")]


@pytest.mark.parametrize("next_cmd", ("cli", "api"))
def test_launch_server_sigkill_leaves_nothing(root_runner, next_cmd):
    from sandbox import api
    from sandbox.server.client import Client
    sb = api.Sandbox("strict", memory="64m", audit=False)
    assert sb.run(["/bin/true"]).exit_code == 0                   # server up, template and spares made
    client = Client.get()
    server = client.proc.pid
    before = records(root_runner)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", sb.run(["/bin/sleep", "60"])), daemon=True)
    t.start()
    got = new_record(root_runner, before, owner=server)
    assert got, "the launch server did not register the sandbox's resources"
    sid = got[0]

    def program():
        for leaf in cgroup_leaves(root_runner, sid):
            try:
                with open(os.path.join(leaf, "cgroup.procs")) as f:
                    pids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            if any(os.path.exists(f"/proc/{p}/exe") and os.readlink(f"/proc/{p}/exe").endswith("sleep")
                   for p in pids if pids_alive(p)):
                return pids
        return None
    procs = wait_for(program)
    assert procs, "the sandbox never ran"
    sigkill(server)
    t.join(30)
    assert not t.is_alive()
    assert out["r"].exit_code == 125 and "launch server" in (out["r"].message or ""), out["r"]
    if next_cmd == "cli":
        r = root_runner("ps")                                      # the next command, of any kind
        assert r.returncode == 0, r
    else:                                                          # or the API's next launch (new server)
        assert sb.run(["/bin/true"]).exit_code == 0
    assert sid not in records(root_runner)
    assert cgroup_leaves(root_runner, sid) == []
    assert wait_for(lambda: not pids_alive(*procs) and not _session(server), 10), (pids_alive(*procs), _session(server))
    # the API goes on: a new launch server runs the next sandbox
    assert sb.run(["/bin/true"]).exit_code == 0
    assert Client.get().proc.pid != server


ROOTLESS_CALLER = r'''
import threading
from sandbox.api import Sandbox
from sandbox.server.client import Client
sb = Sandbox("strict", memory="64m", audit=False)
assert sb.run(["/bin/true"]).exit_code == 0
out = {}
t = threading.Thread(target=lambda: out.setdefault("r", sb.run(["/bin/sleep", "60"])), daemon=True)
t.start()
print(Client.get().proc.pid, flush=True)
t.join(60)
print(out["r"].exit_code, flush=True)
'''


def test_launch_server_sigkill_rootless(user_runner):
    """The same as the unprivileged user: its own registry, cgroups under its delegation."""
    import sys
    from conftest import REPO, state_env
    u = user_runner
    before = records(u)
    p = subprocess.Popen([sys.executable, "-c", ROOTLESS_CALLER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, user=u.uid, group=u.gid, extra_groups=[], cwd="/tmp",
                         env={"PATH": "/usr/bin:/bin", "HOME": u.home, "PYTHONPATH": str(REPO), **state_env(True)})
    try:
        server = int(p.stdout.readline())
        got = new_record(u, before, owner=server)
        assert got, "the launch server did not register the sandbox's resources"
        sid = got[0]
        assert wait_for(lambda: any(os.path.getsize(os.path.join(l, "cgroup.procs")) or open(
            os.path.join(l, "cgroup.procs")).read().strip() for l in cgroup_leaves(u, sid)))
        sigkill(server)
        assert p.stdout.readline().strip() == "125"
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    r = u("ps")
    assert r.returncode == 0, r
    assert sid not in records(u)
    assert cgroup_leaves(u, sid) == []
    assert wait_for(lambda: not _session(server), 10)
    r = u("run", "--memory", "64m", "--", "/bin/true")            # the legitimate use still works
    assert r.returncode == 0, r
