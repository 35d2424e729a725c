"""The egress proxy's upstream side without a sandbox: the connect for explicit requests
(proxy.connect_upstream: the name's addresses in order, the next one when one fails, bounded in
attempts; on loopback TCP) and the `egress.closed` event of a relayed connection's end (its fields,
the schema, the per-sandbox rate limit). The end-to-end cases are system tests: a name whose IPv4
address refuses and whose IPv6 address serves, through the proxy variables
(tests/system/test_egress_domains.py); the bytes of a known transfer in `egress.closed`
(tests/system/test_egress_relay.py)."""
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


def test_closed_events_are_rate_limited_and_follow_the_schema():
    """Audit.closed (service.py) past the rate limit: the first ones in full with their bytes and
    duration, the rest coalesced into records with `count` (no bytes); all validate."""
    import audit
    from audit.events import Recorder
    from sandbox.network.egress import service
    from policies.plan import EgressHostRule
    rule = EgressHostRule("web.test", (443,))
    rec = Recorder("abc123", profile="p")
    out = []
    a = service.Audit(lambda t, **f: out.append(rec.build(t, **f)))
    for i in range(300):
        a.closed("web.test", "2001:db8::1", 443, "tls", rule, 100 + i, 2000 + i, 0.25)
    a.flush(final=True)
    full = [e for e in out if e["type"] == "egress.closed" and "count" not in e]
    coalesced = [e for e in out if e["type"] == "egress.closed" and e.get("count")]
    assert full and coalesced and len(full) < 300
    assert len(full) + sum(e["count"] for e in coalesced) == 300           # counts add up
    assert full[0]["egress"] == {"name": "web.test", "address": "2001:db8::1", "port": 443, "protocol": "tls",
                                 "rule": {"index": 0, "text": "{host: web.test, ports: [443]}"},
                                 "bytes_up": 100, "bytes_down": 2000}
    assert full[0]["duration"] == 0.25 and full[0]["severity"] == "info"
    for e in out:
        e["seq"] = 1
        audit.validate(e)


def test_publish_help_shows_the_ipv6_form():
    from click.testing import CliRunner

    from sandbox.cli import build
    r = CliRunner().invoke(build(), ["run", "--help"])
    assert r.exit_code == 0 and "[IPv6]:]HOSTPORT:PORT" in r.output and "[::1]:8080:80" in r.output, r.output
