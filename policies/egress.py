"""Egress by domain name, the pure part (docs/network.md, "Egress by domain name"): host names and
patterns normalised (IDNA, lower case, bounded), `network.hosts` / `--add-host` entries, which rule
allows a name, and which addresses count as private (server-side request forgery). No syscalls; the
proxy and resolver (sandbox/network/egress/) and the compiler use it alike.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Iterable, Optional

DEFAULT_PORTS = (80, 443)
# where the egress proxy and its resolver listen inside the sandbox's own network namespace (its
# loopback; the sockets are the proxy's, made in that namespace from the host side)
PROXY_ADDR = ("127.0.0.1", 3128)
DNS_ADDR = ("127.0.0.1", 53)
PROXY_ADDR6 = ("::1", 3128)  # the same on the IPv6 side (nft redirects IPv6 to ::1)
DNS_ADDR6 = ("::1", 53)
PROXY_URL = "http://127.0.0.1:3128"
MAX_RULES = 1024             # network.egress.allow entries
MAX_HOSTS = 1024             # network.hosts + --add-host entries
MAX_PORTS = 64               # ports of one rule
MAX_NAME = 253               # a DNS name, without the trailing dot

_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")

# loopback, private, link-local (cloud metadata: 169.254.169.254), unique-local; answers in these are
# refused unless the rule says allow_private (or the name comes from network.hosts, see below)
PRIVATE_NETS = tuple(ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "0.0.0.0/8",
    "::1/128", "fc00::/7", "fe80::/10", "::/128", "fec0::/10", "64:ff9b:1::/48"))
# IPv6 prefixes carrying an IPv4 address in their last 32 bits, judged by that address: IPv4-mapped
# (::ffff:0:0/96, what an AF_INET6 socket sends as IPv4) and NAT64's well-known prefix (RFC 6052: a
# NAT64 gateway forwards 64:ff9b::7f00:1 to 127.0.0.1 - its own, or its network's)
EMBEDDED_V4 = (ipaddress.ip_network("64:ff9b::/96"),)


def normalise_name(name, *, pattern: bool = False) -> str:
    """A DNS name (or with pattern=True a rule's host: NAME, "*.SUFFIX" or "*") -> IDNA ASCII, lower
    case, no trailing dot. ValueError (one line) when it is not one."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME + 1:
        raise ValueError(f"{name!r}: not a host name (1 to {MAX_NAME} characters)")
    n = name[:-1] if name.endswith(".") else name
    if pattern and n == "*":
        return "*"
    wild = pattern and n.startswith("*.")
    if wild:
        n = n[2:]
    if "*" in n:
        raise ValueError(f"{name!r}: a wildcard is only allowed as the whole first label (\"*.example.com\")")
    try:
        ipaddress.ip_address(n)
        raise ValueError(f"{name!r}: an address, not a host name (use `to:` for addresses)")
    except ValueError as e:
        if "an address" in str(e):
            raise
    try:
        labels = [lab.encode("idna").decode("ascii").lower() if not lab.isascii() else lab.lower()
                  for lab in n.split(".")]
    except UnicodeError:
        raise ValueError(f"{name!r}: not a valid internationalised host name") from None
    out = ".".join(labels)
    if len(out) > MAX_NAME or not all(_LABEL.match(x) for x in labels) or all(x.isdigit() for x in labels):
        raise ValueError(f"{name!r}: not a host name (labels of letters, digits, '-', at most 63 each)")
    return ("*." + out) if wild else out


def matches(pattern: str, name: str) -> bool:
    """Whether a rule's normalised host pattern allows the normalised name. "*.example.com" allows
    names below example.com (a.example.com, a.b.example.com), not example.com itself."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


def rule_for(rules: Iterable, name: str, port: Optional[int] = None):
    """The first host rule (policies.plan.EgressHostRule, plan order) allowing name (and port), or
    None."""
    for r in rules:
        if matches(r.host, name) and (port is None or port in r.ports):
            return r
    return None


def rule_text(r) -> str:
    """A host rule as the profile would write it (audit events, explain)."""
    extra = ", allow_private: true" if r.allow_private else ""
    return f"{{host: {r.host}, ports: [{', '.join(str(p) for p in r.ports)}]{extra}}}"


def is_private(addr) -> bool:
    try:
        a = ipaddress.ip_address(addr)
    except ValueError:
        return True
    if a.version == 6 and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    elif a.version == 6 and any(a in n for n in EMBEDDED_V4):
        a = ipaddress.IPv4Address(int(a) & 0xFFFFFFFF)
    return any(a in n for n in PRIVATE_NETS if n.version == a.version)


def parse_add_host(spec: str) -> tuple[str, str]:
    """Docker's `--add-host NAME:ADDR` (ADDR IPv4, IPv6, or [IPv6]; NAME=ADDR also taken) ->
    (normalised name, address). ValueError when malformed."""
    if not isinstance(spec, str) or len(spec) > 512:
        raise ValueError(f"--add-host {spec!r}: expected NAME:ADDRESS")
    sep = min((i for i in (spec.find(":"), spec.find("=")) if i > 0), default=-1)
    if sep < 0:
        raise ValueError(f"--add-host {spec!r}: expected NAME:ADDRESS")
    name, addr = spec[:sep], spec[sep + 1:]
    return normalise_name(name), address(addr, f"--add-host {spec!r}")


def address(addr, what: str) -> str:
    a = addr[1:-1] if isinstance(addr, str) and addr.startswith("[") and addr.endswith("]") else addr
    try:
        return str(ipaddress.ip_address(a))
    except (ValueError, TypeError):
        raise ValueError(f"{what}: {addr!r} is not an IP address") from None


def ports(values, what: str) -> tuple[int, ...]:
    if values is None:
        return DEFAULT_PORTS
    if not isinstance(values, (list, tuple)) or not values or len(values) > MAX_PORTS:
        raise ValueError(f"{what}: ports: 1 to {MAX_PORTS} port numbers")
    out = []
    for p in values:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 < p < 65536:
            raise ValueError(f"{what}: port {p!r} out of range (1-65535)")
        out.append(p)
    return tuple(dict.fromkeys(out))
