"""Learn mode round trip on a real program, as root and rootless:

  pysandbox learn --profile strict -o NEW.yaml -- python3 -c '<opens files and sockets, keyctl, setuid>'

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
print('sysfs', l.syscall(139, 3, 0, 0) > 0)    # sysfs(3): @obsolete, denied by strict's deny list
print('keyctl', l.syscall(250, 0, 0), ctypes.get_errno())   # escape-class: EINVAL when it runs
os.setuid(0)                                   # left to the kernel under strict (a no-op: already 0)
print('setuid ok')
"""


def lint_ok(runner, path) -> None:
    """`pysandbox lint` finds no error in the learned file itself; when the base profile lints
    clean, the whole check passes (exit 0)."""
    assert subprocess.run([PYSANDBOX, "lint", "--help"], capture_output=True).returncode == 0, \
        "pysandbox lint is broken: the learned profile cannot be checked"
    r = runner("lint", str(path))
    own = [l for l in r.stdout.splitlines() if l.startswith(os.path.basename(path) + ":") and " error " in l]
    assert not own, r
    base = runner("lint", "strict")
    if base.returncode == 0:
        assert r.returncode == 0, r


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
    assert "sysfs True" in learned_out and "keyctl -1 22" in learned_out and "setuid ok" in learned_out
    assert "pysandbox learn: observed" in r.stderr and "keyctl ×1" in r.stderr and "sysfs ×1" in r.stderr
    assert "NOT allowed: keyctl is escape-class" in r.stderr        # escape calls are not learned silently
    text = new.read_text()
    assert "extends: \"strict\"" in text
    # setuid is not a seccomp denial under strict any more (the kernel's CAP_SETUID check answers
    # it, and a no-op passes: tests/system/test_strict_noops.py), so it is neither observed nor inferred
    assert "SETUID" not in text and "setuid \u00d7" not in r.stderr
    allow_line = next(l for l in text.splitlines() if l.strip().startswith("allow:"))
    assert "\"sysfs\"" in allow_line and "\"setuid\"" not in allow_line and "keyctl" not in allow_line
    deny_block = text[text.index("  deny:"):]
    assert "\"sysfs\"" not in deny_block and "\"@obsolete\"" not in deny_block
    assert "\"uselib\"" in deny_block                         # the rest of @obsolete stays denied
    assert "\"@keyring\"" in deny_block                       # keyctl kept denied

    from policies.compiler import compile_profile
    plan = compile_profile(str(new)).plan
    assert "SETUID" not in plan.capabilities
    assert any(x.name == "sysfs" and x.action == "allow" for x in plan.seccomp.rules)
    assert any(x.name == "uselib" and x.action != "allow" for x in plan.seccomp.rules)
    lint_ok(runner, new)

    # again under the learned profile: the same behaviour except the escape call, still denied
    log = workdir / "audit.jsonl"
    r = runner("run", "--profile", str(new), "--audit-log", str(log), "--", HOST_PYTHON, "-c", PROG,
               cwd=str(workdir))
    assert r.returncode == 0, r
    assert r.stdout == learned_out.replace("keyctl -1 22", "keyctl -1 1")
    from audit import reader
    evs = [e for e in reader.read_events(log) if e.get("syscall")]
    assert [e["syscall"]["name"] for e in evs] == ["keyctl"]

    # with --allow-escape: exactly what was observed, no denial at all
    new2 = workdir / "learned2.yaml"
    r = runner("learn", "--allow-escape", "--profile", "strict", "-o", str(new2), "--", HOST_PYTHON, "-c", PROG,
               cwd=str(workdir))
    assert r.returncode == 0 and "REVIEW: keyctl is escape-class" in r.stderr, r
    text2 = new2.read_text()
    assert "# pysandbox: ignore[PSB203] observed by pysandbox learn" in text2
    lint_ok(runner, new2)
    log2 = workdir / "audit2.jsonl"
    r = runner("run", "--profile", str(new2), "--audit-log", str(log2), "--", HOST_PYTHON, "-c", PROG,
               cwd=str(workdir))
    assert r.returncode == 0 and r.stdout == learned_out and "denial" not in r.stderr, r
    assert [e["type"] for e in reader.read_events(log2)] == ["sandbox_start", "sandbox_exit"]
    # ... and learning once more under it observes nothing at all (every denial would show here,
    # ENOSYS answers included)
    again = workdir / "again.yaml"
    r = runner("learn", "--profile", str(new2), "-o", str(again), "--", HOST_PYTHON, "-c", PROG, cwd=str(workdir))
    assert r.returncode == 0 and "observed nothing beyond the base profile" in r.stderr, r
    assert "seccomp:" not in again.read_text()

    # under strict it is still denied (learning changed nothing in strict)
    r = runner("run", "--profile", "strict", "--", HOST_PYTHON, "-c", PROG)
    assert "sysfs False" in r.stdout and "keyctl -1 1" in r.stdout and "denial" in r.stderr, r


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
