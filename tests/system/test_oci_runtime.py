"""pysandbox-runtime driven the way engines drive an OCI runtime: bundles made by `crun spec`,
`runc spec` and `pysandbox export` (rootfs: the host's static busybox), the whole lifecycle, and
one test per MUST of the OCI runtime specification (runtime.md, "Lifecycle", "Operations",
config.md "hooks") that this runtime implements, named after it. Real sandboxes, as root.

The container's output goes to files: the container holds its stdio (the engine's pipes) after
`create` returns, so a pipe read to its end would wait for the container."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import VENV_BIN

RUNTIME = str(VENV_BIN / "pysandbox-runtime")
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "echo", "cat", "id", "sleep", "true", "ls", "grep", "touch")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the OCI runtime tests run as root")


def make_rootfs(d: Path) -> Path:
    (d / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, d / "bin" / "busybox")
    for a in APPLETS:
        os.symlink("busybox", d / "bin" / a)
    return d


def spec_bundle(d: Path, tool: str, args: list, **edit) -> Path:
    """A bundle from `crun spec` / `runc spec` (their defaults), args and edits applied."""
    d.mkdir(parents=True, exist_ok=True)
    make_rootfs(d / "rootfs")
    subprocess.run([tool, "spec"], cwd=d, check=True)
    cfg = json.loads((d / "config.json").read_text())
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = args
    for k, v in edit.items():
        cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def edit_config(bundle: Path, fn) -> None:
    cfg = json.loads((bundle / "config.json").read_text())
    fn(cfg)
    (bundle / "config.json").write_text(json.dumps(cfg))


class Rt:
    """pysandbox-runtime with a --root of the test's own; the container's stdio in files."""

    def __init__(self, root: Path, out: Path):
        self.root = str(root)
        self.out = out

    def __call__(self, *args, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        with open(self.out / "stdout", "ab") as o, open(self.out / "stderr", "ab") as e:
            r = subprocess.run([RUNTIME, "--root", self.root, *args], stdout=o, stderr=e, timeout=timeout)
        if check:
            assert r.returncode == 0, (args, self.err())
        return r

    def json(self, *args) -> dict:
        r = subprocess.run([RUNTIME, "--root", self.root, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def status(self, cid: str) -> str:
        return self.json("state", cid)["status"]

    def err(self) -> str:
        return (self.out / "stderr").read_text() if (self.out / "stderr").exists() else ""

    def output(self) -> str:
        return (self.out / "stdout").read_text() if (self.out / "stdout").exists() else ""

    def record(self, cid: str, timeout: float = 30) -> dict:
        """state.json once the monitor recorded the exit (status "stopped" says PID 1 is gone:
        the monitor records a moment later, once PID 1's reaper collected it)."""
        deadline = time.monotonic() + timeout
        while (st := json.loads(Path(self.root, cid, "state.json").read_text())).get("status") != "stopped":
            assert time.monotonic() < deadline, f"{cid}: no exit recorded"
            time.sleep(0.02)
        return st

    def wait_status(self, cid: str, want: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.status(cid) != want:
            assert time.monotonic() < deadline, f"{cid} never became {want}"
            time.sleep(0.02)


@pytest.fixture
def tmp_path():
    """A work directory the sandbox's mapped root can reach too (pytest's tmp_path is below a
    0700 directory; bundles with a user namespace need their rootfs reachable)."""
    import tempfile
    d = tempfile.mkdtemp(prefix="psbrt-", dir="/tmp")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def rt(tmp_path):
    (tmp_path / "out").mkdir()
    r = Rt(tmp_path / "root", tmp_path / "out")
    yield r
    if os.path.isdir(r.root):                      # nothing of a failed test stays running
        for cid in os.listdir(r.root):
            subprocess.run([RUNTIME, "--root", r.root, "delete", "--force", cid], capture_output=True, timeout=60)


@pytest.fixture(params=["crun", "runc"])
def bundle(request, tmp_path):
    return spec_bundle(tmp_path / "bundle", request.param, ["/bin/sh", "-c", "echo hello-oci; id -u"])


# --- the lifecycle -------------------------------------------------------------------------------

def test_lifecycle_create_start_state_kill_delete(rt, tmp_path):
    """create -> created (the program has not run) -> start -> running -> kill -> stopped -> delete."""
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sh", "-c", "echo started; exec sleep 100"])
    pid_file = tmp_path / "pid"
    rt("create", "--bundle", str(b), "--pid-file", str(pid_file), "c1", check=True)
    st = rt.json("state", "c1")
    assert st["status"] == "created" and st["id"] == "c1" and st["bundle"] == str(b)
    assert st["pid"] == int(pid_file.read_text())
    assert "started" not in rt.output()                  # created: the program waits for start
    rt("start", "c1", check=True)
    assert rt.status("c1") == "running"
    deadline = time.monotonic() + 30
    while "started" not in rt.output():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    rt("kill", "c1", "KILL", check=True)
    rt.wait_status("c1", "stopped")
    rt("delete", "c1", check=True)
    assert rt("state", "c1").returncode != 0
    assert not os.path.exists(os.path.join(rt.root, "c1"))


def test_spec_bundles_run(rt, bundle):
    """Bundles made by crun spec and runc spec, unchanged but for the command."""
    rt("create", "--bundle", str(bundle), "b1", check=True)
    rt("start", "b1", check=True)
    rt.wait_status("b1", "stopped")
    rt("delete", "b1", check=True)
    assert rt.output().split() == ["hello-oci", "0"]


def test_export_bundle_runs(rt, tmp_path):
    """A bundle made by `pysandbox export -f oci` (user namespace, seccomp, masked paths...)."""
    out = tmp_path / "exp"
    r = subprocess.run([str(VENV_BIN / "pysandbox"), "export", "-f", "oci", "strict", "-o", str(out), "--",
                        "/bin/sh", "-c", "echo from-export; cat /proc/self/status"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rt("create", "--bundle", str(out), "e1", check=True)
    rt("start", "e1", check=True)
    rt.wait_status("e1", "stopped")
    rt("delete", "e1", check=True)
    text = rt.output()
    assert "from-export" in text
    assert "Seccomp:\t2" in text and "NoNewPrivs:\t1" in text


def test_pid_file_names_the_waitable_process(rt, tmp_path):
    """--pid-file: written when create returns; the process exits with the container's status."""
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sh", "-c", "exit 7"])
    rt("create", "--bundle", str(b), "--pid-file", str(tmp_path / "pid"), "p1", check=True)
    pid = int((tmp_path / "pid").read_text())
    fd = os.pidfd_open(pid)
    rt("start", "p1", check=True)
    import select
    p = select.poll()
    p.register(fd, select.POLLIN)
    assert p.poll(30000)
    os.close(fd)
    rt.wait_status("p1", "stopped")
    st = rt.record("p1")
    assert st["exit_code"] == 7 and st["pid"] == pid == st["sandbox_pid"] != st["monitor_pid"]
    rt("delete", "p1", check=True)


def test_console_socket_receives_the_pty_master(rt, tmp_path):
    """process.terminal with --console-socket: the pty master arrives by SCM_RIGHTS before create
    returns (as runc and crun send it); the program's stdio is the pty."""
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sh", "-c", "test -t 0 && test -t 1 && echo on-a-tty"])
    edit_config(b, lambda c: c["process"].update(terminal=True))
    path = str(tmp_path / "console.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(30)
    proc = subprocess.Popen([RUNTIME, "--root", rt.root, "create", "--bundle", str(b), "--console-socket", path,
                             "t1"], stderr=subprocess.PIPE)
    conn, _ = srv.accept()
    msg, fds, _, _ = socket.recv_fds(conn, 64, 1)
    assert len(fds) == 1
    master = fds[0]
    assert proc.wait(60) == 0, proc.stderr.read()
    rt("start", "t1", check=True)
    data = b""
    deadline = time.monotonic() + 30
    import select
    while b"on-a-tty" not in data and time.monotonic() < deadline:
        if not select.select([master], [], [], 1)[0]:
            continue
        try:
            chunk = os.read(master, 1024)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    assert b"on-a-tty" in data
    os.close(master)
    conn.close()
    srv.close()
    rt.wait_status("t1", "stopped")
    rt("delete", "t1", check=True)


def test_hooks_run_in_order_with_the_state_on_stdin(rt, tmp_path):
    """createRuntime, prestart (at create), poststart (before start returns), poststop (at
    delete): in that order, each reading the state JSON on stdin."""
    log = tmp_path / "hooks.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\nread -r line; echo \"$1 $line\" >> {log}\n")
    hook.chmod(0o755)
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/true"])
    edit_config(b, lambda c: c.update(hooks={k: [{"path": str(hook), "args": ["hook.sh", k]}]
                                             for k in ("createRuntime", "prestart", "poststart", "poststop")}))
    rt("create", "--bundle", str(b), "h1", check=True)
    rt("start", "h1", check=True)
    rt.wait_status("h1", "stopped")
    rt("delete", "h1", check=True)
    lines = log.read_text().splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["createRuntime", "prestart", "poststart", "poststop"]
    states = [json.loads(line.split(" ", 1)[1]) for line in lines]
    assert all(s["id"] == "h1" and s["bundle"] == str(b) for s in states)
    assert states[0]["status"] == "created" and states[3]["status"] == "stopped"


def test_failing_prestart_hook_stops_create(rt, tmp_path):
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sh", "-c", "echo must-not-run"])
    edit_config(b, lambda c: c.update(hooks={"prestart": [{"path": "/bin/false"}]}))
    r = rt("create", "--bundle", str(b), "h2")
    assert r.returncode != 0 and "hooks.prestart[0]" in rt.err()
    assert rt("state", "h2").returncode != 0
    assert "must-not-run" not in rt.output()


# --- the runtime specification's MUSTs, one test each --------------------------------------------

def test_must_state_has_ociVersion_id_status_pid_bundle(rt, bundle):
    """runtime.md State: ociVersion, id, status, bundle (absolute), pid while created/running."""
    rt("create", "--bundle", str(bundle), "s1", check=True)
    st = rt.json("state", "s1")
    assert {"ociVersion", "id", "status", "pid", "bundle", "annotations"} <= st.keys()
    assert os.path.isabs(st["bundle"]) and isinstance(st["pid"], int) and st["pid"] > 0
    rt("delete", "--force", "s1", check=True)


def test_must_create_with_existing_id_fails(rt, bundle):
    """runtime.md create: MUST generate an error if the ID is not unique."""
    rt("create", "--bundle", str(bundle), "dup", check=True)
    assert rt("create", "--bundle", str(bundle), "dup").returncode != 0
    assert rt.status("dup") == "created"
    rt("delete", "--force", "dup", check=True)


def test_must_not_run_the_program_before_start(rt, tmp_path):
    """runtime.md create: the user-specified program MUST NOT be run at this time."""
    marker = tmp_path / "rw"
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/touch", "/marker"])
    edit_config(b, lambda c: c["root"].update(readonly=False))
    rt("create", "--bundle", str(b), "n1", check=True)
    time.sleep(0.5)                 # (not a timing assertion: only the chance to do it wrongly)
    assert not (b / "rootfs" / "marker").exists()
    rt("start", "n1", check=True)
    rt.wait_status("n1", "stopped")
    assert (b / "rootfs" / "marker").exists()
    rt("delete", "n1", check=True)
    assert not marker.exists()


def test_must_start_on_a_not_created_container_fails(rt, bundle):
    """runtime.md start: MUST generate an error if the container is not in the created state."""
    rt("create", "--bundle", str(bundle), "st1", check=True)
    rt("start", "st1", check=True)
    rt.wait_status("st1", "stopped")
    assert rt("start", "st1").returncode != 0
    rt("delete", "st1", check=True)


def test_must_kill_on_a_stopped_container_fails(rt, bundle):
    """runtime.md kill: MUST generate an error if the container is neither created nor running."""
    rt("create", "--bundle", str(bundle), "k1", check=True)
    rt("start", "k1", check=True)
    rt.wait_status("k1", "stopped")
    assert rt("kill", "k1", "TERM").returncode != 0
    rt("delete", "k1", check=True)


def test_must_kill_sends_the_signal(rt, tmp_path):
    """runtime.md kill: MUST send the specified signal to the container process."""
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sh", "-c", "trap 'echo got-usr1; exit 0' USR1; "
                                                              "echo ready; while true; do sleep 0.1; done"])
    rt("create", "--bundle", str(b), "k2", check=True)
    rt("start", "k2", check=True)
    deadline = time.monotonic() + 30
    while "ready" not in rt.output():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    rt("kill", "k2", "SIGUSR1", check=True)
    rt.wait_status("k2", "stopped")
    assert "got-usr1" in rt.output()
    rt("delete", "k2", check=True)


def test_must_delete_of_a_running_container_fails(rt, tmp_path):
    """runtime.md delete: MUST generate an error if the container is not stopped."""
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sleep", "100"])
    rt("create", "--bundle", str(b), "d1", check=True)
    rt("start", "d1", check=True)
    assert rt("delete", "d1").returncode != 0
    assert rt.status("d1") == "running"
    rt("delete", "--force", "d1", check=True)
    assert rt("state", "d1").returncode != 0


def test_must_unsupported_config_fails_create(rt, tmp_path):
    """config.md: a runtime MUST generate an error for a property it cannot honour (fail closed,
    naming the field) — an unknown mount type, a user namespace joined by path, a hook kind the
    spec does not have."""
    cases = [
        (lambda c: c["mounts"].append({"destination": "/x", "type": "nfs", "source": "h:/x"}), "mounts["),
        (lambda c: c["linux"]["namespaces"].append({"type": "user", "path": "/proc/1/ns/user"}),
         "linux.namespaces"),
        (lambda c: c.update(hooks={"preStop": [{"path": "/bin/true"}]}), "hooks.preStop"),
        (lambda c: c["linux"].update(intelRdt={"closID": "x"}), "linux.intelRdt"),
        (lambda c: c["process"].update(capabilities={"bounding": ["CAP_KILL"], "effective": ["CAP_CHOWN"],
                                                     "permitted": ["CAP_KILL"]}), "capabilities.effective"),
        # the rest of the list that is refused (docs/interop.md's table), one line each
        (lambda c: c["linux"]["namespaces"].append({"type": "cgroup", "path": "/proc/1/ns/cgroup"}),
         "linux.namespaces"),
        (lambda c: c["linux"]["namespaces"].append({"type": "time", "path": "/proc/1/ns/time"}), "linux.namespaces"),
        (lambda c: c["process"].update(apparmorProfile="unconfined"), "process.apparmorProfile"),
        (lambda c: c.update(domainname="example.org"), "domainname"),
        (lambda c: c["linux"].update(resources={"memory": {"disableOOMKiller": True}}),
         "linux.resources.memory.disableOOMKiller"),
        (lambda c: c["linux"].update(resources={"hugepageLimits": [{"pageSize": "2MB", "limit": 1}]}),
         "linux.resources.hugepageLimits"),
        (lambda c: c["linux"].update(seccomp={"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/x.sock"}),
         "linux.seccomp.listenerPath"),
        (lambda c: c["mounts"].append({"destination": "/x", "type": "bind", "source": "/tmp",
                                       "options": ["rbind", "rshared"]}), "mounts["),
    ]
    for i, (fn, field) in enumerate(cases):
        b = spec_bundle(tmp_path / f"b{i}", "crun", ["/bin/true"])
        edit_config(b, fn)
        before = rt.err()
        r = rt("create", "--bundle", str(b), f"u{i}")
        assert r.returncode != 0
        assert field in rt.err()[len(before):], (field, rt.err())
        assert rt("state", f"u{i}").returncode != 0


def test_must_not_supported_operations_fail_clearly(rt):
    for cmd in ("checkpoint", "restore"):
        r = subprocess.run([RUNTIME, "--root", rt.root, cmd, "x"], capture_output=True, text=True)
        assert r.returncode != 0 and "not supported" in r.stderr
    for cmd in ("ps", "pause", "resume", "update"):       # implemented: a container that does not exist
        r = subprocess.run([RUNTIME, "--root", rt.root, cmd, "x"], capture_output=True, text=True)
        assert r.returncode == 1 and "container x does not exist" in r.stderr
    for opt in (["--no-pivot"], ["--preserve-fds", "1"]):  # runc's create flags it cannot honour
        r = subprocess.run([RUNTIME, "--root", rt.root, "create", *opt, "--bundle", "/nonexistent", "x"],
                           capture_output=True, text=True)
        assert r.returncode == 1 and f"create {opt[0]}: not supported" in r.stderr
    r = subprocess.run([RUNTIME, "--systemd-cgroup", "--root", rt.root, "state", "x"], capture_output=True, text=True)
    assert r.returncode != 0 and "--systemd-cgroup: not supported" in r.stderr
    r = subprocess.run([RUNTIME, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "spec: 1." in r.stdout
    feats = json.loads(subprocess.run([RUNTIME, "features"], capture_output=True, text=True).stdout)
    assert feats["ociVersionMax"].startswith("1.") and "poststop" in feats["hooks"]


# --- config.json fields, both sides ----------------------------------------------------------------

def test_config_fields_are_honoured(rt, tmp_path):
    """process.user (uid, gid, additionalGids), env, cwd, rlimits, capabilities, noNewPrivileges,
    hostname, oomScoreAdj, maskedPaths, readonlyPaths, a tmpfs and a bind mount, sysctl."""
    src = tmp_path / "shared"
    src.mkdir()
    (src / "f").write_text("from-host\n")
    script = ("id; echo env=$FOO; pwd; ulimit -n; hostname; cat /proc/self/oom_score_adj; "
              "grep -E 'CapEff|NoNewPrivs' /proc/self/status; cat /data/f; "
              "echo x > /data/g || echo bind-ro; test -s /proc/kcore || echo kcore-masked; "
              "echo y > /scratch/y && echo tmpfs-ok; cat /proc/sys/net/ipv4/ip_forward; "
              "echo 1 > /proc/sys/kernel/hostname 2>/dev/null || echo proc-sys-ro")
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sh", "-c", script])

    def edit(c):
        c["process"].update(user={"uid": 1000, "gid": 1000, "additionalGids": [5, 6]}, env=["FOO=bar", "PATH=/bin"],
                            cwd="/tmp", rlimits=[{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 512}],
                            oomScoreAdj=500, noNewPrivileges=True)
        c["process"]["capabilities"] = {k: ["CAP_KILL"] for k in ("bounding", "effective", "permitted")}
        c["hostname"] = "oci-host"
        c["mounts"] += [{"destination": "/data", "type": "bind", "source": str(src), "options": ["rbind", "ro"]},
                        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]}]
        c["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
        c["linux"]["maskedPaths"] = ["/proc/kcore"]
        c["linux"]["readonlyPaths"] = ["/proc/sys"]
        (b / "rootfs" / "tmp").mkdir(exist_ok=True)
    edit_config(b, edit)
    rt("create", "--bundle", str(b), "f1", check=True)
    rt("start", "f1", check=True)
    rt.wait_status("f1", "stopped")
    rt("delete", "f1", check=True)
    out = rt.output()
    assert "uid=1000 gid=1000 groups=5,6" in out, out
    assert "env=bar" in out and "\n/tmp\n" in out and "\n512\n" in out and "oci-host" in out
    assert "\n500\n" in out
    assert "CapEff:\t0000000000000020" in out and "NoNewPrivs:\t1" in out
    assert "from-host" in out and "bind-ro" in out and "tmpfs-ok" in out
    assert "kcore-masked" in out
    assert "\n1\n" in out and "proc-sys-ro" in out
    assert not (src / "g").exists()


def test_seccomp_compiled_through_the_project(rt, tmp_path):
    """linux.seccomp: an OCI seccomp object, compiled by policies.seccomp: a denied syscall gets
    its errno, the rest works."""
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sh", "-c", "echo before; mkdir /tmp/x || echo mkdir-denied; "
                                                              "grep Seccomp: /proc/self/status"])
    edit_config(b, lambda c: c["linux"].update(seccomp={
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}))
    edit_config(b, lambda c: c["root"].update(readonly=False))
    (b / "rootfs" / "tmp").mkdir()
    rt("create", "--bundle", str(b), "sc1", check=True)
    rt("start", "sc1", check=True)
    rt.wait_status("sc1", "stopped")
    rt("delete", "sc1", check=True)
    out = rt.output()
    assert "before" in out and "mkdir-denied" in out and "Seccomp:\t2" in out
    assert not (b / "rootfs" / "tmp" / "x").exists()


def test_profile_annotation_applies_a_profile(rt, tmp_path):
    """org.pysandbox.profile: strict's seccomp and capabilities on top of the bundle; its
    sandbox_start/sandbox_exit go to the audit log."""
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sh", "-c", "grep -E 'Seccomp:|CapEff' /proc/self/status"])
    log = tmp_path / "audit.jsonl"
    edit_config(b, lambda c: c.update(annotations={"org.pysandbox.profile": "strict",
                                                   "org.pysandbox.audit-log": str(log)}))
    rt("create", "--bundle", str(b), "a1", check=True)
    rt("start", "a1", check=True)
    rt.wait_status("a1", "stopped")
    rt("delete", "a1", check=True)
    out = rt.output()
    assert "Seccomp:\t2" in out and "CapEff:\t0000000000000000" in out
    types = [json.loads(x)["type"] for x in log.read_text().splitlines()]
    assert "sandbox_start" in types and "sandbox_exit" in types


def test_namespace_joined_by_path(rt, tmp_path):
    """linux.namespaces network with a path: the container is in that network namespace."""
    name = f"psbrt{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        want = os.stat(f"/run/netns/{name}").st_ino
        b = spec_bundle(tmp_path / "b", "crun", ["/bin/sh", "-c", "ls -L -i /proc/self/ns/net"])
        edit_config(b, lambda c: c["linux"].update(namespaces=[n for n in c["linux"]["namespaces"] if n["type"] != "network"]
                                                   + [{"type": "network", "path": f"/run/netns/{name}"}]))
        rt("create", "--bundle", str(b), "j1", check=True)
        rt("start", "j1", check=True)
        rt.wait_status("j1", "stopped")
        rt("delete", "j1", check=True)
        assert rt.output().split()[0] == str(want)
    finally:
        subprocess.run(["ip", "netns", "del", name])


def test_delete_force_of_a_created_container(rt, bundle):
    rt("create", "--bundle", str(bundle), "df1", check=True)
    pid = rt.json("state", "df1")["pid"]
    rt("delete", "--force", "df1", check=True)
    assert rt("state", "df1").returncode != 0
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert "hello-oci" not in rt.output()


# --- rootless ------------------------------------------------------------------------------------

def test_rootless_lifecycle(tmp_path, user_runner):
    """The unprivileged test user runs a `crun spec --rootless` bundle (user namespace mapping its
    own uid and gid to 0) through create, start, state, delete."""
    u = user_runner
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sh", "-c", "echo rootless-ok; id -u; exit 5"])

    def edit(c):
        c["linux"]["namespaces"] = [{"type": t} for t in ("pid", "network", "ipc", "uts", "user", "mount")]
        c["linux"]["uidMappings"] = [{"containerID": 0, "hostID": u.uid, "size": 1}]
        c["linux"]["gidMappings"] = [{"containerID": 0, "hostID": u.gid, "size": 1}]
        c["linux"].pop("resources", None)
    edit_config(b, edit)
    out = tmp_path / "o"
    out.mkdir()
    os.chown(out, u.uid, u.gid)
    env = u.env({"XDG_RUNTIME_DIR": str(out)})
    root = str(out / "state")

    def rt(*args):
        with open(out / "stdout", "ab") as o, open(out / "stderr", "ab") as e:
            return subprocess.run([RUNTIME, "--root", root, *args], stdout=o, stderr=e,
                                  env=env, user=u.uid, group=u.gid, extra_groups=[], timeout=60)
    try:
        for args in (("create", "--bundle", str(b), "r1"), ("start", "r1")):
            r = rt(*args)
            assert r.returncode == 0, (out / "stderr").read_text()
        deadline = time.monotonic() + 30
        while True:
            r = subprocess.run([RUNTIME, "--root", root, "state", "r1"], capture_output=True, text=True, env=env,
                               user=u.uid, group=u.gid, extra_groups=[])
            if json.loads(r.stdout)["status"] == "stopped":
                break
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # the exit status, recorded by the monitor (not PID 1's parent: read from the zombie or,
        # once its reaper collected it, from the pidfd)
        while "exit_code" not in json.loads((out / "state" / "r1" / "state.json").read_text()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert json.loads((out / "state" / "r1" / "state.json").read_text())["exit_code"] == 5
        assert rt("delete", "r1").returncode == 0
        assert (out / "stdout").read_text().split() == ["rootless-ok", "0"]
    finally:
        rt("delete", "--force", "r1")              # nothing stays running after a failure


def test_exec_joins_the_running_container(rt, tmp_path):
    """exec: a process in the container's namespaces (its pid namespace: PID 1 is the sandbox's),
    with config.json's user, capabilities and seccomp filter; its exit status is exec's; --process
    (podman's form) with another user; a stopped container refuses it."""
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sleep", "1000"])
    edit_config(b, lambda c: c["linux"].update(seccomp={"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}))
    rt("create", "--bundle", str(b), "x1", check=True)
    rt("start", "x1", check=True)
    r = subprocess.run([RUNTIME, "--root", rt.root, "exec", "x1", "/bin/sh", "-c",
                        "cat /proc/1/cmdline; echo; grep Seccomp: /proc/self/status; hostname; exit 4"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 4, r.stderr
    assert r.stdout.splitlines()[0].startswith("pysandbox-init")          # the sandbox's PID 1
    assert "Seccomp:\t2" in r.stdout
    proc = tmp_path / "process.json"
    proc.write_text(json.dumps({"args": ["/bin/id", "-u"], "cwd": "/", "user": {"uid": 1000, "gid": 1000},
                                "env": ["PATH=/bin"]}))
    r = subprocess.run([RUNTIME, "--root", rt.root, "exec", "--process", str(proc), "x1"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "1000", r.stderr
    rt("kill", "x1", "KILL", check=True)
    rt.wait_status("x1", "stopped")
    r = subprocess.run([RUNTIME, "--root", rt.root, "exec", "x1", "/bin/true"], capture_output=True, text=True)
    assert r.returncode != 0 and "not running" in r.stderr
    rt("delete", "x1", check=True)


def test_resources_pids_limit_is_enforced(rt, tmp_path):
    """linux.resources.pids.limit through sandbox/cgroups: the 9th process of a limit of 8 cannot
    be forked; below the limit forks work."""
    script = ("i=0; while [ $i -lt 4 ]; do sleep 30 & i=$((i+1)); done; echo four-ok; "
              "i=0; while [ $i -lt 12 ]; do sleep 30 & i=$((i+1)); done; echo done")
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sh", "-c", script])
    edit_config(b, lambda c: c["linux"].update(resources={"pids": {"limit": 8}}))
    rt("create", "--bundle", str(b), "pl1", check=True)
    rt("start", "pl1", check=True)
    deadline = time.monotonic() + 30
    while "done" not in rt.output() and rt.status("pl1") != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rt("delete", "--force", "pl1", check=True)
    out = rt.output()
    assert "four-ok" in out
    assert "done" not in out and "can't fork" in rt.err()


def test_root_directory_of_another_user_is_refused(tmp_path, rt, bundle):
    """--root made by someone else (a rootless default below /tmp made first by another user), or
    writable by others: refused, nothing created in it."""
    d = tmp_path / "others"
    d.mkdir()
    os.chown(d, 1001, 1001)
    r = subprocess.run([RUNTIME, "--root", str(d), "create", "--bundle", str(bundle), "o1"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and "--root" in r.stderr
    assert os.listdir(d) == []
    os.chown(d, 0, 0)
    os.chmod(d, 0o777)
    r = subprocess.run([RUNTIME, "--root", str(d), "state", "o1"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "writable by it alone" in r.stderr


# --- linux.cgroupsPath ------------------------------------------------------------------------------

def _cg_hierarchies() -> list:
    """The hierarchies a container's cgroupsPath leaf goes in here: memory and pids (v1), cgroup2."""
    return [h for h in ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified")
            if os.path.isdir(h)]


def _cg_cleanup(top: str) -> None:
    for h in os.listdir("/sys/fs/cgroup"):
        d = os.path.join("/sys/fs/cgroup", h, top)
        for sub in sorted((os.path.join(r, n) for r, ds, _ in os.walk(d) for n in ds), key=len, reverse=True):
            os.rmdir(sub)
        if os.path.isdir(d):
            os.rmdir(d)


@pytest.mark.parametrize("rel", [False, True], ids=["absolute", "relative"])
def test_must_cgroups_path_attaches_to_the_same_place(rt, tmp_path, rel):
    """config.md linux.cgroupsPath: "the runtime MUST consistently attach to the same place in the
    cgroups hierarchy given the same value": an absolute path below each hierarchy's root, a relative
    one below pysandbox's own parent (runc: below its own cgroup); the container's processes are
    there while it runs (every hierarchy, cgroup2 too), created with no resources asked for, and
    the leaf is gone after delete (its parent, the engine's, stays)."""
    top = f"psbrt-cgp-{os.getpid()}-{int(rel)}"
    want = f"/pysandbox/{top}/ctr" if rel else f"/{top}/ctr"
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sh", "-c", "cat /proc/self/cgroup; sleep 100"])
    edit_config(b, lambda c: c["linux"].update(cgroupsPath=want.removeprefix("/pysandbox/") if rel else want))
    try:
        for round_ in (1, 2):                          # the same value: the same place, twice
            cid = f"cg{round_}"
            rt("create", "--bundle", str(b), cid, check=True)
            pid1 = rt.json("state", cid)["pid"]
            for h in _cg_hierarchies():
                assert os.path.isdir(h + want), h
            rt("start", cid, check=True)
            deadline = time.monotonic() + 30
            while rt.output().count("0::") < round_:
                assert time.monotonic() < deadline, rt.err()
                time.sleep(0.02)
            lines = rt.output().splitlines()
            assert f"0::{want}" in lines and any(ln.endswith(f":memory:{want}") for ln in lines)
            assert any(ln.endswith(f":pids:{want}") for ln in lines)
            assert pid1 > 0
            rt("kill", cid, "KILL", check=True)
            rt.wait_status(cid, "stopped")
            rt("delete", cid, check=True)
            for h in _cg_hierarchies():
                assert not os.path.exists(h + want) and os.path.isdir(os.path.dirname(h + want)), h
    finally:
        _cg_cleanup(f"pysandbox/{top}" if rel else top)


def test_cgroups_path_limits_apply_at_that_path(rt, tmp_path):
    """linux.resources with a cgroupsPath: the limit is written in the leaf at that path (pids.max)."""
    top = f"psbrt-cgl-{os.getpid()}"
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sleep", "100"])
    edit_config(b, lambda c: c["linux"].update(cgroupsPath=f"/{top}/ctr", resources={"pids": {"limit": 7}}))
    try:
        rt("create", "--bundle", str(b), "cl", check=True)
        assert Path(f"/sys/fs/cgroup/pids/{top}/ctr/pids.max").read_text().strip() == "7"
        rt("delete", "--force", "cl", check=True)
        assert not os.path.exists(f"/sys/fs/cgroup/pids/{top}/ctr")
    finally:
        _cg_cleanup(top)


@pytest.mark.parametrize("path", ["system.slice:libpod:abc", "/a/b c", "/a/\u00e9"])
def test_cgroups_path_systemd_form_and_odd_names_are_refused(rt, tmp_path, path):
    """The systemd form slice:prefix:name needs the systemd cgroup driver (refused, as
    --systemd-cgroup is); a component that is not a plain name is refused: nothing is created."""
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/true"])
    edit_config(b, lambda c: c["linux"].update(cgroupsPath=path))
    assert rt("create", "--bundle", str(b), "cs").returncode != 0
    assert "linux.cgroupsPath" in rt.err() and ("systemd" in rt.err() if ":" in path else True)
    assert not os.path.exists(os.path.join(rt.root, "cs"))


# --- exec's flags ---------------------------------------------------------------------------------

def _exec(rt, *args) -> subprocess.CompletedProcess:
    return subprocess.run([RUNTIME, "--root", rt.root, "exec", *args], capture_output=True, text=True, timeout=60)


def test_exec_flags_cwd_env_user_groups_nnp(rt, tmp_path):
    """runc's exec flags: --cwd, --env (repeatable, replaces a key of config.json's env), --user
    UID:GID, --additional-gids, --no-new-privs; without them the process is config.json's (root,
    cwd /, no NoNewPrivs); a bad --user is refused with one line."""
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sleep", "1000"])
    edit_config(b, lambda c: c["process"].update(noNewPrivileges=False))
    rt("create", "--bundle", str(b), "xf", check=True)
    rt("start", "xf", check=True)
    show = ["/bin/sh", "-c", 'pwd; echo "$FOO $TERM"; id -u; id -g; id -G; grep NoNewPrivs: /proc/self/status']
    r = _exec(rt, "--cwd", "/bin", "--env", "FOO=bar", "-e", "TERM=dumb", "--user", "1000:1001",
              "--additional-gids", "7", "-g", "8", "--no-new-privs", "xf", *show)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[:4] == ["/bin", "bar dumb", "1000", "1001"]
    assert set(out[4].split()) == {"1001", "7", "8"} and out[5].split() == ["NoNewPrivs:", "1"]
    r = _exec(rt, "xf", *show)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == "/" and out[2] == "0" and out[5].split() == ["NoNewPrivs:", "0"]
    r = _exec(rt, "--user", "nobody", "xf", "/bin/true")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "--user" in r.stderr
    rt("delete", "--force", "xf", check=True)


@pytest.mark.parametrize("profile", [None, "strict"])
def test_exec_flag_cap_adds_a_capability_unless_a_profile_removes_it(rt, tmp_path, profile):
    """--cap CAP_NET_ADMIN (bit 12) is added to the process's sets, as runc does; without the flag the
    bundle's set lacks it; under org.pysandbox.profile: strict (no capability) --cap adds nothing."""
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sleep", "1000"])
    if profile:
        edit_config(b, lambda c: c.update(annotations={"org.pysandbox.profile": profile}))
    rt("create", "--bundle", str(b), "xc", check=True)
    rt("start", "xc", check=True)
    eff = ["/bin/grep", "CapEff:", "/proc/self/status"]
    with_cap = int(_exec(rt, "--cap", "CAP_NET_ADMIN", "xc", *eff).stdout.split()[1], 16)
    without = int(_exec(rt, "xc", *eff).stdout.split()[1], 16)
    assert not without & (1 << 12)
    assert bool(with_cap & (1 << 12)) == (profile is None)
    rt("delete", "--force", "xc", check=True)


# --- createContainer and startContainer hooks -------------------------------------------------------

def test_must_create_container_hooks_run_in_the_container_namespace_during_create(rt, tmp_path):
    """config.md createContainer: called during create, after the createRuntime hooks, "in the
    container namespace" (the program's mount, uts and net namespaces, not ours), before pivot_root,
    its path resolving in the runtime namespace (a host path), the state on stdin."""
    log = tmp_path / "hooks.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\nread -r line; echo \"$1 $(readlink /proc/self/ns/mnt) $(readlink /proc/self/ns/uts) "
                    f"$line\" >> {log}\n")
    hook.chmod(0o755)
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sh", "-c", "ls -l /proc/self/ns/mnt /proc/self/ns/uts"])
    edit_config(b, lambda c: c.update(hooks={k: [{"path": str(hook), "args": ["hook.sh", k]}]
                                             for k in ("createRuntime", "createContainer")}))
    rt("create", "--bundle", str(b), "hc", check=True)
    lines = log.read_text().splitlines()                 # both ran during create
    assert [ln.split()[0] for ln in lines] == ["createRuntime", "createContainer"]
    host_mnt, host_uts = os.readlink("/proc/self/ns/mnt"), os.readlink("/proc/self/ns/uts")
    assert lines[0].split()[1:3] == [host_mnt, host_uts]
    cc = lines[1].split(" ", 3)
    assert cc[1] != host_mnt and cc[2] != host_uts
    assert json.loads(cc[3])["id"] == "hc" and json.loads(cc[3])["status"] == "created"
    rt("start", "hc", check=True)
    rt.wait_status("hc", "stopped")
    rt("delete", "hc", check=True)
    out = rt.output()
    assert cc[1] in out and cc[2] in out                 # the program's own namespaces


def test_must_start_container_hooks_run_in_the_container_before_the_program(rt, tmp_path):
    """config.md startContainer: called as part of start, before the user-specified process is
    executed, in the container namespace, its path resolving in the container (a script only the
    container's root has), the state on stdin; not at create. It runs as the program would (its
    uid, its capability sets, no_new_privs), not with PID 1's privileges —
    the script is the image's (regression: first version ran it with PID 1's full set)."""
    out = tmp_path / "shared"
    out.mkdir()
    os.chmod(out, 0o777)
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sh", "-c", "echo program >> /shared/log; "
                                                           "grep CapEff: /proc/self/status > /shared/caps-prog"])
    edit_config(b, lambda c: c["process"].update(user={"uid": 1000, "gid": 1000}))
    name = f"psbrt-start-hook-{os.getpid()}.sh"
    assert not os.path.exists("/" + name)
    (b / "rootfs" / name).write_text("#!/bin/sh\nread -r line; echo \"$1 $line\" >> /shared/log; "
                                     "ls /proc/1/ >/dev/null && echo proc-ok >> /shared/log; "
                                     "grep -E '^(Uid|CapEff|NoNewPrivs):' /proc/self/status >> /shared/caps\n")
    (b / "rootfs" / name).chmod(0o755)
    edit_config(b, lambda c: (c.update(hooks={"startContainer": [{"path": "/" + name, "args": [name, "startContainer"]}]}),
                              c["mounts"].append({"destination": "/shared", "type": "bind", "source": str(out),
                                                  "options": ["rbind", "rw"]})))
    rt("create", "--bundle", str(b), "hs", check=True)
    assert not (out / "log").exists()                    # not at create
    rt("start", "hs", check=True)
    rt.wait_status("hs", "stopped")
    rt("delete", "hs", check=True)
    lines = (out / "log").read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == ["startContainer", "proc-ok", "program"], rt.err()
    assert json.loads(lines[0].split(" ", 1)[1])["id"] == "hs"
    caps = dict(ln.split(":", 1) for ln in (out / "caps").read_text().splitlines())
    assert caps["Uid"].split()[0] == "1000" and caps["NoNewPrivs"].strip() == "1"
    prog = (out / "caps-prog").read_text().split()[1]
    assert caps["CapEff"].strip() == prog                # the program's set (crun's default three), not PID 1's
    assert int(prog, 16) == (1 << 5) | (1 << 10) | (1 << 29)


@pytest.mark.parametrize("kind", ["createContainer", "startContainer"])
def test_must_failing_container_hook_stops_the_container(rt, tmp_path, kind):
    """A createContainer hook that fails: create fails, naming it; a startContainer one: the
    program is never executed, the container stops with an error."""
    shared = tmp_path / "shared"
    shared.mkdir()
    marker = shared / "ran"
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/touch", "/shared/ran"])
    edit_config(b, lambda c: (c.update(hooks={kind: [{"path": "/bin/false"}]}),
                              c["mounts"].append({"destination": "/shared", "type": "bind", "source": str(shared),
                                                  "options": ["rbind", "rw"]})))
    r = rt("create", "--bundle", str(b), "hf")
    if kind == "createContainer":
        assert r.returncode != 0 and "hooks.createContainer[0]" in rt.err()
        assert not os.path.exists(os.path.join(rt.root, "hf"))
        return
    assert r.returncode == 0, rt.err()
    rt("start", "hf")
    rt.wait_status("hf", "stopped")
    st = rt.record("hf")                                                # (the monitor's record)
    rt("delete", "hf", check=True)
    assert not marker.exists()                          # /bin/touch never ran
    assert st["exit_code"] == 125 and "hooks.startContainer[0] /bin/false" in st["error"]


def test_rootless_container_hooks(tmp_path, user_runner):
    """As the unprivileged test user (the program's set-up in a Python process: sequence.program),
    createContainer runs in the container's mount namespace during create and startContainer in
    the container before the program, both with the state on stdin."""
    u = user_runner
    out = tmp_path / "o"
    out.mkdir()
    os.chown(out, u.uid, u.gid)
    cc = tmp_path / "cc.sh"
    cc.write_text(f"#!/bin/sh\nread -r line; echo \"createContainer $(readlink /proc/self/ns/mnt)\" >> {out}/log\n")
    cc.chmod(0o755)
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sh", "-c", "echo program $(ls -l /proc/self/ns/mnt) >> /shared/log"])
    (b / "rootfs" / "sc.sh").write_text("#!/bin/sh\nread -r line; echo startContainer >> /shared/log\n")
    (b / "rootfs" / "sc.sh").chmod(0o755)

    def edit(c):
        c["linux"]["namespaces"] = [{"type": t} for t in ("pid", "network", "ipc", "uts", "user", "mount")]
        c["linux"]["uidMappings"] = [{"containerID": 0, "hostID": u.uid, "size": 1}]
        c["linux"]["gidMappings"] = [{"containerID": 0, "hostID": u.gid, "size": 1}]
        c["linux"].pop("resources", None)
        c["mounts"].append({"destination": "/shared", "type": "bind", "source": str(out), "options": ["rbind", "rw"]})
        c["hooks"] = {"createContainer": [{"path": str(cc)}], "startContainer": [{"path": "/sc.sh"}]}
    edit_config(b, edit)
    env = u.env({"XDG_RUNTIME_DIR": str(out)})
    root = str(out / "state")

    def rt(*args):                                 # (files: the container holds its stdio)
        with open(tmp_path / "stdout", "a") as o, open(tmp_path / "stderr", "a+") as e:
            r = subprocess.run([RUNTIME, "--root", root, *args], stdout=o, stderr=e, text=True,
                               env=env, user=u.uid, group=u.gid, extra_groups=[], timeout=60)
            r.stdout = subprocess.run([RUNTIME, "--root", root, "state", "rh"], capture_output=True, text=True,
                                      env=env, user=u.uid, group=u.gid, extra_groups=[]).stdout
            r.stderr = (tmp_path / "stderr").read_text()
        return r
    try:
        r = rt("create", "--bundle", str(b), "rh")
        assert r.returncode == 0, r.stderr
        assert (out / "log").read_text().split()[0] == "createContainer"
        assert rt("start", "rh").returncode == 0
        deadline = time.monotonic() + 30
        while json.loads(rt("state", "rh").stdout)["status"] != "stopped":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        lines = (out / "log").read_text().splitlines()
        assert [ln.split()[0] for ln in lines] == ["createContainer", "startContainer", "program"]
        assert lines[0].split()[1] in lines[2] and lines[0].split()[1] != os.readlink("/proc/self/ns/mnt")
    finally:
        rt("delete", "--force", "rh")


# --- namespaces joined by path: pid ---------------------------------------------------------------

def _join(c, kind: str, path: str) -> None:
    c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != kind] + [{"type": kind, "path": path}]


def test_must_pid_namespace_joined_by_path(rt, tmp_path):
    """config.md linux.namespaces path: "the runtime MUST place the container process in the
    namespace at that path": a container joining the pid namespace of another (podman's --pid
    container:, Kubernetes' shared process namespace) sees its processes, and its /proc is that
    namespace's; a container of its own (no path) does not see them; the runtime itself (hooks)
    stays in its own pid namespace."""
    a = spec_bundle(tmp_path / "a", "crun", ["/bin/sh", "-c", "exec sleep 1234"])
    rt("create", "--bundle", str(a), "pa", check=True)
    rt("start", "pa", check=True)
    pid1 = json.loads(Path(rt.root, "pa", "state.json").read_text())["sandbox_pid"]
    show = ["/bin/sh", "-c", "for f in /proc/[0-9]*/cmdline; do cat $f; echo; done; echo own=$$"]
    hook_log = tmp_path / "hook.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\nreadlink /proc/self/ns/pid >> {hook_log}\n")
    hook.chmod(0o755)
    try:
        for cid, joined in (("pb", True), ("pc", False)):
            b = spec_bundle(tmp_path / cid, "crun", show)
            if joined:
                edit_config(b, lambda c: (_join(c, "pid", f"/proc/{pid1}/ns/pid"),
                                          c.update(hooks={"poststart": [{"path": str(hook)}]})))
            before = len(rt.output())
            rt("create", "--bundle", str(b), cid, check=True)
            rt("start", cid, check=True)
            rt.wait_status(cid, "stopped")
            rt("delete", cid, check=True)
            out = rt.output()[before:]
            assert ("1234" in out) == joined, out
            assert "own=1" not in out if joined else True      # not the namespace's init
        assert hook_log.read_text().split() == [os.readlink("/proc/self/ns/pid")]
        assert rt.status("pa") == "running"                     # the joined container is unharmed
    finally:
        rt("delete", "--force", "pa")


# --- namespaces joined by path: user and mount ----------------------------------------------------

def _ns(pid, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


@pytest.fixture
def holder():
    """A process holding a user namespace (0-65535 -> 200000+, written by us as root: setgroups
    stays allowed) and a mount namespace owned by it with a tmpfs at /mnt holding a marker;
    killed and reaped after the test."""
    p = subprocess.Popen(["unshare", "-U", "-m", "--propagation", "private", "sleep", "1000"])
    try:
        deadline = time.monotonic() + 10
        while _ns(p.pid, "user") == _ns("self", "user") or os.readlink(f"/proc/{p.pid}/exe") != "/usr/bin/sleep":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for f in ("uid_map", "gid_map"):
            Path(f"/proc/{p.pid}/{f}").write_text("0 200000 65536")
        subprocess.run(["nsenter", "-t", str(p.pid), "-U", "-m", "sh", "-c",
                        "mount -t tmpfs none /mnt && echo in-holder > /mnt/marker"], check=True)
        yield p
    finally:
        p.kill()
        p.wait()


SHOW_NS = ["/bin/sh", "-c", "ls -Li /proc/self/ns/user /proc/self/ns/mnt /proc/self/ns/pid | sort -k2; "
           "cat /proc/self/uid_map; cat /mnt/marker 2>&1; id -u"]


def _join_holder(c, pid: int, kinds) -> None:
    """The holder's namespaces of these kinds joined; with its mount namespace nothing to mount."""
    for k in kinds:
        _join(c, k, f"/proc/{pid}/ns/{'mnt' if k == 'mount' else k}")
    for k in ("maskedPaths", "readonlyPaths", "uidMappings", "gidMappings"):
        c["linux"].pop(k, None)
    c["mounts"] = []
    c["root"]["readonly"] = False


def _run_to_end(rt, b, cid) -> list:
    before = len(rt.output())
    rt("create", "--bundle", str(b), cid, check=True)
    rt("start", cid, check=True)
    rt.wait_status(cid, "stopped")
    rt("delete", cid, check=True)
    return rt.output()[before:].splitlines()


def test_must_user_namespace_joined_by_path(rt, tmp_path, holder):
    """config.md linux.namespaces path (user): the container process is in that user namespace
    (same inode as the holder's), its mappings are the namespace's (uid 0 -> 200000), and the
    namespaces created for it (mount, pid) are new ones; uid/gid mappings in config.json beside a
    joined user namespace are refused as runc refuses them."""
    b = spec_bundle(tmp_path / "b", "crun", SHOW_NS)

    def edit(c):
        _join(c, "user", f"/proc/{holder.pid}/ns/user")
        c["linux"].pop("uidMappings", None)
        c["linux"].pop("gidMappings", None)
    edit_config(b, edit)
    out = _run_to_end(rt, b, "uj")
    ino = {ln.split()[1].rsplit("/", 1)[1]: int(ln.split()[0]) for ln in out[:3]}
    assert ino["user"] == _ns(holder.pid, "user")
    assert ino["mnt"] not in (_ns(holder.pid, "mnt"), _ns("self", "mnt"))
    assert ino["pid"] != _ns("self", "pid")
    assert out[3].split() == ["0", "200000", "65536"], out
    assert "in-holder" not in out[4] and out[5] == "0"

    c = spec_bundle(tmp_path / "c", "crun", ["/bin/true"])
    edit_config(c, lambda cfg: (_join(cfg, "user", f"/proc/{holder.pid}/ns/user"),
                                cfg["linux"].update(uidMappings=[{"containerID": 0, "hostID": 0, "size": 1}],
                                                    gidMappings=[{"containerID": 0, "hostID": 0, "size": 1}])))
    r = rt("create", "--bundle", str(c), "uk")
    assert r.returncode == 1 and "config.json: linux.uidMappings: must be absent" in rt.err()
    assert not os.path.exists(os.path.join(rt.root, "uk"))


def test_must_mount_namespace_joined_by_path(rt, tmp_path, holder):
    """config.md linux.namespaces path (mount): the container process is in that mount namespace
    (same inode) and sees what is mounted there (the holder's tmpfs with its marker, which the host
    does not see); the root is that namespace's as it is (crun's behaviour: nothing is pivoted or
    mounted in it), so mounts, maskedPaths and readonlyPaths are refused; with the user
    namespace joined too, both are the holder's."""
    assert not os.path.exists("/mnt/marker")
    for cid, kinds in (("mj", ("mount",)), ("mu", ("user", "mount"))):
        b = spec_bundle(tmp_path / cid, "crun", SHOW_NS)

        edit_config(b, lambda c, kinds=kinds: _join_holder(c, holder.pid, kinds))
        out = _run_to_end(rt, b, cid)
        ino = {ln.split()[1].rsplit("/", 1)[1]: int(ln.split()[0]) for ln in out[:3]}
        assert ino["mnt"] == _ns(holder.pid, "mnt"), out
        assert ino["user"] == _ns(holder.pid if "user" in kinds else "self", "user")
        assert "in-holder" in out, out
    edit_config(b, lambda c: c["linux"].update(maskedPaths=["/proc/kcore"]))
    r = rt("create", "--bundle", str(b), "mk")
    assert r.returncode == 1 and "config.json: linux.maskedPaths: cannot be applied in a mount namespace joined" in rt.err()


def test_rootless_user_namespace_joined_by_path(tmp_path, user_runner):
    """As the unprivileged test user: a bundle joining the user namespace a `sleep` of the user's
    holds (`unshare -U --map-root-user`: its own uid as 0, setgroups denied) runs in it."""
    u = user_runner
    b = spec_bundle(tmp_path / "b", "crun", SHOW_NS)
    out = tmp_path / "o"
    out.mkdir()
    os.chown(out, u.uid, u.gid)
    env = u.env({"XDG_RUNTIME_DIR": str(out)})
    root = str(out / "state")
    p = subprocess.Popen(["unshare", "-U", "--map-root-user", "sh", "-c", "echo ok; exec sleep 1000"],
                         stdout=subprocess.PIPE, text=True, env=env, user=u.uid, group=u.gid, extra_groups=[])

    def rt(*args):
        with open(out / "stdout", "ab") as o, open(out / "stderr", "ab") as e:
            return subprocess.run([RUNTIME, "--root", root, *args], stdout=o, stderr=e,
                                  env=env, user=u.uid, group=u.gid, extra_groups=[], timeout=60)
    try:
        assert p.stdout.readline().strip() == "ok"

        def edit(c):
            _join(c, "user", f"/proc/{p.pid}/ns/user")
            for k in ("uidMappings", "gidMappings", "resources"):
                c["linux"].pop(k, None)
        edit_config(b, edit)
        for args in (("create", "--bundle", str(b), "ru"), ("start", "ru")):
            assert rt(*args).returncode == 0, (out / "stderr").read_text()
        deadline = time.monotonic() + 30
        while json.loads((out / "state" / "ru" / "state.json").read_text()).get("status") != "stopped":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert rt("delete", "ru").returncode == 0
        lines = (out / "stdout").read_text().splitlines()
        ino = {ln.split()[1].rsplit("/", 1)[1]: int(ln.split()[0]) for ln in lines[:3]}
        assert ino["user"] == _ns(p.pid, "user"), lines
        assert lines[3].split() == ["0", str(u.uid), "1"] and lines[-1] == "0", lines
    finally:
        rt("delete", "--force", "ru")
        p.kill()
        p.wait()


def test_exec_into_joined_user_and_mount_namespaces(rt, tmp_path, holder):
    """exec in a container whose user and mount namespaces were joined by path: the process is in
    them too (PID 1's namespaces), sees the holder's tmpfs, and its exit status is exec's."""
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sleep", "100"])
    edit_config(b, lambda c: _join_holder(c, holder.pid, ("user", "mount")))
    try:
        rt("create", "--bundle", str(b), "xj", check=True)
        rt("start", "xj", check=True)
        r = subprocess.run([RUNTIME, "--root", rt.root, "exec", "xj", "/bin/sh", "-c",
                            "cat /mnt/marker; ls -Li /proc/self/ns/user | cut -d' ' -f1; exit 4"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 4, r.stderr
        assert r.stdout.split() == ["in-holder", str(_ns(holder.pid, "user"))]
    finally:
        rt("delete", "--force", "xj")


def test_ps_pause_resume_kill_all(rt, tmp_path):
    """runc's ps/pause/resume (what containerd's shim calls; tests/system/test_runtime_containerd.py
    drives them through containerd). With linux.resources (a cgroup): `ps --format json` lists the
    cgroup's processes, `pause` freezes them (state: paused; `exec` refused), `resume` thaws,
    `kill --all` reaches every process, SIGKILL of a paused container ends it. Without a cgroup:
    `ps` lists PID 1's pid namespace, `pause` is refused with the reason."""
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sh", "-c", "sleep 1000 & exec sleep 1001"])
    rt("create", "--bundle", str(b), "nc1", check=True)
    rt("start", "nc1", check=True)
    try:
        pid1 = rt.json("state", "nc1")["pid"]
        deadline = time.monotonic() + 10
        while len(pids := rt.json("ps", "--format", "json", "nc1")) < 3:
            assert time.monotonic() < deadline, pids
            time.sleep(0.02)
        assert pid1 in pids and len(pids) == 3
        r = subprocess.run([RUNTIME, "--root", rt.root, "pause", "nc1"], capture_output=True, text=True)
        assert r.returncode == 1 and "no cgroup with a freezer" in r.stderr
        assert rt.status("nc1") == "running"
    finally:
        rt("delete", "--force", "nc1", check=True)

    top = f"psbrt-ps-{os.getpid()}"
    edit_config(b, lambda c: c["linux"].update(resources={"pids": {"limit": 64}}, cgroupsPath=f"/{top}/pc1"))
    rt("create", "--bundle", str(b), "pc1", check=True)
    rt("start", "pc1", check=True)
    try:
        st = json.loads(Path(rt.root, "pc1", "state.json").read_text())
        freezer = next(d for d in st["cgroup_dirs"] if "/freezer/" in d)
        deadline = time.monotonic() + 10
        while len(pids := rt.json("ps", "--format", "json", "pc1")) < 3:
            assert time.monotonic() < deadline, pids
            time.sleep(0.02)
        assert set(pids) == {int(x) for x in open(f"{freezer}/cgroup.procs").read().split()}
        table = subprocess.run([RUNTIME, "--root", rt.root, "ps", "pc1"], capture_output=True, text=True).stdout
        assert table.splitlines()[0].split()[:2] == ["UID", "PID"] and table.count("sleep 100") == 2
        rt("pause", "pc1", check=True)
        assert rt.status("pc1") == "paused"
        assert open(f"{freezer}/freezer.state").read().strip() == "FROZEN"
        r = subprocess.run([RUNTIME, "--root", rt.root, "exec", "pc1", "/bin/true"], capture_output=True, text=True)
        assert r.returncode == 1 and "is paused, not running" in r.stderr
        assert subprocess.run([RUNTIME, "--root", rt.root, "pause", "pc1"], capture_output=True).returncode == 1
        rt("resume", "pc1", check=True)
        assert rt.status("pc1") == "running"
        assert open(f"{freezer}/freezer.state").read().strip() == "THAWED"
        rt("kill", "--all", "pc1", "STOP", check=True)          # every process stopped, not only PID 1
        for p in pids:
            deadline = time.monotonic() + 10
            while open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "T":
                assert time.monotonic() < deadline, p
                time.sleep(0.02)
        rt("kill", "--all", "pc1", "CONT", check=True)
        rt("pause", "pc1", check=True)
        rt("kill", "pc1", "KILL", check=True)
        rt.wait_status("pc1", "stopped")
        assert rt.record("pc1")["exit_code"] == 137
        r = subprocess.run([RUNTIME, "--root", rt.root, "kill", "pc1", "TERM"], capture_output=True, text=True)
        assert r.returncode == 1 and "container not running" in r.stderr   # containerd's shim reads this
        rt("delete", "pc1", check=True)
        assert not os.path.exists(freezer)
        rt("create", "--bundle", str(b), "pc1", check=True)      # delete --force of a paused container
        rt("start", "pc1", check=True)
        pid1 = rt.json("state", "pc1")["pid"]
        rt("pause", "pc1", check=True)
        rt("delete", "--force", "pc1", check=True)
        assert not os.path.exists(freezer)                       # (no live task: the leaf is gone)
        try:                                                      # PID 1 gone or a zombie for its reaper
            assert open(f"/proc/{pid1}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            pass
    finally:
        rt("delete", "--force", "pc1")
        _cg_cleanup(top)


def test_config_fields_second_batch(rt, tmp_path):
    """The issue's config list where test_config_fields_are_honoured has nothing: process.user.umask,
    a bind's `noexec` and propagation option (`rslave`), linux.rootfsPropagation `slave`, an ipc
    sysctl (kernel.msgmax, the container's ipc namespace), cgroup and time namespaces created,
    linux.devices naming a node the sandbox has, linux.resources memory (limit, reservation, swap)
    and cpu (shares, quota/period, cpus) in the cgroupsPath leaf (cgroup v1: the only controllers
    this hybrid host has), ipc and uts namespaces joined by path. Refused with the field named: rootfsPropagation
    `shared`, a device node the sandbox's /dev does not have."""
    src = tmp_path / "bin"
    src.mkdir()
    (src / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (src / "run.sh").chmod(0o755)
    script = ("umask; cat /proc/sys/kernel/msgmax; ls -Li /proc/self/ns/cgroup; /data/run.sh || echo noexec-denied; "
              "grep ' /data ' /proc/self/mountinfo; ls -Li /proc/self/ns/time")
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sh", "-c", script])
    top = f"psbrt-cf2-{os.getpid()}"

    def edit(c):
        c["process"]["user"]["umask"] = 0o027
        c["mounts"].append({"destination": "/data", "type": "bind", "source": str(src),
                            "options": ["rbind", "ro", "noexec", "rslave"]})
        c["linux"].update(rootfsPropagation="slave", sysctl={"kernel.msgmax": "4096"},
                          devices=[{"path": "/dev/null", "type": "c", "major": 1, "minor": 3}],
                          cgroupsPath=f"/{top}/a",
                          resources={"memory": {"limit": 64 << 20, "reservation": 32 << 20, "swap": 128 << 20},
                                     "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"}})
        c["linux"]["namespaces"] += [{"type": "cgroup"}, {"type": "time"}]
    edit_config(b, edit)
    try:
        rt("create", "--bundle", str(b), "cf2", check=True)
        assert Path(f"/sys/fs/cgroup/memory/{top}/a/memory.limit_in_bytes").read_text().strip() == str(64 << 20)
        leaf = {h: Path(f"/sys/fs/cgroup/{h}/{top}/a") for h in ("memory", "cpu", "cpuset")}
        assert (leaf["memory"] / "memory.soft_limit_in_bytes").read_text().strip() == str(32 << 20)
        assert (leaf["memory"] / "memory.memsw.limit_in_bytes").read_text().strip() == str(128 << 20)
        assert Path(f"/sys/fs/cgroup/cpu/{top}/a/cpu.shares").read_text().strip() == "512"
        assert (leaf["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (leaf["cpu"] / "cpu.cfs_period_us").read_text().strip() == "100000"
        assert (leaf["cpuset"] / "cpuset.cpus").read_text().strip() == "0"
        rt("start", "cf2", check=True)
        rt.wait_status("cf2", "stopped")
        rt("delete", "cf2", check=True)
    finally:
        rt("delete", "--force", "cf2")
        _cg_cleanup(top)
    out = rt.output().splitlines()
    assert out[0] == "0027" and out[1] == "4096", out
    assert int(out[2].split()[0]) != os.stat("/proc/self/ns/cgroup").st_ino
    assert "noexec-denied" in out and "ran" not in out
    mi = [ln for ln in out if " /data " in ln][0]
    assert "noexec" in mi.split()[5] and "ro" in mi.split()[5].split(","), mi
    assert int(out[-1].split()[0]) != os.stat("/proc/self/ns/time").st_ino

    holder = subprocess.Popen(["unshare", "--ipc", "--uts", "sleep", "1000"])
    try:
        deadline = time.monotonic() + 10
        while os.stat(f"/proc/{holder.pid}/ns/ipc").st_ino == os.stat("/proc/self/ns/ipc").st_ino:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        want = {k: os.stat(f"/proc/{holder.pid}/ns/{k}").st_ino for k in ("ipc", "uts")}
        j = spec_bundle(tmp_path / "j", "crun", ["/bin/sh", "-c", "ls -Li /proc/self/ns/ipc /proc/self/ns/uts"])
        edit_config(j, lambda c: c["linux"].update(namespaces=[n for n in c["linux"]["namespaces"]
                                                               if n["type"] not in ("ipc", "uts")]
                                                   + [{"type": k, "path": f"/proc/{holder.pid}/ns/{k}"}
                                                      for k in ("ipc", "uts")]))
        (rt.out / "stdout").unlink()
        rt("create", "--bundle", str(j), "jn", check=True)
        rt("start", "jn", check=True)
        rt.wait_status("jn", "stopped")
        rt("delete", "jn", check=True)
        got = {ln.split()[1].rsplit("/", 1)[1]: int(ln.split()[0]) for ln in rt.output().splitlines()}
        assert got == want
    finally:
        holder.kill()
        holder.wait()

    for cid, fn, field in (("rp", lambda c: c["linux"].update(rootfsPropagation="shared"), "linux.rootfsPropagation"),
                           ("dv", lambda c: c["linux"].update(devices=[{"path": "/dev/sda", "type": "b", "major": 8,
                                                                        "minor": 0}]), "linux.devices[0]")):
        bb = spec_bundle(tmp_path / cid, "crun", ["/bin/true"])
        edit_config(bb, fn)
        assert rt("create", "--bundle", str(bb), cid).returncode == 1
        assert f"config.json: {field}" in rt.err()
        assert not os.path.exists(os.path.join(rt.root, cid))


def test_update_resources(rt, tmp_path):
    """runc's update (containerd's shim and CRI-O send `update --resources -` with a LinuxResources
    object for a resize): the new memory (limit, reservation, memory+swap raised and lowered in the
    kernel's order), cpu (shares, quota/period) and pids limits land in the container's cgroupsPath
    leaf; the flags form too; a field it does not update is refused naming it and changes nothing;
    a stopped container is refused."""
    top = f"psbrt-up-{os.getpid()}"
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sleep", "1000"])
    edit_config(b, lambda c: c["linux"].update(cgroupsPath=f"/{top}/u", resources={"pids": {"limit": 50}}))
    mem, cpu, pids = (Path(f"/sys/fs/cgroup/{h}/{top}/u") for h in ("memory", "cpu", "pids"))

    def update(*args, stdin=None) -> subprocess.CompletedProcess:
        return subprocess.run([RUNTIME, "--root", rt.root, "update", *args], input=stdin, capture_output=True,
                              text=True, timeout=30)
    try:
        rt("create", "--bundle", str(b), "up1", check=True)
        rt("start", "up1", check=True)
        res = {"memory": {"limit": 256 << 20, "reservation": 128 << 20, "swap": 512 << 20},
               "cpu": {"shares": 256, "quota": 20000, "period": 100000}, "pids": {"limit": 20}}
        r = update("--resources", "-", "up1", stdin=json.dumps(res))
        assert r.returncode == 0, r.stderr
        assert (mem / "memory.limit_in_bytes").read_text().strip() == str(256 << 20)
        assert (mem / "memory.soft_limit_in_bytes").read_text().strip() == str(128 << 20)
        assert (mem / "memory.memsw.limit_in_bytes").read_text().strip() == str(512 << 20)
        assert (cpu / "cpu.shares").read_text().strip() == "256"
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "20000"
        assert (pids / "pids.max").read_text().strip() == "20"
        # lowering memory+swap below the current limit: the limit first
        r = update("--resources", "-", "up1", stdin=json.dumps({"memory": {"limit": 64 << 20, "swap": 96 << 20}}))
        assert r.returncode == 0, r.stderr
        assert (mem / "memory.memsw.limit_in_bytes").read_text().strip() == str(96 << 20)
        assert (mem / "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
        r = update("--pids-limit", "30", "--cpu-shares", "300", "up1")
        assert r.returncode == 0, r.stderr
        assert (pids / "pids.max").read_text().strip() == "30" and (cpu / "cpu.shares").read_text().strip() == "300"
        for bad, field in (({"hugepageLimits": [{"pageSize": "2MB", "limit": 1}]}, "linux.resources.hugepageLimits"),
                           ({"cpu": {"mems": "0"}, "pids": {"limit": 5}}, "linux.resources.cpu.mems"),
                           ({"cpu": {"cpus": "0"}}, "linux.resources.cpu.cpus: the container has no cgroup")):
            r = update("--resources", "-", "up1", stdin=json.dumps(bad))
            assert r.returncode == 1 and field in r.stderr, (bad, r.stderr)
        assert (pids / "pids.max").read_text().strip() == "30"
        rt("kill", "up1", "KILL", check=True)
        rt.wait_status("up1", "stopped")
        r = update("--pids-limit", "5", "up1")
        assert r.returncode == 1 and "is stopped" in r.stderr
        rt("delete", "up1", check=True)
    finally:
        rt("delete", "--force", "up1")
        _cg_cleanup(top)


def test_rootless_ps_pause_resume_update(tmp_path, user_runner):
    """The unprivileged test user's container with linux.resources (its cgroups below the user's
    delegated ones): `ps --format json` lists its processes, `pause`/`resume` freeze and thaw it,
    `update` writes a new pids limit, `kill KILL` of the paused container ends it."""
    u = user_runner
    b = spec_bundle(tmp_path / "b", "crun", ["/bin/sh", "-c", "sleep 1000 & exec sleep 1001"])

    def edit(c):
        c["linux"]["namespaces"] = [{"type": t} for t in ("pid", "network", "ipc", "uts", "user", "mount")]
        c["linux"]["uidMappings"] = [{"containerID": 0, "hostID": u.uid, "size": 1}]
        c["linux"]["gidMappings"] = [{"containerID": 0, "hostID": u.gid, "size": 1}]
        c["linux"]["resources"] = {"pids": {"limit": 40}}
    edit_config(b, edit)
    out = tmp_path / "o"
    out.mkdir()
    os.chown(out, u.uid, u.gid)
    env = u.env({"XDG_RUNTIME_DIR": str(out)})
    root = str(out / "state")

    def rt(*args) -> subprocess.CompletedProcess:
        with open(out / "stdout", "ab") as o, open(out / "stderr", "ab") as e:
            return subprocess.run([RUNTIME, "--root", root, *args], stdout=o, stderr=e, env=env, user=u.uid,
                                  group=u.gid, extra_groups=[], timeout=60)

    def query(*args) -> subprocess.CompletedProcess:
        return subprocess.run([RUNTIME, "--root", root, *args], capture_output=True, text=True, env=env,
                              user=u.uid, group=u.gid, extra_groups=[], timeout=60)
    try:
        for args in (("create", "--bundle", str(b), "rp"), ("start", "rp")):
            assert rt(*args).returncode == 0, (out / "stderr").read_text()
        deadline = time.monotonic() + 10
        while len(pids := json.loads(query("ps", "--format", "json", "rp").stdout)) < 3:
            assert time.monotonic() < deadline, pids
            time.sleep(0.02)
        r = query("pause", "rp")
        assert r.returncode == 0, r.stderr
        assert json.loads(query("state", "rp").stdout)["status"] == "paused"
        st = json.loads((out / "state" / "rp" / "state.json").read_text())

        def frozen() -> bool:
            for d in st["cgroup_dirs"]:
                for f, want in (("freezer.state", "FROZEN"), ("cgroup.events", "frozen 1")):
                    if os.path.exists(f"{d}/{f}") and want in open(f"{d}/{f}").read():
                        return True
            return False
        assert frozen()
        r = query("resume", "rp")
        assert r.returncode == 0, r.stderr
        assert json.loads(query("state", "rp").stdout)["status"] == "running" and not frozen()
        r = query("update", "--pids-limit", "20", "rp")
        assert r.returncode == 0, r.stderr
        assert any(open(f"{d}/pids.max").read().strip() == "20" for d in st["cgroup_dirs"]
                   if os.path.exists(f"{d}/pids.max"))
        assert query("pause", "rp").returncode == 0
        assert query("kill", "rp", "KILL").returncode == 0
        deadline = time.monotonic() + 20
        while json.loads(query("state", "rp").stdout)["status"] != "stopped":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert rt("delete", "rp").returncode == 0
    finally:
        rt("delete", "--force", "rp")
