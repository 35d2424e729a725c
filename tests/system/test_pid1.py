"""PID 1's last stage: once the program's process exists and PID 1 is root of the user namespace,
PID 1 execs pysandbox-init (sandbox/pid1.c, built by `make`) from a sealed, execute-only memfd copy
(sandbox/init.py, init_image), which drops its privileges and only then releases the program.
Real sandboxes: what PID 1 then is, what the program can (not) do to it, that the program never
runs beside a privileged PID 1, and that a missing binary leaves PID 1 the Python process it was
(with the same guarantees).
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, TEST_USER

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="reads other processes' /proc entries as root")


def _unprivileged(status: str) -> None:
    """PID 1's /proc/1/status as the program sees it: no capability in any set, no_new_privs."""
    fields = dict(line.split(":\t", 1) for line in status.strip().splitlines() if ":\t" in line)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[cap], 16) == 0, (cap, fields[cap])
    assert fields["NoNewPrivs"].strip() == "1", fields["NoNewPrivs"]


PID1_AT_START = """
import json, threading
from sandbox.api import Sandbox
sb = Sandbox("strict")
out = []
for _ in range(5):                                 # one by one: roots built ahead
    r = sb.run(["/bin/cat", "/proc/1/status"], text=True)
    out.append([r.exit_code, r.stdout])
def one():                                         # ten at once: fresh PID 1s
    r = sb.run(["/bin/cat", "/proc/1/status"], text=True)
    out.append([r.exit_code, r.stdout])
ts = [threading.Thread(target=one) for _ in range(10)]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps(out))
"""


def _pid1_at_start(**kw) -> None:
    p = subprocess.run([sys.executable, "-c", PID1_AT_START], capture_output=True, text=True, timeout=180, **kw)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert len(out) == 15
    for code, status in out:
        assert code == 0, (code, status)
        _unprivileged(status)


def test_the_program_never_runs_beside_a_privileged_pid1():
    """The program's first instruction already finds PID 1 without any capability and with
    no_new_privs: PID 1 releases the program only once it dropped them (else a program granted
    CAP_SYS_PTRACE could attach to a PID 1 that still holds the namespace's capabilities, and
    rootful, the host's root uid). The program reads /proc/1/status as it starts."""
    _pid1_at_start(env={**os.environ, "PYTHONPATH": str(REPO)})


