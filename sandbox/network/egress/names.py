"""What a sandbox's names resolve to, for its resolver and its proxy alike (one `Names` per sandbox).

* A name no host rule allows resolves to nothing (the resolver answers NXDOMAIN, the proxy refuses).
* A name of network.hosts / --add-host answers its given address - when a rule allows the name;
  that address is taken even when private (the profile's author named it: allow_private is implied
  for it, for nothing else).
* Other allowed names are resolved with the host's resolver (getaddrinfo in a thread, bounded by
  RESOLVE_TIMEOUT); answers in loopback, private, link-local or unique-local ranges
  (policies.egress.PRIVATE_NETS) are dropped unless the rule says allow_private (server-side
  request forgery: a public name pointed at 169.254.169.254 or 127.0.0.1); IPv4-mapped and NAT64
  (64:ff9b::/96) IPv6 addresses are judged by the IPv4 address they carry.
* Both families: A and AAAA answers, the proxy's checks alike (a name of network.hosts may have one
  address of each family: two --add-host entries).
* Every address given to the sandbox is remembered per name (bounded): the proxy lets a connection
  through only to an address the allowed name resolves to, now or in an earlier answer.
"""
from __future__ import annotations

import asyncio
import socket
import time
from collections import OrderedDict

from policies import egress as E

RESOLVE_TIMEOUT = 5.0
CACHE_TTL = 30.0
MAX_NAMES = 4096             # names remembered per sandbox
MAX_ADDRS = 64               # addresses remembered per name


class Names:
    def __init__(self, rules, hosts):
        self.rules = tuple(rules)                       # policies.plan.EgressHostRule
        self.hosts: dict[str, tuple[str, ...]] = {}     # a name: its IPv4 and/or IPv6 address
        for h in hosts:
            self.hosts[h.name] = self.hosts.get(h.name, ()) + (h.address,)
        self._cache: OrderedDict[str, tuple[float, tuple[str, ...]]] = OrderedDict()
        self._given: OrderedDict[str, set[str]] = OrderedDict()

    def rule(self, name: str, port: int | None = None):
        return E.rule_for(self.rules, name, port)

    async def resolve(self, name: str, rule, family: int | None = None) -> tuple[tuple[str, ...], str | None]:
        """(addresses the sandbox may use for name under rule, IPv4 ones first, why there are none).
        family: socket.AF_INET or AF_INET6 for one family's only (the resolver's A / AAAA)."""
        if name in self.hosts:
            addrs = tuple(sorted(self.hosts[name], key=lambda a: ":" in a))
        else:
            addrs = await self._host_resolver(name)
        if family is not None:
            addrs = tuple(a for a in addrs if (":" in a) == (family == socket.AF_INET6))
        if not addrs:
            fam = {socket.AF_INET: "IPv4 ", socket.AF_INET6: "IPv6 "}.get(family, "")
            return (), (f"no {fam}address for it in network.hosts" if name in self.hosts
                        else f"the host's resolver has no {fam}address for it")
        if name in self.hosts:
            return addrs, None
        ok = tuple(a for a in addrs if rule.allow_private or not E.is_private(a))
        if not ok:
            return (), "resolves only to private addresses (allow_private is not set)"
        return ok, None

    async def _host_resolver(self, name: str) -> tuple[str, ...]:
        """Both families' addresses of name from the host's resolver (cached CACHE_TTL), IPv4 first."""
        now = time.monotonic()
        hit = self._cache.get(name)
        if hit is not None and hit[0] > now:
            return hit[1]
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(name, None, family=socket.AF_UNSPEC,
                                                            type=socket.SOCK_STREAM), RESOLVE_TIMEOUT)
            found = [i[4][0].partition("%")[0] for i in infos if i[0] in (socket.AF_INET, socket.AF_INET6)]
            addrs = tuple(sorted(dict.fromkeys(found), key=lambda a: ":" in a))[:MAX_ADDRS]
        except (OSError, asyncio.TimeoutError, UnicodeError):
            addrs = ()
        self._cache[name] = (now + CACHE_TTL, addrs)
        self._cache.move_to_end(name)
        while len(self._cache) > MAX_NAMES:
            self._cache.popitem(last=False)
        return addrs

    def remember(self, name: str, addrs) -> None:
        s = self._given.setdefault(name, set())
        self._given.move_to_end(name)
        for a in addrs:
            if len(s) < MAX_ADDRS:
                s.add(a)
        while len(self._given) > MAX_NAMES:
            self._given.popitem(last=False)

    async def address_ok(self, name: str, rule, addr: str) -> tuple[bool, tuple[str, ...]]:
        """Whether addr is one the allowed name resolves to (now, or in an answer the sandbox got)."""
        now, _ = await self.resolve(name, rule)
        given = self._given.get(name, set())
        if addr in now:
            return True, now
        if addr in given and (rule.allow_private or name in self.hosts or not E.is_private(addr)):
            return True, now
        return False, now
