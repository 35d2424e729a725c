"""Demonstrations of the spine (issue 2): real sandboxes, as root and as an unprivileged user.

Each control shows both sides: the denied thing is denied (errno, signal, exit status) and the
allowed thing still works. Escape probes only *open* host files or tunables for writing, never
write to them, and run only inside a sandbox.
"""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from conftest import PYSANDBOX, SandboxProcs, audit_log

# A small probe library run inside the sandbox with /usr/bin/python3.
PROBE = r'''
import ctypes, errno, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
def sc(nr, *a):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(x) for x in a])
    return 0 if r >= 0 else errno.errorcode[ctypes.get_errno()]
NR = dict(mount=165, unshare=272, ptrace=101, keyctl=250, bpf=321, personality=135, setns=308,
          open_by_handle_at=304, init_module=175, clone3=435, acct=163, getpid=39)
'''


def probe(runner, body: str, *opts, profile="strict", **kw):
    return runner.py(PROBE + body, *opts, profile=profile, **kw)


# --- isolation ----------------------------------------------------------------------

def test_process_view_hostname_and_network_are_the_sandboxs_own(runner):
    r = runner.sh("ps -e -o pid=,ppid=,comm=; echo host=$(hostname); ls /sys/class/net; echo ppid=$PPID")
    assert r.returncode == 0, r
    lines = [l.split() for l in r.stdout.splitlines() if l.strip() and l.split()[0].isdigit()]
    pids = {int(l[0]) for l in lines}
    assert 1 in pids and max(pids) < 20, r                    # only the sandbox's processes
    assert "host=sandbox" in r.stdout
    assert "ppid=1" in r.stdout                               # the program's parent is PID 1
    nets = r.stdout.split("host=sandbox")[1].split()
    assert [n for n in nets if not n.startswith("ppid=")] == ["lo"], r


def test_tmp_is_private_to_each_sandbox(runner):
    a = runner.sh("echo secret > /tmp/f && cat /tmp/f")
    assert a.returncode == 0 and "secret" in a.stdout, a
    b = runner.sh("test -e /tmp/f && echo present || echo absent")
    assert b.stdout.strip() == "absent", b


def test_hosts_root_is_not_visible(runner):
    r = runner.sh("ls /; test -e /work && echo LEAK; test -e /root/.pyenv && echo LEAK2; true")
    assert r.returncode == 0 and "LEAK" not in r.stdout, r


# --- capabilities, no_new_privs -----------------------------------------------------

def test_all_capability_sets_empty_and_no_new_privs(runner):
    r = runner.sh("grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status")
    assert r.returncode == 0, r
    for line in r.stdout.splitlines():
        k, v = line.split(":", 1)
        if k.startswith("Cap"):
            assert int(v.strip(), 16) == 0, line
    assert "NoNewPrivs:\t1" in r.stdout
    assert "Seccomp:\t2" in r.stdout                           # a filter is loaded


def test_bind_port_80_needs_net_bind_service(runner):
    code = "import socket\ns=socket.socket(); s.bind(('127.0.0.1', 80)); print('bound')"
    denied = runner.py(code)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
    allowed = runner.py(code, "--cap-add", "NET_BIND_SERVICE")
    assert allowed.returncode == 0 and "bound" in allowed.stdout, allowed


def test_http_server_on_port_80_answers_on_the_sandboxs_own_lo(runner):
    script = ("python3 -m http.server 80 --bind 127.0.0.1 >/dev/null 2>&1 & "
              "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 0.3; "
              "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:80/').status)\" 2>/dev/null && break; done")
    r = runner.sh(script, "--cap-add", "NET_BIND_SERVICE", timeout=60)
    assert "200" in r.stdout, r


