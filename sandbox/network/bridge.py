"""Private networks (root only): `pysandbox network create NAME` makes a network — a Linux bridge in
the host namespace, a subnet carved from 10.89.0.0/16 (IPAM under the network lock); each sandbox on
it gets a veth pair (its end `eth0`, MAC from its address), an address, a default route via the
bridge, and a port allow-list (nft.antispoof_rules). The bridge lives as long as the network (made
again after a reboot), with its masquerade/isolation rules.

Crash clean-up: every endpoint records its supervisor's pid and start time; an endpoint whose
supervisor is gone is reclaimed (`reclaim_stale`, also run before every allocation and by
``network ls/inspect/rm``): its veth, DNAT rules, proxy, address and hosts file are removed.

pyroute2 (the `net` extra) does the netlink; it is imported where a link is touched (~100 ms of
imports, and optional: `prepare` says so when a private network needs it).
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import time
from pathlib import Path

from . import hosts, nft
from .hosts import ipv6_of
from .common import NET_NAME_RE, RESERVED_NAMES, NetworkError, short
from .store import all_networks, alive, endpoint_path, endpoints, load_network, locked, state_dir, write_json

DEFAULT_POOL = ipaddress.ip_network("10.89.0.0/16")     # /24 networks are carved from here


def bridge_name(network: str) -> str:
    return "psb-" + short("net:" + network, 10)            # 14 chars < IFNAMSIZ


def veth_name(sandbox_id: str) -> str:
    return "psv" + short("sbx:" + sandbox_id, 11)          # 14 chars


def port_mac(addr: str) -> str:
    """The MAC address of a sandbox's eth0 on a private network: locally administered, unicast,
    from its IPv4 address (02:50:a.b.c.d). Set by the supervisor when it creates the veth pair, so
    the port's allow-list knows it before the port is up."""
    return "02:50:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(addr).packed)


# --------------------------------------------------------------------------- create / ls / inspect / rm

def _host_routes() -> list:
    try:
        from pyroute2 import IPRoute
    except ImportError:
        return []
    nets = []
    with IPRoute() as ipr:
        for r in ipr.get_routes(family=socket.AF_INET, table=254):
            dst = r.get_attr("RTA_DST")
            if dst and r["dst_len"]:
                nets.append(ipaddress.ip_network(f"{dst}/{r['dst_len']}", strict=False))
    return nets


def create_network(name: str, subnet: str | None = None, *, rootless: bool | None = None,
                   ipv6: bool = False) -> dict:
    """ipv6 (`network create --ipv6`; off by default, as Docker's and podman's): dual stack - a unique local /64 derived from the name (hosts.ipv6_subnet)
    besides the IPv4 subnet; each sandbox's IPv6 address goes with its IPv4 one (hosts.ipv6_of)."""
    if rootless is None:
        rootless = os.geteuid() != 0
    if not NET_NAME_RE.match(name or ""):
        raise NetworkError(f"network create: invalid name {name!r} (letters, digits, _ . -; at most 32)")
    if name in RESERVED_NAMES:
        raise NetworkError(f"network create: {name!r} is a reserved network name")
    if rootless:
        raise NetworkError("network create: private networks need root (a bridge and veth pairs in the host "
                           "network namespace); rootless sandboxes can use --network pasta")
    root = state_dir(rootless)
    with locked(root):
        if (root / name / "network.json").exists():
            raise NetworkError(f"network create: network {name!r} already exists")
        others = [ipaddress.ip_network(n["subnet"]) for n in all_networks(root)]
        routes = _host_routes()
        if subnet:
            try:
                net = ipaddress.ip_network(subnet, strict=True)
            except ValueError as e:
                raise NetworkError(f"network create: --subnet {subnet}: {e}") from None
            if net.version != 4 or net.prefixlen > 29 or net.prefixlen < 8:
                raise NetworkError(f"network create: --subnet {subnet}: need an IPv4 network from /8 to /29")
            for o in others:
                if net.overlaps(o):
                    raise NetworkError(f"network create: --subnet {subnet} overlaps network subnet {o}")
            for o in routes:
                if net.overlaps(o):
                    raise NetworkError(f"network create: --subnet {subnet} overlaps host route {o}")
        else:
            net = next((c for c in DEFAULT_POOL.subnets(new_prefix=24)
                        if not any(c.overlaps(o) for o in others + routes)), None)
            if net is None:
                raise NetworkError("network create: no free /24 left in 10.89.0.0/16; pass --subnet")
        gw = next(net.hosts())
        nd = {"name": name, "subnet": str(net), "gateway": str(gw), "bridge": bridge_name(name),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "driver": "bridge"}
        if ipv6:
            net6 = hosts.ipv6_subnet(name)
            if any(o.get("subnet6") == str(net6) for o in all_networks(root)):
                raise NetworkError(f"network create: the IPv6 subnet {net6} derived from {name!r} is taken; "
                                   f"choose another name or --no-ipv6")
            nd.update(subnet6=str(net6), gateway6=ipv6_of({"subnet6": str(net6)}, str(gw)))
        d = root / name
        d.mkdir(mode=0o711, exist_ok=True)
        (d / "endpoints").mkdir(mode=0o700, exist_ok=True)
        (d / "hosts").mkdir(mode=0o711, exist_ok=True)
        for p, m in ((d, 0o711), (d / "hosts", 0o711)):
            os.chmod(p, m)
        write_json(d / "network.json", nd)
    return nd


