"""Sandbox networking: none, host, private named networks, user-mode networking.

Modes (`network.mode` in the plan, `--network` on the command line):

* ``none``   own network namespace with only ``lo`` up (`bring_up_loopback`).
* ``host``   the host's network namespace (nothing to do here; linted as a finding).
* ``pasta`` / ``slirp4netns``  own namespace, outbound traffic and published ports
  through a user-mode network stack (works rootless). ``--no-map-gw`` / ``-T none -U none``
  (pasta), ``--disable-host-loopback`` / ``--disable-dns`` (slirp4netns): the sandbox cannot
  reach the host's loopback services.
* ``NAME``   a private network made with ``pysandbox network create NAME``: a Linux
  bridge in the host namespace; each sandbox gets a veth pair, an address from the
  network's pool (IPAM state under the state dir, allocation under an fcntl.flock),
  a default route via the bridge, and an ``/etc/hosts`` listing its peers by
  ``--name``, rewritten in place as peers join and leave. Its port has an allow-list
  (``table netdev pysandbox``, `_antispoof_rules`): only IPv4 and ARP from its own
  address and MAC leave it. Needs root.

Published ports (``-p [HOSTIP:]HOSTPORT:PORT[/tcp|udp]``) on private networks: nftables
DNAT in the host namespace (``table ip pysandbox``) for traffic to the host's
non-loopback addresses, plus a small userspace proxy process bound to
HOSTIP:HOSTPORT that serves 127.0.0.1 (where DNAT cannot: routing a loopback source
to a bridge is martian) and holds the port reservation. With pasta/slirp4netns the
user-mode stack publishes the ports itself.

Egress allow-list (``egress_default: deny``): ``table inet pysandbox`` inside the
sandbox's own network namespace, installed by the supervisor from the host side in
`NetHandle.attach`, before the sandboxed program runs and therefore before it has
dropped capabilities; the program has no CAP_NET_ADMIN over that namespace, so it
cannot change the rules. Denied packets are counted (named counter ``denied``);
`NetHandle.release` reads the count (`NetHandle.egress_denied`) for the audit record.

State lives under ``/var/lib/pysandbox/networks`` (root) or
``$XDG_DATA_HOME/pysandbox/networks`` (rootless), overridable with
``PYSANDBOX_STATE_DIR`` (the parent of ``networks``). Layout::

    networks/.lock                      flock: every change of network state
    networks/<net>/network.json         name, subnet, gateway, bridge
    networks/<net>/endpoints/<sid>.json one per attached sandbox (address, supervisor pid, ...)
    networks/<net>/hosts/<sid>          that sandbox's /etc/hosts (bind-mounted read-only)

Crash clean-up: every endpoint records its supervisor's pid and start time; an
endpoint whose supervisor is gone is reclaimed (`reclaim_stale`, also run before
every allocation and by ``network ls/inspect/rm``): its veth, DNAT rules, proxy,
address and hosts file are removed, and a bridge without endpoints is deleted.

This module is imported on the launch path: keep module-level imports to the
standard library; pyroute2 is imported only where a private network is used.
"""
from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from audit import paths as _paths


class NetworkError(Exception):
    """A network control cannot be set up (the launcher maps it to exit 125)."""


BUILTIN_MODES = ("none", "host", "pasta", "slirp4netns")
RESERVED_NAMES = frozenset(BUILTIN_MODES) | {"bridge", "default", "container", "private"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
NET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")
DEFAULT_POOL = ipaddress.ip_network("10.89.0.0/16")     # /24 networks are carved from here
HOST_TABLE = "pysandbox"                                  # table ip pysandbox (host side)
EGRESS_TABLE = "pysandbox"                                # table inet pysandbox (sandbox side)
_NFT = "nft"
_STEP_TIMEOUT = 10.0                                      # seconds: any helper process / wait


# ---------------------------------------------------------------------------------
# lo up, inside the sandbox (lean: no pyroute2)
# ---------------------------------------------------------------------------------
def bring_up_loopback() -> None:
    """Set `lo` up in the current network namespace (see sandbox.netlo, kept lean for PID 1)."""
    from .netlo import bring_up_loopback as _up
    try:
        _up()
    except OSError as e:
        raise NetworkError(str(e.args[1]) if len(e.args) > 1 else str(e)) from None


# ---------------------------------------------------------------------------------
# state
# ---------------------------------------------------------------------------------
def _is_rootless() -> bool:
    return os.geteuid() != 0


def state_dir(rootless: bool | None = None) -> Path:
    """<state directory>/networks (the one resolver: audit/paths.py)."""
    if rootless is None:
        rootless = _is_rootless()
    return Path(_paths.state_dir(rootless)) / "networks"


@contextmanager
def _locked(root: Path):
    # traversable (0711): sandboxes' hosts files under <net>/hosts are bind-mounted by the
    # sandbox's mapped root, which has no capabilities on the host
    try:
        if str(root.parent) == _paths.state_dir():
            _paths.ensure_state_dir()          # 0711, ours, not writable by others
        root.mkdir(parents=True, exist_ok=True, mode=0o711)
        if root.stat().st_uid == os.geteuid() and not root.stat().st_mode & 0o001:
            os.chmod(root, 0o711)              # make sure o+x survived the umask
    except _paths.StateDirError as e:
        raise NetworkError(str(e)) from None
    except OSError as e:
        raise NetworkError(f"network state {e.filename or root}: {e.strerror}") from None
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)          # releases the lock


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None