def test_raw_socket_needs_net_raw(runner):
    code = "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print('raw')"
    denied = runner.py(code)
    assert denied.returncode != 0 and ("Operation not permitted" in denied.stderr
                                       or "Permission denied" in denied.stderr), denied
    allowed = runner.py(code, "--cap-add", "NET_RAW")
    assert allowed.returncode == 0 and "raw" in allowed.stdout, allowed


def test_chown_needs_cap_chown(root_runner):
    # As root the sandbox maps 65536 ids, so chown to another mapped id is a real test of
    # CAP_CHOWN. (Rootless maps a single id: chown to any other id fails with EINVAL anyway.)
    script = "touch /tmp/f && chown 1000:1000 /tmp/f && stat -c %u /tmp/f"
    denied = root_runner.sh(script)
    assert denied.returncode != 0 and "Operation not permitted" in denied.stderr, denied
    allowed = root_runner.sh(script, "--cap-add", "CHOWN")
    assert allowed.returncode == 0 and allowed.stdout.strip() == "1000", allowed


# --- seccomp -----------------------------------------------------------------------

def test_seccomp_denies_escape_syscalls_with_eperm(runner):
    r = probe(runner, """
for name, args in [("mount", (0, 0, 0, 0, 0)), ("unshare", (0x10000000,)), ("ptrace", (16, 1, 0, 0)),
                   ("keyctl", (0, 0, 0, 0)), ("bpf", (0, 0, 0)), ("personality", (0x1234,)),
                   ("setns", (0, 0)), ("open_by_handle_at", (0, 0, 0)), ("init_module", (0, 0, 0))]:
    print(name, sc(NR[name], *args))
print("getpid", "ok" if sc(NR["getpid"]) == 0 else "bad")
""")
    assert r.returncode == 0, r
    got = dict(l.split() for l in r.stdout.splitlines())
    for name in ("mount", "unshare", "ptrace", "keyctl", "bpf", "personality", "setns",
                 "open_by_handle_at", "init_module"):
        assert got[name] == "EPERM", (name, r)
    assert got["getpid"] == "ok"


def test_seccomp_unknown_to_policy_gets_enosys_and_clone3_falls_back(runner):
    r = probe(runner, """
print("clone3", sc(NR["clone3"], 0, 0))
import subprocess; print("fork", subprocess.run(["/bin/true"]).returncode)
""")
    assert r.returncode == 0, r
    assert "clone3 ENOSYS" in r.stdout and "fork 0" in r.stdout, r


def test_seccomp_kill_rule_ends_program_with_sigsys(runner, tmp_profile):
    p = tmp_profile("""
version: 1
extends: strict
seccomp:
  deny: !extend
    - {names: [acct], action: kill}
""")
    r = probe(runner, "print('before', flush=True); sc(NR['acct'], 0); print('after')", profile=p)
    assert r.returncode == 159, r                               # 128 + SIGSYS
    assert "before" in r.stdout and "after" not in r.stdout


# --- filesystem ----------------------------------------------------------------------

def test_system_dirs_and_etc_are_read_only(runner):
    r = probe(runner, """
for p in ("/usr/pysbx-x", "/etc/pysbx-x", "/bin/pysbx-x", "/pysbx-x"):
    try:
        open(p, "w")
        print(p, "WRITABLE")
    except OSError as e:
        print(p, errno.errorcode[e.errno])
""")
    assert r.returncode == 0, r
    for line in r.stdout.splitlines():
        assert line.split()[1] == "EROFS", r


def test_masked_and_read_only_proc_paths(runner):
    r = probe(runner, """
for p in ("/proc/kcore", "/proc/keys", "/proc/timer_list"):
    try:
        with open(p, "rb") as f:
            print(p, "len", len(f.read(64)))
    except OSError as e:
        print(p, errno.errorcode[e.errno])
for p in ("/proc/sys/kernel/hostname", "/proc/sysrq-trigger", "/proc/sys/vm/drop_caches"):
    try:
        open(p, "wb").close()                  # open only: never write a tunable
        print(p, "WRITABLE")
    except OSError as e:
        print(p, errno.errorcode[e.errno])
print("sysfirmware", os.listdir("/sys/firmware"))
""")
    assert r.returncode == 0, r
    for line in r.stdout.splitlines():
        if line.startswith("/proc/sys") or line.startswith("/proc/sysrq"):
            assert "WRITABLE" not in line, r
        elif line.startswith("/proc/"):
            assert line.endswith("len 0") or "EACCES" in line or "ENOENT" in line, r
    assert "sysfirmware []" in r.stdout