def list_networks(rootless: bool | None = None) -> list[dict]:
    reclaim_stale(rootless)
    root = state_dir(rootless)
    out = []
    for nd in all_networks(root):
        out.append({**nd, "endpoints": len(endpoints(root, nd["name"]))})
    return out


def inspect_network(name: str, rootless: bool | None = None) -> dict:
    reclaim_stale(rootless)
    root = state_dir(rootless)
    nd = load_network(name, rootless)
    if nd is None:
        raise NetworkError(f"network {name!r} not found")
    eps = [{k: e.get(k) for k in ("sandbox_id", "name", "address", "veth", "ports", "pid", "supervisor_pid",
                                  "state")} for e in endpoints(root, name)]
    return {**nd, "endpoints": eps}


def remove_network(name: str, rootless: bool | None = None) -> None:
    reclaim_stale(rootless)
    root = state_dir(rootless)
    with locked(root):
        nd = load_network(name, rootless)
        if nd is None:
            raise NetworkError(f"network {name!r} not found")
        eps = endpoints(root, name)
        if eps:
            who = ", ".join(e.get("name") or e["sandbox_id"] for e in eps)
            raise NetworkError(f"network rm: {name!r} has {len(eps)} attached sandbox(es): {who}")
        teardown_network(root, nd)
        shutil.rmtree(root / name, ignore_errors=True)



# --------------------------------------------------------------------------- links (pyroute2)

def ensure_bridge(ipr, nd: dict) -> list[dict]:
    """Make network `nd`'s bridge when it is not there (with its gateway address, up); the nft
    commands of the host tables, plus the bridge's masquerade/isolation rules when it is new."""
    cmds = nft.host_base() + (nft.host_base6() if nd.get("subnet6") else [])
    if not ipr.link_lookup(ifname=nd["bridge"]):
        # the bridge lives as long as the network (made again after a reboot); its
        # masquerade/isolation rules come and go with it
        # (no multicast snooping: IPv6 neighbour discovery goes to every port, whether or not a
        # sandbox sent MLD reports - the ports' allow-lists drop those from ::)
        ipr.link("add", ifname=nd["bridge"], kind="bridge", br_mcast_snooping=0)
        bi = ipr.link_lookup(ifname=nd["bridge"])[0]
        ipr.addr("add", index=bi, address=nd["gateway"], prefixlen=ipaddress.ip_network(nd["subnet"]).prefixlen)
        if nd.get("gateway6"):
            _ipv6_on(ipr, nd["bridge"], bi)
            ipr.addr("add", index=bi, address=nd["gateway6"], prefixlen=64, flags=IFA_F_NODAD)
        ipr.link("set", index=bi, state="up")
        nft.delete_host_rules(lambda c: c == f"net:{nd['name']}")
        nft.delete_host_rules(lambda c: c == f"net:{nd['name']}", family="ip6")
        cmds += nft.network_rules(nd)
        if nd.get("subnet6"):
            cmds += nft.network_rules6(nd)
    return cmds


