"""The Python API (sandbox/api.py): compile once, launch many; threads; asyncio; real sandboxes."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, TEST_USER, SandboxProcs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs as root (and switches to the test user)")


@pytest.fixture(scope="module")
def strict():
    from sandbox.api import Sandbox
    return Sandbox("strict")


def test_exit_code_output_input_and_events(strict):
    r = strict.run(["/bin/sh", "-c", "cat; echo out; echo err >&2; exit 3"], input=b"in\n")
    assert r.exit_code == 3 and r.returncode == 3 and not r.ok
    assert r.stdout == b"in\nout\n" and r.stderr == b"err\n"
    types = [e["type"] for e in r.events]
    assert types[0] == "sandbox_start" and types[-1] == "sandbox_exit", types
    assert all(e["sandbox_id"] == r.sandbox_id for e in r.events)
    assert r.events[-1]["status"]["exit_code"] == 3


def test_text_env_and_large_output(strict):
    r = strict.run(["/bin/sh", "-c", 'echo "$FOO"; head -c 3000000 /dev/zero'], env={"FOO": "bar"}, text=True)
    assert r.exit_code == 0 and r.stdout.startswith("bar\n") and len(r.stdout) == 4 + 3000000


def test_timeout_kills_the_sandbox(strict):
    t = time.monotonic()
    r = strict.run(["/bin/sleep", "30"], timeout=0.5)
    assert r.exit_code == 124 and r.timed_out, r
    assert time.monotonic() - t < 10
    # every process is gone: PID 1 (whose exit the kernel completes only after the rest of its PID
    # namespace) and the cgroups (pidfd/cgroup.procs), not only the call back in time
    start = next(e for e in r.events if e["type"] == "sandbox_start")
    procs = SandboxProcs(start)
    try:
        assert procs.gone(timeout=0), start
    finally:
        procs.close()
    assert any(e["type"] == "timeout" for e in r.events), r.events


def test_not_found_and_check(strict):
    from sandbox.api import SandboxError
    r = strict.run(["/no/such/program"])
    assert r.exit_code == 127 and "not found" in (r.message or ""), r
    with pytest.raises(SandboxError):
        r.check()


def test_denials_are_this_runs_only(strict):
    code = "import ctypes; print(ctypes.CDLL(None).mount(b'x', b'/tmp', b'tmpfs', 0, None))"
    a = strict.run(["/usr/bin/python3", "-c", code], text=True)
    b = strict.run(["/bin/true"])
    assert a.stdout.strip() == "-1" and a.denied("mount") and a.denied()
    assert not b.denied() and b.denials == []


def test_bad_profile_and_bad_override():
    from sandbox.api import Sandbox, SandboxError
    with pytest.raises(SandboxError):
        Sandbox("no-such-profile-xyz")
    with pytest.raises(SandboxError):
        Sandbox("strict", cap_add=["NOT_A_CAP"])
    with pytest.raises(TypeError):
        Sandbox("strict", no_such_option=1)


def test_nul_byte_in_argv_or_env_is_refused_before_launch(strict):
    """How it failed: a NUL byte in argv or in the environment reached the launch and came back as
    exit 125 "cannot start pid 1: embedded null byte". Bad arguments are the caller's error: a
    ValueError before anything is launched (as subprocess raises), SandboxError for an override
    compiled into the profile; the sandbox still runs what is fine."""
    from sandbox.api import Sandbox, SandboxError
    with pytest.raises(ValueError, match="null byte"):
        strict.run(["/bin/echo", "a\0b"])
    with pytest.raises(ValueError, match="NUL byte"):
        strict.run(["/bin/true"], env={"A": "x\0y"})
    with pytest.raises(ValueError, match="'='"):
        strict.run(["/bin/true"], env={"A=B": "x"})
    with pytest.raises(SandboxError, match="contains a NUL byte"):
        Sandbox("strict", env={"A": "x\0y"})
    assert strict.run(["/bin/echo", "ok"], env={"A": "x"}).stdout == b"ok\n"


def test_warm_launch_does_no_yaml_schema_or_seccomp_compilation(strict, monkeypatch):
    """After the constructor, a run must not touch the loader, the schema, the compiler or libseccomp."""
    import jsonschema
    import pyseccomp
    import yaml

    import policies.compiler
    import policies.loader
    import sandbox.seccomp

    def boom(*a, **k):
        raise AssertionError("compilation work during a warm launch")
    for mod, attr in ((yaml, "safe_load"), (yaml, "load"), (yaml, "compose"), (jsonschema, "validate"),
                      (policies.loader, "load_profile"), (policies.compiler, "compile_profile"),
                      (policies.compiler, "compile_document"), (policies.compiler, "validate"),
                      (sandbox.seccomp, "build_bpf"), (pyseccomp, "SyscallFilter")):
        monkeypatch.setattr(mod, attr, boom)
    code = "import ctypes; print(ctypes.CDLL(None).mount(b'x', b'/tmp', b'tmpfs', 0, None))"
    r = strict.run(["/usr/bin/python3", "-c", code], text=True)
    assert r.exit_code == 0 and r.stdout.strip() == "-1" and r.denied("mount"), r
    # the launch server (a process of its own) has not loaded libseccomp or PyYAML's C parser either
    from sandbox.server.client import Client
    with open(f"/proc/{Client.get().proc.pid}/maps") as f:
        maps = f.read()
    assert "libseccomp" not in maps and "_yaml" not in maps and "jsonschema" not in maps


def test_ten_threads_at_once(strict):
    results = [None] * 10
    errors = []
    barrier = threading.Barrier(10)

    def go(i):
        try:
            barrier.wait()
            results[i] = strict.run(["/bin/sh", "-c", f"echo {i} $$; readlink /proc/self/ns/pid; sleep 0.3"],
                                    text=True, timeout=60)
        except Exception as e:                    # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=go, args=(i,)) for i in range(10)]
    t = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    assert all(r is not None and r.exit_code == 0 for r in results), results
    lines = [r.stdout.split("\n") for r in results]
    assert [int(l[0].split()[0]) for l in lines] == list(range(10))
    assert all(l[0].split()[1] == "2" for l in lines)             # the program is pid 2 in each sandbox
    assert len({l[1] for l in lines}) == 10                       # ten distinct pid namespaces
    assert len({r.sandbox_id for r in results}) == 10
    assert time.monotonic() - t < 60


def test_asyncio(strict):
    async def main():
        return await asyncio.gather(*(strict.run_async(["/bin/sh", "-c", f"echo {i}"], text=True)
                                      for i in range(5)))
    rs = asyncio.run(main())
    assert [r.stdout for r in rs] == [f"{i}\n" for i in range(5)]


ROOTLESS_THREADS = r'''
import json, sys, threading
from sandbox.api import Sandbox
sb = Sandbox("strict")
out = [None] * 10
def go(i):
    # the sleep keeps all ten alive at once: an ended namespace's inode number can be reused
    r = sb.run(["/bin/sh", "-c", "id -u; readlink /proc/self/ns/pid; sleep 1"], text=True, timeout=60)
    out[i] = [r.exit_code, r.stdout, r.stderr]
ts = [threading.Thread(target=go, args=(i,)) for i in range(10)]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps(out))
'''


def test_ten_threads_rootless(delegated_cgroups):
    import pwd
    pw = pwd.getpwnam(TEST_USER)
    p = subprocess.run([sys.executable, "-c", ROOTLESS_THREADS], capture_output=True, text=True, timeout=180,
                       user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], cwd="/tmp",
                       env={"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert all(o[0] == 0 and o[1].split()[0] == "0" for o in out), out      # root inside, mapped to the user
    assert len({o[1].split()[1] for o in out}) == 10, out


def test_many_threads_never_hang(strict):
    """Regression: PID 1 used to be cloned straight from the calling thread; with other threads
    running, the raw clone could inherit a malloc arena / GIL state held by a thread the child
    lacks and hang forever (seen ~1 in 100 under load). Every launch now goes through the API's
    launch server (sandbox/server/), a process of its own; 40 threads x 3 runs must all finish."""
    done, errors = [], []

    def go(i):
        try:
            for j in range(3):
                r = strict.run(["/bin/sh", "-c", f"echo {i}.{j}"], text=True, timeout=60)
                assert r.exit_code == 0 and r.stdout == f"{i}.{j}\n", r
                done.append(1)
        except Exception as e:                    # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=go, args=(i,), daemon=True) for i in range(40)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 240
    for th in threads:
        th.join(max(0.1, deadline - time.monotonic()))
    assert not any(th.is_alive() for th in threads), f"hung: {sum(th.is_alive() for th in threads)} threads"
    assert not errors, errors[:3]
    assert len(done) == 120


# --- the launch server (sandbox/server/) ------------------------------------------------------

KILLED_CALLER = r'''
import os, sys, threading, time
from sandbox.api import Sandbox
from sandbox.server.client import Client
sb = Sandbox("strict")
threading.Thread(target=sb.run, args=(["/bin/sleep", "60"],), daemon=True).start()
server = Client.get().proc.pid
for _ in range(200):                     # until PID 1's program runs
    kids = open(f"/proc/{server}/task/{server}/children").read().split()
    progs = [c for k in kids for c in open(f"/proc/{k}/task/{k}/children").read().split()]
    if any(open(f"/proc/{p}/comm").read().strip() == "sleep" for p in progs):
        break
    time.sleep(0.05)
print(server, " ".join(kids), " ".join(progs), flush=True)
time.sleep(60)
'''


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_caller_killed_takes_its_sandboxes_down():
    """The API process dies (SIGKILL: no clean-up of its own): the launch server sees its control
    socket close, kills every sandbox it started, removes their cgroups and exits."""
    p = subprocess.Popen([sys.executable, "-c", KILLED_CALLER], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = p.stdout.readline().split()
        server, rest = int(line[0]), [int(x) for x in line[1:]]
        assert rest, line                                  # the template, PID 1 and the program
        cgroup_dirs = []
        for pid in rest:
            with open(f"/proc/{pid}/cgroup") as f:
                for entry in f.read().splitlines():
                    _, ctl, path = entry.split(":", 2)
                    if ctl in ("memory", "pids") and "/pysandbox" in path:
                        cgroup_dirs.append(f"/sys/fs/cgroup/{ctl}{path}")
        assert cgroup_dirs, "the sandbox runs in its own cgroups"
        p.kill()
        p.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(x) for x in (server, *rest)):
            time.sleep(0.1)
        assert not any(_alive(x) for x in (server, *rest)), "sandbox or server survived its caller"
        assert not any(os.path.exists(d) for d in cgroup_dirs), cgroup_dirs
    finally:
        if p.poll() is None:
            p.kill()


STATE_SWITCH = r'''
import os, sys
from sandbox.api import Sandbox
from sandbox.server.client import Client
a, b = sys.argv[1:3]
os.environ["PYSANDBOX_STATE_DIR"] = a
sb = Sandbox("strict")                   # (a cgroup limit: every launch records it in its state directory)
out = [sb.run(["/bin/true"]).exit_code, Client.get().proc.pid, os.path.isdir(os.path.join(a, "owners")),
       os.path.exists(b)]
os.environ["PYSANDBOX_STATE_DIR"] = b
out += [sb.run(["/bin/true"]).exit_code, Client.get().proc.pid, os.path.isdir(os.path.join(b, "owners"))]
os.environ["PYSANDBOX_STATE_DIR"] = a
out += [sb.run(["/bin/true"]).exit_code, Client.get().proc.pid]
print(*out)
'''


def test_state_dir_changed_between_runs(tmp_path):
    """The launch server works in the state directory it was started with: a process that changes
    PYSANDBOX_STATE_DIR between runs launches into the new directory through a server of that
    directory (the launch records itself there), and back in the first through the first server."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    p = subprocess.run([sys.executable, "-c", STATE_SWITCH, a, b], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr[-2000:]
    ok1, s1, owners_a, b_before, ok2, s2, owners_b, ok3, s3 = p.stdout.split()
    assert (ok1, ok2, ok3) == ("0", "0", "0"), p.stdout
    assert owners_a == "True" and b_before == "False", p.stdout
    assert owners_b == "True", "the run after the change did not launch in the new state directory"
    assert s1 != s2 and s3 == s1, p.stdout