def test_pid1_exe_gives_no_handle_on_a_host_binary(runner):
    r = probe(runner, """
for p in ("/proc/1/exe", "/proc/1/mem", "/proc/1/root"):
    try:
        fd = os.open(p, os.O_RDWR if p != "/proc/1/root" else os.O_RDONLY)
        print(p, "OPENED"); os.close(fd)
    except OSError as e:
        print(p, errno.errorcode[e.errno])
try:
    print("readlink", os.readlink("/proc/1/exe"))
except OSError as e:
    print("readlink", errno.errorcode[e.errno])
""")
    assert r.returncode == 0, r
    assert "OPENED" not in r.stdout, r


def test_no_descriptor_of_the_caller_leaks_in(runner, shared_tmp):
    f = open(shared_tmp / "leak", "w")
    try:
        cmd = [PYSANDBOX, "run", "--profile", "strict", "--", "/bin/sh", "-c", "ls /proc/self/fd"]
        kw = dict(user=runner.uid, group=runner.gid, extra_groups=[]) if runner.rootless else {}
        p = subprocess.run(cmd, capture_output=True, text=True, pass_fds=(f.fileno(),), cwd="/tmp",
                           env=runner.env(), timeout=30, **kw)
    finally:
        f.close()
    fds = sorted(int(x) for x in p.stdout.split())
    assert fds == [0, 1, 2, 3], p                              # 3 is ls's own directory handle


# --- exit codes, signals, timeout, supervision --------------------------------------------

@pytest.mark.parametrize("script,code", [("exit 0", 0), ("exit 3", 3), ("kill -TERM $$", 143), ("kill -KILL $$", 137)])
def test_exit_status_is_the_programs(runner, script, code):
    assert runner.sh(script).returncode == code


def test_command_not_found_is_127_and_not_executable_126(runner):
    r = runner("run", "--profile", "strict", "--", "/no/such/program")
    assert r.returncode == 127 and r.stderr.count("\n") == 1 and "not found" in r.stderr, r
    r = runner("run", "--profile", "strict", "--", "/etc/passwd")
    assert r.returncode == 126 and r.stderr.count("\n") == 1, r


def test_setup_failure_is_125(runner, tmp_profile):
    p = tmp_profile("version: 1\nextends: strict\nlandlock: {abi: 99}\n")     # above any kernel's Landlock ABI
    r = runner("run", "--profile", p, "--", "/bin/true")
    assert r.returncode == 125 and "landlock" in r.stderr and r.stderr.count("\n") == 1, r


def test_sigterm_is_forwarded_to_the_program(runner):
    kw = dict(user=runner.uid, group=runner.gid, extra_groups=[]) if runner.rootless else {}
    p = subprocess.Popen([PYSANDBOX, "run", "--profile", "strict", "--", "/bin/sh", "-c",
                          "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/tmp",
                         env=runner.env(), **kw)
    try:
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=20)
    finally:
        p.kill()
    assert p.returncode == 7 and "got-term" in out, (out, err)


def test_zombies_are_reaped_by_pid1(runner):
    r = runner.sh("for i in 1 2 3 4 5; do (sleep 0.05 &) ; done; sleep 0.6; "
                  "ps -e -o stat= | grep -c '^Z' || true")
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "0", r


