"""Audit demonstrations through the real CLI (`pysandbox run`), as root and rootless.

Under `strict` each escape call is denied with the policy's errno AND recorded exactly once
in the audit log, with its syscall name, arguments, errno and technique; a kill rule is
recorded before the sandbox dies (exit 159); 1000 denials in a tight loop are all accounted for
(in full up to the rate limit, the rest in coalesced records whose counts add up).
Nothing is simulated: the supervisor answers real seccomp user notifications.
"""
from __future__ import annotations

import json
from pathlib import Path
import os
import subprocess

import pytest

from conftest import HOST_PYTHON, PYSANDBOX

import audit
from audit import reader

SYSCALL_TYPES = ("seccomp_denied", "seccomp_killed", "seccomp_logged", "escape_attempt")

# python snippet: call one syscall by number through libc, print "ret errno"
CALL = ("import ctypes, sys; l = ctypes.CDLL(None, use_errno=True); l.syscall.restype = ctypes.c_long; "
        "a = [ctypes.c_long(int(x)) if x.lstrip('-').isdigit() else ctypes.c_char_p(x.encode()) "
        "for x in sys.argv[2:]]; "
        "r = l.syscall(ctypes.c_long(int(sys.argv[1])), *a); print(r, ctypes.get_errno())")

# name -> (nr, argv for CALL, expected args checks, technique_id)
DEMOS = {
    "mount": (165, ["none", "/mnt", "tmpfs", "0", "0"], "mount"),
    "ptrace": (101, ["16", "1", "0", "0"], "ptrace"),
    "keyctl": (250, ["0", "0"], "keyring"),
    "bpf": (321, ["5", "0", "0"], "bpf"),
    "open_by_handle_at": (304, ["-100", "0", "0"], "shocker"),
    "init_module": (175, ["0", "0", ""], "kernel-module"),
    "unshare": (272, [str(0x10000000)], "userns"),
}


def _plan_denies(name: str, profile: str = "strict") -> bool:
    from policies.compiler import compile_profile
    s = compile_profile(profile).plan.seccomp
    for r in s.rules:
        if r.name == name and not r.args:
            return r.action != "allow"
    return s.default_action != "allow"


@pytest.fixture
def logdir(shared_tmp, runner):
    d = shared_tmp / "audit"
    d.mkdir()
    os.chown(d, runner.uid, runner.gid)
    return d


def events(path, types=SYSCALL_TYPES):
    evs = list(reader.read_events(path))
    for e in evs:
        audit.validate(e)
    return [e for e in evs if types is None or e["type"] in types]


@pytest.mark.parametrize("name", list(DEMOS))
def test_escape_call_denied_and_recorded_once(runner, logdir, name):
    assert _plan_denies(name), f"strict does not deny {name}: a strict profile that stops denying is a regression"
    nr, args, tech = DEMOS[name]
    log = logdir / "audit.jsonl"
    r = runner("run", "--profile", "strict", "--audit-log", str(log), "--",
               HOST_PYTHON, "-c", CALL, str(nr), *args)
    assert r.returncode == 0, r
    ret, err = r.stdout.split()
    assert ret == "-1" and int(err) == 1, r                    # the policy's errno: EPERM
    evs = events(log)
    assert len(evs) == 1, evs                                   # exactly one event
    e = evs[0]
    assert e["syscall"]["name"] == name and e["syscall"]["nr"] == nr
    assert e["action"] == "errno" and e["errno"] == 1 and e["errno_name"] == "EPERM"
    assert e["via"] == "user_notif"
    assert e["type"] == "escape_attempt" and e["technique_id"] == tech, e
    assert e["comm"].startswith("python") and e["sandbox_pid"] >= 2 and e["pid"] > 1
    assert e["profile"] == "strict"
    numeric = [int(a) & (2**64 - 1) for a in args if a.lstrip("-").isdigit()]
    if name == "ptrace":
        assert e["syscall"]["args"][:2] == [16, 1]
        assert e["syscall"]["decoded"] == {"request": "PTRACE_ATTACH", "target_pid": 1}
        assert e["technique"].startswith("host ptrace")
    elif name == "mount":
        assert e["syscall"]["decoded"]["source"] == "none" and e["syscall"]["decoded"]["fstype"] == "tmpfs"
        assert e["path"] == "/mnt"
    elif name == "unshare":
        assert e["syscall"]["args"][0] == 0x10000000
        assert e["technique"].startswith("regain capabilities via user namespace")
    elif name == "open_by_handle_at":
        assert e["syscall"]["args"][0] == 2**64 - 100 and e["technique"].startswith("shocker/open_by_handle_at")
    elif numeric:
        assert e["syscall"]["args"][:len(numeric)] == numeric
    # the stderr summary line names the call and the log
    assert f"pysandbox: 1 denial ({name} ×1), 1 escape attempt — see {log}" in r.stderr, r
    # and the log has the run's frame around it
    allev = events(log, None)
    assert [x["type"] for x in allev][0] == "sandbox_start" and allev[-1]["type"] == "sandbox_exit"
    assert len({x["sandbox_id"] for x in allev}) == 1


