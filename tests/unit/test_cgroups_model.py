"""sandbox.cgroups without touching a cgroup: mountinfo parsing, the checks made before anything is
created, the summary line, and the v2 driver's controller-file logic against a SIMULATED cgroup2
tree (a plain temporary directory laid out like a cgroup2 hierarchy; nothing is enforced there,
only what the driver writes, reads back and reports is checked). The real cgroups of this machine
are tested in tests/system/test_cgroups.py."""
from __future__ import annotations

import os
import shutil

import pytest

from policies.plan import DeviceRate, Limits
from sandbox.cgroups import placement
from sandbox.cgroups.doctor import probe_disk
from sandbox.cgroups.driver import Driver
from sandbox.cgroups.files import CgroupError, bfq_disks
from sandbox.cgroups.layout import Layout, parse_mountinfo
from sandbox.cgroups.manager import create_for_sandbox
from sandbox.cgroups.stats import summary_line


def _id(name: str) -> str:
    return f"t{os.getpid()}-{name}"


def _root_disk():
    return probe_disk()


MOUNTINFO_HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 /inner /mnt/pids\\040copy rw,relatime - cgroup cgroup rw,pids
40 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
42 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""


MOUNTINFO_V2 = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"


MOUNTINFO_V1 = "35 31 0:32 / /cg/mem\\040ory rw - cgroup cgroup rw,memory\n"


