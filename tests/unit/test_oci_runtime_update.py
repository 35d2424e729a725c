"""pysandbox-runtime's `update`: a LinuxResources object to cgroup file writes (sandbox/runtime/
control.update_writes), v1 and cgroup2 forms; what it does not update is refused naming the
field. The writes themselves: tests/system/test_oci_runtime.py::test_update_resources."""
from __future__ import annotations

import pytest

from sandbox.runtime import control


def _w(res):
    return {field: (v1, v2) for field, v1, v2 in control.update_writes(res)}


def test_memory_cpu_pids_in_both_versions():
    w = _w({"memory": {"limit": 100, "swap": 300, "reservation": 50},
            "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1"}, "pids": {"limit": 7}})
    assert w["memory.limit"] == ([("memory.limit_in_bytes", "100")], [("memory.max", "100")])
    assert w["memory.swap"] == ([("memory.memsw.limit_in_bytes", "300")], [("memory.swap.max", "200")])
    assert w["memory.reservation"] == ([("memory.soft_limit_in_bytes", "50")], [("memory.low", "50")])
    assert w["cpu.shares"] == ([("cpu.shares", "1024")], [("cpu.weight", "39")])          # runc's conversion
    assert w["cpu.quota"] == ([("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "50000")],
                              [("cpu.max", "50000 100000")])
    assert w["cpu.cpus"] == ([("cpuset.cpus", "0-1")], [("cpuset.cpus", "0-1")])
    assert w["pids.limit"] == ([("pids.max", "7")], [("pids.max", "7")])


def test_unlimited_and_absent():
    w = _w({"memory": {"limit": -1, "swap": -1}, "cpu": {"quota": -1}, "pids": {"limit": -1}})
    assert w["memory.limit"][1] == [("memory.max", "max")] and w["memory.swap"][1] == [("memory.swap.max", "max")]
    assert w["cpu.quota"] == ([("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "-1")],
                              [("cpu.max", "max 100000")])
    assert w["pids.limit"][0] == [("pids.max", "max")]
    assert control.update_writes({}) == [] and control.update_writes({"memory": {}, "devices": []}) == []
    assert _w({"memory": {"swap": 300}})["memory.swap"][1] == []     # cgroup2 needs the limit to know the swap


@pytest.mark.parametrize("res, field", [
    ({"hugepageLimits": [{"pageSize": "2MB", "limit": 1}]}, "linux.resources.hugepageLimits"),
    ({"blockIO": {"weight": 100}}, "linux.resources.blockIO"),
    ({"cpu": {"mems": "0"}}, "linux.resources.cpu.mems"),
    ({"cpu": {"realtimeRuntime": 5}}, "linux.resources.cpu.realtimeRuntime"),
    ({"memory": {"limit": "1g"}}, "linux.resources.memory.limit"),
    ({"memory": {"limit": True}}, "linux.resources.memory.limit"),
    ({"memory": {"limit": -2}}, "linux.resources.memory.limit"),
    ({"cpu": {"cpus": "0;1"}}, "linux.resources.cpu.cpus"),
    ({"cpu": {"period": 10}}, "linux.resources.cpu.period"),
    ({"pids": 5}, "linux.resources.pids"),
    ([], "JSON object"),
])
def test_refused_naming_the_field(res, field):
    with pytest.raises(control.ControlError, match=field.replace(".", r"\.")):
        control.update_writes(res)