def test_real_binaries_mount_and_unshare(runner, logdir):
    log = logdir / "audit.jsonl"
    r = runner.sh("mount -t tmpfs none /mnt; echo mount=$?", "--audit-log", str(log))
    assert "mount=32" in r.stdout or "mount=1" in r.stdout, r
    evs = [e for e in events(log) if e["syscall"]["name"] == "mount"]
    assert len(evs) == 1 and evs[0]["comm"] == "mount" and evs[0]["syscall"]["decoded"]["target"] == "/mnt"
    assert _plan_denies("unshare"), "strict does not deny unshare"
    r = runner.sh("unshare -U true; echo unshare=$?", "--audit-log", str(log))
    assert "unshare=1" in r.stdout, r
    evs = [e for e in events(log) if e["syscall"]["name"] == "unshare"]
    assert len(evs) == 1 and evs[0]["technique_id"] == "userns"


def test_kill_rule_recorded_before_the_sandbox_dies(runner, logdir, tmp_profile):
    prof = tmp_profile("""
version: 1
name: strict-kill
extends: strict
seccomp:
  deny: !extend
    - {names: [add_key], action: kill}
""")
    log = logdir / "audit.jsonl"
    r = runner("run", "--profile", prof, "--audit-log", str(log), "--", HOST_PYTHON, "-c",
               "import ctypes, sys; l = ctypes.CDLL(None); print('before', flush=True); "
               "l.syscall(248, b'user', b'k', 0, 0, -2); print('after', flush=True)")
    assert r.returncode == 159, r
    assert r.stdout == "before\n", r                             # the call never returned
    allev = events(log, None)
    kinds = [e["type"] for e in allev]
    assert kinds[-1] == "sandbox_exit" and allev[-1]["status"]["signal"] == "SIGSYS"
    evs = [e for e in allev if e["type"] in SYSCALL_TYPES]
    assert len(evs) == 1
    e = evs[0]
    assert e["syscall"]["name"] == "add_key" and e["action"] == "kill" and e["killed"] is True
    assert e["type"] == "escape_attempt" and e["technique_id"] == "keyring"
    assert e["syscall"]["decoded"]["type"] == "user"
    assert "killed by the seccomp policy (add_key)" in r.stderr


