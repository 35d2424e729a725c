"""Limits proven by enforcement, not by reading the value back: memory+swap, cpu-shares, device
write bps and iops. Real sandboxes through the CLI on this machine's cgroup v1 hierarchies, as root
and as the unprivileged test user (`runner`).

What this machine cannot show, said plainly:
* memory+swap: swap accounting is on (`memory.memsw.*` exist) but there is **no swap device**, and
  adding one would change the shared host. So no page can go to swap: the memory+swap limit binds
  together with the memory limit, and what is shown is that a program over it is OOM-killed and
  reported, and that it is not given swap beyond it (the test's "with swap" branch, which checks
  that swap up to --memory-swap is granted, runs only on a machine with swap). That a limit which
  cannot be written (no swap accounting) stops the launch is tested in tests/system/test_cgroups.py
  (`--memory-swap: swap accounting not available`; its kernel branch runs where memsw is missing).
* device limits: v1 blk-throttle throttles I/O issued by the sandbox's tasks, so the writes here
  are O_DIRECT (buffered writes are written back by kernel threads outside the cgroup: not
  throttled on v1, a documented limit). The device is the root disk (`vda`, whole disk, mounted at
  `/`); the file is in a host directory bind-mounted into the sandbox, removed afterwards.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import time

import pytest

from conftest import HOST_PYTHON, PYSANDBOX
from sandbox.cgroups.layout import detect

V1 = detect().v1_map
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not {"memory", "cpu", "cpuset", "blkio"} <= set(V1),
                                reason="needs root and cgroup v1 memory, cpu, cpuset, blkio (this machine)")

ALLOC = ("import sys\nn=int(sys.argv[1])*1024*1024\nb=bytearray(n)\n"
         "b[::4096]=b'x'*len(range(0,n,4096))\nprint('allocated', n, flush=True)\n")


def _swap_total() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("SwapTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _events(path: str, etype: str) -> list:
    try:
        with open(path) as f:
            return [e for e in map(json.loads, f) if e.get("type") == etype]
    except FileNotFoundError:
        return []


def test_memory_swap_enforced(runner, shared_tmp):
    assert os.path.exists(os.path.join(V1["memory"], "memory.memsw.limit_in_bytes")), "swap accounting"
    if runner.rootless:
        os.chown(shared_tmp, runner.uid, runner.gid)
    log = str(shared_tmp / "audit.jsonl")
    # over memory+swap (= memory: no swap may be used): OOM-killed, reported on stderr and in the audit
    r = runner("run", "--profile", "strict", "--memory", "64m", "--memory-swap", "64m", "--audit-log", log,
               "--", HOST_PYTHON, "-c", ALLOC, "128", timeout=120)
    assert r.returncode == 137 and "allocated" not in r.stdout, r
    assert re.search(r"pysandbox: killed by OOM \(limit 64 MiB, peak \d+(\.\d)? MiB\)", r.stderr), r
    ooms = _events(log, "oom_kill") or [e for e in _events(log, "sandbox_exit") if "oom" in json.dumps(e)]
    assert ooms, open(log).read()[-2000:]
    # memory 64m with memory+swap 128m and a 100 MiB program: it fits only if 36 MiB can go to swap
    r = runner("run", "--profile", "strict", "--memory", "64m", "--memory-swap", "128m",
               "--", HOST_PYTHON, "-c", ALLOC, "100", timeout=120)
    if _swap_total() >= 64 << 20:
        assert r.returncode == 0 and "allocated" in r.stdout, r          # swap granted up to the limit
    else:                                                               # this machine: no swap
        assert r.returncode == 137 and "killed by OOM (limit 64 MiB" in r.stderr, r
    # ... and over memory+swap even with swap: killed
    r = runner("run", "--profile", "strict", "--memory", "64m", "--memory-swap", "128m",
               "--", HOST_PYTHON, "-c", ALLOC, "200", timeout=120)
    assert r.returncode == 137, r
    # the legitimate use: within the limit it runs
    r = runner("run", "--profile", "strict", "--memory", "64m", "--memory-swap", "64m",
               "--", HOST_PYTHON, "-c", ALLOC, "24", timeout=120)
    assert r.returncode == 0 and "allocated" in r.stdout, r
    # memory+swap below memory cannot be enforced: refused before anything runs
    r = runner("run", "--profile", "strict", "--memory", "64m", "--memory-swap", "32m", "--", "/bin/echo", "ran")
    assert r.returncode in (2, 125) and "ran" not in r.stdout and r.stderr.count("\n") == 1, r


SPIN = textwrap.dedent("""\
    import sys, time
    start, dur = float(sys.argv[1]), float(sys.argv[2])
    late = time.time() > start
    while time.time() < start:
        time.sleep(0.002)
    c0 = time.process_time()
    while time.time() < start + dur:
        pass
    print("cpu", time.process_time() - c0, "late" if late else "ontime", flush=True)