LIMITS_CALLER = r'''
import resource, threading, time
from sandbox.api import Sandbox
sb = Sandbox("strict")
from sandbox.server.client import Client
other = threading.Thread(target=sb.run, args=(["/bin/sleep", "2"],))
other.start()
server = Client.get().proc.pid
for _ in range(200):                     # until the other sandbox's program runs (the server's grandchild)
    kids = open(f"/proc/{server}/task/{server}/children").read().split()
    if any(open(f"/proc/{p}/comm").read().strip() == "sleep"
           for k in kids for p in open(f"/proc/{k}/task/{k}/children").read().split()):
        break
    time.sleep(0.02)
r = sb.run(["/bin/sh", "-c", "ls /proc/self/fd; grep 'open files' /proc/1/limits"], text=True)
other.join()
print(r.exit_code)
print(r.stdout, end="")
'''


def test_launch_server_leaks_nothing_into_sandboxes():
    """PID 1 and the program start from a server that supervises other sandboxes at the same time:
    the program holds only its stdio, and PID 1 runs with the caller's RLIMIT_NOFILE although the
    server raised its own soft limit to the hard limit (here: a caller with soft 512)."""
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard > 512
    p = subprocess.run([sys.executable, "-c", LIMITS_CALLER], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)},
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard)))
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    assert lines[0] == "0", p.stdout
    fds = sorted(int(x) for x in lines[1:-1])
    assert fds[:3] == [0, 1, 2] and len(fds) == 4, p.stdout       # 0 1 2 + ls's own directory fd
    limits = lines[-1].split()                                   # Max open files SOFT HARD files
    assert limits[3:5] == ["512", str(hard)], limits