def add_port(ipr, veth: str, nsfd: int, mac: str) -> int:
    """A veth pair: `veth` on the host (its index returned, not up yet), `eth0` with `mac` in the
    network namespace `nsfd`. A leftover `veth` of a crashed sandbox with our id goes first."""
    if ipr.link_lookup(ifname=veth):
        ipr.link("del", index=ipr.link_lookup(ifname=veth)[0])
    ipr.link("add", ifname=veth, kind="veth", peer={"ifname": "eth0", "net_ns_fd": nsfd, "address": mac})
    return ipr.link_lookup(ifname=veth)[0]


IFA_F_NODAD = 0x02


def _ipv6_on(ipr, ifname: str, index: int) -> None:
    """IPv6 on a link, without addresses of its own making (no link-local: only the address we
    give it, which the port's allow-list knows) - and enabled, whatever the namespace's default."""
    ipr.link("set", index=index, IFLA_AF_SPEC={"attrs": [("AF_INET6", {"attrs": [
        ("IFLA_INET6_ADDR_GEN_MODE", 1)]})]})      # IN6_ADDR_GEN_MODE_NONE
    try:
        with open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "w") as f:
            f.write("0")
    except OSError:
        pass


def configure_inside(pid: int, address: str, prefixlen: int, gateway: str, nd: dict | None = None) -> None:
    """In the sandbox's namespace: eth0's address, eth0 and lo up, the default route via the bridge;
    on a dual-stack network (nd["subnet6"]) its IPv6 address too (no duplicate address detection:
    the address is the network's to give, and usable at once) and the IPv6 default route. No
    link-local address either way: the port's allow-list drops what does not come from the
    sandbox's own addresses."""
    from pyroute2 import IPRoute      # lazy: see the module's docstring
    address6 = ipv6_of(nd or {}, address)
    with IPRoute(netns=f"/proc/{pid}/ns/net") as ns:
        i = ns.link_lookup(ifname="eth0")[0]
        ns.link("set", index=i, IFLA_AF_SPEC={"attrs": [("AF_INET6", {"attrs": [
            ("IFLA_INET6_ADDR_GEN_MODE", 1)]})]})      # IN6_ADDR_GEN_MODE_NONE
        ns.addr("add", index=i, address=address, prefixlen=prefixlen)
        if address6:
            ns.addr("add", index=i, address=address6, prefixlen=64, flags=IFA_F_NODAD)
        ns.link("set", index=i, state="up")
        lo = ns.link_lookup(ifname="lo")[0]
        ns.link("set", index=lo, state="up")
        ns.route("add", dst="0.0.0.0/0", gateway=gateway)
        if address6:
            ns.route("add", dst="::/0", gateway=nd["gateway6"], family=socket.AF_INET6)


def refresh_peers(root: Path, nd: dict, sandbox_id: str, name: str | None, address: str | None,
                  joined: bool) -> None:
    """(under the lock) after sandbox `sandbox_id` (`name`, `address`) joined or left network `nd`:
    rewrite every hosts file of the network; update the peers' egress sets that name it."""
    eps = endpoints(root, nd["name"])
    hosts.rewrite_all(nd, eps)
    if not name:
        return
    for e in eps:
        if e["sandbox_id"] == sandbox_id or name not in (e.get("egress_names") or ()):
            continue
        if not e.get("pid") or not alive(e["pid"], None):
            continue
        op = "add" if joined else "delete"
        sets = [(nft.set_name(name), address)] + ([(nft.set_name6(name), ipv6_of(nd, address))]
                                                   if nd.get("subnet6") else [])
        nft.nft([{op: {"element": {"family": "inet", "table": nft.EGRESS_TABLE, "name": sname, "elem": [a]}}}
                 for sname, a in sets], pid=e["pid"], check=False)


# --------------------------------------------------------------------------- clean-up

