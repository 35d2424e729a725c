"""The egress proxy's connections: decide, connect upstream from the host, splice.

Every TCP connection the sandbox makes (other than to its loopback and its `to:` rules) is
redirected by its own nft rules to the proxy's listener on 127.0.0.1:3128 (IPv6: [::1]:3128) in its namespace; the
accepted socket still knows where it was going (SO_ORIGINAL_DST, the sandbox namespace's conntrack).
A connection made to the listener itself is an explicit proxy request (HTTP_PROXY/HTTPS_PROXY):
`CONNECT host:port` or an absolute-form `GET http://host/...`.

The decision, in order (each refusal is an `egress.denied` event, each success `egress.allowed`):
1. the name: TLS -> the ClientHello's SNI (tls.py); plain HTTP -> Host (http.py); explicit ->
   the request target (and for CONNECT to a TLS server, an SNI that differs from it is refused);
   no name (another protocol, no SNI, no Host) -> refused;
2. a host rule allowing the name and the port (first in plan order);
3. the address: transparent -> the original destination must be one the name resolves to for
   this sandbox (names.Names), and only it is connected to; explicit -> those addresses in
   order (IPv4 first, then IPv6), the next when one fails (refused, unreachable, no IPv6 in the
   kernel) or does not answer within ATTEMPT_TIMEOUT, at most MAX_ATTEMPTS and CONNECT_TIMEOUT in
   all (upstream.py, shared with the interception): one decision, one event (the address that
   worked; `reason` names the ones that failed, or the give-up);
4. the secrets part's interception when the plan asks for it (`intercept`, imported lazily; see
   `Ctx`); otherwise connect upstream from the host's namespace, send the bytes read so far and
   hand both sockets to the splice relay (relay.py: os.splice through a pipe each way, in worker
   threads: no copy through Python; half-close, idle limit, byte counters); when the relayed
   connection ends, `egress.closed` with its bytes each way and its duration (relay.py's `on_end`).
"""
from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from policies import egress as E

from . import http, relay as _relay, tls
from .upstream import ATTEMPT_TIMEOUT, CONNECT_TIMEOUT, MAX_ATTEMPTS, connect as connect_upstream  # noqa: F401
from .upstream import gave_up, why as _why

SO_ORIGINAL_DST = 80
FIRST_TIMEOUT = 10.0         # the client's first bytes (ClientHello / request head)
MAX_CONNECTIONS = 256        # concurrent connections per sandbox; more wait in the kernel's backlog


@dataclass
class Ctx:
    """What the proxy passes to the secrets part's interception hook:

        await sandbox.network.egress.intercept.handle(reader, writer, first_bytes, host=NAME,
                                                      port=PORT, addrs=[ADDR, ...], ctx=ctx)

    reader/writer: asyncio streams over the sandbox's connection; first_bytes: what the proxy has
    read of it already (the ClientHello, or the request head); addrs: the addresses the name
    resolves to for this sandbox (the original destination first when transparent)."""
    sandbox_id: str
    audit: Any                   # .allowed(name, addr, port, protocol, rule, reason) / .denied(...)
    egress: Any                  # the plan's network section (policies.plan.Network)
    names: Any = None            # names.Names: the sandbox's resolver state
    secrets: Any = None          # egress.secrets.SecretSet of the launch (values in this process only)
    ca: Any = None               # egress.ca.SandboxCA of the launch (leaf certificates per host)
    extra: dict = field(default_factory=dict)

    @property
    def sandbox(self) -> str:
        return self.sandbox_id

    def wants_interception(self, name: str) -> bool:
        """The plan has `http` rules or secrets for this host (intercept.wants, the one copy;
        docs/network.md "Secrets"); the compiler refuses those whose host no `host:` rule allows.
        No CA: the launch set up no interception (imported only then: h11)."""
        if self.ca is None:
            return False
        from . import intercept
        return intercept.wants(self.egress, name)


