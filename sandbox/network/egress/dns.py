"""The sandbox's resolver: answers allowed names only (dnslib for the wire format, bounded).

Every DNS packet the sandbox sends (UDP or TCP port 53, to any address) is steered by its own nft
rules to this resolver's sockets on 127.0.0.1:53 in its network namespace. One question per
query; A and AAAA queries of allowed names get the IPv4 / IPv6 addresses `names.Names` gives (TTL
ANSWER_TTL; an allowed name with addresses of the other family only gets an empty answer, NODATA);
other types of allowed names get an empty answer (no TXT/MX channel); a name no rule allows gets
NXDOMAIN and an `egress.denied` event (protocol dns); an allowed name whose addresses are all
private (no allow_private) gets NXDOMAIN and the event too.
"""
from __future__ import annotations

import asyncio
import socket

from policies import egress as E

MAX_QUERY = 4096         # a query larger than this is dropped (UDP) / ends the connection (TCP)
ANSWER_TTL = 30
TCP_IDLE = 10.0
MAX_TCP = 64             # concurrent TCP DNS connections


async def answer(names, audit, data: bytes, udp: bool = False) -> bytes | None:
    """The reply to one query (None: drop it). udp: a reply over 512 bytes is sent truncated (TC
    set, no answers: the client asks again over TCP)."""
    out = await _answer(names, audit, data)
    if out is not None and udp and len(out) > 512:
        from dnslib import DNSRecord
        r = DNSRecord.parse(out)
        r.rr = []
        r.header.tc = 1
        out = r.pack()
    return out


async def _answer(names, audit, data: bytes) -> bytes | None:
    from dnslib import DNSRecord, QTYPE, RCODE, RR, A, AAAA, DNSError
    if len(data) > MAX_QUERY:
        return None
    try:
        q = DNSRecord.parse(data)
    except (DNSError, Exception):        # dnslib raises assorted errors on hostile input
        return None
    if q.header.qr or len(q.questions) != 1:
        r = q.reply()
        r.header.rcode = RCODE.FORMERR
        return r.pack()
    qn = str(q.q.qname).rstrip(".")
    r = q.reply()
    try:
        name = E.normalise_name(qn)
    except ValueError:
        name = None
    rule = names.rule(name) if name else None
    if rule is None:
        audit.denied(qn[:253], None, 53, "dns", None, "name not allowed (NXDOMAIN)")
        r.header.rcode = RCODE.NXDOMAIN
        return r.pack()
    if q.q.qtype in (QTYPE.A, QTYPE.AAAA, QTYPE.ANY):
        addrs, why = await names.resolve(name, rule)
        if not addrs:
            audit.denied(name, None, 53, "dns", rule, why or "no address")
            r.header.rcode = RCODE.NXDOMAIN
            return r.pack()
        v6 = q.q.qtype == QTYPE.AAAA
        if q.q.qtype != QTYPE.ANY:
            addrs = tuple(a for a in addrs if (":" in a) == v6)      # none: NODATA (the other family has some)
        names.remember(name, addrs)
        for a in addrs:
            r.add_answer(RR(q.q.qname, QTYPE.AAAA if ":" in a else QTYPE.A,
                            rdata=AAAA(a) if ":" in a else A(a), ttl=ANSWER_TTL))
    return r.pack()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, names, audit):
        self.names, self.audit = names, audit
        self.transport = None
        self.pending = 0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if self.pending >= 256:          # bounded work: a flood is dropped
            return
        self.pending += 1

        async def one():
            try:
                out = await answer(self.names, self.audit, data, udp=True)
                if out is not None and self.transport is not None:
                    self.transport.sendto(out, addr)
            finally:
                self.pending -= 1
        asyncio.ensure_future(one())


async def serve(names, audit, udp: socket.socket, tcp: socket.socket) -> None:
    """Serve until cancelled."""
    loop = asyncio.get_running_loop()
    udp.setblocking(False)
    tcp.setblocking(False)
    transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(names, audit), sock=udp)
    sem = asyncio.Semaphore(MAX_TCP)

    async def conn(c: socket.socket):
        try:
            while True:
                n = await asyncio.wait_for(_recv_exact(loop, c, 2), TCP_IDLE)
                ln = int.from_bytes(n, "big")
                if not 0 < ln <= MAX_QUERY:
                    return
                out = await answer(names, audit, await asyncio.wait_for(_recv_exact(loop, c, ln), TCP_IDLE))
                if out is None:
                    return
                await loop.sock_sendall(c, len(out).to_bytes(2, "big") + out)
        except (OSError, asyncio.TimeoutError, EOFError):
            pass
        finally:
            c.close()
            sem.release()

    try:
        while True:
            await sem.acquire()
            c, _ = await loop.sock_accept(tcp)
            c.setblocking(False)
            asyncio.ensure_future(conn(c))
    finally:
        transport.close()


async def _recv_exact(loop, c, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        b = await loop.sock_recv(c, n - len(buf))
        if not b:
            raise EOFError
        buf += b
    return buf