""")


def _spin_pair(runner, shares_a: int, shares_b: int, dur: float = 3.0) -> tuple[float, float]:
    """Two sandboxes pinned to CPU 0, spinning over the same wall-clock window: their CPU times."""
    for _attempt in range(3):
        start = time.time() + 2.5
        procs = []
        for shares in (shares_a, shares_b):
            kw = dict(user=runner.uid, group=runner.gid, extra_groups=[]) if runner.rootless else {}
            procs.append(subprocess.Popen(
                [PYSANDBOX, "run", "--profile", "strict", "--cpuset-cpus", "0", "--cpu-shares", str(shares),
                 "--", HOST_PYTHON, "-c", SPIN, repr(start), str(dur)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=runner.env(),
                cwd="/tmp", **kw))
        outs = [p.communicate(timeout=60) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        got = [re.search(r"cpu ([\d.]+) (late|ontime)", o[0]) for o in outs]
        assert all(got), outs
        if all(g.group(2) == "ontime" for g in got):
            return float(got[0].group(1)), float(got[1].group(1))
    pytest.fail("the two sandboxes never started within 2.5 s of each other's launch (machine overloaded)")


def test_cpu_shares_ratio_on_one_cpu(runner):
    """Shares 256 : 1024 on one CPU -> CPU time about 1 : 4 (tolerance: 2.5 to 6.5); the control,
    1024 : 1024, is about 1 : 1 (0.6 to 1.6). Other load on CPU 0 lowers both, not the ratio."""
    low, high = _spin_pair(runner, 256, 1024)
    assert low > 0.05 and high > 0.3, (low, high)
    assert 2.5 <= high / low <= 6.5, (low, high)
    a, b = _spin_pair(runner, 1024, 1024)
    assert a > 0.2 and b > 0.2 and 0.6 <= a / b <= 1.6, (a, b)


DIRECT_WRITE = textwrap.dedent("""\
    import mmap, os, sys, time
    path, bs, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    buf = mmap.mmap(-1, bs)                  # page-aligned, as O_DIRECT needs
    buf.write(b"x" * bs)
    t = time.monotonic()
    for _ in range(n):
        assert os.write(fd, buf) == bs
    el = time.monotonic() - t
    os.close(fd)
    os.unlink(path)
    print("wrote", bs * n, "in", el, flush=True)
""")


def _root_disk() -> str:
    st = os.stat("/tmp")
    name = os.path.basename(os.path.realpath(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"))
    assert os.path.exists(f"/sys/block/{name}"), f"/tmp is on {name}, not a whole disk"
    return f"/dev/{name}"


def _direct_write(runner, shared_tmp, bs, n, *limit):
    from conftest import single_id
    if single_id(runner):
        os.chown(shared_tmp, runner.uid, runner.gid)
    else:
        os.chmod(shared_tmp, 0o777)          # the sandbox's root is an unprivileged host uid (root, or
                                             # rootless with subordinate ids)
    r = runner("run", "--profile", "strict", "-v", f"{shared_tmp}:/data", *limit,
               "--", HOST_PYTHON, "-c", DIRECT_WRITE, "/data/f", str(bs), str(n), timeout=120)
    assert r.returncode == 0, r
    m = re.search(r"wrote (\d+) in ([\d.]+)", r.stdout)
    assert m and int(m.group(1)) == bs * n, r
    assert not os.path.exists(shared_tmp / "f")
    return float(m.group(2))


def test_device_write_bps_throttles_direct_io(runner, shared_tmp):
    disk = _root_disk()
    # 3 MiB at 1 MiB/s: at least ~2 s (blk-throttle may let the first slice through at once)
    t = _direct_write(runner, shared_tmp, 64 << 10, 48, "--device-write-bps", f"{disk}:1mb")
    assert 2.0 <= t <= 6.0, t
    free = _direct_write(runner, shared_tmp, 64 << 10, 48)          # the same write, unlimited
    assert free < 1.0, free


def test_device_write_iops_throttles_direct_io(runner, shared_tmp):
    disk = _root_disk()
    # 60 writes at 20 IO/s: at least ~2 s
    t = _direct_write(runner, shared_tmp, 4096, 60, "--device-write-iops", f"{disk}:20")
    assert 2.0 <= t <= 6.0, t
    free = _direct_write(runner, shared_tmp, 4096, 60)
    assert free < 1.0, free


def test_device_limit_that_cannot_be_enforced_fails_closed(runner):
    for args in (("--device-write-bps", "/dev/null:1mb"), ("--device-write-iops", "/dev/no-such-disk:10")):
        r = runner("run", "--profile", "strict", *args, "--", "/bin/echo", "ran")
        assert r.returncode in (2, 125) and "ran" not in r.stdout, (args, r)
        assert r.stderr.count("\n") == 1 and "pysandbox:" in r.stderr, (args, r)
