"""nftables, through `nft -j` (JSON): the rulesets of sandbox networking.

* host side, `table ip pysandbox`: masquerade and isolation of each private network's bridge
  (`network_rules`), DNAT of published ports (`dnat_rules`);
* host side, `table netdev pysandbox`: each sandbox port's allow-list (`antispoof_rules`);
* sandbox side, `table inet pysandbox` in the sandbox's own network namespace: the egress
  allow-list (`egress_ruleset`), installed from the host before the program runs; the program has
  no CAP_NET_ADMIN over that namespace, so it cannot change the rules. Denied packets are counted
  (named counter ``denied``, `egress_denied`).
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess

from .common import STEP_TIMEOUT, NetworkError, as_net, short

HOST_TABLE = "pysandbox"                                  # table ip pysandbox (host side)
EGRESS_TABLE = "pysandbox"                                # table inet pysandbox (sandbox side)
_NFT = "nft"


def _caller_mapped(userns_fd: int) -> bool:
    """Whether this process's uid is mapped in the user namespace `userns_fd`: a sandbox mapping the
    caller's own id (root inside is the caller) - not one with subordinate ids only, where the
    caller is nobody inside and nft, exec'd with the caller's credentials, would keep no capability
    (nsenter then becomes root of the namespace instead: setgroups is allowed there). Asked in a
    forked child that joins the namespace."""
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            from .. import _sys
            _sys.setns(userns_fd, _sys.CLONE_NEWUSER)
            code = 0 if os.getuid() != 65534 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) != 1


def nsenter_prefix(pid: int | None, nsfd: int | None, userns_fd: int | None) -> list[str]:
    if pid is None and nsfd is None:
        return []
    nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
    keep = ["--preserve-credentials"] if userns_fd is not None and _caller_mapped(userns_fd) else []
    if nsfd is not None:
        me = os.getpid()
        args = [nsenter]
        if userns_fd is not None:
            args += [f"--user=/proc/{me}/fd/{userns_fd}", *keep]
        return args + [f"--net=/proc/{me}/fd/{nsfd}", "--"]
    args = [nsenter, "-t", str(pid)]
    if userns_fd is not None:
        args += ["-U", *keep]
    return args + ["-n", "--"]


def find_nft() -> str | None:
    """The nft binary, None when nftables is not installed."""
    return shutil.which(_NFT) or next((c for c in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(c)), None)


def nft_path() -> str:
    p = find_nft()
    if p is None:
        raise NetworkError("network: nft (nftables) is not installed; install the Debian package nftables")
    return p


def nft(cmds: list | None = None, *, args: list[str] | None = None, pid: int | None = None,
        nsfd: int | None = None, userns_fd: int | None = None, check: bool = True, echo: bool = False) -> dict:
    """Run nft with a JSON batch (cmds) or JSON-output arguments (args, e.g. ["list", "table", ...]).
    pid/nsfd: run inside that process's / fd's network namespace. echo: return the added objects
    with their handles."""
    pre = nsenter_prefix(pid, nsfd, userns_fd)
    argv = pre + [nft_path(), "-j"] + (["-e"] if echo else [])
    inp = json.dumps({"nftables": cmds}) if cmds is not None else None
    if args is None and userns_fd is not None and "--preserve-credentials" not in pre and len(inp) < 100000:
        # as root of a namespace with subordinate ids only: the caller's pipe (stdin) is not its to
        # reopen (/dev/stdin: EACCES), so the batch goes as the argument (`nft -j JSON`)
        argv.append(inp)
        inp = None
    else:
        argv += (args if args is not None else ["-f", "-"])
    fds = tuple(f for f in (nsfd, userns_fd) if f is not None)
    try:
        p = subprocess.run(argv, input=inp, capture_output=True, text=True, timeout=STEP_TIMEOUT,
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


def m(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


def payload(proto, field):
    return {"payload": {"protocol": proto, "field": field}}


def meta(key):
    return {"meta": {"key": key}}


def prefix(net: ipaddress.IPv4Network | ipaddress.IPv6Network):
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def host_base() -> list[dict]:
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


def host_base6() -> list[dict]:
    """Idempotent: `table ip6 pysandbox` and its base chains (dual-stack networks: masquerade and
    isolation of their IPv6 subnets, network_rules6)."""
    T = {"family": "ip6", "table": HOST_TABLE}
    return [{"add": {"table": {"family": "ip6", "name": HOST_TABLE}}},
            {"add": {"chain": {**T, "name": "prerouting", "type": "nat", "hook": "prerouting", "prio": -100,
                               "policy": "accept"}}},          # published ports over IPv6 (dnat_rules)
            {"add": {"chain": {**T, "name": "output", "type": "nat", "hook": "output", "prio": -100,
                               "policy": "accept"}}},
            {"add": {"chain": {**T, "name": "postrouting", "type": "nat", "hook": "postrouting", "prio": 100,
                               "policy": "accept"}}},
            {"add": {"chain": {**T, "name": "forward", "type": "filter", "hook": "forward", "prio": 0,
                               "policy": "accept"}}}]


def host_rules(family: str = "ip") -> list[dict]:
    """Rules of a host table (each with chain, handle, comment); [] when there is no table."""
    out = nft(args=["list", "table", family, HOST_TABLE], check=False)
    return [o["rule"] for o in out.get("nftables", []) if "rule" in o]


def delete_host_rules(pred, family: str = "ip") -> None:
    dels = [{"delete": {"rule": {"family": family, "table": HOST_TABLE, "chain": r["chain"],
                                 "handle": r["handle"]}}}
            for r in host_rules(family) if pred(r.get("comment") or "")]
    if dels:
        nft(dels, check=False)


def antispoof_rules(sid: str, veth: str, addr: str, mac: str, addr6: str | None = None) -> list[dict]:
    """The allow-list of one sandbox's port: a base chain of its own, `table netdev pysandbox`,
    hook `ingress` on the host side of its veth (every frame the sandbox's eth0 sends arrives
    there, before the bridge sees it), policy drop. Only two kinds of frame pass:

    * IPv4 (outer ethertype 0x0800, version 4) from the port's own MAC and its own address;
    * ARP (Ethernet/IPv4, request or reply) from its own MAC whose sender is its own MAC and address;
    * on a dual-stack network (addr6), IPv6 (ethertype 0x86dd, version 6) from its own MAC and its
      own IPv6 address - but no router advertisement or redirect (the host's bridge must not take
      routes from a sandbox), and no neighbour advertisement for another target than its own
      address (IPv6's ARP spoofing). Its neighbour solicitations come from its own address too
      (no duplicate address detection, no link-local address: bridge.configure_inside).

    Everything else is counted and dropped: other source addresses or MACs, 802.1Q/802.1ad tagged
    frames (`ether type` sees the outer tag also when the kernel has moved it into the skb's
    metadata: nft puts it back for the match), IPv6 on an IPv4-only network, raw ethertypes,
    LLC/STP and link-local frames (which the bridge's own prerouting hook never sees). DHCP is not
    needed: addresses are static."""
    T = {"family": "netdev", "table": HOST_TABLE}
    c = f"sbx:{sid}"
    own_mac = m(payload("ether", "saddr"), mac)
    return [
        # a named counter (not one in the rule): it outlives the chain's hook when the kernel takes the
        # device away with the sandbox's namespace, so release can still read it
        {"add": {"counter": {**T, "name": veth}}},
        {"add": {"chain": {**T, "name": veth, "type": "filter", "hook": "ingress", "dev": veth, "prio": -500,
                           "policy": "drop"}}},
        {"add": {"rule": {**T, "chain": veth, "comment": c, "expr": [
            own_mac, m(payload("ether", "type"), "ip"), m(payload("ip", "version"), 4),
            m(payload("ip", "saddr"), addr), {"accept": None}]}}},
        {"add": {"rule": {**T, "chain": veth, "comment": c, "expr": [
            own_mac, m(payload("ether", "type"), "arp"), m(payload("arp", "htype"), 1),
            m(payload("arp", "ptype"), 0x0800), m(payload("arp", "hlen"), 6), m(payload("arp", "plen"), 4),
            m(payload("arp", "operation"), {"set": ["request", "reply"]}),
            m(payload("arp", "saddr ether"), mac), m(payload("arp", "saddr ip"), addr), {"accept": None}]}}},
        *(_antispoof6(T, c, veth, own_mac, addr6) if addr6 else []),
        {"add": {"rule": {**T, "chain": veth, "comment": c, "expr": [{"counter": veth}, {"drop": None}]}}},
    ]


def _antispoof6(T: dict, c: str, veth: str, own_mac: dict, addr6: str) -> list[dict]:
    v6 = [own_mac, m(payload("ether", "type"), "ip6"), m(payload("ip6", "version"), 6)]
    icmp = v6 + [m(meta("l4proto"), "ipv6-icmp")]
    drop = [{"counter": veth}, {"drop": None}]
    out = [{"add": {"rule": {**T, "chain": veth, "comment": c, "expr": icmp + [
        m(payload("icmpv6", "type"), {"set": ["nd-router-advert", "nd-redirect"]})] + drop}}}]
    # a neighbour advertisement's target (bytes 8-23 of the ICMPv6 message) must be its own address:
    # compared as four 32-bit words (nft's JSON takes no 128-bit integer), any differing one drops
    own = int(ipaddress.IPv6Address(addr6))
    for k in range(4):
        word = (own >> (96 - 32 * k)) & 0xFFFFFFFF
        out.append({"add": {"rule": {**T, "chain": veth, "comment": c, "expr": icmp + [
            m(payload("icmpv6", "type"), "nd-neighbor-advert"),
            m({"payload": {"base": "th", "offset": 64 + 32 * k, "len": 32}}, word, "!=")] + drop}}})
    out.append({"add": {"rule": {**T, "chain": veth, "comment": c, "expr": v6 + [
        m(payload("ip6", "saddr"), addr6), {"accept": None}]}}})
    return out


def _counter(family: str, table: str, name: str, **where) -> int | None:
    """Packets a named counter has counted so far (None: no such counter)."""
    out = nft(args=["list", "counter", family, table, name], check=False, **where)
    for o in out.get("nftables", []):
        if "counter" in o:
            return int(o["counter"].get("packets", 0))
    return None


def antispoof_dropped(veth: str) -> int | None:
    """Frames the port's allow-list has dropped so far (None: no such counter)."""
    return _counter("netdev", HOST_TABLE, veth)


def antispoof_delete(veth: str) -> list[dict]:
    T = {"family": "netdev", "table": HOST_TABLE, "name": veth}
    return [{"delete": {"chain": T}}, {"delete": {"counter": T}}]


def network_rules(netdef: dict, family: str = "ip") -> list[dict]:
    """Masquerade outbound traffic of the subnet; isolate the bridge from other pysandbox bridges
    and from direct (non-published) inbound traffic. (family "ip6": the same for subnet6.)"""
    br, subnet = netdef["bridge"], ipaddress.ip_network(netdef["subnet" if family == "ip" else "subnet6"])
    T = {"family": family, "table": HOST_TABLE}
    c = f"net:{netdef['name']}"
    iif, oif = meta("iifname"), meta("oifname")
    return [
        {"add": {"rule": {**T, "chain": "postrouting", "comment": c, "expr": [
            m(payload(family, "saddr"), prefix(subnet)), m(oif, br, "!="), {"masquerade": None}]}}},
        {"add": {"rule": {**T, "chain": "forward", "comment": c, "expr": [
            m(iif, br), m(oif, "psb-*"), m(oif, br, "!="), {"counter": None}, {"drop": None}]}}},
        {"add": {"rule": {**T, "chain": "forward", "comment": c, "expr": [
            m(oif, br), m(iif, br, "!="), m({"ct": {"key": "state"}}, ["established", "related"], "in"),
            {"accept": None}]}}},
        {"add": {"rule": {**T, "chain": "forward", "comment": c, "expr": [
            m(oif, br), m(iif, br, "!="), m({"ct": {"key": "status"}}, "dnat", "in"), {"accept": None}]}}},
        {"add": {"rule": {**T, "chain": "forward", "comment": c, "expr": [
            m(oif, br), m(iif, br, "!="), {"counter": None}, {"drop": None}]}}},
    ]


def network_rules6(netdef: dict) -> list[dict]:
    """network_rules for a dual-stack network's IPv6 subnet, in `table ip6 pysandbox` (the
    masquerade is used when the host forwards IPv6: net.ipv6.conf.all.forwarding, the
    administrator's choice)."""
    return network_rules(netdef, family="ip6")


def dnat_rules(sid: str, ip: str, ports: list[dict], ip6: str | None = None) -> list[dict]:
    """DNAT of published ports to the sandbox's address, `prerouting` (from elsewhere) and `output`
    (from the host itself). ip6: the sandbox's IPv6 address on a dual-stack network - an IPv6 host
    address goes to it (`table ip6 pysandbox`), and so does 0.0.0.0's IPv6 side (Docker's
    dual-stack publishing); loopback host addresses are the userspace proxy's (proxy.py)."""
    rules = []
    for p in ports:
        hip = ipaddress.ip_address(p["host_ip"])
        sides = [(hip, ip)]
        if hip.version == 4 and hip.is_unspecified and p.get("also6") and ip6:
            sides.append((ipaddress.ip_address("::"), ip6))
        for h, to in sides:
            if h.is_loopback or (h.version == 6 and not ip6):
                continue                                  # served by the userspace proxy
            fam = "ip" if h.version == 4 else "ip6"
            to = to if h.version == 4 else ip6
            T = {"family": fam, "table": HOST_TABLE}
            dport = m(payload(p["proto"], "dport"), p["host_port"])
            target = {"dnat": {"family": fam, "addr": to, "port": p["port"]}} if fam == "ip6" else \
                {"dnat": {"addr": to, "port": p["port"]}}
            if h.is_unspecified:
                local = m({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
                lo = {"prefix": {"addr": "127.0.0.0", "len": 8}} if fam == "ip" else "::1"
                pre = [local, dport, target]
                out = [local, m(payload(fam, "daddr"), lo, "!="), dport, target]
            else:
                d = m(payload(fam, "daddr"), str(h))
                pre = out = [d, dport, target]
            for chain, expr in (("prerouting", pre), ("output", out)):
                rules.append({"add": {"rule": {**T, "chain": chain, "comment": f"sbx:{sid}", "expr": expr}}})
    return rules


def egress_ruleset(default: str, rules: list[dict], peer_ips: dict[str, list[str]],
                   steer: tuple[int, int] | None = None) -> list[dict]:
    """The nft batch installed inside the sandbox's netns (`table inet pysandbox`).
    rules: [{"to": cidr-or-name, "ports": [...], "proto": "tcp"|"udp"|"icmp"|"any"}].
    steer: (proxy port, resolver port) - egress by domain name: `steer_rules`."""
    T = {"family": "inet", "table": EGRESS_TABLE}
    cmds: list[dict] = [
        {"add": {"table": {"family": "inet", "name": EGRESS_TABLE}}},
        {"add": {"counter": {**T, "name": "denied"}}},
    ]
    names = sorted({r["to"] for r in rules if as_net(r["to"]) is None})
    for n in names:                    # a peer's IPv4 and (dual-stack networks) IPv6 addresses
        for sname, typ, v6 in ((set_name(n), "ipv4_addr", False), (set_name6(n), "ipv6_addr", True)):
            cmds.append({"add": {"set": {**T, "name": sname, "type": typ}}})
            elems = [a for a in peer_ips.get(n) or () if (":" in a) == v6]
            if elems:
                cmds.append({"add": {"element": {**T, "name": sname, "elem": elems}}})
    policy = "drop" if default == "deny" else "accept"
    cmds.append({"add": {"chain": {**T, "name": "output", "type": "filter", "hook": "output", "prio": 0,
                                   "policy": policy}}})

    def rule(expr):
        cmds.append({"add": {"rule": {**T, "chain": "output", "expr": expr}}})

    rule([m(meta("oifname"), "lo"), {"accept": None}])
    rule([m({"ct": {"key": "state"}}, ["established", "related"], "in"), {"accept": None}])
    if steer is not None:
        # redirected packets: their destination is now 127.0.0.1, but the filter hook still sees the
        # output device chosen before the redirect (not lo)
        rule([m(meta("nfproto"), "ipv4"), m(payload("ip", "daddr"), {"prefix": {"addr": "127.0.0.0", "len": 8}}),
              {"accept": None}])
        rule([m(meta("nfproto"), "ipv6"), m(payload("ip6", "daddr"), "::1"), {"accept": None}])
        cmds += steer_rules(rules, steer)
    for r in rules:
        net = as_net(r["to"])
        proto = r.get("proto") or "tcp"
        ports = list(r.get("ports") or ())
        for dst in _dsts(r):
            v6 = dst["match"]["left"]["payload"]["protocol"] == "ip6"
            expr = [dst]
            if proto in ("tcp", "udp"):
                if ports:
                    expr.append(m(payload(proto, "dport"), ports[0] if len(ports) == 1 else {"set": ports}))
                else:
                    expr.append(m(meta("l4proto"), proto))
            elif proto == "icmp":
                expr.append(m(meta("l4proto"), "ipv6-icmp" if v6 else "icmp"))
            expr.append({"accept": None})
            rule(expr)
    # IPv6 neighbour discovery (dual-stack private networks): IPv6's ARP, which an inet output
    # chain sees (ARP it does not); without it no IPv6 address on the link is reachable
    rule([m(meta("l4proto"), "ipv6-icmp"),
          m(payload("icmpv6", "type"), {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}), {"accept": None}])
    # reject (not drop): a denied connect() fails at once with EHOSTUNREACH instead of hanging
    rule([{"counter": "denied"}, {"reject": {"type": "icmpx", "expr": "admin-prohibited"}}]
         if default == "deny" else [{"accept": None}])
    return cmds


def _dsts(r: dict) -> list[dict]:
    """The destination matches of a `to:` rule: its CIDR, or a peer name's two sets (IPv4, IPv6)."""
    net = as_net(r["to"])
    if net is None:
        return [m(payload("ip", "daddr"), "@" + set_name(r["to"])),
                m(payload("ip6", "daddr"), "@" + set_name6(r["to"]))]
    return [m(payload("ip" if net.version == 4 else "ip6", "daddr"),
              str(net.network_address) if net.prefixlen == net.max_prefixlen else prefix(net))]


def steer_rules(rules: list[dict], steer: tuple[int, int]) -> list[dict]:
    """Egress by domain name (sandbox/network/egress/): a `nat` chain on the sandbox's output
    redirects every TCP connection and every DNS packet (UDP/TCP port 53, any destination) to the
    egress proxy's and resolver's sockets on 127.0.0.1 in the same namespace, except loopback
    traffic and what the `to:` rules allow directly. The filter chain then sees loopback traffic
    (accepted); a redirected connection keeps its original destination in the namespace's
    conntrack (SO_ORIGINAL_DST). IPv6 alike: TCP and DNS to the proxy's and resolver's sockets on ::1
    (a redirect in the output hook rewrites to the loopback address of the packet's family)."""
    proxy_port, dns_port = steer
    T = {"family": "inet", "table": EGRESS_TABLE}
    cmds: list[dict] = [{"add": {"chain": {**T, "name": "steer", "type": "nat", "hook": "output",
                                           "prio": -100, "policy": "accept"}}}]

    def rule(expr):
        cmds.append({"add": {"rule": {**T, "chain": "steer", "expr": expr}}})

    v4 = m(meta("nfproto"), "ipv4")
    v6 = m(meta("nfproto"), "ipv6")
    rule([v4, m(payload("ip", "daddr"), {"prefix": {"addr": "127.0.0.0", "len": 8}}), {"accept": None}])
    rule([v6, m(payload("ip6", "daddr"), "::1"), {"accept": None}])
    for r in rules:                                    # address rules go straight out
        proto = r.get("proto") or "tcp"
        if proto not in ("tcp", "udp", "any"):
            continue
        for dst in _dsts(r):
            expr = [dst]
            if proto in ("tcp", "udp") and r.get("ports"):
                ports = list(r["ports"])
                expr.append(m(payload(proto, "dport"), ports[0] if len(ports) == 1 else {"set": ports}))
            elif proto in ("tcp", "udp"):
                expr.append(m(meta("l4proto"), proto))
            rule(expr + [{"accept": None}])
    for fam in (v4, v6):
        for proto in ("udp", "tcp"):
            rule([fam, m(payload(proto, "dport"), 53), {"redirect": {"port": dns_port}}])
        rule([fam, m(meta("l4proto"), "tcp"), {"redirect": {"port": proxy_port}}])
    return cmds


def set_name(name: str) -> str:
    return "peer_" + re.sub(r"[^A-Za-z0-9_]", "_", name)[:40] + "_" + short(name, 6)


def set_name6(name: str) -> str:
    """The set of a peer name's IPv6 addresses (dual-stack networks; empty on IPv4-only ones)."""
    return set_name(name) + "_6"


def egress_denied(nsfd: int, userns_fd: int | None) -> int | None:
    """Packets the egress allow-list of the sandbox's namespace `nsfd` denied (None: no counter)."""
    return _counter("inet", EGRESS_TABLE, "denied", nsfd=nsfd, userns_fd=userns_fd)
