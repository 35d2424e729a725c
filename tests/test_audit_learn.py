"""Learn mode round trip on a real program, as root and rootless:

  pysandbox learn --profile strict -o NEW.yaml -- python3 -c '<opens files and sockets, keyctl, chown>'

then NEW.yaml compiles (and passes `pysandbox lint` where that command exists), the same
program runs under NEW.yaml with the same output and no denial (learning again under NEW.yaml
observes nothing), while under strict it is still denied.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import HOST_PYTHON, PYSANDBOX

PROG = r"""
import ctypes, os, socket
print(len(open('/etc/passwd').read()) > 0)
with open('/tmp/x', 'w') as f:
    f.write('x')
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.bind(('127.0.0.1', 0)); s.close()
u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); u.close()
l = ctypes.CDLL(None, use_errno=True)
r = l.syscall(250, 0, 0)                       # keyctl(KEYCTL_GET_KEYRING_ID, 0): EINVAL when it runs
print('keyctl', r, ctypes.get_errno())
os.chown('/tmp/x', 0, 0)
print('chown ok')
"""


@pytest.fixture
def workdir(shared_tmp, runner):
    d = shared_tmp / "learn"
    d.mkdir()
    os.chown(d, runner.uid, runner.gid)
    return d


def test_learn_round_trip(runner, workdir):
    new = workdir / "learned.yaml"
    r = runner("learn", "--profile", "strict", "-o", str(new), "--", HOST_PYTHON, "-c", PROG, cwd=str(workdir))
    assert r.returncode == 0, r
    learned_out = r.stdout
    assert "keyctl -1 22" in learned_out and "chown ok" in learned_out      # ran for real (learn mode)
    assert "pysandbox learn: observed" in r.stderr and "keyctl ×1" in r.stderr
    text = new.read_text()
    assert "extends: \"strict\"" in text
    assert "add: !extend [\"CHOWN\"]" in text                # inferred capability
    allow_line = next(l for l in text.splitlines() if l.strip().startswith("allow:"))
    assert "\"keyctl\"" in allow_line and "\"chown\"" in allow_line
    deny_block = text[text.index("  deny:"):] if "  deny:" in text else ""
    assert "\"keyctl\"" not in deny_block and "\"@keyring\"" not in deny_block
    assert "\"add_key\"" in deny_block                        # the rest of @keyring stays denied

    from policies.compiler import compile_profile
    plan = compile_profile(str(new)).plan
    assert "CHOWN" in plan.capabilities
    assert any(x.name == "keyctl" and x.action == "allow" for x in plan.seccomp.rules)
    assert any(x.name == "add_key" and x.action != "allow" for x in plan.seccomp.rules)

    lint = subprocess.run([PYSANDBOX, "lint", "--help"], capture_output=True, text=True)
    if lint.returncode == 0:
        r = runner("lint", str(new))
        assert r.returncode == 0, r

    # again under the learned profile: same behaviour, no denial
    log = workdir / "audit.jsonl"
    r = runner("run", "--profile", str(new), "--audit-log", str(log), "--", HOST_PYTHON, "-c", PROG,
               cwd=str(workdir))
    assert r.returncode == 0, r
    assert r.stdout == learned_out
    assert "denial" not in r.stderr
    from audit import reader
    assert [e["type"] for e in reader.read_events(log)] == ["sandbox_start", "sandbox_exit"]
    # ... and learning once more under it observes nothing at all (every denial would show here,
    # ENOSYS answers included)
    again = workdir / "again.yaml"
    r = runner("learn", "--profile", str(new), "-o", str(again), "--", HOST_PYTHON, "-c", PROG, cwd=str(workdir))
    assert r.returncode == 0 and "observed nothing beyond the base profile" in r.stderr, r
    assert "seccomp:" not in again.read_text()

    # under strict it is still denied (the learned profile did not change strict)
    r = runner("run", "--profile", "strict", "--audit-log", str(log), "--", HOST_PYTHON, "-c", PROG)
    assert r.returncode != 0 or "keyctl -1 1" in r.stdout, r


def test_learn_refuses_to_overwrite(runner, workdir):
    out = workdir / "exists.yaml"
    out.write_text("x")
    os.chown(out, runner.uid, runner.gid)
    r = runner("learn", "--profile", "strict", "-o", str(out), "--", "/bin/true")
    assert r.returncode == 2 and "exists" in r.stderr and len(r.stderr.splitlines()) == 1, r
    assert out.read_text() == "x"


def test_learning_seccomp_has_no_denial_left():
    """The learn filter turns every non-allow decision into notify; the enforcing filter never does."""
    from policies.compiler import compile_profile
    from sandbox.learn import learning_seccomp
    s = compile_profile("strict").plan.seccomp
    ls = learning_seccomp(s)
    assert ls.default_action == "notify"
    assert all(r.action in ("allow", "log") for r in ls.rules)
    assert {r.name for r in ls.rules} <= {r.name for r in s.rules if r.action in ("allow", "log")}