def test_1000_denials_all_recorded(runner, logdir):
    """A tight loop of 1000 denied calls: 1000 events, consecutive seq, every call EPERM.
    Then 10000: the supervisor's peak memory does not grow with the number of events."""
    def loop(n, log):
        code = ("import ctypes; l = ctypes.CDLL(None, use_errno=True)\n"
                f"bad = sum(1 for _ in range({n}) if l.syscall(250, 0, 0) != -1 or ctypes.get_errno() != 1)\n"
                "print('bad', bad)")
        cmd = [PYSANDBOX, "run", "--profile", "strict", "--audit-log", str(log), "--", HOST_PYTHON, "-c", code]
        kw = dict(user=runner.uid, group=runner.gid, extra_groups=[]) if runner.user else {}
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=runner.env(), cwd="/tmp", **kw)
        out, err = p.communicate(timeout=300)
        return p.returncode, out, err
    log = logdir / "a.jsonl"
    rc, out, err = loop(1000, log)
    assert rc == 0 and out == "bad 0\n", err
    evs = events(log)
    # every call accounted for: in full while the rate limit allows, the rest in coalesced records
    assert sum(reader.count(e) for e in evs) == 1000
    assert len(evs) < 200
    sid = {e["sandbox_id"] for e in evs}
    assert len(sid) == 1
    allev = events(log, None)
    seqs = [e["seq"] for e in allev]
    assert seqs == list(range(1, len(allev) + 1))            # no gaps: nothing lost
    assert [e["type"] for e in allev].count("audit_suppressed") == 1
    assert "pysandbox: 1000 denials (keyctl ×1000)" in err

    # memory: the launcher+supervisor's peak RSS with 10000 events vs 1000
    log2 = logdir / "b.jsonl"
    code = f"""
import os, resource, subprocess, sys
def peak(n, log):
    c = ("import ctypes; l = ctypes.CDLL(None)\\nfor _ in range(%d): l.syscall(250, 0, 0)" % n)
    p = subprocess.Popen([{PYSANDBOX!r}, "run", "--profile", "strict", "--audit-log", log, "--",
                          {HOST_PYTHON!r}, "-c", c], stderr=subprocess.DEVNULL)
    _, st, ru = os.wait4(p.pid, 0)
    return ru.ru_maxrss
print(peak(1000, sys.argv[1]), peak(10000, sys.argv[1]))
"""
    cmd = [os.path.join(os.path.dirname(PYSANDBOX), "python"), "-c", code, str(log2)]
    kw = dict(user=runner.uid, group=runner.gid, extra_groups=[]) if runner.user else {}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=runner.env(), cwd="/tmp", **kw)
    assert p.returncode == 0, p.stderr
    small, big = map(int, p.stdout.split())
    assert big - small < 4096, f"peak RSS {small} kB for 1000 denials, {big} kB for 10000"
    assert sum(reader.count(e) for e in events(log2)) == 11000


def test_audit_commands_read_the_log(runner, logdir):
    log = logdir / "audit.jsonl"
    runner("run", "--profile", "strict", "--name", "demo", "--audit-log", str(log), "--",
           HOST_PYTHON, "-c", CALL, "165", "none", "/mnt", "tmpfs", "0", "0")
    runner("run", "--profile", "strict", "--name", "other", "--audit-log", str(log), "--",
           HOST_PYTHON, "-c", CALL, "250", "0", "0")
    r = runner("audit", "show", "--log", str(log), "--sandbox", "demo", "--type", "escape_attempt")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1 and "mount(" in r.stdout, r
    r = runner("audit", "show", "--log", str(log), "--syscall", "keyctl", "--json")
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["sandbox_name"] == "other"
    r = runner("audit", "summary", "--log", str(log))
    assert "2 sandboxes, 2 denials (mount ×1, keyctl ×1)" in r.stdout, r
    r = runner("audit", "summary", "--log", str(log), "--json", "--since", "1h")
    assert [s["sandbox_name"] for s in json.loads(r.stdout)] == ["demo", "other"]
    r = runner("audit", "tail", "--no-follow", "-n", "1", "--log", str(log))
    assert "sandbox_exit" in r.stdout and len(r.stdout.splitlines()) == 1
    r = runner("audit", "show", "--log", str(log), "--type", "bogus")
    assert r.returncode == 2 and "unknown event type 'bogus'" in r.stderr and len(r.stderr.splitlines()) == 1
    r = runner("audit", "show", "--log", str(logdir / "missing.jsonl"))
    assert r.returncode == 1 and "no audit log at" in r.stderr and len(r.stderr.splitlines()) == 1


def test_default_log_location(runner, shared_tmp):
    """Without --audit-log: the state directory's audit.jsonl (audit/paths.py): as root the test's own
    PYSANDBOX_STATE_DIR (that root's default is /var/lib/pysandbox is tests/unit/test_audit.py's
    test_default_log_path: no test writes the machine's log), $XDG_DATA_HOME/pysandbox rootless."""
    if runner.user:
        state = shared_tmp / "data"
        state.mkdir()
        os.chown(state, runner.uid, runner.gid)
        env = {"XDG_DATA_HOME": str(state), "PYSANDBOX_STATE_DIR": None}     # the default, not the test's own
        log = state / "pysandbox" / "audit.jsonl"
    else:
        env = {}
        log = Path(audit.default_log_path(0))
    before = log.stat().st_size if log.exists() else 0
    name = "deflog-" + os.urandom(4).hex()       # the root log is shared with every other run
    r = runner("run", "--profile", "strict", "--name", name, "--", HOST_PYTHON, "-c", CALL, "250", "0", "0",
               env=env)
    assert r.returncode == 0 and f"see {log}" in r.stderr, r
    with open(log) as f:
        f.seek(before)
        new = [e for e in reader.parse_lines(f) if e.get("sandbox_name") == name]
    assert [e["type"] for e in new] == ["sandbox_start", "escape_attempt", "sandbox_exit"]
    assert oct(log.stat().st_mode & 0o777) == "0o600"