def _proc_start(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        return int(data[data.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def _alive(pid: int | None, start: int | None) -> bool:
    if not pid:
        return False
    st = _proc_start(pid)
    return st is not None and (start is None or st == start)


def _short(s: str, n: int = 10) -> str:
    return hashlib.sha256(s.encode()).hexdigest()[:n]


def bridge_name(network: str) -> str:
    return "psb-" + _short("net:" + network, 10)            # 14 chars < IFNAMSIZ


def veth_name(sandbox_id: str) -> str:
    return "psv" + _short("sbx:" + sandbox_id, 11)          # 14 chars


# ---------------------------------------------------------------------------------
# nftables (JSON)
# ---------------------------------------------------------------------------------
def _nsenter_prefix(pid: int | None, nsfd: int | None, userns_fd: int | None) -> list[str]:
    if pid is None and nsfd is None:
        return []
    nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
    if nsfd is not None:
        me = os.getpid()
        args = [nsenter]
        if userns_fd is not None:
            args += [f"--user=/proc/{me}/fd/{userns_fd}", "--preserve-credentials"]
        return args + [f"--net=/proc/{me}/fd/{nsfd}", "--"]
    args = [nsenter, "-t", str(pid)]
    if userns_fd is not None:
        args += ["-U", "--preserve-credentials"]
    return args + ["-n", "--"]


def _nft_path() -> str:
    p = shutil.which(_NFT) or next((c for c in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(c)), None)
    if p is None:
        raise NetworkError("network: nft (nftables) is not installed; install the Debian package nftables")
    return p


def nft(cmds: list | None = None, *, args: list[str] | None = None, pid: int | None = None,
        nsfd: int | None = None, userns_fd: int | None = None, check: bool = True, echo: bool = False) -> dict:
    """Run nft with a JSON batch (cmds) or JSON-output arguments (args, e.g. ["list", "table", ...]).
    pid/nsfd: run inside that process's / fd's network namespace. echo: return the added objects
    with their handles."""
    pre = _nsenter_prefix(pid, nsfd, userns_fd)
    argv = pre + [_nft_path(), "-j"] + (["-e"] if echo else [])
    argv += (args if args is not None else ["-f", "-"])
    inp = json.dumps({"nftables": cmds}) if cmds is not None else None
    fds = tuple(f for f in (nsfd, userns_fd) if f is not None)
    try:
        p = subprocess.run(argv, input=inp, capture_output=True, text=True, timeout=_STEP_TIMEOUT,
                           pass_fds=fds)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetworkError(f"network: nft: {e}") from None
    if p.returncode != 0:
        if not check:
            return {}
        msg = (p.stderr.strip().splitlines() or ["failed"])[0]
        raise NetworkError(f"network: nftables: {msg}")
    try:
        return json.loads(p.stdout) if p.stdout.strip() else {}
    except ValueError:
        return {}


def _m(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(proto, field):
    return {"payload": {"protocol": proto, "field": field}}


def _meta(key):
    return {"meta": {"key": key}}


def _prefix(net: ipaddress.IPv4Network | ipaddress.IPv6Network):
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _host_base() -> list[dict]:
    """Idempotent: the host tables and their base chains."""
    T = {"family": "ip", "table": HOST_TABLE}
    return [{"add": {"table": {"family": "ip", "name": HOST_TABLE}}},
         {"add": {"chain": {**T, "name": "prerouting", "type": "nat", "hook": "prerouting", "prio": -100,
                            "policy": "accept"}}},
         {"add": {"chain": {**T, "name": "output", "type": "nat", "hook": "output", "prio": -100,
                            "policy": "accept"}}},
         {"add": {"chain": {**T, "name": "postrouting", "type": "nat", "hook": "postrouting", "prio": 100,
                            "policy": "accept"}}},
         {"add": {"chain": {**T, "name": "forward", "type": "filter", "hook": "forward", "prio": 0,
                            "policy": "accept"}}},
         {"add": {"table": {"family": "netdev", "name": HOST_TABLE}}}]


def _host_rules(family: str = "ip") -> list[dict]:
    """Rules of a host table (each with chain, handle, comment); [] when there is no table."""
    out = nft(args=["list", "table", family, HOST_TABLE], check=False)
    return [o["rule"] for o in out.get("nftables", []) if "rule" in o]


def _delete_host_rules(pred, family: str = "ip") -> None:
    dels = [{"delete": {"rule": {"family": family, "table": HOST_TABLE, "chain": r["chain"],
                                 "handle": r["handle"]}}}
            for r in _host_rules(family) if pred(r.get("comment") or "")]
    if dels:
        nft(dels, check=False)


def port_mac(addr: str) -> str:
    """The MAC address of a sandbox's eth0 on a private network: locally administered, unicast,
    from its IPv4 address (02:50:a.b.c.d). Set by the supervisor when it creates the veth pair, so
    the port's allow-list knows it before the port is up."""
    return "02:50:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(addr).packed)


def _antispoof_rules(sid: str, veth: str, addr: str, mac: str) -> list[dict]:
    """The allow-list of one sandbox's port: a base chain of its own, `table netdev pysandbox`,
    hook `ingress` on the host side of its veth (every frame the sandbox's eth0 sends arrives
    there, before the bridge sees it), policy drop. Only two kinds of frame pass:

    * IPv4 (outer ethertype 0x0800, version 4) from the port's own MAC and its own address;
    * ARP (Ethernet/IPv4, request or reply) from its own MAC whose sender is its own MAC and address.

    Everything else is counted and dropped: other source addresses or MACs, 802.1Q/802.1ad tagged
    frames (`ether type` sees the outer tag also when the kernel has moved it into the skb's
    metadata: nft puts it back for the match), IPv6 (no IPv6 address is assigned), raw ethertypes,
    LLC/STP and link-local frames (which the bridge's own prerouting hook never sees). DHCP is not
    needed: addresses are static."""
    T = {"family": "netdev", "table": HOST_TABLE}
    c = f"sbx:{sid}"
    own_mac = _m(_payload("ether", "saddr"), mac)
    return [
        # a named counter (not one in the rule): it outlives the chain's hook when the kernel takes the
        # device away with the sandbox's namespace, so release can still read it
        {"add": {"counter": {**T, "name": veth}}},
        {"add": {"chain": {**T, "name": veth, "type": "filter", "hook": "ingress", "dev": veth, "prio": -500,
                           "policy": "drop"}}},
        {"add": {"rule": {**T, "chain": veth, "comment": c, "expr": [
            own_mac, _m(_payload("ether", "type"), "ip"), _m(_payload("ip", "version"), 4),
            _m(_payload("ip", "saddr"), addr), {"accept": None}]}}},
        {"add": {"rule": {**T, "chain": veth, "comment": c, "expr": [
            own_mac, _m(_payload("ether", "type"), "arp"), _m(_payload("arp", "htype"), 1),
            _m(_payload("arp", "ptype"), 0x0800), _m(_payload("arp", "hlen"), 6), _m(_payload("arp", "plen"), 4),
            _m(_payload("arp", "operation"), {"set": ["request", "reply"]}),
            _m(_payload("arp", "saddr ether"), mac), _m(_payload("arp", "saddr ip"), addr), {"accept": None}]}}},
        {"add": {"rule": {**T, "chain": veth, "comment": c, "expr": [{"counter": veth}, {"drop": None}]}}},
    ]


def _antispoof_dropped(veth: str) -> int | None:
    """Frames the port's allow-list has dropped so far (None: no such counter)."""
    out = nft(args=["list", "counter", "netdev", HOST_TABLE, veth], check=False)
    for o in out.get("nftables", []):
        if "counter" in o:
            return int(o["counter"].get("packets", 0))
    return None


def _antispoof_delete(veth: str) -> list[dict]:
    T = {"family": "netdev", "table": HOST_TABLE, "name": veth}
    return [{"delete": {"chain": T}}, {"delete": {"counter": T}}]


def _network_rules(netdef: dict) -> list[dict]:
    """Masquerade outbound traffic of the subnet; isolate the bridge from other pysandbox bridges
    and from direct (non-published) inbound traffic."""
    br, subnet = netdef["bridge"], ipaddress.ip_network(netdef["subnet"])
    T = {"family": "ip", "table": HOST_TABLE}
    c = f"net:{netdef['name']}"
    iif, oif = _meta("iifname"), _meta("oifname")
    return [
        {"add": {"rule": {**T, "chain": "postrouting", "comment": c, "expr": [
            _m(_payload("ip", "saddr"), _prefix(subnet)), _m(oif, br, "!="), {"masquerade": None}]}}},
        {"add": {"rule": {**T, "chain": "forward", "comment": c, "expr": [
            _m(iif, br), _m(oif, "psb-*"), _m(oif, br, "!="), {"counter": None}, {"drop": None}]}}},
        {"add": {"rule": {**T, "chain": "forward", "comment": c, "expr": [
            _m(oif, br), _m(iif, br, "!="), _m({"ct": {"key": "state"}}, ["established", "related"], "in"),
            {"accept": None}]}}},
        {"add": {"rule": {**T, "chain": "forward", "comment": c, "expr": [
            _m(oif, br), _m(iif, br, "!="), _m({"ct": {"key": "status"}}, "dnat", "in"), {"accept": None}]}}},
        {"add": {"rule": {**T, "chain": "forward", "comment": c, "expr": [
            _m(oif, br), _m(iif, br, "!="), {"counter": None}, {"drop": None}]}}},
    ]


def _dnat_rules(sid: str, ip: str, ports: list[dict]) -> list[dict]:
    T = {"family": "ip", "table": HOST_TABLE}
    rules = []
    for p in ports:
        hip = ipaddress.ip_address(p["host_ip"])
        if hip.is_loopback:
            continue                                  # served by the userspace proxy
        dport = _m(_payload(p["proto"], "dport"), p["host_port"])
        target = {"dnat": {"addr": ip, "port": p["port"]}}
        if hip.is_unspecified:
            local = _m({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
            pre = [local, dport, target]
            out = [local, _m(_payload("ip", "daddr"), {"prefix": {"addr": "127.0.0.0", "len": 8}}, "!="),
                   dport, target]
        else:
            d = _m(_payload("ip", "daddr"), str(hip))
            pre = out = [d, dport, target]
        for chain, expr in (("prerouting", pre), ("output", out)):
            rules.append({"add": {"rule": {**T, "chain": chain, "comment": f"sbx:{sid}", "expr": expr}}})
    return rules


def egress_ruleset(default: str, rules: list[dict], peer_ips: dict[str, list[str]]) -> list[dict]:
    """The nft batch installed inside the sandbox's netns (`table inet pysandbox`).
    rules: [{"to": cidr-or-name, "ports": [...], "proto": "tcp"|"udp"|"icmp"|"any"}]."""
    T = {"family": "inet", "table": EGRESS_TABLE}
    cmds: list[dict] = [
        {"add": {"table": {"family": "inet", "name": EGRESS_TABLE}}},
        {"add": {"counter": {**T, "name": "denied"}}},
    ]
    names = sorted({r["to"] for r in rules if _as_net(r["to"]) is None})
    for n in names:
        cmds.append({"add": {"set": {**T, "name": _set_name(n), "type": "ipv4_addr"}}})
        if peer_ips.get(n):
            cmds.append({"add": {"element": {**T, "name": _set_name(n), "elem": list(peer_ips[n])}}})
    policy = "drop" if default == "deny" else "accept"
    cmds.append({"add": {"chain": {**T, "name": "output", "type": "filter", "hook": "output", "prio": 0,
                                   "policy": policy}}})

    def rule(expr):
        cmds.append({"add": {"rule": {**T, "chain": "output", "expr": expr}}})

    rule([_m(_meta("oifname"), "lo"), {"accept": None}])
    rule([_m({"ct": {"key": "state"}}, ["established", "related"], "in"), {"accept": None}])
    for r in rules:
        net = _as_net(r["to"])
        if net is None:
            dst = _m(_payload("ip", "daddr"), "@" + _set_name(r["to"]))
        else:
            dst = _m(_payload("ip" if net.version == 4 else "ip6", "daddr"),
                     str(net.network_address) if net.prefixlen == net.max_prefixlen else _prefix(net))
        proto = r.get("proto") or "tcp"
        ports = list(r.get("ports") or ())
        expr = [dst]
        if proto in ("tcp", "udp"):
            if ports:
                expr.append(_m(_payload(proto, "dport"), ports[0] if len(ports) == 1 else {"set": ports}))
            else:
                expr.append(_m(_meta("l4proto"), proto))
        elif proto == "icmp":
            expr.append(_m(_meta("l4proto"), "icmp" if (net is None or net.version == 4) else "ipv6-icmp"))
        expr.append({"accept": None})
        rule(expr)
    # reject (not drop): a denied connect() fails at once with EHOSTUNREACH instead of hanging
    rule([{"counter": "denied"}, {"reject": {"type": "icmpx", "expr": "admin-prohibited"}}]
         if default == "deny" else [{"accept": None}])
    return cmds


def _set_name(name: str) -> str:
    return "peer_" + re.sub(r"[^A-Za-z0-9_]", "_", name)[:40] + "_" + _short(name, 6)


def _as_net(s: str):
    try:
        return ipaddress.ip_network(s, strict=False)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------
# networks: create / ls / inspect / rm
# ---------------------------------------------------------------------------------
def load_network(name: str, rootless: bool | None = None) -> dict | None:
    if not NET_NAME_RE.match(name or ""):
        return None
    return _read_json(state_dir(rootless) / name / "network.json")


def _all_networks(root: Path) -> list[dict]:
    out = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            nd = _read_json(d / "network.json") if d.is_dir() else None
            if nd:
                out.append(nd)
    return out


def _endpoints(root: Path, name: str) -> list[dict]:
    d = root / name / "endpoints"
    out = []
    if d.is_dir():
        for f in sorted(d.glob("*.json")):
            e = _read_json(f)
            if e:
                out.append(e)
    return out


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


def create_network(name: str, subnet: str | None = None, *, rootless: bool | None = None) -> dict:
    if rootless is None:
        rootless = _is_rootless()
    if not NET_NAME_RE.match(name or ""):
        raise NetworkError(f"network create: invalid name {name!r} (letters, digits, _ . -; at most 32)")
    if name in RESERVED_NAMES:
        raise NetworkError(f"network create: {name!r} is a reserved network name")
    if rootless:
        raise NetworkError("network create: private networks need root (a bridge and veth pairs in the host "
                           "network namespace); rootless sandboxes can use --network pasta")
    root = state_dir(rootless)
    with _locked(root):
        if (root / name / "network.json").exists():
            raise NetworkError(f"network create: network {name!r} already exists")
        others = [ipaddress.ip_network(n["subnet"]) for n in _all_networks(root)]
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
        d = root / name
        d.mkdir(mode=0o711, exist_ok=True)
        (d / "endpoints").mkdir(mode=0o700, exist_ok=True)
        (d / "hosts").mkdir(mode=0o711, exist_ok=True)
        for p, m in ((d, 0o711), (d / "hosts", 0o711)):
            os.chmod(p, m)
        _write_json(d / "network.json", nd)
    return nd


def list_networks(rootless: bool | None = None) -> list[dict]:
    reclaim_stale(rootless)
    root = state_dir(rootless)
    out = []
    for nd in _all_networks(root):
        out.append({**nd, "endpoints": len(_endpoints(root, nd["name"]))})
    return out


def inspect_network(name: str, rootless: bool | None = None) -> dict:
    reclaim_stale(rootless)
    root = state_dir(rootless)
    nd = load_network(name, rootless)
    if nd is None:
        raise NetworkError(f"network {name!r} not found")
    eps = [{k: e.get(k) for k in ("sandbox_id", "name", "address", "veth", "ports", "pid", "supervisor_pid",
                                  "state")} for e in _endpoints(root, name)]
    return {**nd, "endpoints": eps}


def remove_network(name: str, rootless: bool | None = None) -> None:
    reclaim_stale(rootless)
    root = state_dir(rootless)
    with _locked(root):
        nd = load_network(name, rootless)
        if nd is None:
            raise NetworkError(f"network {name!r} not found")
        eps = _endpoints(root, name)
        if eps:
            who = ", ".join(e.get("name") or e["sandbox_id"] for e in eps)
            raise NetworkError(f"network rm: {name!r} has {len(eps)} attached sandbox(es): {who}")
        _teardown_network(root, nd)
        shutil.rmtree(root / name, ignore_errors=True)


# ---------------------------------------------------------------------------------
# prepare / attach / release
# ---------------------------------------------------------------------------------
def _port_dicts(net) -> list[dict]:
    out = []
    for p in getattr(net, "ports", ()) or ():
        proto = (p.proto or "tcp").lower()
        if proto not in ("tcp", "udp"):
            raise NetworkError(f"network: published port {p.host_port}:{p.port}: protocol {p.proto!r} "
                               "(tcp or udp)")
        for v in (p.host_port, p.port):
            if not 0 < int(v) < 65536:
                raise NetworkError(f"network: published port {p.host_port}:{p.port}: port out of range")
        hip = p.host_ip or "0.0.0.0"
        try:
            a = ipaddress.ip_address(hip)
        except ValueError:
            raise NetworkError(f"network: published port: bad host address {hip!r}") from None
        if a.version != 4:
            raise NetworkError(f"network: published port {hip}: only IPv4 host addresses are supported")
        out.append({"host_ip": hip, "host_port": int(p.host_port), "port": int(p.port), "proto": proto})
    seen = set()
    for p in out:
        k = (p["host_port"], p["proto"])
        if k in seen:
            raise NetworkError(f"network: host port {p['host_port']}/{p['proto']} published twice")
        seen.add(k)
    return out


def _egress_dicts(net) -> list[dict]:
    out = []
    for r in getattr(net, "egress_allow", ()) or ():
        proto = (r.proto or "tcp").lower()
        if proto in ("all", "*"):
            proto = "any"
        if proto not in ("tcp", "udp", "icmp", "any"):
            raise NetworkError(f"network: egress rule to {r.to}: protocol {r.proto!r} (tcp, udp, icmp, any)")
        if r.ports and proto not in ("tcp", "udp"):
            raise NetworkError(f"network: egress rule to {r.to}: ports need proto tcp or udp")
        for p in r.ports:
            if not 0 < int(p) < 65536:
                raise NetworkError(f"network: egress rule to {r.to}: port {p} out of range")
        if _as_net(r.to) is None and not NAME_RE.match(r.to or ""):
            raise NetworkError(f"network: egress rule: {r.to!r} is neither a CIDR nor a sandbox name")
        out.append({"to": r.to, "ports": [int(p) for p in r.ports], "proto": proto})
    return out


def _check_port_free(p: dict) -> None:
    fam = socket.AF_INET
    typ = socket.SOCK_STREAM if p["proto"] == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(fam, typ)
    try:
        if typ == socket.SOCK_STREAM:      # a listener still conflicts; TIME_WAIT leftovers do not
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((p["host_ip"], p["host_port"]))
    except OSError as e:
        raise NetworkError(f"network: cannot publish {p['host_ip']}:{p['host_port']}/{p['proto']}: "
                           f"{e.strerror}") from None
    finally:
        s.close()


def _tun_problem() -> str | None:
    """Why user-mode networking cannot open /dev/net/tun for this user, or None."""
    path = "/dev/net/tun"
    try:
        st = os.stat(path)
    except OSError as e:
        return f"{path}: {e.strerror} (user-mode networking needs the tun device)"
    if not os.access(path, os.R_OK | os.W_OK):
        return (f"{path} (mode {st.st_mode & 0o777:04o}) is not usable by uid {os.geteuid()}; user-mode "
                "networking needs it (Debian's default is 0666)")
    return None


def _check_reachable(hosts_dir: Path) -> None:
    """The sandbox's PID 1 (its mapped root: no capability on the host) opens its hosts file under
    `hosts_dir` by path: every directory from / down to it must be searchable by others. Checked
    before anything is reserved, so the launch fails closed with the directory named (exit 125)
    instead of a bare "Permission denied" from inside the sandbox."""
    d = hosts_dir
    while True:
        try:
            st = d.stat()
        except OSError as e:
            raise NetworkError(f"network: {d}: {e.strerror}") from None
        if not st.st_mode & 0o001:
            raise NetworkError(f"network: {d} (mode {st.st_mode & 0o777:04o}) is not searchable by others: the "
                               f"sandbox's root cannot reach its hosts file below it; make it o+x or use a "
                               f"state directory (PYSANDBOX_STATE_DIR) whose parents are")
        if d.parent == d:
            return
        d = d.parent


def prepare(net, sandbox_id: str, name: str | None, *, rootless: bool,
            hostname: str | None = None) -> "NetHandle | None":
    """Validate the network part of a plan and reserve what it needs (address, name) before
    the sandbox is created. Fails closed with NetworkError. None when nothing is to be done
    after clone (mode none without egress rules; host). hostname: the sandbox's host name, listed
    with its own address in its /etc/hosts on a private network."""
    mode = getattr(net, "mode", "none") or "none"
    ports = _port_dicts(net)
    egress = _egress_dicts(net)
    deny = (getattr(net, "egress_default", "allow") or "allow") == "deny"
    if name is not None and not NAME_RE.match(name):
        raise NetworkError(f"network: invalid sandbox name {name!r} (letters, digits, _ . -)")
    if mode == "host":
        if ports:
            raise NetworkError("network host: published ports need an own network namespace "
                               "(the program binds host ports directly)")
        if deny or egress:
            raise NetworkError("network host: an egress allow-list needs an own network namespace "
                               "(use --network none, pasta or a private network)")
        return None
    names = [r["to"] for r in egress if _as_net(r["to"]) is None]
    if mode == "none":
        if ports:
            raise NetworkError("network none: published ports need --network pasta or a private network")
        if names:
            raise NetworkError(f"network none: egress rule to sandbox {names[0]!r}: sandbox names resolve "
                               "only on a private network")
        if not deny:
            return None
        _nft_path()
        return NetHandle(mode, sandbox_id, name, rootless, ports, egress, deny)
    if mode in ("pasta", "slirp4netns"):
        tool = shutil.which(mode)
        if tool is None:
            pkg = "passt" if mode == "pasta" else "slirp4netns"
            raise NetworkError(f"network {mode}: {mode} is not installed (Debian package {pkg})")
        if names:
            raise NetworkError(f"network {mode}: egress rule to sandbox {names[0]!r}: sandbox names resolve "
                               "only on a private network")
        tun = _tun_problem()
        if tun:
            raise NetworkError(f"network {mode}: {tun}")
        if deny:
            _nft_path()
        for p in ports:
            _check_port_free(p)
        return NetHandle(mode, sandbox_id, name, rootless, ports, egress, deny, tool=tool)
    # a private network
    if not NET_NAME_RE.match(mode):
        raise NetworkError(f"network: invalid network name {mode!r}")
    if rootless:
        raise NetworkError(f"network {mode}: private networks need root (a bridge and veth pairs in the host "
                           "network namespace); rootless sandboxes can use --network pasta or none")
    root = state_dir(rootless)
    nd = load_network(mode, rootless)
    if nd is None:
        raise NetworkError(f"network {mode!r} not found (create it with: pysandbox network create {mode})")
    _nft_path()
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        raise NetworkError("network: private networks need the Python package pyroute2 "
                           "(pip install 'pysandbox[net]')") from None
    for p in ports:
        _check_port_free(p)
    _check_reachable(root / mode / "hosts")
    reclaim_stale(rootless)
    h = NetHandle(mode, sandbox_id, name, rootless, ports, egress, deny)
    with _locked(root):
        nd = load_network(mode, rootless)
        if nd is None:
            raise NetworkError(f"network {mode!r} not found")
        eps = _endpoints(root, mode)
        if any(e["sandbox_id"] == sandbox_id for e in eps):
            raise NetworkError(f"network {mode}: sandbox id {sandbox_id} is already attached")
        if name is not None and any(e.get("name") == name for e in eps):
            raise NetworkError(f"network {mode}: the name {name!r} is already in use on this network")
        used = {e["address"] for e in eps} | {nd["gateway"]}
        subnet = ipaddress.ip_network(nd["subnet"])
        addr = next((str(a) for a in subnet.hosts() if str(a) not in used), None)
        if addr is None:
            raise NetworkError(f"network {mode}: no free address left in {subnet}")
        h.netdef = nd
        h.hostname = hostname if hostname and NAME_RE.match(hostname) else None
        h.address = addr
        h.veth = veth_name(sandbox_id)
        h._hosts_file = str(root / mode / "hosts" / _safe_id(sandbox_id))
        (root / mode / "endpoints").mkdir(parents=True, exist_ok=True)
        (root / mode / "hosts").mkdir(parents=True, exist_ok=True)
        h._write_endpoint(state="reserved")
        # the hosts file exists from the start so the launcher can bind-mount it
        _write_inplace(Path(h._hosts_file), _hosts_content(nd, eps + [h._endpoint("reserved")], sandbox_id))
        # the sandbox's PID 1 (its mapped root, no capabilities on the host) opens this path
        # itself: every directory above it is traversable (0711), the file is 0644
        h.hosts_path = h._hosts_file
    return h


def _safe_id(sid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", sid)[:64] or _short(sid)


def _write_inplace(path: Path, content: str) -> None:
    """Rewrite a file's content keeping its inode (a read-only bind mount of it sees the change)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.fchmod(fd, 0o644)               # readable by the sandbox's mapped root, whatever the umask
        data = content.encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def _hosts_content(nd: dict, eps: list[dict], own_sid: str | None) -> str:
    """One sandbox's /etc/hosts: localhost, every named peer, and its own name and host name."""
    lines = [f"# pysandbox network {nd['name']} ({nd['subnet']}): managed, rewritten as peers join and leave",
             "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    for e in sorted(eps, key=lambda e: ipaddress.ip_address(e["address"])):
        names = [e.get("name")]
        if e["sandbox_id"] == own_sid:
            names.append(e.get("hostname"))
        names = list(dict.fromkeys(n for n in names if n))
        if names:
            lines.append(f"{e['address']}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


class NetHandle:
    """The network of one sandbox, from `prepare` (before clone) to `release` (after exit)."""

    def __init__(self, mode, sandbox_id, name, rootless, ports, egress, deny, tool=None):
        self.mode = mode
        self.sandbox_id = sandbox_id
        self.name = name
        self.rootless = rootless
        self.ports = ports
        self.egress = egress
        self.egress_deny = deny
        self.tool = tool
        self.netdef: dict | None = None
        self.address: str | None = None
        self.hostname: str | None = None
        self.veth: str | None = None
        self.hosts_path: str | None = None      # the live hosts file (bind it read-only on /etc/hosts)
        self._hosts_file: str | None = None
        self.pid: int | None = None
        self.denied: int | None = None          # egress packets denied (after release)
        self._nsfd: int | None = None
        self._usernsfd: int | None = None
        self._helper: subprocess.Popen | None = None   # pasta / slirp4netns
        self._proxy_pid: int | None = None              # userspace port proxy (forked)
        self._rules: list = []                          # (family, chain, handle) of our host rules
        self._antispoof = False                         # our port's chain in table netdev pysandbox
        self.spoof_dropped: int | None = None           # frames it dropped (after release)
        self._released = False
        self._supervisor = os.getpid()
        self._supervisor_start = _proc_start(self._supervisor)

    # -- private network bookkeeping --------------------------------------------------
    def _endpoint(self, state: str) -> dict:
        return {"sandbox_id": self.sandbox_id, "name": self.name, "hostname": self.hostname,
                "address": self.address, "veth": self.veth,
                "ports": self.ports, "egress_names": sorted({r["to"] for r in self.egress
                                                             if _as_net(r["to"]) is None}),
                "pid": self.pid, "supervisor_pid": self._supervisor,
                "supervisor_start": self._supervisor_start,
                "helper_pid": self._helper_pid(), "helper_start": _proc_start(self._helper_pid() or -1),
                "rules": [list(r) for r in self._rules], "antispoof": self._antispoof,
                "hosts": self._hosts_file, "state": state}

    def _helper_pid(self) -> int | None:
        return self._helper.pid if self._helper else self._proxy_pid

    def _ep_path(self) -> Path:
        return state_dir(self.rootless) / self.mode / "endpoints" / (_safe_id(self.sandbox_id) + ".json")

    def _write_endpoint(self, state: str) -> None:
        _write_json(self._ep_path(), self._endpoint(state))

    # -- interface for the launcher --------------------------------------------------
    def etc_hosts(self) -> str | None:
        """Content of the sandbox's /etc/hosts now (private networks), else None. It changes as
        peers come and go: bind-mount `hosts_path` read-only over /etc/hosts to see that."""
        if self._hosts_file is None or self._released:
            return None
        try:
            with open(self._hosts_file) as f:
                return f.read()
        except OSError:
            return None

    def attach(self, pid: int) -> None:
        """Connect the sandbox whose PID 1 (in its own netns, not yet running the program) is pid."""
        if self._released:
            raise NetworkError("network: handle already released")
        self.pid = pid
        try:
            self._nsfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            if self.rootless:
                self._usernsfd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise NetworkError(f"network: sandbox process {pid}: {e.strerror}") from None
        try:
            if self.mode in ("pasta", "slirp4netns"):
                self._attach_usermode(pid)
            elif self.mode != "none":
                self._attach_bridge(pid)
            if self.egress_deny:
                self._install_egress()
        except NetworkError:
            self.release()
            raise
        except Exception as e:  # pyroute2 / OS errors: one clear line, fail closed
            self.release()
            raise NetworkError(f"network {self.mode}: attach failed: {e}") from None

    def _install_egress(self) -> None:
        peers: dict[str, list[str]] = {}
        if self.netdef is not None:
            root = state_dir(self.rootless)
            for e in _endpoints(root, self.mode):
                if e.get("name") and e["sandbox_id"] != self.sandbox_id:
                    peers.setdefault(e["name"], []).append(e["address"])
        nft(egress_ruleset("deny", self.egress, peers), nsfd=self._nsfd, userns_fd=self._usernsfd)

    def _attach_bridge(self, pid: int) -> None:
        from pyroute2 import IPRoute
        nd = self.netdef
        root = state_dir(self.rootless)
        subnet = ipaddress.ip_network(nd["subnet"])
        with _locked(root):
            with IPRoute() as ipr:
                cmds = _host_base()
                if not ipr.link_lookup(ifname=nd["bridge"]):
                    # the bridge lives as long as the network (made again after a reboot); its
                    # masquerade/isolation rules come and go with it
                    ipr.link("add", ifname=nd["bridge"], kind="bridge")
                    bi = ipr.link_lookup(ifname=nd["bridge"])[0]
                    ipr.addr("add", index=bi, address=nd["gateway"], prefixlen=subnet.prefixlen)
                    ipr.link("set", index=bi, state="up")
                    _delete_host_rules(lambda c: c == f"net:{nd['name']}")
                    cmds += _network_rules(nd)
                bi = ipr.link_lookup(ifname=nd["bridge"])[0]
                if ipr.link_lookup(ifname=self.veth):       # leftover of a crashed sandbox with our id
                    ipr.link("del", index=ipr.link_lookup(ifname=self.veth)[0])
                mac = port_mac(self.address)
                ipr.link("add", ifname=self.veth, kind="veth",
                         peer={"ifname": "eth0", "net_ns_fd": self._nsfd, "address": mac})
                hi = ipr.link_lookup(ifname=self.veth)[0]
                # one nft transaction: the port's allow-list (before the port is up) and the DNAT of
                # published ports
                cmds += _antispoof_rules(self.sandbox_id, self.veth, self.address, mac)
                cmds += _dnat_rules(self.sandbox_id, self.address, self.ports)
                out = nft(cmds, echo=True)
                self._rules = [(r["family"], r["chain"], r["handle"]) for o in out.get("nftables", [])
                               for r in [o.get("add", {}).get("rule")]
                               if r and r["family"] == "ip" and r.get("comment") == f"sbx:{self.sandbox_id}"]
                self._antispoof = True
                ipr.link("set", index=hi, master=bi, state="up")
            with IPRoute(netns=f"/proc/{pid}/ns/net") as ns:
                i = ns.link_lookup(ifname="eth0")[0]
                # no IPv6 address at all (not even link-local): the port's allow-list drops IPv6
                ns.link("set", index=i, IFLA_AF_SPEC={"attrs": [("AF_INET6", {"attrs": [
                    ("IFLA_INET6_ADDR_GEN_MODE", 1)]})]})      # IN6_ADDR_GEN_MODE_NONE
                ns.addr("add", index=i, address=self.address, prefixlen=subnet.prefixlen)
                ns.link("set", index=i, state="up")
                lo = ns.link_lookup(ifname="lo")[0]
                ns.link("set", index=lo, state="up")
                ns.route("add", dst="0.0.0.0/0", gateway=nd["gateway"])
            if self.ports:
                self._start_proxy()
            self._write_endpoint(state="attached")
            self._refresh_peers(root, joined=True)

    def _refresh_peers(self, root: Path, joined: bool) -> None:
        """(under the lock) rewrite every hosts file of the network; update peers' egress sets."""
        nd = self.netdef
        eps = _endpoints(root, nd["name"])
        for e in eps:
            if e.get("hosts"):
                try:
                    _write_inplace(Path(e["hosts"]), _hosts_content(nd, eps, e["sandbox_id"]))
                except OSError:
                    pass
        if not self.name:
            return
        for e in eps:
            if e["sandbox_id"] == self.sandbox_id or self.name not in (e.get("egress_names") or ()):
                continue
            if not e.get("pid") or _proc_start(e["pid"]) is None:
                continue
            op = "add" if joined else "delete"
            nft([{op: {"element": {"family": "inet", "table": EGRESS_TABLE, "name": _set_name(self.name),
                                   "elem": [self.address]}}}], pid=e["pid"], check=False)

    def _start_proxy(self) -> None:
        """Fork the userspace proxy (serves 127.0.0.1 and holds the port reservation). A fork, not a
        new interpreter: no start-up cost; the child closes every descriptor but its sockets."""
        socks = []
        try:
            for p in self.ports:
                typ = socket.SOCK_STREAM if p["proto"] == "tcp" else socket.SOCK_DGRAM
                s = socket.socket(socket.AF_INET, typ)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((p["host_ip"], p["host_port"]))
                except OSError as e:
                    s.close()
                    raise NetworkError(f"network: cannot publish {p['host_ip']}:{p['host_port']}/{p['proto']}: "
                                       f"{e.strerror}") from None
                if typ == socket.SOCK_STREAM:
                    s.listen(128)
                socks.append(s)
            spec = [{"fd": s.fileno(), "proto": p["proto"], "ip": self.address, "port": p["port"]}
                    for s, p in zip(socks, self.ports)]
            parent = os.getpid()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    keep = sorted(x["fd"] for x in spec)
                    lo = 3
                    for fd in keep + [1 << 20]:
                        if fd > lo:
                            os.closerange(lo, min(fd, 65536))
                        lo = fd + 1
                    devnull = os.open(os.devnull, os.O_RDWR)
                    for fd in (0, 1, 2):
                        os.dup2(devnull, fd)
                    if devnull > 2:
                        os.close(devnull)
                    os.setsid()
                    _proxy_serve(parent, spec)
                    code = 0
                finally:
                    os._exit(code)
            self._proxy_pid = pid
        finally:
            for s in socks:
                s.close()

    def _attach_usermode(self, pid: int) -> None:
        import tempfile
        tmp = tempfile.mkdtemp(prefix=f"pysandbox-{self.mode}-")
        try:
            errf = open(os.path.join(tmp, "stderr"), "w+b")
            try:
                self._attach_usermode_in(pid, tmp, errf)
            finally:
                errf.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)      # only needed while it starts

    def _spawn_helper(self, argv: list[str], errf, pass_fds=()) -> None:
        # the helper dies with the supervisor (PDEATHSIG through setpriv, kept across exec):
        # no stray pasta/slirp4netns after a supervisor crash
        sp = shutil.which("setpriv")
        if sp:
            argv = [sp, "--pdeathsig", "KILL", "--"] + argv
        self._helper = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf,
                                        pass_fds=tuple(pass_fds), start_new_session=True)

    @staticmethod
    def _errtext(errf) -> str:
        try:
            errf.seek(0)
            lines = errf.read().decode(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return lines[-1] if lines else "exited"

    def _attach_usermode_in(self, pid: int, tmp: str, errf) -> None:
        if self.mode == "pasta":
            argv = [self.tool, "--config-net", "-f", "-q", "--no-map-gw", "--ipv4-only"]
            if os.geteuid() == 0:
                # as root pasta would switch to nobody before opening /proc/PID/ns/*, which the
                # sandbox (another uid, non-dumpable) does not allow; it still drops its capabilities
                argv += ["--runas", "0:0"]
            tcp = ",".join(f"{'' if p['host_ip'] == '0.0.0.0' else p['host_ip'] + '/'}{p['host_port']}:{p['port']}"
                           for p in self.ports if p["proto"] == "tcp") or "none"
            udp = ",".join(f"{'' if p['host_ip'] == '0.0.0.0' else p['host_ip'] + '/'}{p['host_port']}:{p['port']}"
                           for p in self.ports if p["proto"] == "udp") or "none"
            pidfile = os.path.join(tmp, "pid")
            argv += ["-t", tcp, "-u", udp, "-T", "none", "-U", "none", "-P", pidfile,
                     "--netns", f"/proc/{pid}/ns/net", "--userns", f"/proc/{pid}/ns/user"]
            self._spawn_helper(argv, errf)
            deadline = time.monotonic() + _STEP_TIMEOUT
            while not os.path.exists(pidfile):
                if self._helper.poll() is not None:
                    raise NetworkError(f"network pasta: {self._errtext(errf)}")
                if time.monotonic() > deadline:
                    raise NetworkError("network pasta: not ready after 10 s")
                time.sleep(0.005)
            return
        # slirp4netns
        api = os.path.join(tmp, "api.sock")
        r, w = os.pipe()
        # --disable-dns: slirp's DNS address (10.0.2.3) relays to the host's resolver, which may listen on
        # the host's loopback (127.0.0.1, 127.0.0.53) - around --disable-host-loopback. Sandboxes use the
        # host's resolv.conf, never 10.0.2.3.
        argv = [self.tool, "--configure", "--mtu=65520", "--disable-host-loopback", "--disable-dns",
                f"--ready-fd={w}", f"--api-socket={api}", "--userns-path", f"/proc/{pid}/ns/user",
                "--netns-type=path", f"/proc/{pid}/ns/net", "tap0"]
        try:
            self._spawn_helper(argv, errf, pass_fds=[w])
        finally:
            os.close(w)
        try:
            import select
            ready, _, _ = select.select([r], [], [], _STEP_TIMEOUT)
            ok = bool(ready) and os.read(r, 1) == b"1"
        finally:
            os.close(r)
        if not ok:
            if self._helper.poll() is None:
                raise NetworkError("network slirp4netns: not ready after 10 s")
            raise NetworkError(f"network slirp4netns: {self._errtext(errf)[:200]}")
        for p in self.ports:
            req = {"execute": "add_hostfwd", "arguments": {"proto": p["proto"], "host_addr": p["host_ip"],
                                                           "host_port": p["host_port"], "guest_port": p["port"]}}
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(_STEP_TIMEOUT)
                s.connect(api)
                s.sendall(json.dumps(req).encode())
                s.shutdown(socket.SHUT_WR)
                resp = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    resp += chunk
            try:
                ans = json.loads(resp or b"{}")
            except ValueError:
                ans = {"error": {"desc": resp.decode(errors="replace")}}
            if "error" in ans:
                raise NetworkError(f"network slirp4netns: publish {p['host_port']}: {ans['error'].get('desc')}")

    def egress_denied(self) -> int | None:
        """Packets the egress allow-list dropped so far (None when there is no allow-list)."""
        if not self.egress_deny:
            return None
        if self._nsfd is None:
            return self.denied
        out = nft(args=["list", "counter", "inet", EGRESS_TABLE, "denied"], nsfd=self._nsfd,
                  userns_fd=self._usernsfd, check=False)
        for o in out.get("nftables", []):
            if "counter" in o:
                return int(o["counter"].get("packets", 0))
        return self.denied

    def release(self) -> None:
        """Undo everything (idempotent): veth, DNAT rules, proxy/pasta, address, hosts file."""
        if self._released:
            return
        self._released = True
        try:
            self.denied = self.egress_denied()
        except Exception:
            pass
        if self._helper is not None:
            _stop(self._helper)
            self._helper = None
        if self._proxy_pid is not None:
            try:
                os.kill(self._proxy_pid, signal.SIGKILL)
                os.waitpid(self._proxy_pid, 0)
            except (OSError, ChildProcessError):
                pass
            self._proxy_pid = None
        if self._antispoof:
            try:
                self.spoof_dropped = _antispoof_dropped(self.veth)
            except Exception:
                pass
        if self.netdef is not None:
            root = state_dir(self.rootless)
            with _locked(root):
                _cleanup_endpoint(root, self.netdef, self._endpoint("released"))
                self._refresh_peers(root, joined=False)
        for attr in ("_nsfd", "_usernsfd"):
            fd = getattr(self, attr)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, attr, None)


def _stop(p: subprocess.Popen) -> None:
    try:
        p.terminate()
        try:
            p.wait(timeout=2)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=2)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _cleanup_endpoint(root: Path, nd: dict, e: dict) -> None:
    """(under the lock) remove one endpoint's host-side traces and its state."""
    sid = e["sandbox_id"]
    if e.get("helper_pid") and _alive(e["helper_pid"], e.get("helper_start")):
        try:
            os.kill(e["helper_pid"], signal.SIGKILL)
        except OSError:
            pass
    # by the handles recorded at attach (one transaction); when that fails (crash leftovers, rules
    # changed by someone else), by the comment every rule of this sandbox carries
    rules = e.get("rules") or []
    dels = [{"delete": {"rule": {"family": f, "table": HOST_TABLE, "chain": c, "handle": h}}}
            for f, c, h in rules]
    if e.get("antispoof") and e.get("veth"):
        dels += _antispoof_delete(e["veth"])
    try:
        if not dels:
            raise NetworkError("nothing recorded")
        nft(dels)
    except NetworkError:
        if shutil.which(_NFT) or os.path.exists("/usr/sbin/nft"):
            _delete_host_rules(lambda c: c == f"sbx:{sid}", family="ip")
            if e.get("veth"):          # e.g. a crash between the nft run and the endpoint's record
                for d in _antispoof_delete(e["veth"]):
                    nft([d], check=False)
            _delete_host_rules(lambda c: c == f"sbx:{sid}", family="bridge")   # before port allow-lists
    if e.get("veth"):
        try:
            from pyroute2 import IPRoute
            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=e["veth"])
                if idx:
                    ipr.link("del", index=idx[0])
        except Exception:
            pass
    for p in (root / nd["name"] / "endpoints" / (_safe_id(sid) + ".json"),
              Path(e["hosts"]) if e.get("hosts") else None):
        if p is not None:
            try:
                p.unlink()
            except FileNotFoundError:
                pass


def _teardown_network(root: Path, nd: dict) -> None:
    """(under the lock) delete the bridge and the network's host rules; drop the host table when empty."""
    try:
        from pyroute2 import IPRoute
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=nd["bridge"])
            if idx:
                ipr.link("del", index=idx[0])
    except ImportError:
        pass
    if shutil.which(_NFT) or os.path.exists("/usr/sbin/nft"):
        _delete_host_rules(lambda c: c == f"net:{nd['name']}")
        if not _host_rules():
            nft([{"delete": {"table": {"family": "ip", "name": HOST_TABLE}}}], check=False)
        out = nft(args=["list", "table", "netdev", HOST_TABLE], check=False)
        if out and not any("chain" in o or "counter" in o for o in out.get("nftables", [])):
            nft([{"delete": {"table": {"family": "netdev", "name": HOST_TABLE}}}], check=False)
        if not _host_rules("bridge"):      # the bridge table of versions before the port allow-lists
            nft([{"delete": {"table": {"family": "bridge", "name": HOST_TABLE}}}], check=False)


def reclaim_stale(rootless: bool | None = None) -> None:
    """Remove endpoints whose supervisor is gone (crash clean-up), their host-side traces, and
    bridges of networks without endpoints. Cheap when there is no network state."""
    root = state_dir(rootless)
    if not root.is_dir():
        return
    nets = _all_networks(root)
    if not nets:
        return
    stale_any = False
    for nd in nets:
        for e in _endpoints(root, nd["name"]):
            if not _alive(e.get("supervisor_pid"), e.get("supervisor_start")):
                stale_any = True
    if not stale_any:
        return
    with _locked(root):
        for nd in _all_networks(root):
            eps = _endpoints(root, nd["name"])
            stale = [e for e in eps if not _alive(e.get("supervisor_pid"), e.get("supervisor_start"))]
            for e in stale:
                _cleanup_endpoint(root, nd, e)
            if stale:
                live = _endpoints(root, nd["name"])
                for e in live:
                    if e.get("hosts"):
                        try:
                            _write_inplace(Path(e["hosts"]), _hosts_content(nd, live, e["sandbox_id"]))
                        except OSError:
                            pass


# ---------------------------------------------------------------------------------
# userspace port proxy (a forked child of the supervisor; see NetHandle._start_proxy)
# ---------------------------------------------------------------------------------
def _proxy_serve(parent: int, spec: list[dict]) -> None:
    import threading
    try:
        import prctl
        prctl.set_pdeathsig(signal.SIGKILL)          # dies with the supervisor
    except Exception:
        pass
    if os.getppid() != parent:
        return
    max_conns = threading.BoundedSemaphore(512)

    def pipe(a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        finally:
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def serve_tcp(ls, ip, port):
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                time.sleep(0.05)
                continue
            if not max_conns.acquire(blocking=False):
                c.close()
                continue

            def conn(c=c):
                try:
                    u = socket.create_connection((ip, port), timeout=10)
                    u.settimeout(None)
                except OSError:
                    c.close()
                    max_conns.release()
                    return
                t = threading.Thread(target=pipe, args=(u, c), daemon=True)
                t.start()
                pipe(c, u)
                t.join()
                c.close()
                u.close()
                max_conns.release()
            threading.Thread(target=conn, daemon=True).start()

    def serve_udp(ls, ip, port):
        clients: dict = {}

        def back(u, addr):
            u.settimeout(60)
            try:
                while True:
                    d = u.recv(65536)
                    ls.sendto(d, addr)
            except OSError:
                pass
            finally:
                clients.pop(addr, None)
                u.close()
        while True:
            try:
                d, addr = ls.recvfrom(65536)
            except OSError:
                time.sleep(0.05)
                continue
            u = clients.get(addr)
            if u is None:
                if len(clients) >= 256:
                    continue
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.connect((ip, port))
                clients[addr] = u
                threading.Thread(target=back, args=(u, addr), daemon=True).start()
            try:
                u.send(d)
            except OSError:
                pass

    threads = []
    for s in spec:
        typ = socket.SOCK_STREAM if s["proto"] == "tcp" else socket.SOCK_DGRAM
        ls = socket.socket(socket.AF_INET, typ, fileno=s["fd"])
        f = serve_tcp if s["proto"] == "tcp" else serve_udp
        threads.append(threading.Thread(target=f, args=(ls, s["ip"], s["port"]), daemon=True))
    for t in threads:
        t.start()
    while True:
        time.sleep(3600)


# ---------------------------------------------------------------------------------
# doctor
# ---------------------------------------------------------------------------------
def _read_sysctl(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def doctor_report(rootless: bool) -> list[tuple[str, bool, str]]:
    out: list[tuple[str, bool, str]] = []
    nftp = shutil.which(_NFT) or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)
    out.append(("network: nftables (egress allow-lists, published ports)", nftp is not None,
                nftp or "nft not found: install nftables"))
    try:
        import importlib.util
        ok = importlib.util.find_spec("pyroute2") is not None
    except Exception:
        ok = False
    out.append(("network: pyroute2 (private networks)", ok, "installed" if ok else "pip install pyroute2"))
    out.append(("network: private networks (bridge + veth)", not rootless,
                "root: available" if not rootless else "need root; rootless sandboxes can use pasta"))
    tun = _tun_problem()
    for tool, pkg in (("pasta", "passt"), ("slirp4netns", "slirp4netns")):
        p = shutil.which(tool)
        out.append((f"network: {tool} (user-mode networking)", p is not None and tun is None,
                    (p or f"not found: install the Debian package {pkg}") + (f"; {tun}" if p and tun else "")))
    fwd = _read_sysctl("/proc/sys/net/ipv4/ip_forward")
    out.append(("network: ip_forward (private networks reach beyond the host; -p from other hosts)",
                fwd == "1", f"net.ipv4.ip_forward = {fwd}" + ("" if fwd == "1" else
                                                                 " (sandboxes reach only the host and peers)")))
    brnf = _read_sysctl("/proc/sys/net/bridge/bridge-nf-call-iptables")
    if brnf is not None:
        out.append(("network: br_netfilter", True, f"bridge-nf-call-iptables = {brnf}"
                    + (" (a FORWARD drop policy of iptables also filters traffic between peers)"
                       if brnf == "1" else "")))
    return out