def test_pid1_is_the_servers_child_and_small(strict):
    """PID 1 is cloned from the server's template (CLONE_PARENT): the server is its parent (it
    reaps it, PDEATHSIG points at it), and it shares the template's pages."""
    from sandbox.server.client import Client
    t = threading.Thread(target=strict.run, args=(["/bin/sleep", "2"],))
    t.start()
    try:
        server = Client.get().proc.pid
        pid1 = None
        for _ in range(100):
            for k in open(f"/proc/{server}/task/{server}/children").read().split():
                with open(f"/proc/{k}/status") as f:
                    st = f.read()
                if st.split("NSpid:")[1].split("\n")[0].split()[-1] == "1":
                    pid1 = int(k)
            if pid1:
                break
            time.sleep(0.05)
        assert pid1, "no PID 1 among the server's children"
        with open(f"/proc/{pid1}/status") as f:
            assert f"PPid:\t{server}" in f.read()
    finally:
        t.join()


def test_a_dead_template_is_replaced(strict):
    """The template (which clones every PID 1) is killed: the next launch gets a new one."""
    import signal
    from sandbox.server.client import Client
    assert strict.run(["/bin/true"]).exit_code == 0
    server = Client.get().proc.pid
    kids = open(f"/proc/{server}/task/{server}/children").read().split()
    def is_template(k) -> bool:
        """In the server's user and pid namespaces (a spare PID 1 has its own; one of a plan
        without a pid namespace still has its user namespace), and not a PID 1 that just ended
        and is not reaped yet (a zombie's links are gone)."""
        try:
            return all(os.readlink(f"/proc/{k}/ns/{ns}") == os.readlink(f"/proc/{server}/ns/{ns}")
                       for ns in ("user", "pid"))
        except OSError:
            return False
    template = [int(k) for k in kids if is_template(k)]
    assert len(template) == 1, kids                     # the template; the others are spare PID 1s
    fd = os.pidfd_open(template[0])
    signal.pidfd_send_signal(fd, signal.SIGKILL)
    import select
    assert select.select([fd], [], [], 10)[0]           # the template has exited (its pidfd: an event)
    os.close(fd)
    r = strict.run(["/bin/sh", "-c", "echo again"], text=True)
    assert r.exit_code == 0 and r.stdout == "again\n", r