def test_timeout_kills_the_whole_sandbox(runner):
    """Every process is gone (PID 1's pidfd, the cgroups), not merely the CLI back in time."""
    kw = dict(user=runner.uid, group=runner.gid, extra_groups=[]) if runner.rootless else {}
    p = subprocess.Popen([PYSANDBOX, "run", "--profile", "strict", "--timeout", "1", "--", "/bin/sh", "-c",
                          "sleep 30 & echo ready; sleep 30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd="/tmp", env=runner.env(), **kw)
    procs = None
    try:
        assert p.stdout.readline().strip() == "ready"
        procs = SandboxProcs.from_log(audit_log(runner))
        out, err = p.communicate(timeout=30)
        assert p.returncode == 124 and "timed out" in err, (p.returncode, out, err)
        assert procs.gone(timeout=0.5), "sandbox processes survived the timeout"
    finally:
        p.kill()
        if procs:
            procs.kill()
            procs.close()


def test_supervisor_sigkill_takes_the_sandbox_down(runner):
    marker = "31.4159"
    kw = dict(user=runner.uid, group=runner.gid, extra_groups=[]) if runner.rootless else {}
    p = subprocess.Popen([PYSANDBOX, "run", "--profile", "strict", "--", "/bin/sh", "-c",
                          f"echo ready; sleep {marker}"], stdout=subprocess.PIPE, text=True,
                         cwd="/tmp", env=runner.env(), **kw)
    procs = None
    try:
        assert p.stdout.readline().strip() == "ready"
        procs = SandboxProcs.from_log(audit_log(runner))
        p.kill()
        p.wait(timeout=10)
        assert procs.gone(timeout=5), "sandbox processes survived their supervisor"
    finally:
        p.kill()
        if procs:
            procs.kill()
            procs.close()


# --- commands ----------------------------------------------------------------------

def test_explain_doctor_profiles(root_runner):
    r = root_runner("explain", "--profile", "strict")
    assert r.returncode == 0 and "seccomp" in r.stdout and "no_new_privs yes" in r.stdout, r
    r = root_runner("explain", "--profile", "strict", "--json")
    import json
    plan = json.loads(r.stdout)
    assert plan["name"] == "strict" and plan["capabilities"] == []
    r = root_runner("doctor")
    assert r.returncode == 0 and "user namespace" in r.stdout, r
    r = root_runner("profiles")
    assert "strict" in r.stdout and "default" in r.stdout, r


def test_example_profile_extending_strict_serves_port_80(root_runner):
    r = root_runner("explain", "--profile", str(__import__("conftest").REPO / "profiles/examples/web-server.yaml"))
    assert r.returncode == 0 and "NET_BIND_SERVICE" in r.stdout and "/srv" in r.stdout, r


# --- bad input: one line, file:line:col, exit 2, no traceback -------------------------------

@pytest.mark.parametrize("text,expect", [
    ("version: 1\nextends: strict\nseccomp: {allow: [read\n", ":4:"),                    # broken YAML
    ("version: 1\nextends: strict\nfilesystme: {}\n", ":3:1: "),                          # unknown key
    ("version: 1\nextends: strict\nseccomp:\n  allow: !extend [nosuchcall]\n", ":4:"),  # unknown syscall
    ("version: 1\nextends: strict\ncapabilities:\n  add: [CAP_FLY]\n", ":4:9:"),          # unknown capability
    ("version: 1\nextends: nosuchprofile\n", ":2:1:"),                                    # missing parent
    ("version: 1\nextends: strict\nlimits: {memory: lots}\n", ":3:"),                     # bad value
])
def test_bad_profiles_give_one_line_with_location(root_runner, tmp_profile, text, expect):
    p = tmp_profile(text)
    r = root_runner("run", "--profile", p, "--", "/bin/true")
    assert r.returncode == 2, r
    assert r.stderr.count("\n") == 1 and p + expect in r.stderr, r


def test_extends_cycle_is_reported(root_runner, tmp_profile):
    a = tmp_profile("version: 1\nextends: ./b.yaml\n", "a.yaml")
    tmp_profile("version: 1\nextends: ./a.yaml\n", "b.yaml")
    r = root_runner("run", "--profile", a, "--", "/bin/true")
    assert r.returncode == 2 and "cycle" in r.stderr and r.stderr.count("\n") == 1, r


@pytest.mark.parametrize("flags", [
    ["--cap-add", "FLY"], ["--memory", "lots"], ["--cpus", "-1"], ["-v", "/no/such/dir:/x"],
    ["--ulimit", "nofile=abc"], ["--timeout", "0"], ["--security-opt", "bogus"], ["--profile", "/no/such.yaml"],
    ["--pids-limit", "x"], ["-v", "relative"], ["--bogus-flag"],
])
def test_bad_flags_give_one_line_exit_2(root_runner, flags):
    r = root_runner("run", *flags, "--", "/bin/true")
    assert r.returncode == 2, r
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("pysandbox"), r


# --- identity ------------------------------------------------------------------------

def test_rootless_caller_can_map_to_itself(user_runner, tmp_profile):
    p = tmp_profile("version: 1\nextends: strict\nuser: {uid: caller, gid: caller}\n")
    r = user_runner("run", "--profile", p, "--", "/bin/sh", "-c", "id -u; id -g")
    assert r.returncode == 0 and r.stdout.split() == [str(user_runner.uid), str(user_runner.gid)], r


def test_sandbox_root_is_an_unprivileged_host_id(root_runner, shared_tmp):
    data = shared_tmp / "data"
    data.mkdir()
    os.chmod(data, 0o777)
    r = root_runner.sh("id -u; touch /data/made-inside", "-v", f"{data}:/data")
    assert r.returncode == 0 and r.stdout.strip() == "0", r             # root inside ...
    st = os.stat(data / "made-inside")
    assert st.st_uid == 1_000_000_000 and st.st_gid == 1_000_000_000    # ... nobody special outside
    r = root_runner.sh("touch /data/ro-write", "-v", f"{data}:/data:ro")
    assert r.returncode != 0 and "Read-only file system" in r.stderr, r


def test_rootless_writable_bind_writes_as_the_caller(user_runner, shared_tmp):
    """With a map of the caller's own ids, root inside is the caller: it writes the caller's bind
    mount, as the caller. With subordinate ids (rootless `auto` for a caller with a range) root
    inside is not the caller: the caller's 0755 directory is not its to write."""
    data = shared_tmp / "udata"
    data.mkdir()
    os.chown(data, user_runner.uid, user_runner.gid)
    own = shared_tmp / "own.yaml"
    own.write_text("version: 1\nextends: strict\nuser:\n  uid_map: [{inside: 0, outside: caller, count: 1}]\n"
                   "  gid_map: [{inside: 0, outside: caller, count: 1}]\n")
    os.chmod(own, 0o644)
    r = user_runner.sh("touch /data/made-inside && id -u", "-v", f"{data}:/data", profile=str(own))
    assert r.returncode == 0 and r.stdout.strip() == "0", r
    assert os.stat(data / "made-inside").st_uid == user_runner.uid
    if "subordinate ids" in user_runner("explain", "--profile", "strict").stdout:
        r = user_runner.sh("touch /data/other", "-v", f"{data}:/data")
        assert r.returncode == 1 and "Permission denied" in r.stderr, r
        assert not (data / "other").exists()


def test_bind_target_through_a_symlink_is_refused(root_runner, shared_tmp):
    # /bin is a symlink (usr-merge) in the sandbox root: a target below it is refused rather than
    # followed; a symlink can never lead a mount target out of the new root.
    src = shared_tmp / "src"
    src.mkdir()
    r = root_runner.sh("true", "-v", f"{src}:/bin/evil")
    assert r.returncode == 125 and "symbolic link" in r.stderr, r
