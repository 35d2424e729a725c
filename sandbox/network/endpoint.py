"""The network of one sandbox - what the launcher calls: `prepare` (before clone: validate the
plan's network part, reserve an address and a name) returns a `NetHandle`; `attach(pid)` connects
PID 1's network namespace before the program runs; `release()` undoes everything after it exited.

Modes (`network.mode` in the plan, `--network` on the command line):

* ``none``   own network namespace with only ``lo`` up (PID 1 does it: `loopback.py`).
* ``host``   the host's network namespace (nothing to do here; linted as a finding).
* ``pasta`` / ``slirp4netns``  own namespace, outbound traffic and published ports
  through a user-mode network stack (`usermode.py`; works rootless).
* ``NAME``   a private network made with ``pysandbox network create NAME`` (`bridge.py`; root): a
  veth pair on its bridge, an address, a port allow-list, an ``/etc/hosts`` listing its peers by
  ``--name`` (`hosts.py`).

Published ports (``-p [HOSTIP:]HOSTPORT:PORT[/tcp|udp]``) on private networks: nftables DNAT in the
host namespace (`nft.dnat_rules`) for traffic to the host's non-loopback addresses, plus the
userspace proxy (`proxy.py`) for 127.0.0.1. With pasta/slirp4netns the user-mode stack publishes
the ports itself.

Egress allow-list (``egress_default: deny``): `nft.egress_ruleset` inside the sandbox's own network
namespace, installed by `attach` before the sandboxed program runs; `release` reads the count of
denied packets (`egress_denied`) for the audit record.
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from ..procid import start_time as proc_starttime
from . import bridge, hosts, nft, proxy, usermode
from .common import NAME_RE, NET_NAME_RE, NetworkError, as_net
from .store import endpoint_path, endpoints, load_network, locked, safe_id, state_dir, write_json


# --------------------------------------------------------------------------- validation

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
        if hip.startswith("[") and hip.endswith("]"):          # -p [::1]:8080:80
            hip = hip[1:-1]
        try:
            hip = str(ipaddress.ip_address(hip))
        except ValueError:
            raise NetworkError(f"network: published port: bad host address {hip!r}") from None
        out.append({"host_ip": hip, "host_port": int(p.host_port), "port": int(p.port), "proto": proto})
    seen = set()
    for p in out:
        k = (p["host_port"], p["proto"], ":" in p["host_ip"])
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
        if as_net(r.to) is None and not NAME_RE.match(r.to or ""):
            raise NetworkError(f"network: egress rule: {r.to!r} is neither a CIDR nor a sandbox name")
        out.append({"to": r.to, "ports": [int(p) for p in r.ports], "proto": proto})
    return out


def _check_port_free(p: dict, host_ip: str | None = None) -> None:
    host_ip = host_ip or p["host_ip"]
    fam = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
    typ = socket.SOCK_STREAM if p["proto"] == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(fam, typ)
    try:
        if typ == socket.SOCK_STREAM:      # a listener still conflicts; TIME_WAIT leftovers do not
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host_ip, p["host_port"]))
    except OSError as e:
        raise NetworkError(f"network: cannot publish {host_ip}:{p['host_port']}/{p['proto']}: "
                           f"{e.strerror}") from None
    finally:
        s.close()


# --------------------------------------------------------------------------- prepare

def prepare(net, sandbox_id: str, name: str | None, *, rootless: bool,
            hostname: str | None = None, on_event=None) -> "NetHandle | None":
    """See _prepare; on_event(type, **fields): the sandbox's audit (egress.allowed/denied events of
    the egress proxy, egress/service.py)."""
    if getattr(net, "egress_hosts", ()):
        try:
            import dnslib  # noqa: F401
            import h11  # noqa: F401
        except ImportError:
            raise NetworkError("network: egress by host name needs the Python packages dnslib and h11 "
                               "(pip install 'pysandbox[net]')") from None
    h = _prepare(net, sandbox_id, name, rootless=rootless, hostname=hostname)
    if h is not None and getattr(net, "egress_hosts", ()):
        h.egress_plan, h.on_event = net, on_event
    return h


def _prepare(net, sandbox_id: str, name: str | None, *, rootless: bool,
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
    names = [r["to"] for r in egress if as_net(r["to"]) is None]
    if mode == "none":
        if ports:
            raise NetworkError("network none: published ports need --network pasta or a private network")
        if names:
            raise NetworkError(f"network none: egress rule to sandbox {names[0]!r}: sandbox names resolve "
                               "only on a private network")
        if not deny:
            return None
        nft.nft_path()
        return NetHandle(mode, sandbox_id, name, rootless, ports, egress, deny)
    if mode in ("pasta", "slirp4netns"):
        tool = shutil.which(mode)
        if tool is None:
            pkg = "passt" if mode == "pasta" else "slirp4netns"
            raise NetworkError(f"network {mode}: {mode} is not installed (Debian package {pkg})")
        if names:
            raise NetworkError(f"network {mode}: egress rule to sandbox {names[0]!r}: sandbox names resolve "
                               "only on a private network")
        v6 = next((p for p in ports if ":" in p["host_ip"]), None)
        if v6 is not None and mode == "slirp4netns":
            raise NetworkError(f"network slirp4netns: published port [{v6['host_ip']}]:{v6['host_port']}: "
                               "slirp4netns publishes IPv4 only (use pasta for IPv6)")
        tun = usermode.tun_problem()
        if tun:
            raise NetworkError(f"network {mode}: {tun}")
        if deny:
            nft.nft_path()
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
    nft.nft_path()
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        raise NetworkError("network: private networks need the Python package pyroute2 "
                           "(pip install 'pysandbox[net]')") from None
    v6 = next((p for p in ports if ":" in p["host_ip"]), None)
    if v6 is not None and not nd.get("subnet6"):
        raise NetworkError(f"network {mode}: published port [{v6['host_ip']}]:{v6['host_port']}: the network "
                           f"is IPv4 only (IPv6 host addresses need a network made with --ipv6)")
    for p in ports:
        _check_port_free(p)
        if nd.get("subnet6") and p["host_ip"] == "0.0.0.0":    # dual stack: published on IPv6 too
            p["also6"] = True
            _check_port_free(p, "::")
    hosts.check_reachable(root / mode / "hosts")
    bridge.reclaim_stale(rootless)
    h = NetHandle(mode, sandbox_id, name, rootless, ports, egress, deny)
    with locked(root):
        nd = load_network(mode, rootless)
        if nd is None:
            raise NetworkError(f"network {mode!r} not found")
        eps = endpoints(root, mode)
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
        h.veth = bridge.veth_name(sandbox_id)
        h._hosts_file = str(root / mode / "hosts" / safe_id(sandbox_id))
        (root / mode / "endpoints").mkdir(parents=True, exist_ok=True)
        (root / mode / "hosts").mkdir(parents=True, exist_ok=True)
        h._write_endpoint(state="reserved")
        # the hosts file exists from the start so the launcher can bind-mount it
        hosts.write_inplace(Path(h._hosts_file), hosts.content(nd, eps + [h._endpoint("reserved")], sandbox_id))
        # the sandbox's PID 1 (its mapped root, no capabilities on the host) opens this path
        # itself: every directory above it is traversable (0711), the file is 0644
        h.hosts_path = h._hosts_file
    return h


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
        self.egress_plan = None                         # the plan's network when it has host rules
        self.on_event = None
        self.intercept = None                           # (SecretSet, SandboxCA): launcher.attach_network
        self.egress_service = None                      # egress/service.py: the proxy and resolver
        self._supervisor = os.getpid()
        self._supervisor_start = proc_starttime(self._supervisor)

    # -- private network bookkeeping --------------------------------------------------
    def _endpoint(self, state: str) -> dict:
        return {"sandbox_id": self.sandbox_id, "name": self.name, "hostname": self.hostname,
                "address": self.address, "veth": self.veth,
                "ports": self.ports, "egress_names": sorted({r["to"] for r in self.egress
                                                             if as_net(r["to"]) is None}),
                "pid": self.pid, "supervisor_pid": self._supervisor,
                "supervisor_start": self._supervisor_start,
                "helper_pid": self._helper_pid(), "helper_start": proc_starttime(self._helper_pid() or -1),
                "rules": [list(r) for r in self._rules], "antispoof": self._antispoof,
                "hosts": self._hosts_file, "state": state}

    def _helper_pid(self) -> int | None:
        return self._helper.pid if self._helper else self._proxy_pid

    def _ep_path(self) -> Path:
        return endpoint_path(state_dir(self.rootless), self.mode, self.sandbox_id)

    def _write_endpoint(self, state: str) -> None:
        write_json(self._ep_path(), self._endpoint(state))

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
            for e in endpoints(root, self.mode):
                if e.get("name") and e["sandbox_id"] != self.sandbox_id:
                    peers.setdefault(e["name"], []).append(e["address"])
                    a6 = bridge.ipv6_of(self.netdef, e["address"])
                    if a6:
                        peers[e["name"]].append(a6)
        steer = None
        if self.egress_plan is not None:            # egress by domain name: the proxy first, then the rules
            from policies.egress import DNS_ADDR, PROXY_ADDR
            from .egress import service
            self.egress_service = service.start(self.egress_plan, self.sandbox_id, self._nsfd,
                                                self._usernsfd, self.on_event, self.intercept)
            steer = (PROXY_ADDR[1], DNS_ADDR[1])
        nft.nft(nft.egress_ruleset("deny", self.egress, peers, steer=steer), nsfd=self._nsfd,
                userns_fd=self._usernsfd)

    def _attach_bridge(self, pid: int) -> None:
        from pyroute2 import IPRoute      # lazy: optional (the `net` extra), ~100 ms of imports
        nd = self.netdef
        root = state_dir(self.rootless)
        subnet = ipaddress.ip_network(nd["subnet"])
        with locked(root):
            with IPRoute() as ipr:
                cmds = bridge.ensure_bridge(ipr, nd)
                bi = ipr.link_lookup(ifname=nd["bridge"])[0]
                mac = bridge.port_mac(self.address)
                hi = bridge.add_port(ipr, self.veth, self._nsfd, mac)
                # one nft transaction: the port's allow-list (before the port is up) and the DNAT of
                # published ports
                cmds += nft.antispoof_rules(self.sandbox_id, self.veth, self.address, mac,
                                            bridge.ipv6_of(nd, self.address))
                cmds += nft.dnat_rules(self.sandbox_id, self.address, self.ports,
                                       bridge.ipv6_of(nd, self.address))
                out = nft.nft(cmds, echo=True)
                self._rules = [(r["family"], r["chain"], r["handle"]) for o in out.get("nftables", [])
                               for r in [o.get("add", {}).get("rule")]
                               if r and r["family"] in ("ip", "ip6") and r.get("comment") == f"sbx:{self.sandbox_id}"]
                self._antispoof = True
                ipr.link("set", index=hi, master=bi, state="up")
            bridge.configure_inside(pid, self.address, subnet.prefixlen, nd["gateway"], nd)
            if self.ports:
                self._proxy_pid = proxy.start(self.ports, self.address)
            self._write_endpoint(state="attached")
            bridge.refresh_peers(root, nd, self.sandbox_id, self.name, self.address, joined=True)

    def _attach_usermode(self, pid: int) -> None:
        self._helper = usermode.start(self.mode, self.tool, self.ports, pid, self._nsfd, self._usernsfd)

    def egress_denied(self) -> int | None:
        """Packets the egress allow-list dropped so far (None when there is no allow-list)."""
        if not self.egress_deny:
            return None
        if self._nsfd is None:
            return self.denied
        n = nft.egress_denied(self._nsfd, self._usernsfd)
        return n if n is not None else self.denied

    def release(self) -> None:
        """Undo everything (idempotent): veth, DNAT rules, proxy/pasta, address, hosts file."""
        if self._released:
            return
        self._released = True
        try:
            self.denied = self.egress_denied()
        except Exception:
            pass
        if self.egress_service is not None:
            try:
                self.egress_service.stop()
            finally:
                self.egress_service = None
        if self._helper is not None:
            usermode.stop(self._helper)
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
                self.spoof_dropped = nft.antispoof_dropped(self.veth)
            except Exception:
                pass
        if self.netdef is not None:
            root = state_dir(self.rootless)
            with locked(root):
                bridge.cleanup_endpoint(root, self.netdef, self._endpoint("released"))
                bridge.refresh_peers(root, self.netdef, self.sandbox_id, self.name, self.address, joined=False)
        for attr in ("_nsfd", "_usernsfd"):
            fd = getattr(self, attr)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, attr, None)