def test_unwritable_audit_log_is_one_line_125(runner):
    r = runner("run", "--profile", "strict", "--audit-log", "/proc/nope/audit.jsonl", "--", "/bin/true")
    assert r.returncode == 125 and len(r.stderr.splitlines()) == 1 and "audit log /proc/nope" in r.stderr, r


def test_allowed_calls_produce_no_events(runner, logdir):
    log = logdir / "audit.jsonl"
    r = runner.sh("ls / >/dev/null; cat /etc/hostname >/dev/null 2>&1; echo ok", "--audit-log", str(log))
    assert r.stdout == "ok\n" and "denial" not in r.stderr, r
    assert events(log) == []


def test_oom_and_pids_limit_events_in_the_log(runner, logdir):
    """The limits module's outcomes (issue: limits) become oom_kill / pids_limit events."""
    log = logdir / "audit.jsonl"
    r = runner("run", "--profile", "strict", "--memory", "32m", "--audit-log", str(log), "--",
               HOST_PYTHON, "-c", "x = bytearray(200 * 1024 * 1024)")
    assert r.returncode == 137, r
    r2 = runner("run", "--profile", "strict", "--pids-limit", "4", "--audit-log", str(log), "--",
                "/bin/sh", "-c", "for i in 1 2 3 4 5 6; do sleep 1 & done; wait")
    evs = events(log, None)
    oom = [e for e in evs if e["type"] == "oom_kill"]
    pids = [e for e in evs if e["type"] == "pids_limit"]
    assert len(oom) == 1 and oom[0]["limit"]["name"] == "memory" and oom[0]["limit"]["value"] == 32 << 20, evs
    assert oom[0]["limit"]["peak"] >= 30 << 20
    assert len(pids) == 1 and pids[0]["limit"] == {"name": "pids", "value": 4, "peak": 4}, evs
    exits = [e for e in evs if e["type"] == "sandbox_exit"]
    assert exits[0]["status"] == {"exit_code": 137, "signal": "SIGKILL"}
    assert exits[0]["peaks"]["memory_peak"] >= 30 << 20
    assert "1 oom kill" in r.stderr and "1 pids limit" in r2.stderr


def test_multithreaded_program_all_denials_recorded(runner, logdir):
    log = logdir / "audit.jsonl"
    code = ("import ctypes, threading\n"
            "l = ctypes.CDLL(None, use_errno=True)\n"
            "bad = []\n"
            "def w():\n"
            "    for _ in range(50):\n"
            "        if l.syscall(250, 0, 0) != -1 or ctypes.get_errno() != 1: bad.append(1)\n"
            "ts = [threading.Thread(target=w) for _ in range(8)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "print('bad', len(bad))")
    r = runner("run", "--profile", "strict", "--audit-log", str(log), "--", HOST_PYTHON, "-c", code, timeout=120)
    assert r.returncode == 0 and r.stdout == "bad 0\n", r
    evs = events(log)
    assert sum(reader.count(e) for e in evs) == 400
    full = [e for e in evs if "count" not in e]               # the ones recorded in full
    assert len(full) >= 100 and {e["sandbox_pid"] for e in full} == {full[0]["sandbox_pid"]}
    assert len({e["tid"] for e in full}) >= 2


def test_timeout_event(runner, logdir):
    log = logdir / "audit.jsonl"
    r = runner("run", "--profile", "strict", "--timeout", "1", "--audit-log", str(log), "--", "/bin/sleep", "10")
    assert r.returncode == 124, r
    evs = events(log, None)
    assert [e["type"] for e in evs] == ["sandbox_start", "timeout", "sandbox_exit"]
    assert evs[1]["limit"] == {"name": "timeout", "value": 1.0, "unit": "s"}
    assert evs[2]["status"]["exit_code"] == 124 and 1.0 <= evs[2]["duration"] < 5
    assert "1 timeout — see" in r.stderr