def _delete_link(name: str) -> None:
    from pyroute2 import IPRoute      # lazy: see the module's docstring
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if idx:
            ipr.link("del", index=idx[0])


def cleanup_endpoint(root: Path, nd: dict, e: dict) -> None:
    """(under the lock) remove one endpoint's host-side traces and its state."""
    sid = e["sandbox_id"]
    if e.get("helper_pid") and alive(e["helper_pid"], e.get("helper_start")):
        try:
            os.kill(e["helper_pid"], signal.SIGKILL)
        except OSError:
            pass
    # by the handles recorded at attach (one transaction); when that fails (crash leftovers, rules
    # changed by someone else), by the comment every rule of this sandbox carries
    rules = e.get("rules") or []
    dels = [{"delete": {"rule": {"family": f, "table": nft.HOST_TABLE, "chain": c, "handle": h}}}
            for f, c, h in rules]
    if e.get("antispoof") and e.get("veth"):
        dels += nft.antispoof_delete(e["veth"])
    try:
        if not dels:
            raise NetworkError("nothing recorded")
        nft.nft(dels)
    except NetworkError:
        if nft.find_nft():
            nft.delete_host_rules(lambda c: c == f"sbx:{sid}", family="ip")
            if nd.get("subnet6"):
                nft.delete_host_rules(lambda c: c == f"sbx:{sid}", family="ip6")
            if e.get("veth"):          # e.g. a crash between the nft run and the endpoint's record
                for d in nft.antispoof_delete(e["veth"]):
                    nft.nft([d], check=False)
            nft.delete_host_rules(lambda c: c == f"sbx:{sid}", family="bridge")   # before port allow-lists
    if e.get("veth"):
        try:
            _delete_link(e["veth"])
        except Exception:
            pass
    for p in (endpoint_path(root, nd["name"], sid), Path(e["hosts"]) if e.get("hosts") else None):
        if p is not None:
            try:
                p.unlink()
            except FileNotFoundError:
                pass


def teardown_network(root: Path, nd: dict) -> None:
    """(under the lock) delete the bridge and the network's host rules; drop the host table when empty."""
    try:
        _delete_link(nd["bridge"])
    except ImportError:
        pass
    if nft.find_nft():
        nft.delete_host_rules(lambda c: c == f"net:{nd['name']}")
        if not nft.host_rules():
            nft.nft([{"delete": {"table": {"family": "ip", "name": nft.HOST_TABLE}}}], check=False)
        nft.delete_host_rules(lambda c: c == f"net:{nd['name']}", family="ip6")
        if not nft.host_rules("ip6"):
            nft.nft([{"delete": {"table": {"family": "ip6", "name": nft.HOST_TABLE}}}], check=False)
        out = nft.nft(args=["list", "table", "netdev", nft.HOST_TABLE], check=False)
        if out and not any("chain" in o or "counter" in o for o in out.get("nftables", [])):
            nft.nft([{"delete": {"table": {"family": "netdev", "name": nft.HOST_TABLE}}}], check=False)
        if not nft.host_rules("bridge"):      # the bridge table of versions before the port allow-lists
            nft.nft([{"delete": {"table": {"family": "bridge", "name": nft.HOST_TABLE}}}], check=False)


def reclaim_stale(rootless: bool | None = None) -> None:
    """Remove endpoints whose supervisor is gone (crash clean-up), their host-side traces, and
    bridges of networks without endpoints. Cheap when there is no network state."""
    root = state_dir(rootless)
    if not root.is_dir():
        return
    nets = all_networks(root)
    if not nets:
        return
    stale_any = False
    for nd in nets:
        for e in endpoints(root, nd["name"]):
            if not alive(e.get("supervisor_pid"), e.get("supervisor_start")):
                stale_any = True
    if not stale_any:
        return
    with locked(root):
        for nd in all_networks(root):
            eps = endpoints(root, nd["name"])
            stale = [e for e in eps if not alive(e.get("supervisor_pid"), e.get("supervisor_start"))]
            for e in stale:
                cleanup_endpoint(root, nd, e)
            if stale:
                hosts.rewrite_all(nd, endpoints(root, nd["name"]))
