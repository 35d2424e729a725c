"""Proof on real engines: the exports of `pysandbox export` run under crun, runc and podman
(with runc and with crun as its runtime), and a probe program sees the same isolation there as
under `pysandbox run`: the same seccomp answers (mount, unshare, keyctl, bpf, ptrace,
personality), the same capability sets and capability checks (chown), NoNewPrivs, rlimits,
read-only root, hostname, network interfaces, uid map, masked paths; a seccomp `kill` rule ends
the program with SIGSYS (exit 159) everywhere.

This machine's cgroups are hybrid (v1 controllers + an almost empty cgroup2 at
/sys/fs/cgroup/unified). crun refuses hybrid layouts, so every crun run (directly or under
podman) happens in a private mount namespace (`unshare -m`) where /sys/fs/cgroup/unified is
unmounted: only the v1 hierarchies are visible there; nothing changes on the host. runc and
podman+runc run on the host's layout as is. Podman uses a private storage root (vfs driver,
no overlay mounts) under the test's temporary directory, `--cgroup-manager=cgroupfs` (no
systemd here) and `--events-backend=file`; root on this machine lacks CAP_SYS_RESOURCE, so
podman's default RLIMIT_NPROC/NOFILE (raised above the current hard limits) cannot be set:
the tests pass `--ulimit nproc=4096:4096` and, for profiles without a nofile rlimit, the
caller's nofile limits (through run.sh's PYSANDBOX_RUN_OPTS) - the profile's own rlimits are
exported as they are.

Every container, state directory and storage root is removed afterwards.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import uuid
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYSANDBOX = str(Path(sys.executable).parent / "pysandbox")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="engines are run as root")

PROBE = r'''
import ctypes, errno, json, os, resource, socket
libc = ctypes.CDLL(None, use_errno=True)
def call(f, *a):
    ctypes.set_errno(0)
    return "ok" if f(*a) != -1 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
def try_open(path, mode):
    try:
        with open(path, mode) as f:
            return "ok:%d" % len(f.read(16)) if "r" in mode else "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
r = {}
r["mount"] = call(libc.mount, b"none", b"/tmp", b"tmpfs", 0, None)
r["unshare"] = call(libc.unshare, 0x00020000)
r["keyctl"] = call(libc.syscall, 250, 0, 0, 0, 0)
r["bpf"] = call(libc.syscall, 321, 0, 0, 0)
r["ptrace"] = call(libc.ptrace, 12, os.getpid(), 0, 0)   # GETREGS on self: kernel ESRCH, seccomp EPERM
r["personality"] = call(libc.personality, 0x0008)
open("/tmp/f", "w").close()
r["chown"] = call(libc.chown, b"/tmp/f", 1, 1)
st = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"):
    r[k] = st[k].strip()
r["nofile"] = list(resource.getrlimit(resource.RLIMIT_NOFILE))
r["core"] = list(resource.getrlimit(resource.RLIMIT_CORE))
r["write_usr"] = try_open("/usr/pysandbox-probe", "w")
r["write_root"] = try_open("/pysandbox-probe", "w")
r["write_proc_sys"] = try_open("/proc/sys/kernel/hostname", "w")
r["kcore"] = try_open("/proc/kcore", "rb")
r["hostname"] = open("/proc/sys/kernel/hostname").read().strip()
r["ifaces"] = sorted(os.listdir("/sys/class/net"))
r["uid_map"] = open("/proc/self/uid_map").read().split()
r["uid"] = os.getuid()
print("PROBE " + json.dumps(r, sort_keys=True))
'''
ARGV = ["/usr/bin/python3", "-c", PROBE]

CASES = {
    "strict": ["strict"],
    "strict+CHOWN": ["strict", "--cap-add", "CHOWN"],
    "default": ["default"],
    "default-CHOWN": ["default", "--cap-drop", "CHOWN"],
}


def _probe_output(p: subprocess.CompletedProcess, what: str) -> dict:
    for line in p.stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[6:])
    raise AssertionError(f"{what}: no probe output (rc={p.returncode}) stdout={p.stdout[-600:]!r} "
                         f"stderr={p.stderr[-1500:]!r}")


@lru_cache(maxsize=None)
def under_pysandbox(case: str) -> dict:
    prof, *opts = CASES[case]
    p = subprocess.run([PYSANDBOX, "run", "--profile", prof, *opts, "--", *ARGV], capture_output=True,
                       text=True, timeout=120, cwd=str(REPO))
    assert p.returncode == 0, p.stderr
    return _probe_output(p, f"pysandbox run {case}")


def export(fmt: str, out: Path, args, argv=ARGV, *extra) -> Path:
    p = subprocess.run([PYSANDBOX, "export", "-f", fmt, *args, "-o", str(out), *extra, "--", *argv],
                       capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert p.returncode == 0, p.stderr
    return out


def _unified_mounted() -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(l.split()[4] == "/sys/fs/cgroup/unified" for l in f)


def v1_only(cmd: list[str]) -> list[str]:
    """Run cmd in a private mount namespace that shows only the cgroup v1 hierarchies."""
    script = 'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$@"' if _unified_mounted() else 'exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *cmd]


def _cgroup_dirs(name: str) -> list[str]:
    """<hierarchy>/<name> directories that exist, for every mounted cgroup hierarchy."""
    with open("/proc/self/mountinfo") as f:
        roots = [l.split()[4] for l in f if " - cgroup" in l]
    return [os.path.join(r, name) for r in roots if os.path.isdir(os.path.join(r, name))]


def _remove_empty_cgroups(name: str) -> None:
    for d in _cgroup_dirs(name):
        for dirpath, _, _ in sorted(os.walk(d), key=lambda t: -t[0].count("/")):
            try:
                os.rmdir(dirpath)          # fails (harmlessly) on a cgroup that still has tasks
            except OSError:
                pass


def _mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [l.split()[4] for l in f if l.split()[4].startswith(path)]


class Engine:
    def __init__(self, name: str, tmp: Path):
        self.name, self.tmp = name, tmp
        # podman wants a short --runroot (< 50 characters): a state directory directly in /tmp
        self.state = Path(tempfile.mkdtemp(prefix=f"psx-{name[:6]}-", dir="/tmp"))
        self.ids: list[str] = []
        # podman's cgroupfs manager leaves <hierarchy>/libpod_parent/conmon behind
        self.had_libpod_parent = bool(_cgroup_dirs("libpod_parent"))

    # --- OCI runtimes on an exported bundle
    def run_bundle(self, bundle: Path, timeout=120) -> subprocess.CompletedProcess:
        cid = f"pysbx-{self.name}-{uuid.uuid4().hex[:8]}"
        self.ids.append(cid)
        if self.name == "runc":
            cmd = ["runc", "--root", str(self.state), "run", "--bundle", str(bundle), cid]
        else:
            cmd = v1_only(["crun", "--root", str(self.state), "run", "--bundle", str(bundle), cid])
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    # --- podman on an exported run.sh
    def podman_global(self) -> list[str]:
        runtime = "runc" if self.name == "podman-runc" else "crun"
        return ["podman", f"--runtime={runtime}", "--cgroup-manager=cgroupfs", "--events-backend=file",
                "--root", str(self.state / "root"), "--runroot", str(self.state / "run"),
                "--tmpdir", str(self.state / "tmp"), "--storage-driver", "vfs"]

    def run_script(self, out: Path, timeout=180) -> subprocess.CompletedProcess:
        opts = ["--ulimit=nproc=4096:4096"]
        if "--ulimit=nofile=" not in (out / "run.sh").read_text():
            # the profile sets none: keep the caller's, as `pysandbox run` does (podman's default
            # would raise it above the hard limit, which root without CAP_SYS_RESOURCE cannot)
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            opts.append(f"--ulimit=nofile={soft}:{hard}")
        env = dict(os.environ, PODMAN=" ".join(self.podman_global()), PYSANDBOX_RUN_OPTS=" ".join(opts))
        cmd = ["sh", str(out / "run.sh")]
        if self.name == "podman-crun":
            cmd = v1_only(cmd)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)

    def run(self, case_args, out: Path, argv=ARGV) -> subprocess.CompletedProcess:
        if self.name in ("runc", "crun"):
            return self.run_bundle(export("oci", out, case_args, argv))
        return self.run_script(export("podman", out, case_args, argv))

    def cleanup(self):
        if self.name in ("runc", "crun"):
            for cid in self.ids:
                subprocess.run([self.name, "--root", str(self.state), "delete", "--force", cid],
                               capture_output=True, timeout=30)
        else:
            subprocess.run(self.podman_global() + ["rm", "--all", "--force"], capture_output=True, timeout=60)
            if not self.had_libpod_parent:
                _remove_empty_cgroups("libpod_parent")
        for d in (self.tmp, self.state):
            for m in sorted(_mounts_under(str(d)), key=len, reverse=True):
                subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(self.state, ignore_errors=True)


def _available(name: str) -> str | None:
    """Why `name` cannot run here, or None."""
    binary = "podman" if name.startswith("podman") else name
    if shutil.which(binary) is None:
        return f"{binary} is not installed (Debian package {binary}; `make setup` installs it)"
    if name == "podman-crun" and shutil.which("crun") is None:
        return "crun is not installed"
    if name == "podman-runc" and shutil.which("runc") is None:
        return "runc is not installed"
    return None


@pytest.fixture(params=["runc", "crun", "podman-runc", "podman-crun"])
def engine(request):
    why = _available(request.param)
    if why:
        pytest.skip(why)
    # Bundles live in a world-traversable directory of their own (the user-namespaced root must
    # reach the rootfs; pytest keeps its tmp_path root-only and re-tightens it concurrently).
    work = Path(tempfile.mkdtemp(prefix="psx-work-", dir="/tmp"))
    os.chmod(work, 0o755)
    e = Engine(request.param, work)
    try:
        yield e
    finally:
        e.cleanup()
        assert _mounts_under(str(work)) == [] and _mounts_under(str(e.state)) == []
        assert not e.state.exists()
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("case", list(CASES))
def test_engine_matches_pysandbox_run(engine, case):
    want = under_pysandbox(case)
    p = engine.run(CASES[case], engine.tmp / "out")
    got = _probe_output(p, f"{engine.name} {case}")
    assert p.returncode == 0, p.stderr
    if engine.name.startswith("podman"):
        # podman always leaves the inheritable set empty (no flag sets it); for a uid-0 program
        # that grants nothing either way (reported as a note by the export)
        assert got.pop("CapInh") == "0000000000000000"
        want = {k: v for k, v in want.items() if k != "CapInh"}
    assert got == want


def test_strict_denials_are_the_demonstrated_ones(engine):
    """The denied side, spelled out (the comparison above would also pass if both were open)."""
    got = _probe_output(engine.run(CASES["strict"], engine.tmp / "out"), engine.name)
    for call in ("mount", "unshare", "keyctl", "bpf", "ptrace", "chown"):
        assert got[call] == "EPERM", (call, got)
    assert got["personality"] in ("EPERM", "ENOSYS")
    for s in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert got[s] == "0000000000000000"
    assert got["NoNewPrivs"] == "1" and got["Seccomp"] == "2"
    assert got["write_usr"] == got["write_root"] == "EROFS"
    assert got["write_proc_sys"] in ("EROFS", "EACCES")
    assert got["ifaces"] == ["lo"] and got["hostname"] == "sandbox"
    assert got["uid"] == 0 and got["uid_map"][1] != "0"          # root inside is not root outside
    assert got["nofile"] == [1024, 4096] and got["core"] == [0, 0]


def test_capability_decides_chown(engine):
    """default (Docker's seccomp lets chown through): CAP_CHOWN decides - allowed with it,
    EPERM from the kernel's capability check without it."""
    with_cap = _probe_output(engine.run(CASES["default"], engine.tmp / "a"), engine.name)
    without = _probe_output(engine.run(CASES["default-CHOWN"], engine.tmp / "b"), engine.name)
    assert with_cap["chown"] == "ok" and without["chown"] == "EPERM"
    assert int(with_cap["CapEff"], 16) & 1 and not int(without["CapEff"], 16) & 1


def test_seccomp_kill_rule_ends_with_sigsys(engine):
    prof = engine.tmp / "kill.yaml"
    prof.write_text("version: 1\nname: strict-kill\nextends: strict\n"
                    "seccomp:\n  deny: !extend [{names: [keyctl], action: kill}]\n")
    os.chmod(prof, 0o644)
    argv = ["/usr/bin/python3", "-c", "import ctypes; ctypes.CDLL(None).syscall(250, 0, 0, 0, 0); print('alive')"]
    ref = subprocess.run([PYSANDBOX, "run", "--profile", str(prof), "--", *argv], capture_output=True,
                         text=True, timeout=60)
    assert ref.returncode == 159 and "alive" not in ref.stdout, ref
    p = engine.run([str(prof)], engine.tmp / "out", argv)
    assert "alive" not in p.stdout
    assert p.returncode == 159, (p.returncode, p.stderr[-800:])


LIMIT_ARGS = ["--memory", "256m", "--memory-swap", "512m", "--memory-reservation", "128m", "--cpus", "0.5",
              "--cpu-shares", "512", "--cpuset-cpus", "0", "--pids-limit", "64"]


def _host_pid_of(marker: str, deadline: float) -> int | None:
    import time
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            # the container's program, not a host process whose command line carries the marker
            # (the export command itself): it lives in a pid namespace of its own
            try:
                own_ns = os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
            except OSError:
                continue
            if marker.encode() in argv and argv[0].endswith(b"python3") and own_ns:
                return int(pid)
        time.sleep(0.05)
    return None


def _cgroup_file(pid: int, controller: str, name: str) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        text = f.read()
    for line in text.splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            try:
                with open(f"/sys/fs/cgroup/{controller}{path}/{name}") as g:
                    return g.read().strip()
            except FileNotFoundError:
                raise AssertionError(f"pid {pid}: no {controller}{path}/{name}; /proc/{pid}/cgroup:\n{text}") from None
    raise AssertionError(f"pid {pid} is in no {controller} cgroup")


def test_cgroup_limits_are_applied_by_the_engine(engine):
    """The exported resources land in the container's (v1) cgroups: read on the host from the
    cgroup files of the running program (block device rates: the disk's major:minor)."""
    import signal
    import threading
    import time
    disk = next((d for d in ("/dev/vda", "/dev/sda", "/dev/nvme0n1") if os.path.exists(d)), None)
    args = ["strict", *LIMIT_ARGS] + (["--device-read-bps", f"{disk}:1m"] if disk else [])
    marker = f"pysbx-limits-{uuid.uuid4().hex[:8]}"
    argv = ["/usr/bin/python3", "-c", "import time; time.sleep(60)", marker]
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("p", engine.run(args, engine.tmp / "out", argv)))
    t.start()
    pid = None
    try:
        pid = _host_pid_of(marker, time.monotonic() + 60)
        assert pid, f"the container program did not start: {result.get('p')}"
        got = {k: _cgroup_file(pid, c, f) for k, (c, f) in {
            "memory": ("memory", "memory.limit_in_bytes"),
            "memsw": ("memory", "memory.memsw.limit_in_bytes"),
            "reservation": ("memory", "memory.soft_limit_in_bytes"),
            "quota": ("cpu", "cpu.cfs_quota_us"), "period": ("cpu", "cpu.cfs_period_us"),
            "shares": ("cpu", "cpu.shares"), "cpuset": ("cpuset", "cpuset.cpus"),
            "pids": ("pids", "pids.max")}.items()}
        assert got == {"memory": str(256 << 20), "memsw": str(512 << 20), "reservation": str(128 << 20),
                       "quota": "50000", "period": "100000", "shares": "512", "cpuset": "0", "pids": "64"}
        if disk:
            st = os.stat(disk).st_rdev
            rates = _cgroup_file(pid, "blkio", "blkio.throttle.read_bps_device")
            assert f"{os.major(st)}:{os.minor(st)} {1 << 20}" in rates.splitlines()
    finally:
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        t.join(120)
    assert result["p"].returncode == 137, result["p"]