def original_dst(s: socket.socket) -> tuple[str, int] | None:
    """Where a redirected connection was going (SO_ORIGINAL_DST; IPv6: IP6T_SO_ORIGINAL_DST, the
    same number at SOL_IPV6, a sockaddr_in6)."""
    v6 = s.family == socket.AF_INET6
    try:
        raw = s.getsockopt(socket.IPPROTO_IPV6 if v6 else socket.SOL_IP, SO_ORIGINAL_DST, 28 if v6 else 16)
    except OSError:
        return None
    port, = struct.unpack_from("!H", raw, 2)
    return (socket.inet_ntop(socket.AF_INET6, raw[8:24]) if v6 else socket.inet_ntoa(raw[4:8])), port


class Proxy:
    def __init__(self, ctx: Ctx, listen_addr: tuple[str, int]):
        self.ctx = ctx
        self.listen_addr = listen_addr
        self.sem = asyncio.Semaphore(MAX_CONNECTIONS)
        self.relay = _relay.Relay(2 * MAX_CONNECTIONS)

    async def serve(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        lsock.setblocking(False)
        while True:
            await self.sem.acquire()
            try:
                c, _ = await loop.sock_accept(lsock)
            except OSError:
                self.sem.release()
                await asyncio.sleep(0.05)
                continue
            c.setblocking(False)
            asyncio.ensure_future(self._one(c))

    def close_all(self) -> None:
        self.relay.close_all()

    async def _one(self, c: socket.socket) -> None:
        handed = False
        try:
            handed = await self._decide(c)
        except Exception as e:      # noqa: BLE001 - one connection never takes the proxy down
            self.ctx.audit.denied(None, None, None, "tcp", None, f"proxy error: {type(e).__name__}")
        finally:
            if not handed:
                c.close()
                self.sem.release()

    async def _read_first(self, c, buf: bytes, parse) -> tuple[Any, bytes]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FIRST_TIMEOUT
        while True:
            try:
                return parse(buf), buf
            except (tls.NeedMore, http.NeedMore):
                pass
            left = deadline - loop.time()
            if left <= 0 or len(buf) > tls.MAX_HELLO + http.MAX_HEAD:
                raise asyncio.TimeoutError
            more = await asyncio.wait_for(loop.sock_recv(c, 16384), left)
            if not more:
                raise EOFError
            buf += more

    async def _decide(self, c: socket.socket) -> bool:
        loop = asyncio.get_running_loop()
        audit = self.ctx.audit
        dst = original_dst(c)
        explicit = dst is None or dst in (self.listen_addr, E.PROXY_ADDR6)
        addr, port = (None, None) if explicit else dst
        try:
            first = await asyncio.wait_for(loop.sock_recv(c, 16384), FIRST_TIMEOUT)
        except (asyncio.TimeoutError, OSError):
            audit.denied(None, addr, port, "tcp", None, "no data from the client")
            return False
        if not first:
            return False
        reply = b""
        try:
            if explicit:
                head, buf = await self._read_first(c, first, http.parse)
                if head.host is None:
                    raise http.BadRequest("no host")
                proto, raw_name, port = ("connect" if head.connect else "http"), head.host, head.port or 80
                if head.connect:
                    buf = buf[head.length:]
                    reply = b"HTTP/1.1 200 Connection established\r\n\r\n"
                else:
                    buf = http.to_origin_form(buf, head)
            elif tls.looks_like_tls(first):
                proto = "tls"
                raw_name, buf = await self._read_first(c, first, tls.server_name)
            elif http.looks_like_http(first):
                proto = "http"
                head, buf = await self._read_first(c, first, http.parse)
                raw_name = head.host
            else:
                audit.denied(None, addr, port, "tcp", None, "neither TLS nor HTTP: no name to check")
                return False
        except (tls.NotTLS, http.BadRequest) as e:
            audit.denied(None, addr, port, "tcp", None, f"refused: {e}")
            return False
        except (asyncio.TimeoutError, EOFError, OSError):
            audit.denied(None, addr, port, "tcp", None, "incomplete ClientHello or request head")
            return False
        if not raw_name:
            audit.denied(None, addr, port, proto, None, "no server name (SNI) or Host header")
            return await self._refuse(c, explicit)
        try:
            name = E.normalise_name(raw_name)
        except ValueError:
            audit.denied(str(raw_name)[:253], addr, port, proto, None, "not a host name")
            return await self._refuse(c, explicit)
        rule = self.ctx.names.rule(name, port)
        if rule is None:
            audit.denied(name, addr, port, proto, None, "name or port not allowed")
            return await self._refuse(c, explicit)
        if explicit:
            addrs, why = await self.ctx.names.resolve(name, rule)
            if not addrs:
                audit.denied(name, None, port, proto, rule, why or "no address")
                return await self._refuse(c, explicit)
            addr = addrs[0]
        else:
            ok, addrs = await self.ctx.names.address_ok(name, rule, addr)
            if not ok:
                audit.denied(name, addr, port, proto, rule, "address is not one the name resolves to")
                return False
            addrs = (addr,) + tuple(a for a in addrs if a != addr)
        if reply:                     # CONNECT: the tunnel's first bytes decide like a transparent TLS one
            await loop.sock_sendall(c, reply)
            if not buf:
                try:
                    buf = await asyncio.wait_for(loop.sock_recv(c, 16384), FIRST_TIMEOUT)
                except (asyncio.TimeoutError, OSError):
                    buf = b""
            if buf and tls.looks_like_tls(buf):
                try:
                    sni, buf = await self._read_first(c, buf, tls.server_name)
                except (tls.NotTLS, asyncio.TimeoutError, EOFError, OSError):
                    audit.denied(name, addr, port, proto, rule, "bad ClientHello in the tunnel")
                    return False
                if sni is not None and sni.rstrip(".").lower() != name:
                    audit.denied(name, addr, port, proto, rule, f"SNI {sni[:253]!r} in a tunnel to {name}")
                    return False
        if self.ctx.wants_interception(name):
            audit.allowed(name, addr, port, proto, rule, "intercepted: http rules or secrets")
            return await self._intercept(c, buf, name, port, list(addrs))
        up, got, failed = await connect_upstream(addrs if explicit else (addr,), port,
                                                 ATTEMPT_TIMEOUT if explicit else CONNECT_TIMEOUT)
        addr = got or addr            # the address that took the connection, else the first tried
        why = "; ".join(f"{a}: {e}" for a, e in failed) if up is not None else \
            gave_up(addrs if explicit else (addr,), failed)
        if up is not None and buf:
            try:
                await asyncio.wait_for(loop.sock_sendall(up, buf), CONNECT_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as e:
                up.close()
                up, why = None, f"{addr}: {_why(e)}"
        if up is None:
            audit.denied(name, addr, port, proto, rule, f"upstream: {why or 'no address'}")
            if explicit and not reply:
                await self._refuse(c, explicit, b"502 Bad Gateway")
            return False
        audit.allowed(name, addr, port, proto, rule, f"after {why}" if why else "")
        self._splice(c, up, len(buf), (name, addr, port, proto, rule))
        return True

    async def _refuse(self, c, explicit: bool, status: bytes = b"403 Forbidden") -> bool:
        if explicit:
            try:
                await asyncio.get_running_loop().sock_sendall(
                    c, b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
        return False

    async def _intercept(self, c, first: bytes, name: str, port: int, addrs: list) -> bool:
        from . import intercept
        reader, writer = await asyncio.open_connection(sock=c)
        try:
            await intercept.handle(reader, writer, first, host=name, port=port, addrs=addrs, ctx=self.ctx)
        finally:
            writer.close()
            self.sem.release()
        return True

    def _splice(self, a: socket.socket, b: socket.socket, first: int = 0, what: tuple = ()) -> None:
        """Hand both sockets to the splice relay (relay.py: kernel to kernel, both ways, until both
        sides end); when it is over: `egress.closed` (what: the decision's name, address, port,
        protocol, rule) and the connection's slot is given back."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()

        def over(conn) -> None:
            if what:                      # a pump thread: Audit serialises its callers
                self.ctx.audit.closed(*what, conn.up, conn.down, time.monotonic() - started)
            try:
                loop.call_soon_threadsafe(self.sem.release)
            except RuntimeError:          # the loop is closed: the sandbox has ended
                pass

        self.relay.start(a, b, first, over)
