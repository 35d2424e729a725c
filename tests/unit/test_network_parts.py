"""sandbox/network/ without root or a network namespace: a private network's /etc/hosts files and
the egress ruleset's shape."""
from __future__ import annotations

from sandbox.network import hosts, nft
from sandbox.network.bridge import bridge_name, port_mac, veth_name

ND = {"name": "n1", "subnet": "10.89.3.0/24"}


def test_hosts_content_lists_named_peers_and_own_hostname():
    eps = [{"sandbox_id": "b", "address": "10.89.3.3", "name": "web", "hostname": "wh"},
           {"sandbox_id": "a", "address": "10.89.3.2", "name": None, "hostname": "ah"},
           {"sandbox_id": "c", "address": "10.89.3.10", "name": "db", "hostname": "db"}]
    text = hosts.content(ND, eps, "a")
    lines = text.splitlines()
    assert lines[1:3] == ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    assert lines[3:] == ["10.89.3.2\tah", "10.89.3.3\tweb", "10.89.3.10\tdb"]      # address order
    assert "wh" not in text                                  # a peer's host name is its own business


def test_rewrite_all_keeps_the_inode(tmp_path):
    f = tmp_path / "a"
    f.write_text("old, longer than the new content " * 10)
    ino = f.stat().st_ino
    eps = [{"sandbox_id": "a", "address": "10.89.3.2", "name": "x", "hosts": str(f)},
           {"sandbox_id": "b", "address": "10.89.3.3", "name": "y"}]          # no hosts file: skipped
    hosts.rewrite_all(ND, eps)
    assert f.stat().st_ino == ino
    assert f.read_text() == hosts.content(ND, eps, "a")


def test_names_fit_ifnamsiz_and_mac_is_local_unicast():
    assert len(bridge_name("a-long-network-name-of-32-chars!")) <= 15
    assert len(veth_name("x" * 128)) <= 15
    mac = port_mac("10.89.3.2")
    assert mac == "02:50:0a:59:03:02"


def test_egress_ruleset_denies_by_default_and_counts():
    cmds = nft.egress_ruleset("deny", [{"to": "10.0.0.0/8", "ports": [443], "proto": "tcp"},
                                       {"to": "web", "ports": [], "proto": "any"}], {"web": ["10.89.3.3"]})
    chain = [c["add"]["chain"] for c in cmds if "chain" in c.get("add", {})][0]
    assert chain["policy"] == "drop" and chain["hook"] == "output"
    assert {"add": {"element": {"family": "inet", "table": "pysandbox", "name": nft.set_name("web"),
                                "elem": ["10.89.3.3"]}}} in cmds
    last = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})][-1]
    assert last["expr"][0] == {"counter": "denied"}