def test_parse_mountinfo_hybrid():
    lay = parse_mountinfo(MOUNTINFO_HYBRID)
    assert lay.mode == "hybrid"
    m = lay.v1_map
    assert m["cpu"] == m["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"     # co-mounted: one directory
    assert m["memory"] == "/sys/fs/cgroup/memory"
    assert m["pids"] == "/sys/fs/cgroup/pids"           # the mount of the hierarchy's root wins
    assert "systemd" not in m and "name=systemd" not in m
    assert lay.unified == "/sys/fs/cgroup/unified"


def test_parse_mountinfo_v2_v1_none():
    assert parse_mountinfo(MOUNTINFO_V2).mode == "v2"
    assert parse_mountinfo(MOUNTINFO_V2).unified == "/sys/fs/cgroup"
    v1 = parse_mountinfo(MOUNTINFO_V1)
    assert v1.mode == "v1" and v1.v1_map == {"memory": "/cg/mem ory"}      # \040 unescaped
    assert parse_mountinfo("").mode == "none"


def test_no_limits_no_cgroup():
    assert create_for_sandbox(_id("none"), Limits(), rootless=False) is None


def test_bad_sandbox_id():
    with pytest.raises(ValueError):
        create_for_sandbox("../../etc", Limits(pids=5), rootless=False)


def test_summary_line():
    assert summary_line([{"type": "resources", "memory_peak": 1}]) is None
    line = summary_line([{"type": "oom_kill", "limit": "memory", "value": 104857600,
                          "peak": 104857600, "count": 1}])
    assert line == "pysandbox: killed by OOM (limit 100 MiB, peak 100 MiB)"
    line = summary_line([{"type": "pids_limit", "limit": "pids", "value": 20, "count": 3}])
    assert line == "pysandbox: pids limit 20 reached (3 forks refused)"


SIM_CONTROLLERS = "cpuset cpu io memory pids"


_V2_FILES = {
    "memory": {"memory.max": "max\n", "memory.swap.max": "max\n", "memory.low": "0\n", "memory.oom.group": "0\n",
               "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n", "memory.peak": "0\n"},
    "cpu": {"cpu.max": "max 100000\n", "cpu.weight": "100\n"},
    "cpuset": {"cpuset.cpus": "\n"},
    "pids": {"pids.max": "max\n", "pids.events": "max 0\n", "pids.peak": "0\n"},
    "io": {"io.max": "", "io.weight": "default 100\n"},
}


@pytest.fixture
def simulated_v2(tmp_path, monkeypatch):
    """SIMULATED: a plain directory laid out like a cgroup2 hierarchy with the controllers this machine's
    cgroup2 lacks. `mkdir` is replaced by one that also creates the interface files the kernel would
    (cgroup.controllers = what the parent's subtree_control enabled), `rmdir` by one that removes them.
    Nothing here is enforced; only the driver's file logic is checked."""
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text(SIM_CONTROLLERS + "\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "io.cost.qos").write_text("")

    def fake_mkdir(path, mode=0o777):
        os.mkdir(path, mode)
        parent = os.path.dirname(path)
        ctls = set(open(os.path.join(parent, "cgroup.controllers")).read().split())
        with open(os.path.join(path, "cgroup.controllers"), "w") as f:
            f.write(" ".join(sorted(ctls)) + "\n")
        for name, content in {"cgroup.procs": "", "cgroup.subtree_control": "", "cgroup.events":
                              "populated 0\nfrozen 0\n", "cgroup.kill": "", "cgroup.freeze": "0\n",
                              "cpu.stat": "usage_usec 0\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n"}.items():
            with open(os.path.join(path, name), "w") as f:
                f.write(content)
        for ctl in ctls:
            for name, content in _V2_FILES[ctl].items():
                with open(os.path.join(path, name), "w") as f:
                    f.write(content)

    monkeypatch.setattr(Driver, "_mkdir", staticmethod(fake_mkdir))
    monkeypatch.setattr(Driver, "_rmdir", staticmethod(lambda p: shutil.rmtree(p)))
    return Layout(v1=(), unified=str(root))


def test_v2_simulated_limits_written(simulated_v2):
    disk = _root_disk() or pytest.skip("no block device to name in io.max")
    st = os.stat(disk)
    dev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    limits = Limits(memory=100 << 20, memory_swap=150 << 20, memory_reservation=50 << 20, cpus=0.5,
                    cpu_shares=1024, cpuset_cpus="0", pids=20,
                    device_read_bps=(DeviceRate(disk, 1 << 20),), device_write_iops=(DeviceRate(disk, 100),))
    cg = create_for_sandbox("sim1", limits, rootless=False, layout=simulated_v2)
    try:
        assert [d.version for d in cg.drivers] == [2]
        leaf = os.path.join(simulated_v2.unified, "pysandbox", "sim1")
        rd = lambda f: open(os.path.join(leaf, f)).read().strip()
        assert rd("memory.max") == str(100 << 20)
        assert rd("memory.swap.max") == str(50 << 20)          # Docker memory+swap 150m -> 50m of swap
        assert rd("memory.low") == str(50 << 20)               # --memory-reservation
        assert rd("memory.oom.group") == "1"                   # an OOM kills the whole sandbox
        assert rd("cpu.max") == "50000 100000"
        assert rd("cpu.weight") == "39"                        # 1 + (1024-2)*9999/262142
        assert rd("cpuset.cpus") == "0"
        assert rd("pids.max") == "20"
        assert rd("io.max") == f"{dev} rbps={1 << 20} wiops=100"
        # controllers were enabled on the way down (a plain file keeps only the last "+ctl" write)
        for d in (simulated_v2.unified, os.path.dirname(leaf)):
            assert open(os.path.join(d, "cgroup.subtree_control")).read().startswith("+")
        # events at exit, as the kernel would have counted them
        open(os.path.join(leaf, "memory.events"), "w").write("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
        open(os.path.join(leaf, "memory.peak"), "w").write(f"{100 << 20}\n")
        open(os.path.join(leaf, "pids.events"), "w").write("max 3\n")
        open(os.path.join(leaf, "cpu.stat"), "w").write(
            "usage_usec 900\nnr_periods 20\nnr_throttled 7\nthrottled_usec 5000\n")
    finally:
        events = cg.finish()
    assert {"type": "oom_kill", "limit": "memory", "value": 100 << 20, "peak": 100 << 20, "count": 1} in events
    assert {"type": "pids_limit", "limit": "pids", "value": 20, "count": 3} in events
    assert {"type": "cpu_throttled", "limit": "cpus", "value": 0.5, "nr_throttled": 7,
            "throttled_usec": 5000} in events
    res = [e for e in events if e["type"] == "resources"][0]
    assert res["memory_peak"] == 100 << 20 and res["cpu_usage_usec"] == 900 and res["nr_throttled"] == 7
    assert summary_line(events) == ("pysandbox: killed by OOM (limit 100 MiB, peak 100 MiB); "
                                    "pids limit 20 reached (3 forks refused)")
    assert not os.path.exists(os.path.join(simulated_v2.unified, "pysandbox", "sim1"))


def test_v2_simulated_swap_default_and_unlimited(simulated_v2):
    cg = create_for_sandbox("sim2", Limits(memory=64 << 20), rootless=False, layout=simulated_v2)
    leaf = os.path.join(simulated_v2.unified, "pysandbox", "sim2")
    try:
        assert open(f"{leaf}/memory.swap.max").read().strip() == str(64 << 20)   # Docker default: = memory
    finally:
        cg.finish()
    cg = create_for_sandbox("sim3", Limits(memory=64 << 20, memory_swap=-1), rootless=False, layout=simulated_v2)
    try:
        assert open(f"{simulated_v2.unified}/pysandbox/sim3/memory.swap.max").read().strip() == "max"
    finally:
        cg.finish()


def test_v2_simulated_fail_closed(simulated_v2):
    root = simulated_v2.unified
    # a controller that the hierarchy does not offer
    open(os.path.join(root, "cgroup.controllers"), "w").write("memory pids\n")
    with pytest.raises(CgroupError, match=r"^cpu: controller not available \(not enabled in cgroup2 at "):
        create_for_sandbox("sim4", Limits(cpus=0.5), rootless=False, layout=simulated_v2)
    assert not os.path.exists(os.path.join(root, "pysandbox", "sim4"))
    # swap asked for explicitly without swap accounting
    _V2_FILES["memory"].pop("memory.swap.max")
    try:
        with pytest.raises(CgroupError, match=r"^memory: --memory-swap: swap accounting not available"):
            create_for_sandbox("sim5", Limits(memory=64 << 20, memory_swap=96 << 20), rootless=False,
                               layout=simulated_v2)
        assert not os.path.exists(os.path.join(root, "pysandbox", "sim5"))
    finally:
        _V2_FILES["memory"]["memory.swap.max"] = "max\n"
    # --blkio-weight without iocost or BFQ
    for d in (root, os.path.join(root, "pysandbox")):
        open(os.path.join(d, "cgroup.controllers"), "w").write(SIM_CONTROLLERS + "\n")
    if not bfq_disks():
        with pytest.raises(CgroupError, match=r"^io: --blkio-weight: neither iocost"):
            create_for_sandbox("sim6", Limits(blkio_weight=300), rootless=False, layout=simulated_v2)
    # with iocost enabled for a device, io.weight carries the converted weight
    open(os.path.join(root, "io.cost.qos"), "w").write("254:0 enable=1 ctrl=auto\n")
    cg = create_for_sandbox("sim7", Limits(blkio_weight=500), rootless=False, layout=simulated_v2)
    try:
        assert open(f"{root}/pysandbox/sim7/io.weight").read().strip() == "default 4950"
    finally:
        cg.finish()


def test_v2_rootless_needs_delegation(monkeypatch, simulated_v2):
    """Pure-v2 layout (simulated), rootless, and the caller's own cgroup is not delegated."""
    monkeypatch.setattr(placement, "delegated_v2_base", lambda layout: None)
    with pytest.raises(CgroupError, match=r"^memory: controller not available for this user \(no delegated cgroup"):
        create_for_sandbox("sim8", Limits(memory=64 << 20), rootless=True, layout=simulated_v2)