# --- roots built ahead by the launch server's spare PID 1s ---------------------------------

BUILT_AHEAD = r'''
import json, os, sys, time
from sandbox.api import Sandbox
from sandbox.server.client import Client

def table(text):
    """mountinfo without what differs between any two sandboxes (mount ids, device numbers)."""
    out = []
    for line in text.splitlines():
        f = line.split()
        sep = f.index("-")
        out.append([f[3], f[4], f[5], *f[sep + 1:]])
    return out

def built_spares(server):
    """The server's children that pivoted into a root whose /etc/hostname is the generated one.
    Not root: a spare whose builder thread took the sandbox's identity is no longer dumpable (the
    kernel's rule for a process whose credentials changed), so its root cannot be looked into:
    that refusal is the sign (the template and a spare not built are dumpable)."""
    found = []
    for k in open(f"/proc/{server}/task/{server}/children").read().split():
        try:
            with open(f"/proc/{k}/root/etc/hostname") as f:
                if f.read() == "sandbox\n":
                    found.append(int(k))
        except PermissionError:
            if os.geteuid() != 0:
                found.append(int(k))
        except OSError:
            pass
    return found

sb = Sandbox("strict")
cat = ["/bin/sh", "-c", "echo $$; id -u; cat /proc/self/mountinfo"]
first = sb.run(cat, text=True)                 # a fresh PID 1: the program's process builds the root
server = Client.get().proc.pid
spares = []
for _ in range(300):                           # the spare cloned and built for the next launch
    spares = built_spares(server)
    if spares:
        break
    time.sleep(0.01)
second = sb.run(cat, text=True)                # served by it
third = sb.run(cat, text=True)
used = bool(spares) and not os.path.exists(f"/proc/{spares[0]}")
killed = []
for _ in range(300):                           # a spare that dies before its launch: a fresh PID 1
    killed = built_spares(server)
    if killed:
        break
    time.sleep(0.01)
for k in killed:
    os.kill(k, 9)
for k in killed:                               # dead (a zombie of the server's) before the launch
    while open(f"/proc/{k}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.005)
fourth = sb.run(cat, text=True)
runs = (first, second, third, fourth)
print(json.dumps({"codes": [r.exit_code for r in runs], "spares": spares, "used": used, "killed": killed,
                  "tables": [table(r.stdout.split("\n", 2)[2]) if r.exit_code == 0 else None for r in runs],
                  "heads": [r.stdout.split("\n", 2)[:2] for r in runs],
                  "messages": [r.message for r in runs], "stderr": [r.stderr for r in runs]}))
'''


