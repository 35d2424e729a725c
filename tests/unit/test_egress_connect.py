"""The egress proxy's upstream connect for explicit requests (proxy.connect_upstream): the name's
addresses in order, the next one when one fails, bounded in attempts; on loopback TCP (no sandbox).
The end-to-end case (a name whose IPv4 address refuses, its IPv6 address serves, through the proxy
variables in a sandbox) is in tests/system/test_egress_domains.py."""
from __future__ import annotations

import asyncio
import socket

from sandbox.network.egress import proxy as P


def _closed_port(fam: int, host: str) -> int:
    """A port nothing listens on (bound, then closed: refused right after)."""
    s = socket.socket(fam)
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_refused_ipv4_then_ipv6_serves():
    port = _closed_port(socket.AF_INET, "127.0.0.1")          # 127.0.0.1:port refuses
    srv = socket.socket(socket.AF_INET6)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    srv.bind(("::1", port))                                   # [::1]:port serves
    srv.listen(1)
    try:
        up, addr, failed = asyncio.run(P.connect_upstream(["127.0.0.1", "::1"], port, 2.0))
        try:
            assert addr == "::1" and up is not None and up.family == socket.AF_INET6
            assert failed == [("127.0.0.1", "Connection refused")]
        finally:
            up.close()
    finally:
        srv.close()


def test_all_refused_and_bounded_in_attempts():
    port = _closed_port(socket.AF_INET, "127.0.0.1")
    addrs = [f"127.0.0.{i}" for i in range(1, 21)]
    up, addr, failed = asyncio.run(P.connect_upstream(addrs, port, 2.0))
    assert up is None and addr is None
    assert [a for a, _ in failed] == addrs[:P.MAX_ATTEMPTS]
    assert {why for _, why in failed} == {"Connection refused"}
