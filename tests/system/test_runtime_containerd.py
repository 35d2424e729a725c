"""containerd driving pysandbox-runtime through its runc shim v2 (`io.containerd.runc.v2`, the
runtime binary given as `ctr run --runc-binary`, the same option as the CRI plugin's `BinaryName`),
the way a user would: a private containerd per module (its own root, state, socket and config file
under a temporary directory; the system's containerd, /var/lib/containerd and its socket are never
used), a busybox image imported offline (`ctr image import` of a docker-archive tar made by
tests/imagebuild.py from the host's busybox), then `ctr run`, `ctr task exec/ps/pause/resume/
kill/delete`, as root.

The runtime is called through a wrapper script that appends every argv to a log: the last test
checks that the shim called nothing the runtime does not implement.

Not here: rootless containerd (it needs rootlesskit, not installed; containerd 1.6 has no rootless
mode of its own), the CRI plugin (no kubelet or crictl: disabled in the config).

Leaves nothing: the fixture deletes every task, container and image, stops containerd and its shims
(found by the private socket path in their command line: processes this module started), unmounts
what is mounted below its directory, removes the containers' cgroup parent (`/NAMESPACE`, ctr's
default cgroupsPath `/NAMESPACE/ID`) and, when they were not there before, the /run/containerd/s and
/run/containerd/fifo directories the shim and ctr create whatever --state says (their socket and
fifo paths are fixed in containerd 1.6)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import STATE_ENV, VENV_BIN

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import imagebuild  # noqa: E402

RUNTIME = str(VENV_BIN / "pysandbox-runtime")
IMAGE = "docker.io/library/psbrt-bb:1"
RUN_CTRD = "/run/containerd"
CG = "/sys/fs/cgroup"
# what pysandbox-runtime implements (cli.COMMANDS); the shim must call nothing else here
KNOWN = {"create", "start", "state", "kill", "delete", "exec", "ps", "pause", "resume", "features"}
REFUSED = {"checkpoint"}       # called by test_what_the_runtime_refuses_reaches_the_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("containerd") or not shutil.which("ctr"),
                                reason="containerd as root")


def _wait(pred, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Ctrd:
    def __init__(self, d: str, ns: str, state_dir: str):
        self.d, self.ns, self.state_dir = d, ns, state_dir
        self.sock = f"{d}/c.sock"
        self.wrapper = f"{d}/pysandbox-runtime-logged"
        self.argv_log = f"{d}/argv.log"
        self.rtroot = f"{d}/rt"                  # the runtime's --root: RTROOT/NAMESPACE
        self.fifo = f"{d}/fifo"

    def ctr(self, *args, timeout=60, input=None) -> subprocess.CompletedProcess:
        return subprocess.run(["ctr", "-a", self.sock, "-n", self.ns, *args], capture_output=True, text=True,
                              timeout=timeout, input=input)

    def run(self, *args, timeout=60) -> subprocess.CompletedProcess:
        """`ctr run` through pysandbox-runtime: args are ctr run's options, then IMAGE ID CMD..."""
        return self.ctr("run", "--fifo-dir", self.fifo, "--runc-binary", self.wrapper, "--runc-root", self.rtroot,
                        *args, timeout=timeout)

    def task_status(self, cid: str) -> str:
        for line in self.ctr("task", "ls").stdout.splitlines()[1:]:
            f = line.split()
            if f and f[0] == cid:
                return f[2]
        return ""

    def pids(self, cid: str) -> set:
        """`ctr task ps`: the runtime's `ps --format json`."""
        r = self.ctr("task", "ps", cid)
        assert r.returncode == 0, r.stderr
        return {int(x.split()[0]) for x in r.stdout.splitlines()[1:]}

    def runtime(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([RUNTIME, "--root", f"{self.rtroot}/{self.ns}", *args], capture_output=True,
                              text=True, timeout=30)

    def remove(self, cid: str) -> None:
        if self.task_status(cid) not in ("", "STOPPED"):
            self.ctr("task", "kill", "-s", "SIGKILL", cid)
            _wait(lambda: self.task_status(cid) in ("", "STOPPED"), what=f"{cid} stopped")
        self.ctr("task", "delete", cid)
        self.ctr("container", "delete", cid)


def _our_processes(d: str) -> list:
    """containerd and its shims of this module: their command line names the private socket."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if d.encode() in f.read():
                    out.append(int(p))
        except OSError:
            pass
    return out


def _mounts_below(d: str) -> list:
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f if ln.split()[4].startswith(d + "/")]


@pytest.fixture(scope="module")
def ctrd():
    d = tempfile.mkdtemp(prefix="psbrt-ctrd-", dir="/tmp")
    ns = f"psbrt-ctrd-{os.getpid()}"
    extra = (f"{RUN_CTRD}/s", f"{RUN_CTRD}/fifo", f"{RUN_CTRD}/runc/{ns}", f"{RUN_CTRD}/runc", RUN_CTRD)
    had = {p: os.path.exists(p) for p in extra}
    c = Ctrd(d, ns, os.environ[STATE_ENV])
    with open(f"{d}/config.toml", "w") as f:
        f.write(f'''version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp",
                    "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{c.sock}"
[ttrpc]
  address = "{c.sock}.ttrpc"
''')
    with open(c.wrapper, "w") as f:
        f.write(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {c.argv_log}\nexec {RUNTIME} "$@"\n')
    os.chmod(c.wrapper, 0o755)
    log = open(f"{d}/containerd.log", "w")
    proc = subprocess.Popen(["containerd", "--config", f"{d}/config.toml"], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, env=dict(os.environ))
    try:
        _wait(lambda: proc.poll() is not None or c.ctr("version", timeout=10).returncode == 0, what="containerd")
        assert proc.poll() is None, open(f"{d}/containerd.log").read()[-2000:]
        imagebuild.write_docker_save(f"{d}/bb.tar", tag="psbrt-bb:1")
        r = c.ctr("image", "import", f"{d}/bb.tar", timeout=120)
        assert r.returncode == 0, r.stderr
        yield c
    finally:
        for line in c.ctr("container", "ls", "-q").stdout.split():
            c.remove(line)
        c.ctr("image", "rm", IMAGE)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for pid in _our_processes(d):              # a shim still there (none expected)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for m in sorted(_mounts_below(d), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        for h in os.listdir(CG):
            for sub in (f"{CG}/{h}/{ns}",):
                if os.path.isdir(sub):
                    for top, _dirs, _files in os.walk(sub, topdown=False):
                        try:
                            os.rmdir(top)
                        except OSError:
                            pass
        for p in extra:                            # (runc/NS: a shim that fell back to runc's root)
            if not had[p]:
                try:
                    os.rmdir(p)
                except OSError:
                    pass
        shutil.rmtree(d, ignore_errors=True)
    assert not _our_processes(d)
    assert not _mounts_below(d)


def test_ctr_run_rm_stdout_and_exit_code(ctrd):
    """`ctr run --rm`: the program's output on ctr's stdout, its exit code as ctr's; nothing of the
    container left (the runtime's state directory, the cgroup leaf)."""
    r = ctrd.run("--rm", IMAGE, "r1", "/bin/sh", "-c", "echo hello-ctrd; id -u; exit 3")
    assert r.returncode == 3, r.stderr
    assert r.stdout.split() == ["hello-ctrd", "0"]
    r = ctrd.run("--rm", IMAGE, "r2", "/bin/true")
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(f"{ctrd.rtroot}/{ctrd.ns}/r1")
    assert not os.path.exists(f"{CG}/memory/{ctrd.ns}/r1")


def test_ctr_task_exec_ps_pause_resume_kill_delete(ctrd):
    """A long-running task: `ctr task exec` (output, exit code, --user), `ctr task ps` (the runtime's
    `ps --format json`: the container's processes), pause/resume (the runtime's `pause`/`resume`:
    the cgroup freezer; `state` says paused), `ctr task kill` (SIGTERM: exit 143) and delete."""
    r = ctrd.run("-d", IMAGE, "d1", "/bin/sh", "-c", "sleep 1000 & exec sleep 1001")
    assert r.returncode == 0, r.stderr
    try:
        _wait(lambda: ctrd.task_status("d1") == "RUNNING", what="running")
        r = ctrd.ctr("task", "exec", "--fifo-dir", ctrd.fifo, "--exec-id", "e1", "d1",
                     "/bin/sh", "-c", "echo in-exec; id -u; exit 4")
        assert r.returncode == 4, r.stderr
        assert r.stdout.split() == ["in-exec", "0"]
        r = ctrd.ctr("task", "exec", "--fifo-dir", ctrd.fifo, "--exec-id", "e2", "--user", "1000", "d1", "/bin/id", "-u")
        assert r.returncode == 0 and r.stdout.strip() == "1000", r.stderr
        init = int(ctrd.ctr("task", "ls").stdout.split("d1", 1)[1].split()[0])
        pids = ctrd.pids("d1")
        assert init in pids and len(pids) == 3, pids                 # PID 1 and both sleeps
        assert pids == {int(x) for x in open(f"{CG}/pids/{ctrd.ns}/d1/cgroup.procs").read().split()}

        r = ctrd.ctr("task", "pause", "d1")
        assert r.returncode == 0, r.stderr
        assert ctrd.task_status("d1") == "PAUSED"
        assert json.loads(ctrd.runtime("state", "d1").stdout)["status"] == "paused"
        assert open(f"{CG}/freezer/{ctrd.ns}/d1/freezer.state").read().strip() == "FROZEN"
        r = ctrd.ctr("task", "exec", "--fifo-dir", ctrd.fifo, "--exec-id", "e3", "d1", "/bin/true")
        assert r.returncode != 0                                     # not into a frozen container
        r = ctrd.ctr("task", "resume", "d1")
        assert r.returncode == 0, r.stderr
        assert ctrd.task_status("d1") == "RUNNING"
        assert json.loads(ctrd.runtime("state", "d1").stdout)["status"] == "running"
        assert open(f"{CG}/freezer/{ctrd.ns}/d1/freezer.state").read().strip() == "THAWED"

        r = ctrd.ctr("task", "kill", "-s", "SIGTERM", "d1")
        assert r.returncode == 0, r.stderr
        _wait(lambda: ctrd.task_status("d1") == "STOPPED", what="stopped")
        r = ctrd.ctr("task", "delete", "d1")
        assert r.returncode == 0, r.stderr
        assert "exit code 143" in r.stdout + r.stderr, r              # 128 + SIGTERM
        assert not os.path.exists(f"{ctrd.rtroot}/{ctrd.ns}/d1")
        assert not os.path.exists(f"{CG}/freezer/{ctrd.ns}/d1")
    finally:
        ctrd.remove("d1")


def test_ctr_kill_all_and_sigkill_of_a_paused_task(ctrd):
    """`ctr task kill --all` (the runtime's `kill --all`: every process of the container's cgroups,
    not only PID 1, which forwards to the program): SIGUSR1 ends the sleep, whose default action it
    is, while the shell ignores it; then SIGKILL of a paused task (thawed after the signal: it ends)."""
    r = ctrd.run("-d", IMAGE, "k1", "/bin/sh", "-c", "trap '' USR1; (trap - USR1; exec sleep 1000) & "
                 "while :; do wait; done")
    assert r.returncode == 0, r.stderr
    try:
        _wait(lambda: len(ctrd.pids("k1")) == 3, what="three processes")
        r = ctrd.ctr("task", "kill", "-s", "SIGUSR1", "k1")           # PID 1 -> the shell only
        assert r.returncode == 0, r.stderr
        time.sleep(0.3)
        assert len(ctrd.pids("k1")) == 3
        r = ctrd.ctr("task", "kill", "--all", "-s", "SIGUSR1", "k1")  # the sleep too
        assert r.returncode == 0, r.stderr
        _wait(lambda: len(ctrd.pids("k1")) == 2, what="the sleep killed")
        assert ctrd.task_status("k1") == "RUNNING"
        r = ctrd.ctr("task", "pause", "k1")
        assert r.returncode == 0 and ctrd.task_status("k1") == "PAUSED", r.stderr
        r = ctrd.ctr("task", "kill", "-s", "SIGKILL", "k1")
        assert r.returncode == 0, r.stderr
        _wait(lambda: ctrd.task_status("k1") == "STOPPED", what="stopped")
    finally:
        ctrd.remove("k1")
    assert not os.path.exists(f"{CG}/freezer/{ctrd.ns}/k1")


def test_what_the_runtime_refuses_reaches_the_user(ctrd):
    """Fail closed, one clear line through containerd: `--runc-systemd-cgroup` (--systemd-cgroup),
    `ctr task checkpoint` (checkpoint); nothing runs or stays. (ctr 1.6 does not pass `--no-pivot`
    to the v2 shim: create --no-pivot is refused in test_oci_runtime.py.) `ctr task metrics` works:
    the shim reads the container's cgroups (cgroupsPath) itself."""
    r = ctrd.run("--rm", "--runc-systemd-cgroup", "--cgroup", "system.slice:psbrt:n2", IMAGE, "n2", "/bin/true")
    assert r.returncode != 0 and "--systemd-cgroup: not supported" in r.stderr, r
    ctrd.remove("n2")
    assert not os.path.exists(f"{ctrd.rtroot}/{ctrd.ns}/n2")
    r = ctrd.run("-d", IMAGE, "n3", "/bin/sleep", "1000")
    assert r.returncode == 0, r.stderr
    try:
        r = ctrd.ctr("task", "metrics", "n3")
        assert r.returncode == 0 and "pids.current" in r.stdout, r
        r = ctrd.ctr("task", "checkpoint", "n3")
        assert r.returncode != 0 and "checkpoint: not supported by pysandbox-runtime" in r.stderr, r
        assert ctrd.task_status("n3") == "RUNNING"
    finally:
        ctrd.remove("n3")


def test_ctr_run_tty_through_the_console_socket(ctrd):
    """`ctr run -t` and `ctr task exec -t`: the shim passes --console-socket to create and exec; the
    program's stdin and stdout are a terminal (ctr needs one of its own: script(1) gives it a pty)."""
    cmd = (f"ctr -a {ctrd.sock} -n {ctrd.ns} run --rm -t --fifo-dir {ctrd.fifo} --runc-binary {ctrd.wrapper} "
           f"--runc-root {ctrd.rtroot} {IMAGE} t1 /bin/sh -c 'if test -t 0 && test -t 1; then exit 6; fi; exit 7'")
    r = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 6, r                    # (the exit code: the pty's last output may not reach ctr)
    r = ctrd.run("-d", IMAGE, "t2", "/bin/sleep", "1000")
    assert r.returncode == 0, r.stderr
    try:                                           # `ctr task exec -t`: exec --console-socket
        cmd = (f"ctr -a {ctrd.sock} -n {ctrd.ns} task exec -t --fifo-dir {ctrd.fifo} --exec-id x1 t2 "
               "/bin/sh -c 'if test -t 0 && test -t 1; then exit 6; fi; exit 7'")
        r = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 6, r
    finally:
        ctrd.remove("t2")


def _audit(path: str) -> list:
    try:
        with open(path) as f:
            return [json.loads(x) for x in f if x.strip()]
    except FileNotFoundError:
        return []


def test_profile_annotation_confines_the_container(ctrd, tmp_path):
    """`--annotation org.pysandbox.profile=strict` through containerd: a syscall strict denies
    (personality(PER_LINUX32), busybox linux32) fails with EPERM and is recorded (seccomp_denied) in
    the audit sink (`org.pysandbox.audit-log`, and without it the configured one: containerd's
    PYSANDBOX_STATE_DIR), while the workload runs; without the annotation the same call works."""
    script = "busybox linux32 /bin/true; echo linux32=$?; echo workload-ok"
    r = ctrd.run("--rm", IMAGE, "p0", "/bin/sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["linux32=0", "workload-ok"]

    log = tmp_path / "audit.jsonl"
    r = ctrd.run("--rm", "--annotation", "org.pysandbox.profile=strict", "--annotation",
                 f"org.pysandbox.audit-log={log}", IMAGE, "p1", "/bin/sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["linux32=1", "workload-ok"]
    assert "Operation not permitted" in r.stderr
    evs = _audit(str(log))
    denied = [e for e in evs if e["type"] == "seccomp_denied" and e["syscall"]["name"] == "personality"]
    assert denied and denied[0]["errno"] == 1, evs
    assert evs[0]["type"] == "sandbox_start" and evs[0]["profile"].endswith("+strict")

    default_sink = os.path.join(ctrd.state_dir, "audit.jsonl")
    before = len(_audit(default_sink))
    r = ctrd.run("--rm", "--annotation", "org.pysandbox.profile=strict", IMAGE, "p2", "/bin/sh", "-c", script)
    assert r.stdout.split() == ["linux32=1", "workload-ok"], r.stderr
    evs = [e for e in _audit(default_sink)[before:] if e.get("sandbox_name") == "p2"]
    assert any(e["type"] == "seccomp_denied" and e["syscall"]["name"] == "personality" for e in evs), evs


def test_shim_calls_only_what_the_runtime_implements(ctrd):
    """Every invocation the shim made in this module (the wrapper's log; a quick run of its own when
    the module's other tests did not run): a command the runtime implements, with runc's global
    options; no `not supported` error in any container's log.json."""
    if not os.path.exists(ctrd.argv_log):
        assert ctrd.run("--rm", IMAGE, "s1", "/bin/true").returncode == 0
    calls = open(ctrd.argv_log).read().splitlines()
    assert calls
    seen = set()
    for line in calls:
        a = line.split()
        assert a[0:1] == ["--root"] and "--log" in a and "--log-format" in a, line
        while a[0].startswith("-"):                 # runc's global options: with a value, or flags
            a = a[2:] if a[0] in ("--root", "--log", "--log-format") else a[1:]
        cmd = a[0]
        assert cmd in KNOWN | REFUSED, line
        seen.add(cmd)
    assert {"create", "start", "delete"} <= seen
