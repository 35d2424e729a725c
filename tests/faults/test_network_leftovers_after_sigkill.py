"""Issue 18 item 6, private networks (root only: a bridge and veth pairs in the host namespace).
The supervisor of a sandbox on a private network is SIGKILLed at each network step — its
endpoint reserved (IPAM entry and hosts file written, no veth yet), its veth attached, its program
running — and the next command of any kind (`pysandbox ps`, not a network command) removes its
IPAM entry, hosts file, veth, nft per-port chain and counter and its host rules; the peer on the
same network keeps working and a new sandbox gets on the network again.

SAFETY: as tests/system/test_network_e2e.py, the module runs in a network namespace of its own (fixture
`testns` from tests/system/test_network.py) with a private state dir; everything is checked by the dead
sandbox's own id and veth name."""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import PYSANDBOX
from faults_helpers import sigkill, wait_for
from sandbox.network import bridge, nft
from conftest import links, host_rules

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="private networks need root")

NET = "faultsnet"
PROG = "import time; print('ready', flush=True); time.sleep(60)"


def _records():
    d = os.path.join(os.environ["PYSANDBOX_STATE_DIR"], "owners")
    try:
        # SANDBOX.PID.START; an atomic write's temporary file (.SANDBOX.PID.START.XXXX) is not a record
        return {n.split(".")[0]: [int(n.split(".")[1])] for n in os.listdir(d)
                if n.count(".") >= 2 and not n.startswith(".")}
    except FileNotFoundError:
        return {}


def _cli(*args):
    return subprocess.run([PYSANDBOX, *args], capture_output=True, text=True, timeout=60)


def _port_objects(veth):
    out = nft.nft(args=["list", "table", "netdev", nft.HOST_TABLE], check=False).get("nftables", [])
    return [o for o in out for k in ("chain", "counter") if k in o and o[k]["name"] == veth]


@pytest.fixture(scope="module")
def net(testns):
    r = _cli("network", "create", NET)
    assert r.returncode == 0, r.stderr
    yield NET
    _cli("network", "rm", NET)


@pytest.mark.parametrize("step", ("reserved", "veth", "running"))
def test_network_leftovers_removed_by_next_command(net, step):
    state = os.environ["PYSANDBOX_STATE_DIR"]
    before = _records()
    p = subprocess.Popen([PYSANDBOX, "run", "--profile", "default", "--audit-log", "/dev/null", "--network", net,
                          "-p", "18190:7000", "--", "/usr/bin/python3", "-c", PROG],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        got = wait_for(lambda: next((s for s in _records() if s not in before), None))
        assert got, "the launch did not register its resources"
        sid, veth = got, bridge.veth_name(got)
        ep = os.path.join(state, "networks", net, "endpoints", f"{sid}.json")
        hosts = os.path.join(state, "networks", net, "hosts", sid)
        if step == "reserved":
            assert wait_for(lambda: os.path.exists(ep), step=0.0005)
        elif step == "veth":
            assert wait_for(lambda: veth in links(), step=0.0005)
        else:
            assert p.stdout.readline().strip() == "ready"
            assert veth in links() and _port_objects(veth)
        sigkill(p.pid)
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    r = _cli("ps")                                                 # the next command, of any kind
    assert r.returncode == 0, r
    assert sid not in _records()
    assert not os.path.exists(ep) and not os.path.exists(hosts)
    assert wait_for(lambda: veth not in links(), 5)
    assert _port_objects(veth) == []
    assert not any((x.get("comment") or "") == f"sbx:{sid}" for x in host_rules())
    assert bridge.inspect_network(net)["endpoints"] == []
    # the network still works for the next sandbox
    r = _cli("run", "--profile", "default", "--audit-log", "/dev/null", "--network", net, "--",
             "/usr/bin/python3", "-c", "print('ok')")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r
