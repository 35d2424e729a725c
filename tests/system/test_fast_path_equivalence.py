"""The fast path gives the same sandbox as the full path (issue 23): `pysandbox run --profile strict`
with the plan cached (sandbox/cli/__init__.py -> runner.fast_run: no YAML, schema, compiler or
libseccomp), the same command with its cache entry removed first (compile + BPF build, then
stored), and the Python API (`Sandbox("strict").run`, through the launch server) must produce

  * the same capability sets, no_new_privs and seccomp mode (/proc/self/status);
  * the same seccomp filter, byte for byte, as the kernel holds it for the program (read back by
    the host with PTRACE_SECCOMP_GET_FILTER, root), and the same number of filters;
  * the same mounts (/proc/self/mountinfo without mount ids, device numbers and peer groups, which
    differ from one mount namespace to the next);
  * the same limits: rlimits (/proc/self/limits) and the cgroup limit files of the sandbox's
    cgroups (the host's view, from the `sandbox_start` event's cgroup directories);
  * the same id maps, setgroups, hostname and identity.

The CLI's launch server (`pysandbox server`, opt-in) is the fourth way: the cached run through a
running server must give the same sandbox (the comparison above, PID 1 then being the server's
child), and the same behaviour: stdio, environment, working directory, umask, exit codes (0, N, a
signal, a command not found), a signal sent to the CLI forwarded to the sandbox, the audit
events — as root and as the unprivileged test user.

The program prints what it sees, then execs `sleep`; the host reads the filter and the cgroup files
while it sleeps, then kills the sandbox. Run as root (the host's ptrace of a sandboxed process); the
CLI's two paths are compared as the unprivileged test user too."""
from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import threading
import time

import pytest

import launchserver
from conftest import PYSANDBOX, PYSANDBOX_PY, SandboxProcs, audit_log

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the host reads the filter back with ptrace: root")

PROBE = ("grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status; echo @@; cat /proc/self/mountinfo; echo @@; "
         "cat /proc/self/limits; echo @@; cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups; echo @@; "
         "hostname; id; echo @@; exec /bin/sleep 120")
ARGV = ["/bin/sh", "-c", PROBE]
CGROUP_FILES = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.max", "memory.swap.max",
                "pids.max", "cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.max", "cpu.shares", "cpu.weight")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT, PTRACE_SECCOMP_GET_FILTER = 17, 0x4206, 0x4207, 0x420C


def filters_of(pid: int) -> list[bytes]:
    """Every seccomp filter of pid (index 0: the last loaded), as the kernel holds them."""
    if _libc.ptrace(PTRACE_SEIZE, pid, None, None) < 0:
        raise OSError(ctypes.get_errno(), "PTRACE_SEIZE")
    out = []
    try:
        _libc.ptrace(PTRACE_INTERRUPT, pid, None, None)
        os.waitpid(pid, 0x40000000)                          # __WALL: the ptrace stop
        for i in range(16):
            n = _libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, i, None)
            if n <= 0:
                break
            buf = ctypes.create_string_buffer(n * 8)
            assert _libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, i, buf) == n
            out.append(buf.raw)
    finally:
        _libc.ptrace(PTRACE_DETACH, pid, None, None)
    return out


def _starts(log: str) -> int:
    try:
        with open(log) as f:
            return sum(1 for line in f if '"sandbox_start"' in line)
    except FileNotFoundError:
        return 0


def _nth_start(log: str, n: int, deadline: float) -> dict:
    while True:
        try:
            with open(log) as f:
                starts = [json.loads(line) for line in f if '"sandbox_start"' in line]
        except FileNotFoundError:
            starts = []
        if len(starts) > n:
            return starts[n]
        assert time.monotonic() < deadline, f"no sandbox_start #{n + 1} in {log}"
        time.sleep(0.02)


