"""sandbox/cgroups/ without root or cgroups: the one freeze-then-SIGKILL loop (a driver's kill and a
dead supervisor's leftovers share it), the limit translation, the placement of leaves."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from policies.plan import Limits
from sandbox.cgroups import freezer, placement
from sandbox.cgroups.files import CgroupError
from sandbox.cgroups.layout import Layout
from sandbox.cgroups.limits import flags_by_controller, only, precheck


def test_kill_all_freezes_kills_thaws_until_empty():
    p = subprocess.Popen(["sleep", "60"])
    calls = []
    try:
        def procs():
            return set() if p.poll() is not None else {p.pid}
        freezer.kill_all(procs, lambda: calls.append("freeze"), lambda: calls.append("thaw"), timeout=10)
        assert p.wait(timeout=10) == -signal.SIGKILL
        assert calls[:2] == ["freeze", "thaw"]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_kill_all_makes_one_pass_even_without_time_left():
    p = subprocess.Popen(["sleep", "60"])
    try:
        freezer.kill_all(lambda: {p.pid} if p.poll() is None else set(), timeout=0)
        assert p.wait(timeout=10) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_ops_of_finds_the_freezer_of_either_version(tmp_path):
    assert freezer.ops_of(str(tmp_path)) == (None, None)
    (tmp_path / "freezer.state").write_text("THAWED\n")
    freeze, thaw = freezer.ops_of(str(tmp_path))
    freeze()
    assert (tmp_path / "freezer.state").read_text() == "FROZEN"
    thaw()
    assert (tmp_path / "freezer.state").read_text() == "THAWED"
    (tmp_path / "cgroup.freeze").write_text("0\n")
    freeze, thaw = freezer.ops_of(str(tmp_path))        # cgroup2 wins where both are there
    freeze()
    assert (tmp_path / "cgroup.freeze").read_text() == "1"


def test_limit_translation():
    lim = Limits(memory=64 << 20, pids=10, cpus=0.5)
    assert flags_by_controller(lim) == {"memory": ["--memory"], "cpu": ["--cpus"], "pids": ["--pids-limit"]}
    mem_only = only(lim, ["memory"])
    assert (mem_only.memory, mem_only.pids, mem_only.cpus) == (64 << 20, None, None)
    with pytest.raises(CgroupError, match=r"^memory: --memory-swap needs --memory too$"):
        precheck(Limits(memory_swap=1 << 30))
    with pytest.raises(CgroupError, match=r"^cpu: --cpus below 0.01"):
        precheck(Limits(cpus=0.005))


def test_parents_one_per_hierarchy():
    lay = Layout(v1=(("cpu", "/cg/cpu,cpuacct"), ("cpuacct", "/cg/cpu,cpuacct"), ("pids", "/cg/pids")),
                 unified="/cg/unified")
    assert placement.parents(lay, rootless=False) == ["/cg/cpu,cpuacct/pysandbox", "/cg/pids/pysandbox",
                                                      "/cg/unified/pysandbox"]
    uid = os.geteuid()
    assert placement.parent_name(True) == f"pysandbox-user-{uid}/sandboxes"
