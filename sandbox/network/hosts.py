"""A private network's /etc/hosts: one file per sandbox under `networks/<net>/hosts/`, bind-mounted
read-only on the sandbox's /etc/hosts and rewritten in place (same inode: the bind mount sees it)
as peers join and leave. (resolv.conf is the host's, bound by sandbox/rootfs.py.)"""
from __future__ import annotations

import hashlib
import ipaddress
import os
from pathlib import Path

from .common import NetworkError


def ipv6_subnet(network: str) -> ipaddress.IPv6Network:
    """A private network's IPv6 subnet: a unique local /64 (RFC 4193: fd00::/8, a 40-bit global id
    - here from the network's name - and subnet id 0)."""
    gid = hashlib.sha256(("net6:" + network).encode()).digest()[:5]
    return ipaddress.IPv6Network((b"\xfd" + gid + bytes(10), 64))


def ipv6_of(nd: dict, ipv4: str | None) -> str | None:
    """The IPv6 address that goes with an IPv4 address of network `nd` (its subnet's prefix and the
    IPv4 address as interface id: one allocation gives both); None for an IPv4-only network."""
    if not nd.get("subnet6") or not ipv4:
        return None
    net = ipaddress.IPv6Network(nd["subnet6"])
    return str(net.network_address + int(ipaddress.IPv4Address(ipv4)))


def write_inplace(path: Path, content: str) -> None:
    """Rewrite a file's content keeping its inode (a read-only bind mount of it sees the change)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.fchmod(fd, 0o644)               # readable by the sandbox's mapped root, whatever the umask
        data = content.encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def content(nd: dict, eps: list[dict], own_sid: str | None) -> str:
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
            if ipv6_of(nd, e["address"]):
                lines.append(f"{ipv6_of(nd, e['address'])}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


def rewrite_all(nd: dict, eps: list[dict]) -> None:
    """(under the network lock) rewrite the hosts file of every endpoint `eps` of network `nd`."""
    for e in eps:
        if e.get("hosts"):
            try:
                write_inplace(Path(e["hosts"]), content(nd, eps, e["sandbox_id"]))
            except OSError:
                pass


def check_reachable(hosts_dir: Path) -> None:
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