def test_the_program_never_runs_beside_a_privileged_pid1_rootless(delegated_cgroups):
    import pwd
    pw = pwd.getpwnam(TEST_USER)
    _pid1_at_start(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], cwd="/tmp",
                   env={"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir, "PYTHONPATH": str(REPO)})


def test_binary_is_built():
    from sandbox.init import INIT_BINARY
    assert os.access(INIT_BINARY, os.X_OK), "sandbox/pysandbox-init missing: `make setup` builds it"


def test_init_image_is_sealed_and_execute_only():
    from sandbox import init
    fd = init.init_image()
    assert fd is not None
    st = os.fstat(fd)
    assert st.st_mode & 0o777 == 0o111                   # PID 1 may execute it, nobody may read it
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    for seal in (fcntl.F_SEAL_WRITE, fcntl.F_SEAL_GROW, fcntl.F_SEAL_SHRINK, fcntl.F_SEAL_SEAL):
        assert seals & seal
    with open(init.INIT_BINARY, "rb") as f:
        assert st.st_size == len(f.read())
    assert init.init_image() == fd                        # once per process


def _server_pid1s(server: int) -> list[int]:
    out = []
    for k in open(f"/proc/{server}/task/{server}/children").read().split():
        try:
            with open(f"/proc/{k}/status") as f:
                st = f.read()
        except OSError:
            continue
        ns = st.split("NSpid:")[1].split("\n")[0].split()
        if ns[-1] == "1" and len(ns) > 1:
            out.append(int(k))
    return out


def _program_execd(pid1: int, python: str) -> bool:
    """PID 1's child (the program) runs its own image: neither the launch server's Python nor
    pysandbox-init (of which it is a fork until its execve)."""
    try:
        with open(f"/proc/{pid1}/task/{pid1}/children") as f:
            kids = f.read().split()
    except OSError:
        return False
    for k in kids:
        try:
            exe = os.readlink(f"/proc/{k}/exe")
            if exe != python and not exe.startswith("/memfd:pysandbox-init"):
                return True
        except OSError:
            pass
    return False


@root_only
def test_pid1_is_the_small_init_and_out_of_the_programs_reach():
    """While the program runs: PID 1's image is the memfd (no host file behind /proc/1/exe), its own
    pages are few, and the program can neither read PID 1's image nor its memory (PID 1 could not
    read its image, so the kernel made it non-dumpable from its first instruction)."""
    from sandbox.server.client import Client
    from sandbox.api import Sandbox
    sb = Sandbox("strict")
    sb.run(["/bin/true"])
    server = Client.get().proc.pid
    python = os.readlink(f"/proc/{server}/exe")
    probe = ("cat /proc/1/exe >/dev/null 2>&1; echo exe $?; "
             "head -c1 /proc/1/mem >/dev/null 2>&1; echo mem $?; "
             "ls /proc/1/fd >/dev/null 2>&1; echo fd $?; sleep 1.5")
    res = {}
    t = threading.Thread(target=lambda: res.setdefault("r", sb.run(["/bin/sh", "-c", probe], text=True)))
    t.start()
    try:
        pid1 = None
        for _ in range(200):
            for k in _server_pid1s(server):           # (idle spares are still Python)
                try:
                    # pysandbox-init, and the program released: it has exec'd (PID 1 drops its
                    # privileges in pysandbox-init before the release)
                    if os.readlink(f"/proc/{k}/exe").startswith("/memfd:pysandbox-init") and \
                            _program_execd(k, python):
                        pid1 = k
                except OSError:
                    pass
            if pid1:
                break
            time.sleep(0.01)
        assert pid1, "no PID 1 running pysandbox-init"
        with open(f"/proc/{pid1}/smaps_rollup") as f:
            rollup = {line.split(":")[0]: int(line.split()[1]) for line in f if line.endswith("kB\n")}
        # its own pages; the image (the memfd, shared by every PID 1 of the server) is one copy for all
        assert rollup["Anonymous"] < 256 and rollup["Rss"] < 1024, rollup
        with open(f"/proc/{pid1}/status") as f:
            st = f.read()
        assert "CapEff:\t0000000000000000" in st and "NoNewPrivs:\t1" in st
    finally:
        t.join()
    r = res["r"]
    assert r.exit_code == 0, r
    got = [line.split() for line in r.stdout.split("\n")[:3]]
    assert [g[0] for g in got] == ["exe", "mem", "fd"] and all(g[1] != "0" for g in got), r.stdout


@root_only
def test_without_the_binary_pid1_stays_python(monkeypatch):
    """No pysandbox-init (not built): PID 1 does its last stage itself, as it did before."""
    from policies.compiler import compile_profile
    from sandbox import init, launcher
    monkeypatch.setattr(init, "INIT_BINARY", "/nonexistent/pysandbox-init")
    monkeypatch.setattr(init, "_INIT", [None, None])
    plan = compile_profile("strict").plan
    r, w = os.pipe()
    try:
        res = launcher.launch(plan, ["/bin/sh", "-c", "cat /proc/1/comm /proc/1/status; exit 3"], stdout=w)
    finally:
        os.close(w)
    out = os.read(r, 100000).decode()
    os.close(r)
    assert res.exit_code == 3, res
    assert init._INIT[1] is None
    comm, status = out.split("\n", 1)
    assert comm.strip() not in ("", "memfd:pysandbox", "pysandbox-init"), out     # PID 1 is the Python copy
    _unprivileged(status)                                   # which dropped the same before the release


def test_pid1_without_root_in_the_namespace_drops_everything(user_runner, tmp_profile):
    """A rootless caller mapped to itself: PID 1 is no root of its namespace, so the exec of
    pysandbox-init would clear its capabilities before it could empty its bounding set (it keeps
    CAP_SETPCAP as an ambient capability for that). The program still finds it with none left."""
    p = tmp_profile("version: 1\nextends: strict\nuser: {uid: caller, gid: caller}\n")
    r = user_runner("run", "--profile", p, "--", "/bin/sh", "-c", "cat /proc/1/comm /proc/1/status")
    assert r.returncode == 0, r
    comm, status = r.stdout.split("\n", 1)
    assert comm == "pysandbox-init", r.stdout
    assert f"Uid:\t{user_runner.uid}\t" in status, status
    _unprivileged(status)


@root_only
def test_without_the_binary_an_early_set_up_error_is_still_reported(monkeypatch):
    """The Python PID 1 releases a program that may already have ended on a set-up error (here: a
    working directory that does not exist); the release then finds no reader, and the program's
    report must still reach the caller (the C PID 1 likewise, see test_spine's error tests)."""
    import dataclasses
    from policies.compiler import compile_profile
    from sandbox import init, launcher
    monkeypatch.setattr(init, "INIT_BINARY", "/nonexistent/pysandbox-init")
    monkeypatch.setattr(init, "_INIT", [None, None])
    plan = compile_profile("strict").plan
    plan = dataclasses.replace(plan, process=dataclasses.replace(plan.process, cwd="/no/such/dir"))
    for _ in range(5):
        res = launcher.launch(plan, ["/bin/true"])
        assert res.exit_code == 126, res
        assert "working directory /no/such/dir" in (res.message or ""), res


SPAWN_PROBE = ("tr '\\0' ' ' < /proc/1/cmdline; echo; echo $$ $PPID; grep -E '^Sig(Ign|Blk)' /proc/self/status; "
               "(yes; echo yes-ended $? >&2) | head -n1 >/dev/null")


def _spawned_by_pysandbox_init(out: str, err: str) -> None:
    lines = out.strip().split("\n")
    assert lines[0].startswith("pysandbox-init spawn "), out       # PID 1 forked the program itself
    assert lines[1].split() == ["2", "1"], out                      # pid 2, child of PID 1
    _default_signals(lines[2:4], err)


def _default_signals(lines, err: str) -> None:
    """No signal ignored or blocked at the program's start (the Python launcher ignores SIGPIPE and
    SIGXFSZ, the launch server SIGINT): `yes` in a closed pipe ends by SIGPIPE (141), as on the
    host, not by EPIPE (1)."""
    sig = dict(line.split(":\t") for line in lines)
    assert int(sig["SigIgn"], 16) == 0 and int(sig["SigBlk"], 16) == 0, sig
    assert "yes-ended 141" in err, err


def _cli_launch(script: str) -> tuple:
    """launcher.launch (the CLI's path) of `sh -c script` under strict: (stdout, stderr)."""
    return _cli_launch_profile("strict", script)


def _cli_launch_profile(profile: str, script: str) -> tuple:
    from policies.compiler import compile_profile
    from sandbox import launcher
    (ro, wo), (re_, we) = os.pipe(), os.pipe()
    try:
        res = launcher.launch(compile_profile(profile).plan, ["/bin/sh", "-c", script], stdout=wo, stderr=we)
    finally:
        os.close(wo)
        os.close(we)
    out, err = os.read(ro, 100000).decode(), os.read(re_, 100000).decode()
    os.close(ro)
    os.close(re_)
    assert res.exit_code == 0, (res, out, err)
    return out, err


@root_only
def test_pid1_forks_the_program_from_pysandbox_init():
    """One Python copy per sandbox: PID 1 builds the root (in a thread of its own, as the sandbox's
    root), execs pysandbox-init, which forks the program's process — pid 2, its child, in the
    cgroup2 leaf — and does the program's last steps in C. API (launch server: fresh and built
    ahead) and CLI path alike."""
    from sandbox.api import Sandbox
    sb = Sandbox("strict")
    for _ in range(3):                                  # the second and third: roots built ahead
        r = sb.run(["/bin/sh", "-c", SPAWN_PROBE], text=True)
        assert r.exit_code == 0, r
        _spawned_by_pysandbox_init(r.stdout, r.stderr)
    r = sb.run(["/bin/sh", "-c", "cat /proc/self/cgroup"], text=True)
    assert r.stdout.strip().endswith("0::/"), r.stdout   # its own cgroup namespace, rooted at its leaf
    out, err = _cli_launch(SPAWN_PROBE)
    _spawned_by_pysandbox_init(out, err)


@root_only
def test_without_the_binary_the_program_starts_with_default_signals(monkeypatch):
    """The Python fallback gives the program the same start: nothing ignored, nothing blocked."""
    from sandbox import init
    monkeypatch.setattr(init, "INIT_BINARY", "/nonexistent/pysandbox-init")
    monkeypatch.setattr(init, "_INIT", [None, None])
    out, err = _cli_launch(SPAWN_PROBE)
    lines = out.strip().split("\n")
    assert not lines[0].startswith("pysandbox-init"), out
    _default_signals(lines[2:4], err)


@root_only
def test_without_a_pid_namespace_pysandbox_init_spawns_the_program_too(tmp_profile):
    """A plan without a pid namespace: pysandbox-init forks the program with whatever pid the host
    gives it (no pid 2 to ask for), through the CLI's path and the launch server's."""
    from sandbox.api import Sandbox
    p = tmp_profile("version: 1\nextends: strict\nnamespaces: {pid: false}\nfilesystem: {proc: false}\n",
                    "nopid.yaml")
    out, _ = _cli_launch_profile(p, "echo $$")
    assert int(out) > 2, out
    r = Sandbox(p).run(["/bin/sh", "-c", "echo $$; id -u"], text=True)
    assert r.exit_code == 0, r
    pid, uid = r.stdout.split()
    assert int(pid) > 2 and uid == "0", r.stdout


def test_api_without_root_in_the_namespace(delegated_cgroups, tmp_profile):
    """The launch server's PID 1 with no root in its user namespace (a rootless caller mapped to
    itself): the program's process stays a Python copy, and PID 1 keeps its descriptors where they
    were (it decides before it takes the run's context)."""
    import pwd
    pw = pwd.getpwnam(TEST_USER)
    p = tmp_profile("version: 1\nextends: strict\nuser: {uid: caller, gid: caller}\n", "self.yaml")
    code = ("from sandbox.api import Sandbox\nsb = Sandbox(%r)\n"
            "for _ in range(3):\n"
            "    r = sb.run(['/bin/sh', '-c', 'echo $$ $(id -u); cat /proc/1/comm'], text=True)\n"
            "    print(r.exit_code, r.message, r.stdout.replace(chr(10), ' '))\n" % p)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], cwd="/tmp",
                         env={"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-2000:]
    for line in run.stdout.strip().split("\n"):
        assert line.split() == ["0", "None", "2", str(pw.pw_uid), "pysandbox-init"], run.stdout


@root_only
@pytest.mark.parametrize("binary", [True, False], ids=["pysandbox-init", "python"])
def test_the_programs_last_steps_report_alike(monkeypatch, tmp_profile, binary):
    """The program's last steps fail with the same report whichever process does them (C in
    spawn mode, Python without the binary): a hard limit above the kernel's, a program that is not
    executable, one that does not exist."""
    from policies.compiler import compile_profile
    from sandbox import init, launcher
    if not binary:
        monkeypatch.setattr(init, "INIT_BINARY", "/nonexistent/pysandbox-init")
        monkeypatch.setattr(init, "_INIT", [None, None])
    p = tmp_profile("version: 1\nextends: strict\nprocess: {rlimits: {nofile: \"1024:2000000\"}}\n", "rl.yaml")
    res = launcher.launch(compile_profile(p).plan, ["/bin/true"])
    assert res.exit_code == 125, res
    assert res.message == "pysandbox: cannot set up the program (ulimit:nofile): not allowed to raise maximum limit"
    strict = compile_profile("strict").plan
    res = launcher.launch(strict, ["/etc/passwd"])
    assert (res.exit_code, res.message) == (126, "pysandbox: /etc/passwd: cannot execute: Permission denied"), res
    res = launcher.launch(strict, ["no-such-command"])
    assert (res.exit_code, res.message) == (127, "pysandbox: no-such-command: command not found"), res
    assert (init._INIT[1] is not None) == binary


@root_only
def test_a_root_that_cannot_be_built_is_reported_on_both_paths(tmp_profile):
    """PID 1 builds the root itself now: a build failure is its report, through the CLI's path and
    the launch server's (whose PID 1 has just moved its descriptors to the run's numbers)."""
    from policies.compiler import compile_profile
    from sandbox import launcher
    from sandbox.api import Sandbox
    p = tmp_profile("version: 1\nextends: strict\nfilesystem:\n  mounts:\n"
                    "    - {type: tmpfs, target: /etc/hostname/x, size: 1m}\n", "badroot.yaml")
    want = "cannot create /etc/hostname/x: Not a directory"
    res = launcher.launch(compile_profile(p).plan, ["/bin/true"])
    assert res.exit_code == 125 and want in (res.message or ""), res
    r = Sandbox(p).run(["/bin/true"])
    assert r.exit_code == 125 and want in (r.message or ""), r
