"""What a sandbox's names resolve to, for its resolver and its proxy alike (one `Names` per sandbox).

* A name no host rule allows resolves to nothing (the resolver answers NXDOMAIN, the proxy refuses).
* A name of network.hosts / --add-host answers its given address - when a rule allows the name;
  that address is taken even when private (the profile's author named it: allow_private is implied
  for it, for nothing else).
* Other allowed names are resolved with the host's resolver (getaddrinfo in a thread, bounded by
  RESOLVE_TIMEOUT); answers in loopback, private, link-local or unique-local ranges
  (policies.egress.PRIVATE_NETS) are dropped unless the rule says allow_private (server-side
  request forgery: a public name pointed at 169.254.169.254 or 127.0.0.1).
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
        self.hosts = {h.name: h.address for h in hosts}
        self._cache: OrderedDict[str, tuple[float, tuple[str, ...]]] = OrderedDict()
        self._given: OrderedDict[str, set[str]] = OrderedDict()

    def rule(self, name: str, port: int | None = None):
        return E.rule_for(self.rules, name, port)

    async def resolve(self, name: str, rule) -> tuple[tuple[str, ...], str | None]:
        """(IPv4 addresses the sandbox may use for name under rule, why there are none)."""
        if name in self.hosts:
            a = self.hosts[name]
            return ((a,) if ":" not in a else ()), (None if ":" not in a else "IPv6 address (IPv4 only)")
        now = time.monotonic()
        hit = self._cache.get(name)
        if hit is not None and hit[0] > now:
            addrs = hit[1]
        else:
            loop = asyncio.get_running_loop()
            try:
                infos = await asyncio.wait_for(loop.getaddrinfo(name, None, family=socket.AF_INET,
                                                                type=socket.SOCK_STREAM), RESOLVE_TIMEOUT)
                addrs = tuple(dict.fromkeys(i[4][0] for i in infos))[:MAX_ADDRS]
            except (OSError, asyncio.TimeoutError, UnicodeError):
                addrs = ()
            self._cache[name] = (now + CACHE_TTL, addrs)
            self._cache.move_to_end(name)
            while len(self._cache) > MAX_NAMES:
                self._cache.popitem(last=False)
        if not addrs:
            return (), "the host's resolver has no address for it"
        ok = tuple(a for a in addrs if rule.allow_private or not E.is_private(a))
        if not ok:
            return (), "resolves only to private addresses (allow_private is not set)"
        return ok, None

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
