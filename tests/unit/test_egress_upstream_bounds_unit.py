"""sandbox/network/egress/upstream.py without a sandbox: the total bound of an upstream connect
against addresses that black-hole the SYN, and the give-up's one line. The black hole is real: a
loopback listener whose accept queue is full (backlog 0, one connection waiting), so the kernel
drops every further SYN (the client retransmits, nothing answers). Simulated: the time bounds are
made short for the test (module constants), so that it takes a second, not CONNECT_TIMEOUT. The
end-to-end case (a sandbox, the interception, the audit event): tests/system/test_egress_upstream_bounds.py."""
from __future__ import annotations

import asyncio
import socket

from sandbox.network.egress import upstream


def _black_hole():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    filler = socket.create_connection(srv.getsockname(), timeout=5)     # the queue is full now
    return srv, filler, srv.getsockname()[1]


def test_black_holes_are_bounded_in_time(monkeypatch):
    monkeypatch.setattr(upstream, "CONNECT_TIMEOUT", 0.6)
    srv, filler, port = _black_hole()
    addrs = ["127.0.0.1"] * 20
    try:
        up, addr, failed = asyncio.run(upstream.connect(addrs, port, 0.25))
    finally:
        filler.close()
        srv.close()
    assert up is None and addr is None
    assert 2 <= len(failed) < upstream.MAX_ATTEMPTS, failed
    assert [w for _, w in failed[:-1]] == ["timeout"] * (len(failed) - 1), failed
    assert failed[-1][1] == "no time left", failed
    line = upstream.gave_up(addrs, failed)
    assert line.startswith(f"gave up after {len(failed) - 1} of 20 addresses (at most 8 tried) "
                           "(at most 0.6 s in all): 127.0.0.1: timeout; "), line


def test_give_up_line():
    assert upstream.gave_up(["192.0.2.1"], [("192.0.2.1", "Connection refused")]) == \
        "gave up after 1 of 1 address: 192.0.2.1: Connection refused"
    assert upstream.gave_up([], []) == "gave up after 0 of 0 addresses"