def _sleeping_program(pid1: int, deadline: float) -> int:
    """The program (a child of PID 1), once it has become `sleep` (everything printed)."""
    while True:
        try:
            with open(f"/proc/{pid1}/task/{pid1}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except FileNotFoundError:
            kids = []
        for k in kids:
            try:
                with open(f"/proc/{k}/comm") as f:
                    if f.read().strip() == "sleep":
                        return k
            except FileNotFoundError:
                pass
        assert time.monotonic() < deadline, "the probe never reached sleep"
        time.sleep(0.02)


def _host_side(log: str, before: int) -> dict:
    """Wait for the sandbox started after `before` starts, read its filter and cgroup limits,
    then kill it."""
    deadline = time.monotonic() + 60
    ev = _nth_start(log, before, deadline)
    procs = SandboxProcs(ev)
    try:
        prog = _sleeping_program(procs.pid, deadline)
        limits = {}
        for d in procs.cgroups:
            ctrl = os.path.relpath(d, "/sys/fs/cgroup").split(os.sep)[0]
            for name in CGROUP_FILES:
                try:
                    with open(os.path.join(d, name)) as f:
                        limits[f"{ctrl}/{name}"] = f.read().strip()
                except OSError:
                    pass
        with open(f"/proc/{procs.pid}/status") as f:       # who started PID 1: the CLI, or a launch server
            ppid = int(next(line.split()[1] for line in f if line.startswith("PPid:")))
        return {"filters": filters_of(prog), "cgroup": limits, "cgroups": len(procs.cgroups), "ppid": ppid}
    finally:
        procs.kill()
        assert procs.gone(30)
        procs.close()


_MNT = re.compile(r"^\d+ \d+ \d+:\d+ (\S+) (\S+) (\S+)((?: \S+:\S+)*) - (\S+) (\S+) (\S+)$")


def _normalised(out: str) -> dict:
    parts = out.split("@@\n")
    assert len(parts) >= 5, out
    mounts = []
    for line in parts[1].splitlines():
        m = _MNT.match(line)
        assert m, line
        root, point, opts, _peers, fstype, source, sopts = m.groups()
        mounts.append((root, point, opts, fstype, source, sopts))
    return {"status": parts[0].splitlines(), "mounts": mounts, "limits": parts[2].splitlines(),
            "maps": parts[3].splitlines(), "ident": parts[4].splitlines()}


def _probe(log: str, start) -> tuple[dict, dict]:
    """start() runs the probe to its end and returns its stdout; it runs in a thread while this
    one reads the sandbox from the host (and kills it)."""
    before = _starts(log)
    res = {}
    t = threading.Thread(target=lambda: res.update(out=start()))
    t.start()
    try:
        host = _host_side(log, before)
    finally:
        t.join(120)
    return _normalised(res["out"]), host


def _cli(log: str, runner=None, env=None) -> tuple[dict, dict]:
    """`pysandbox run --profile strict -- PROBE`: as root from this process (its working directory
    and environment: the plan cache's key), or through RUNNER (the unprivileged test user)."""
    if runner is not None:
        return _probe(log, lambda: runner("run", "--profile", "strict", "--", *ARGV, env=env, timeout=100).stdout)
    return _probe(log, lambda: subprocess.run([PYSANDBOX, "run", "--profile", "strict", "--", *ARGV],
                                              capture_output=True, text=True, timeout=100).stdout)


def _api(log: str) -> tuple[dict, dict]:
    from sandbox.api import Sandbox
    sb = Sandbox("strict", audit_log=log)
    return _probe(log, lambda: sb.run(ARGV, text=True, timeout=100).stdout)


def test_fast_path_full_path_and_api_give_the_same_sandbox(monkeypatch, tmp_path, own_state_dir):
    from sandbox import plancache
    log = audit_log(type("R", (), {"user": None})())
    monkeypatch.chdir(tmp_path)                   # the cache key holds the working directory
    entry = plancache._file_for(plancache.key_for(["--profile", "strict"]))

    # full path: no entry, so `run` parses, validates, compiles, builds the BPF and stores the entry
    if os.path.exists(entry):
        os.unlink(entry)
    full, full_host = _cli(log)
    assert os.path.exists(entry), "the full path stored no plan cache entry"
    stored = os.stat(entry).st_mtime_ns
    # fast path: the entry is valid and used (not rewritten)
    fast, fast_host = _cli(log)
    assert os.stat(entry).st_mtime_ns == stored, "the second run did not take the cached path"
    api, api_host = _api(log)

    for name, (seen, host) in {"fast": (fast, fast_host), "api": (api, api_host)}.items():
        assert seen["status"] == full["status"], name          # Cap*, NoNewPrivs, Seccomp(_filters)
        assert host["filters"] == full_host["filters"], name    # the filter bytes the kernel holds
        assert seen["mounts"] == full["mounts"], name
        assert seen["limits"] == full["limits"], name
        assert host["cgroup"] == full_host["cgroup"], name
        assert seen["maps"] == full["maps"], name
        assert seen["ident"] == full["ident"], name

    # and it is strict's sandbox: every capability dropped, NNP, filtered, limited, mapped
    status = dict(line.split(":\t", 1) for line in full["status"])
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert len(full_host["filters"]) == int(status["Seccomp_filters"]) >= 1
    assert any(m[1] == "/" and m[2].startswith("ro") for m in full["mounts"]), full["mounts"]
    assert full_host["cgroup"].get("memory/memory.limit_in_bytes") == str(1 << 30), full_host["cgroup"]
    assert full_host["cgroup"].get("pids/pids.max") == "512", full_host["cgroup"]
    assert full["maps"][0].split() == ["0", "1000000000", "65536"], full["maps"]


def test_rootless_fast_path_and_full_path_give_the_same_sandbox(user_runner, shared_tmp):
    """The same comparison as the unprivileged test user (its own delegated cgroups, its own plan
    cache: a private XDG_CACHE_HOME, so that the first run is the full path and the second the
    cached one whatever other tests left in the user's cache)."""
    cache = shared_tmp / "cache"
    cache.mkdir(mode=0o700)
    os.chown(cache, user_runner.uid, user_runner.gid)
    env = {"XDG_CACHE_HOME": str(cache)}
    log = audit_log(user_runner)
    full, full_host = _cli(log, user_runner, env)
    entries = list((cache / "pysandbox" / "plans").iterdir())
    assert len(entries) == 1, entries                       # the full path stored its plan
    stored = entries[0].stat().st_mtime_ns
    fast, fast_host = _cli(log, user_runner, env)
    assert entries[0].stat().st_mtime_ns == stored, "the second run did not take the cached path"
    assert fast == full
    assert fast_host["filters"] == full_host["filters"] and fast_host["cgroup"] == full_host["cgroup"]
    status = dict(line.split(":\t", 1) for line in full["status"])
    assert status["CapEff"] == status["CapBnd"] == "0000000000000000" and status["NoNewPrivs"] == "1"
    assert len(full_host["filters"]) == int(status["Seccomp_filters"]) >= 1
    assert full_host["cgroup"].get("pids/pids.max") == "512", full_host["cgroup"]
    # root inside: the caller's first subordinate uid, or the caller itself without 65536 of them
    from conftest import single_id
    from policies import subids
    first = user_runner.uid if single_id(user_runner) else subids.first_ids(subids.ranges("uid", user_runner.uid))[0][1]
    assert full["maps"][0].split()[:2] == ["0", str(first)], full["maps"]


def test_a_cached_run_imports_no_compiler_nor_heavy_library(tmp_path, monkeypatch):
    """What a cache hit may not do (issue 23): import click, YAML, jsonschema or libseccomp, or
    compile. The real entry script, run by its interpreter with `-X importtime` (every module
    imported is listed on stderr), after a first run filled the cache; the sandbox runs."""
    monkeypatch.chdir(tmp_path)
    cmd = [PYSANDBOX, "run", "--profile", "strict", "--", "/bin/true"]
    assert subprocess.run(cmd, capture_output=True).returncode == 0         # fills the cache
    with open(PYSANDBOX_PY) as f:
        python = f.readline()[2:].split()[0]                                 # the script's #! interpreter
    r = subprocess.run([python, "-I", "-S", "-X", "importtime", PYSANDBOX_PY, *cmd[1:]], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "sandbox.launcher" in imported and "sandbox.plancache" in imported           # it did launch
    heavy = sorted(m for m in imported if m.split(".")[0] in ("click", "yaml", "jsonschema", "seccomp", "pyseccomp")
                   or m in ("policies.compiler", "policies.loader", "sandbox.cli.run"))
    assert heavy == [], heavy
    # inspect (with ast, dis, tokenize) stands lazy until used (policies/plan.py): no dataclass on the
    # path may lack a docstring, else dataclass() loads it to write one
    assert "inspect" not in imported and "ast" not in imported
    # nor typing: annotations are postponed, typing names imported under TYPE_CHECKING only
    assert "typing" not in imported


def test_the_launch_server_gives_the_same_sandbox(root_runner, monkeypatch, tmp_path):
    log = audit_log(root_runner)
    monkeypatch.chdir(tmp_path)
    _cli(log)                                                 # the plan cached (or the full path)
    direct, direct_host = _cli(log)                           # the cached ordinary path
    server = launchserver.Server(root_runner)
    try:
        via, via_host = _cli(log)
    finally:
        server.stop()
    assert direct_host["ppid"] != server.pid and via_host["ppid"] == server.pid   # the server's PID 1
    assert via == direct
    for name in ("filters", "cgroup", "cgroups"):
        assert via_host[name] == direct_host[name], name


BEHAVIOUR = {   # argv, stdin
    "stdio_env_cwd_exit_n": (["/bin/sh", "-c", "pwd; umask; env | sort; cat; echo to-stderr >&2; exit 3"], "in\n"),
    "exit_0": (["/bin/true"], None),
    "signal": (["/bin/sh", "-c", "kill -KILL $$"], None),
    "not_found": (["/no/such/program"], None),
    "denied_mount": (["/bin/sh", "-c", "mount -t tmpfs none /tmp; echo $?"], None),
}


def _events(log: str, since: int) -> list:
    """The audit events written after line `since`: type and what does not change from run to run."""
    with open(log) as f:
        lines = f.readlines()[since:]
    out = []
    for line in lines:
        ev = json.loads(line)
        out.append((ev["type"], ev.get("exit_code"), ev.get("signal"), (ev.get("syscall") or {}).get("name"),
                    ev.get("action"), ev.get("argv"),
                    ev.get("message") if ev["type"] == "integrity_violation" else None))   # (says why)
    return out


def _lines(log: str) -> int:
    try:
        with open(log) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def test_the_launch_server_behaves_as_the_cli(runner, own_state_dir):
    """Each command twice, without and with a server running: the same exit code, stdout, stderr
    and audit events (and the second run did go through the server)."""
    log = audit_log(runner)
    env = {"TERM": "xterm-test", "LANG": "C.UTF-8", "PYSBX_NOT_PASSED": "1"}
    launchserver.run(runner, ["/bin/true"], env=env)            # the plan cached
    seen = {}
    for name, (argv, stdin) in BEHAVIOUR.items():
        n = _lines(log)
        p, via = launchserver.run(runner, argv, input=stdin, env=env)
        assert not via
        seen[name] = (p.returncode, p.stdout, p.stderr, _events(log, n))
    server = launchserver.Server(runner)
    try:
        for name, (argv, stdin) in BEHAVIOUR.items():
            n = _lines(log)
            p, via = launchserver.run(runner, argv, input=stdin, env=env)
            assert via, (name, p)
            assert (p.returncode, p.stdout, p.stderr, _events(log, n)) == seen[name], name
    finally:
        server.stop()
    assert seen["exit_0"][0] == 0 and seen["stdio_env_cwd_exit_n"][0] == 3 and seen["signal"][0] == 137
    assert seen["not_found"][0] == 127
    out = seen["stdio_env_cwd_exit_n"][1]
    assert "TERM=xterm-test" in out and "PYSBX_NOT_PASSED" not in out and out.endswith("in\n"), out
    assert any(e[0] == "escape_attempt" and e[3] == "mount" for e in seen["denied_mount"][3]), seen["denied_mount"]


def test_a_signal_to_the_cli_reaches_the_sandbox_through_the_server(runner, own_state_dir):
    """SIGTERM to the CLI ends the sandbox as on the ordinary path: forwarded to the program, whose
    handler runs and whose exit code is the CLI's."""
    script = 'trap "echo got TERM; exit 7" TERM; echo ready; while :; do sleep 0.05; done'
    launchserver.run(runner, ["/bin/true"])                      # the plan cached
    kw = dict(user=runner.uid, group=runner.gid, extra_groups=[]) if runner.user else {}

    def once() -> tuple:
        cli = subprocess.Popen([PYSANDBOX, "run", "--profile", "strict", "--", "/bin/sh", "-c", script],
                               env=runner.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd="/tmp", **kw)
        try:
            assert cli.stdout.readline() == "ready\n"
            cli.send_signal(15)
            out, err = cli.communicate(timeout=30)
        finally:
            cli.kill()
            cli.wait()
        return cli.returncode, out, err

    direct = once()
    server = launchserver.Server(runner)
    try:
        via = once()
        assert server.status().stdout.startswith(f"running: pid {server.pid} ")
    finally:
        server.stop()
    assert direct == (7, "got TERM\n", "") and via == direct, (direct, via)