def _built_ahead(**run_as) -> dict:
    p = subprocess.run([sys.executable, "-c", BUILT_AHEAD], capture_output=True, text=True, timeout=120,
                       cwd="/tmp", **run_as)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout)


def _check_built_ahead(out: dict, uid_inside: str) -> None:
    assert out["codes"] == [0, 0, 0, 0], (out["codes"], out["messages"], out["stderr"])
    assert out["spares"], "no spare PID 1 with a built root after the first launch"
    assert out["used"], "the next launch did not take the built spare"
    assert out["killed"], "no built spare to kill before the fourth launch"
    first, second, third, fourth = out["tables"]
    assert first == second == third == fourth       # the same mounts, flags, sources and order
    assert len(first) > 30
    assert all(h == ["2", uid_inside] for h in out["heads"]), out["heads"]   # still pid 2, same identity


def test_root_built_ahead_is_the_same_root():
    """After a launch, the server's next spare PID 1 builds the plan's root ahead (in a builder
    thread of the spare: init.prebuild_root); the next launch takes it and the program skips that
    work. The sandbox it gives is the same: every mount, its flags and order, the program's pid and uid. A
    built spare that died before its launch is replaced by a fresh PID 1."""
    with open("/etc/hostname") as f:
        assert f.read() != "sandbox\n"            # (how the test tells a built spare from the host)
    _check_built_ahead(_built_ahead(env={**os.environ, "PYTHONPATH": str(REPO)}), "0")


def test_root_built_ahead_rootless(delegated_cgroups):
    import pwd
    pw = pwd.getpwnam(TEST_USER)
    out = _built_ahead(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                       env={"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir, "PYTHONPATH": str(REPO)})
    _check_built_ahead(out, "0")


def test_bind_sources_are_taken_at_each_run():
    """A plan with a bind mount of the caller's is never built ahead: a source replaced between two
    runs (rm -rf, mkdir) is the new one in the next run."""
    import shutil
    import tempfile
    from sandbox.api import Sandbox
    top = tempfile.mkdtemp(prefix="pysandbox-bind-", dir="/tmp")     # reachable by the sandbox's root
    try:
        os.chmod(top, 0o755)
        src = os.path.join(top, "src")
        for i, word in enumerate(("one", "two", "three")):
            if i:
                shutil.rmtree(src)
            os.mkdir(src)
            with open(os.path.join(src, "f"), "w") as f:
                f.write(word + "\n")
            if not i:
                sb = Sandbox("strict", volumes=[f"{src}:/data:ro"])
            r = sb.run(["/bin/cat", "/data/f"], text=True)
            assert r.exit_code == 0 and r.stdout == word + "\n", r
            time.sleep(0.2)          # (a spare built ahead would have bound the old source by now)
    finally:
        shutil.rmtree(top, ignore_errors=True)
