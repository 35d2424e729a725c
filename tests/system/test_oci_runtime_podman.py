"""podman driving pysandbox-runtime (`podman --runtime $(which pysandbox-runtime)`), with a podman
storage of the test's own (--root/--runroot in a temporary directory, vfs, cgroupfs) and an image
imported from a busybox rootfs tar. As the issue says, on this machine podman's default rlimits
exceed the hard limit root may set (no CAP_SYS_RESOURCE): the runs pass --ulimit as for runc."""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile

import pytest

from conftest import VENV_BIN

RUNTIME = str(VENV_BIN / "pysandbox-runtime")
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("podman"),
                                reason="podman as root")


@pytest.fixture(scope="module")
def podman():
    d = tempfile.mkdtemp(prefix="psbrt-podman-", dir="/tmp")
    base = ["podman", "--root", f"{d}/root", "--runroot", f"{d}/runroot", "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--tmpdir", f"{d}/tmp",
            "--runtime", RUNTIME]
    rootfs = os.path.join(d, "rootfs")
    os.makedirs(rootfs + "/bin")
    shutil.copy("/bin/busybox", rootfs + "/bin/busybox")
    for a in ("sh", "echo", "cat", "id", "sleep", "true", "grep", "hostname"):
        os.symlink("busybox", f"{rootfs}/bin/{a}")
    with tarfile.open(f"{d}/bb.tar", "w") as t:
        t.add(rootfs, arcname=".")
    r = subprocess.run(base + ["import", f"{d}/bb.tar", "psbrt-bb:1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr

    def run(*args, timeout=120):
        return subprocess.run(base + list(args), capture_output=True, text=True, timeout=timeout)
    yield run
    run("rm", "--all", "--force")
    run("rmi", "--all", "--force")
    subprocess.run(["umount", "-R", d], capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


def test_podman_run_rm(podman):
    r = podman("run", "--rm", "--network", "none", *ULIMITS, "psbrt-bb:1", "/bin/sh", "-c", "echo hi-podman; exit 3")
    assert r.returncode == 3, r.stderr
    assert r.stdout.strip() == "hi-podman"


def test_podman_run_default_network(podman):
    """podman's own network namespace (netavark), joined by path (linux.namespaces network path)."""
    r = podman("run", "--rm", *ULIMITS, "--hostname", "pod-h", "psbrt-bb:1", "/bin/sh", "-c",
               "hostname; id -u; grep -c . /proc/net/dev")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[0] == "pod-h" and lines[1] == "0"
    assert int(lines[2]) >= 4                      # lo and podman's eth0 (2 header lines)


def test_podman_detached_stop_rm(podman):
    r = podman("run", "-d", "--network", "none", *ULIMITS, "psbrt-bb:1", "/bin/sleep", "1000")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    r = podman("inspect", "--format", "{{.State.Status}}", cid)
    assert r.stdout.strip() == "running"
    r = podman("exec", cid, "/bin/sh", "-c", "echo in-exec; id -u; exit 5")
    assert r.returncode == 5, r.stderr
    assert r.stdout.split() == ["in-exec", "0"]
    r = podman("exec", "-u", "1000", cid, "/bin/id", "-u")
    assert r.returncode == 0 and r.stdout.strip() == "1000", r.stderr
    r = podman("exec", "-t", cid, "/bin/sh", "-c", "test -t 0 && echo on-a-tty")
    assert r.returncode == 0 and "on-a-tty" in r.stdout, r.stderr
    r = podman("stop", "-t", "5", cid)
    assert r.returncode == 0, r.stderr
    r = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", cid)
    assert r.stdout.split() == ["exited", "143"]
    r = podman("rm", cid)
    assert r.returncode == 0, r.stderr


def test_podman_profile_annotation(podman):
    """--annotation org.pysandbox.profile=strict: the profile on top (strict keeps no capability;
    podman's default set otherwise)."""
    r = podman("run", "--rm", "--network", "none", *ULIMITS, "--annotation", "org.pysandbox.profile=strict",
               "psbrt-bb:1", "/bin/grep", "CapEff:", "/proc/self/status")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["CapEff:", "0000000000000000"]
    r = podman("run", "--rm", "--network", "none", *ULIMITS, "psbrt-bb:1", "/bin/grep", "CapEff:", "/proc/self/status")
    assert r.stdout.split()[1] != "0000000000000000"


def test_podman_cgroup_parent_and_stats(podman):
    """linux.cgroupsPath: podman's --cgroup-parent (cgroupfs: /PARENT/libpod-ID) is where the
    container is, in every hierarchy podman reads, so `podman stats` reports its pids and memory;
    podman rm leaves no leaf behind."""
    parent = f"psbrt-podman-{os.getpid()}"
    r = podman("run", "-d", "--network", "none", *ULIMITS, "--cgroup-parent", f"/{parent}", "psbrt-bb:1",
               "/bin/sleep", "1000")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    try:
        leaf = f"{parent}/libpod-{cid}"
        for h in ("memory", "pids", "cpuacct"):
            procs = open(f"/sys/fs/cgroup/{h}/{leaf}/cgroup.procs").read().split()
            assert procs, h
        r = podman("stats", "--no-stream", "--format", "{{.PIDs}} {{.MemUsage}}", cid)
        assert r.returncode == 0, r.stderr
        assert int(r.stdout.split()[0]) >= 2              # PID 1 and sleep
        r = podman("rm", "-f", "-t", "0", cid)
        assert r.returncode == 0, r.stderr
        for h in ("memory", "pids", "cpuacct", "unified"):
            assert not os.path.exists(f"/sys/fs/cgroup/{h}/{leaf}")
    finally:
        podman("rm", "-f", "-t", "0", cid)
        for h in os.listdir("/sys/fs/cgroup"):
            for sub in ("conmon", ""):
                d = os.path.join("/sys/fs/cgroup", h, parent, sub)
                if os.path.isdir(d):
                    try:
                        os.rmdir(d)
                    except OSError:
                        pass


def test_podman_top_lists_the_container(podman):
    """state's pid (and --pid-file) is the sandbox's PID 1, as runc's is the container's init:
    `podman top` reads /proc in its mount namespace and lists the container's processes (PID 1
    and the program), not the host's; podman's own PID is that process on the host."""
    r = podman("run", "-d", "--network", "none", *ULIMITS, "psbrt-bb:1", "/bin/sleep", "1000")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    try:
        r = podman("inspect", "--format", "{{.State.Pid}}", cid)
        pid = int(r.stdout.strip())
        assert os.stat(f"/proc/{pid}/ns/pid").st_ino != os.stat("/proc/self/ns/pid").st_ino   # inside the sandbox
        with open(f"/proc/{pid}/status") as f:
            nspid = next(line for line in f if line.startswith("NSpid:")).split()
        assert nspid[-1] == "1", nspid                                   # the sandbox's PID 1
        r = podman("top", cid, "pid", "args")
        assert r.returncode == 0, r.stderr
        rows = [line.split(None, 1) for line in r.stdout.splitlines()[1:] if line.strip()]
        assert "/bin/sleep 1000" in [a.strip() for _, a in rows], r.stdout
        assert all(int(p) <= 10 for p, _ in rows), r.stdout          # the sandbox's pids, not the host's
        assert not any("podman" in a or "pytest" in a for _, a in rows), r.stdout
    finally:
        podman("rm", "-f", "-t", "0", cid)


def test_podman_exit_codes_kill_and_wait(podman):
    """conmon reaps PID 1 and reads the container's status from it: exit codes, a program killed
    by a signal (128+N), `podman kill` (SIGKILL to PID 1: 137) and `podman wait`."""
    r = podman("run", "--rm", "--network", "none", *ULIMITS, "psbrt-bb:1", "/bin/sh", "-c", "kill -TERM $$")
    assert r.returncode == 143, r.stderr
    r = podman("run", "--rm", "--network", "none", *ULIMITS, "psbrt-bb:1", "/no/such/program")
    assert r.returncode == 127, r.stderr                # as pysandbox run's: not found
    r = podman("run", "-d", "--network", "none", *ULIMITS, "psbrt-bb:1", "/bin/sh", "-c", "sleep 1; exit 42")
    cid = r.stdout.strip()
    r = podman("wait", cid)
    assert r.returncode == 0 and r.stdout.strip() == "42", r.stderr
    podman("rm", cid)
    r = podman("run", "-d", "--network", "none", *ULIMITS, "psbrt-bb:1", "/bin/sleep", "1000")
    cid = r.stdout.strip()
    try:
        assert podman("kill", cid).returncode == 0
        r = podman("wait", cid)
        assert r.stdout.strip() == "137", r.stdout + r.stderr
    finally:
        podman("rm", "-f", "-t", "0", cid)


def test_podman_pause_unpause(podman):
    """`podman pause`/`unpause`: the runtime's pause/resume (the freezer of the container's
    cgroupsPath leaf, podman's libpod-ID); podman reports paused, then running; stop works after."""
    r = podman("run", "-d", "--network", "none", *ULIMITS, "psbrt-bb:1", "/bin/sleep", "1000")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    try:
        r = podman("pause", cid)
        assert r.returncode == 0, r.stderr
        assert podman("inspect", "--format", "{{.State.Status}}", cid).stdout.strip() == "paused"
        pid = int(podman("inspect", "--format", "{{.State.Pid}}", cid).stdout.strip())
        freezer = next(ln.split(":", 2)[2] for ln in open(f"/proc/{pid}/cgroup").read().splitlines()
                       if ln.split(":")[1] == "freezer")
        assert open(f"/sys/fs/cgroup/freezer{freezer}/freezer.state").read().strip() == "FROZEN"
        r = podman("unpause", cid)
        assert r.returncode == 0, r.stderr
        assert podman("inspect", "--format", "{{.State.Status}}", cid).stdout.strip() == "running"
        r = podman("stop", "-t", "5", cid)
        assert r.returncode == 0, r.stderr
    finally:
        podman("rm", "-f", "-t", "0", cid)


def test_podman_update(podman):
    """`podman update` (the runtime's `update --resources`): the new cpu shares and memory limits are
    in the container's cgroups; a field the runtime does not update is refused in one line."""
    r = podman("run", "-d", "--network", "none", *ULIMITS, "psbrt-bb:1", "/bin/sleep", "1000")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    try:
        r = podman("update", "--cpu-shares", "333", "--memory", "96m", "--memory-swap", "192m", cid)
        assert r.returncode == 0, r.stderr
        pid = int(podman("inspect", "--format", "{{.State.Pid}}", cid).stdout.strip())
        where = {ln.split(":")[1]: ln.split(":", 2)[2] for ln in open(f"/proc/{pid}/cgroup").read().splitlines()}
        assert open(f"/sys/fs/cgroup/cpu{where['cpu']}/cpu.shares").read().strip() == "333"
        assert open(f"/sys/fs/cgroup/memory{where['memory']}/memory.memsw.limit_in_bytes").read().strip() \
            == str(192 << 20)
        assert open(f"/sys/fs/cgroup/memory{where['memory']}/memory.limit_in_bytes").read().strip() == str(96 << 20)
        r = podman("update", "--blkio-weight", "300", cid)
        assert r.returncode != 0 and "linux.resources.blockIO: not supported by update" in r.stderr, r.stderr
    finally:
        podman("rm", "-f", "-t", "0", cid)
