"""TLS interception of the egress proxy, for hosts with `egress.http` rules or secrets
(docs/network.md, "Secrets").

The egress proxy (proxy.py: the connection steering and SNI/Host/CONNECT matching, the host
rule, the address check) calls `handle()` in its loop for a connection of the sandbox it accepted
and allowed, when `wants(plan.network, host)` says this host is intercepted (proxy.Ctx.
wants_interception); every other host is spliced untouched and never comes here.

    await handle(reader, writer, first_bytes, host=..., port=..., addrs=[...], ctx=ctx)

ctx: `.egress` (the plan's network: `.http`, `.secrets`), `.secrets` (secrets.SecretSet, values
loaded), `.ca` (ca.SandboxCA), `.audit(event_type, fields)`, `.sandbox`; optional `.upstream_ca`
(a CA file trusted for upstream servers besides the system's; also $PYSANDBOX_EGRESS_UPSTREAM_CA).

What happens: TLS (first byte 0x16) is terminated with a leaf of the sandbox's CA for `host`
(ssl.MemoryBIO: the ClientHello the proxy already read is fed in first, which loop.start_tls cannot
take); each HTTP/1.1 request (h11; head at most MAX_HEAD bytes) is checked — the Host header names
`host`; no CONNECT, Upgrade or unnormalised path; a placeholder of a secret that is not for `host`
anywhere in the target, a header or the body -> refused, `egress.secret_exfiltration`; the http
rules of `host` if any (method, path glob) — then the secret's header gets the value for the
secret's hosts (TLS only: never onto plaintext), and the request goes upstream over TLS with
certificate verification (system trust), the response comes back; keep-alive on both sides.
Every request is audited: `egress.http.allowed` / `egress.http.denied` (method, path, rule or
reason; secret names only, never a value or a placeholder).
"""
from __future__ import annotations

import asyncio
import fnmatch
import os
import re
import ssl

import h11

from . import upstream
from .secrets import host_matches

MAX_HEAD = 64 * 1024            # bytes of a request's or response's head (h11's incomplete event bound)
MAX_REQUESTS = 10000            # requests on one connection
CHUNK = 64 * 1024
IDLE_TIMEOUT = 300.0            # seconds waiting for the sandbox's next bytes / the upstream's
HANDSHAKE_TIMEOUT = 10.0        # the upstream's TLS handshake (its TCP connect: upstream.CONNECT_TIMEOUT)
LINGER_TIMEOUT, LINGER_BYTES = 2.0, 1 << 20   # reading the rest of a refused request before closing
MAX_SHOWN_PATH = 512            # characters of a path in an audit event
UPSTREAM_CA_ENV = "PYSANDBOX_EGRESS_UPSTREAM_CA"
_UNNORMAL = re.compile(rb"(^|/)\.\.?(/|$)|%2e|%2f|%5c|\\", re.I)


def wants(network, host: str) -> bool:
    """True when connections to `host` are intercepted: an http rule or a secret names it."""
    return any(host_matches(r.host, host) for r in getattr(network, "http", ())) or \
        any(host_matches(h, host) for s in getattr(network, "secrets", ()) for h in s.hosts)


class Refused(Exception):
    """A request the policy refuses: (reason, rule)."""


# --- streams: the sandbox's side and the upstream's, plain or TLS through memory BIOs --------------

class _Stream:
    def __init__(self, reader, writer, pending: bytes = b""):
        self.reader, self.writer, self.pending = reader, writer, pending

    async def _recv(self) -> bytes:
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        return await asyncio.wait_for(self.reader.read(CHUNK), IDLE_TIMEOUT)

    async def read(self) -> bytes:
        return await self._recv()

    async def write(self, data: bytes) -> None:
        if data:
            self.writer.write(data)
            await self.writer.drain()

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass


class _TlsStream(_Stream):
    """TLS over a stream pair through ssl.MemoryBIO (server side for the sandbox, client side upstream)."""

    def __init__(self, reader, writer, sslctx, *, server_side: bool, server_hostname=None, pending=b""):
        super().__init__(reader, writer, pending)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = sslctx.wrap_bio(self.inc, self.out, server_side=server_side, server_hostname=server_hostname)

    async def _flush(self) -> None:
        data = self.out.read()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def _op(self, fn, *args):
        while True:
            try:
                result = fn(*args)
            except ssl.SSLWantReadError:
                await self._flush()
                data = await self._recv()
                if data:
                    self.inc.write(data)
                else:
                    self.inc.write_eof()
                continue
            await self._flush()
            return result

    async def handshake(self) -> None:
        await self._op(self.obj.do_handshake)

    async def read(self) -> bytes:
        try:
            return await self._op(self.obj.read, CHUNK)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""

    async def write(self, data: bytes) -> None:
        if data:
            await self._op(self.obj.write, data)

    def close(self) -> None:
        try:
            self.obj.unwrap()
        except Exception:
            pass
        try:
            self.writer.write(self.out.read())
        except Exception:
            pass
        super().close()


def upstream_context(extra_ca=None) -> ssl.SSLContext:
    """Verification against the system's trust (+ `extra_ca`, a test's CA): hostname and chain."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    if extra_ca:
        ctx.load_verify_locations(cafile=extra_ca)
    return ctx


# --- one intercepted connection ----------------------------------------------------------------

async def handle(reader, writer, first_bytes: bytes, *, host: str, port: int, addrs, ctx) -> None:
    """Serve one connection of the sandbox to `host`:`port` (see the module docstring). Returns when
    the connection is over; never raises for what the sandbox or the upstream sends."""
    session = _Session(host, port, list(addrs), ctx, tls=first_bytes[:1] == b"\x16")
    try:
        if session.tls:
            down = _TlsStream(reader, writer, ctx.ca.server_context(session.host), server_side=True,
                              pending=first_bytes)
            session.down = down
            await down.handshake()
        else:
            session.down = _Stream(reader, writer, first_bytes)
        await session.serve()
    except (OSError, ssl.SSLError, asyncio.TimeoutError, h11.ProtocolError, EOFError):
        pass                          # the sandbox's or the upstream's connection failed: closed
    except Exception as e:            # never a traceback from the proxy: audited, closed
        session.audit("egress.http.denied", {"method": None, "path": None, "rule": None,
                                             "reason": f"interception failed: {type(e).__name__}"})
    finally:
        session.close()


class _Session:
    def __init__(self, host: str, port: int, addrs: list, ctx, tls: bool):
        self.host, self.port, self.addrs, self.ctx, self.tls = host.lower().rstrip("."), port, addrs, ctx, tls
        self.secrets = getattr(ctx, "secrets", None)
        self.rules = [(i, r) for i, r in enumerate(getattr(ctx.egress, "http", ()))
                      if host_matches(r.host, self.host)]
        self.down = None
        self.up = self.up_conn = None
        # the placeholders that must not reach this host: those of secrets for other hosts
        self.foreign = [m for m in (self.secrets.minted if self.secrets else ()) if not m.for_host(self.host)]
        self.own = [m for m in (self.secrets.minted if self.secrets else ()) if m.for_host(self.host)]

    def close(self) -> None:
        for s in (self.up, self.down):
            if s is not None:
                s.close()

    def audit(self, event: str, fields: dict) -> None:
        """One interception event in the audit schema's shape (audit/schema/event.schema.json):
        `egress` {name, address, port, protocol, reason} as the proxy's own events, and `http`
        {method, path, rule, secrets | secret, where} for the request; names only, never a value."""
        http = dict(fields)
        reason = http.pop("reason", None)
        eg = {"name": self.host, "address": self.addrs[0] if self.addrs else None, "port": self.port,
              "protocol": "tls" if self.tls else "http"}
        if reason:
            eg["reason"] = reason
        what = event.split(".", 1)[1].replace("http.", "").replace("_", " ")
        msg = f"{what} {http.get('method') or ''} {self.host}:{self.port}{http.get('path') or ''}"
        try:
            self.ctx.audit(event, {"egress": eg, "http": http, "via": "supervisor",
                                   "message": msg + (f": {reason}" if reason else "")})
        except Exception:
            pass

    async def _next(self, conn, stream):
        while True:
            ev = conn.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            conn.receive_data(await stream.read())

    async def serve(self) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        for _ in range(MAX_REQUESTS):
            try:
                ev = await self._next(conn, self.down)
            except h11.RemoteProtocolError as e:       # malformed, or a head over MAX_HEAD
                self.audit("egress.http.denied", {"method": None, "path": None, "rule": None,
                                                  "reason": f"malformed request: {str(e)[:120]}"})
                await self.status(conn, e.error_status_hint, "malformed request")
                return
            if not isinstance(ev, h11.Request):
                return                                  # closed
            method, shown = ev.method.decode("ascii", "replace"), self.shown(ev.target)
            try:
                headers, rule, used = self.decide(ev)
            except Refused as e:
                reason, rule = e.args
                self.audit("egress.http.denied", {"method": method, "path": shown, "rule": rule, "reason": reason})
                await self.refuse(conn, reason)
                return
            self.audit("egress.http.allowed", {"method": method, "path": shown, "rule": rule,
                                               **({"secrets": used} if used else {})})
            if not await self.forward(conn, h11.Request(method=ev.method, target=ev.target, headers=headers),
                                      method, shown):
                return
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            else:
                return

    def shown(self, target: bytes) -> str:
        """The request's target for an audit event: bounded, a placeholder's random part masked."""
        for m in (self.secrets.minted if self.secrets else ()):
            for t in (m.token.encode(), m.token.upper().encode()):
                target = target.replace(t, b"<" + m.name.encode() + b">")
        return target[:MAX_SHOWN_PATH].decode("ascii", "replace")

    def decide(self, req) -> tuple:
        """(headers to send upstream, the rule, secret names used) or Refused(reason, rule)."""
        target = req.target
        if req.method == b"CONNECT" or not target.startswith(b"/"):
            m = re.match(rb"https?://([^/?#]*)(.*)", target, re.I)
            if req.method == b"CONNECT" or m is None:
                raise Refused("request target form (CONNECT, asterisk or authority) is not forwarded", None)
            if m.group(1).decode("ascii", "replace").lower().rsplit(":", 1)[0] != self.host:
                raise Refused("the request's absolute URL names another host", None)
            target = m.group(2) or b"/"
        hosts = [v for k, v in req.headers if k == b"host"]
        if len(hosts) != 1 or _host_of(hosts[0]) != self.host:
            raise Refused("the Host header does not name the connection's host", None)
        if any(k == b"upgrade" for k, _ in req.headers):
            raise Refused("protocol upgrades are not forwarded by the interception", None)
        # a placeholder for another host anywhere in the head: an exfiltration attempt
        head = target + b"\n" + b"\n".join(k + b": " + v for k, v in req.headers)
        self.exfiltration(head, "head")
        rule = None
        path = target.split(b"?", 1)[0].split(b"#", 1)[0]
        if self.rules:
            if _UNNORMAL.search(path):
                raise Refused("the path is not normalised (dot segments or encoded separators)", None)
            p = path.decode("utf-8", "replace")
            method = req.method.decode("ascii", "replace").upper()
            for i, r in self.rules:
                if (not r.methods or method in r.methods) and \
                        (not r.paths or any(fnmatch.fnmatchcase(p, g) for g in r.paths)):
                    rule = f"network.egress.http[{i}]"
                    break
            else:
                raise Refused("no http rule of the host allows this method and path",
                              f"network.egress.http[{self.rules[0][0]}]")
        headers, used = [], []
        for k, v in req.headers:
            for m in self.own:
                if k == m.secret.header.lower().encode() and m.token.encode() in v:
                    if m.value is None:
                        raise Refused(f"secret {m.name} is not loaded (the sandbox is ending)", rule)
                    if not self.tls:
                        raise Refused(f"secret {m.name} would cross plaintext HTTP", rule)
                    v = m.header_value(v)
                    used.append(m.name)
            headers.append((k, v))
        return headers, rule or (f"network.secrets.{self.own[0].name}" if self.own else None), used

    def exfiltration(self, data: bytes, where: str) -> None:
        for m in self.foreign:
            if m.token.encode() in data or m.token.upper().encode() in data:
                self.audit("egress.secret_exfiltration", {"secret": m.name, "where": where})
                raise Refused(f"the placeholder of secret {m.name} sent to a host it is not for", None)

    async def refuse(self, conn, reason: str) -> None:
        await self.status(conn, 403, f"refused: {reason}")

    async def connect(self) -> None:
        """The upstream connection (upstream.connect: at most MAX_ATTEMPTS of the name's addresses,
        CONNECT_TIMEOUT in all), then its TLS handshake within HANDSHAKE_TIMEOUT. OSError (the
        give-up, one line: forward() audits it) when no address took the connection."""
        if self.up is not None:
            return
        sock, _, failed = await upstream.connect(self.addrs, self.port)
        if sock is None:
            raise OSError(upstream.gave_up(self.addrs, failed))
        r, w = await asyncio.open_connection(sock=sock)
        if self.tls:
            extra = getattr(self.ctx, "upstream_ca", None) or os.environ.get(UPSTREAM_CA_ENV)
            up = _TlsStream(r, w, upstream_context(extra), server_side=False, server_hostname=self.host)
            try:
                await asyncio.wait_for(up.handshake(), HANDSHAKE_TIMEOUT)
            except BaseException:
                up.close()
                raise
        else:
            up = _Stream(r, w)
        self.up = up
        self.up_conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)

    async def forward(self, conn, req, method: str, shown: str) -> bool:
        """The request upstream (its body scanned as it passes), the response back. False: the
        connection ends here."""
        try:
            await self.connect()
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as e:
            self.audit("egress.http.upstream_error", {"method": method, "path": shown,
                                                      "reason": (str(e) or upstream.why(e))[:800]})
            await self.status(conn, 502, "upstream unreachable or its certificate not trusted")
            return False
        up, uc = self.up, self.up_conn
        await up.write(uc.send(req))
        keep = max((len(m.token) for m in self.foreign), default=1) - 1
        tail = b""
        while True:
            ev = await self._next(conn, self.down)
            if isinstance(ev, h11.Data):
                try:
                    self.exfiltration(tail + ev.data, "body")
                except Refused as e:
                    self.audit("egress.http.denied", {"method": method, "path": shown, "rule": None,
                                                      "reason": e.args[0]})
                    self.up.close()            # the upstream never gets a whole request
                    self.up = None
                    await self.refuse(conn, e.args[0])
                    return False
                tail = (tail + ev.data)[-keep:] if keep else b""
                await up.write(uc.send(h11.Data(data=ev.data)))
            elif isinstance(ev, h11.EndOfMessage):
                await up.write(uc.send(h11.EndOfMessage(headers=ev.headers)))
                break
            else:
                return False
        # the response (1xx first), relayed; a secret's value in it (an upstream reflecting the
        # header back) never reaches the sandbox: the last len(value)-1 bytes of the body are held
        # back until the next piece shows they do not start one
        values = [m for m in (self.secrets.minted if self.secrets else ()) if m.value]
        hold = max((len(m.value) for m in values), default=1) - 1
        held, head = b"", None             # (the head waits for the first body bytes sent: a 502 stays possible)
        while True:
            ev = await self._next(uc, up)
            if isinstance(ev, (h11.InformationalResponse, h11.Response)):
                if await self.reflected(conn, values, b"\n".join(k + b": " + v for k, v in ev.headers) + b"\n"
                                        + ev.reason, method, shown):
                    return False
                head = type(ev)(status_code=ev.status_code, headers=ev.headers, reason=ev.reason)
                if isinstance(ev, h11.InformationalResponse):
                    await self.down.write(conn.send(head))
                    head = None
            elif isinstance(ev, h11.Data):
                data = held + ev.data
                if await self.reflected(conn, values, data, method, shown):
                    return False
                data, held = (data[:-hold], data[-hold:]) if hold and len(data) > hold else \
                    ((b"", data) if hold else (data, b""))
                if data:
                    if head is not None:
                        await self.down.write(conn.send(head))
                        head = None
                    await self.down.write(conn.send(h11.Data(data=data)))
            elif isinstance(ev, h11.EndOfMessage):
                trailers = b"\n".join(k + b": " + v for k, v in ev.headers)
                if await self.reflected(conn, values, held + b"\n" + trailers, method, shown):
                    return False
                if head is not None:
                    await self.down.write(conn.send(head))
                if held:
                    await self.down.write(conn.send(h11.Data(data=held)))
                await self.down.write(conn.send(h11.EndOfMessage(headers=ev.headers)))
                break
            else:
                return False
        if uc.our_state is h11.DONE and uc.their_state is h11.DONE:
            uc.start_next_cycle()
        else:
            self.up.close()
            self.up = None
        return True

    async def reflected(self, conn, values, data: bytes, method: str, shown: str) -> bool:
        """A secret's value in what the upstream sent: audited, the exchange cut off (502 when the
        response has not started, else the connection closes mid-body). True then."""
        m = next((m for m in values if m.value in data), None)
        if m is None:
            return False
        self.audit("egress.secret_reflected", {"secret": m.name, "method": method, "path": shown})
        self.up.close()
        self.up = None
        await self.status(conn, 502, f"the upstream's answer held the value of secret {m.name}; cut off")
        return True

    async def status(self, conn, code: int, text: str) -> None:
        body = f"pysandbox: {text}\n".encode()
        try:
            if conn.our_state in (h11.SEND_RESPONSE, h11.IDLE):     # (IDLE: after a malformed request)
                await self.down.write(conn.send(h11.Response(status_code=code, headers=[
                    (b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")])))
                await self.down.write(conn.send(h11.Data(data=body)))
                await self.down.write(conn.send(h11.EndOfMessage()))
        except (h11.LocalProtocolError, OSError, ssl.SSLError):
            return
        try:
            await asyncio.wait_for(self.linger(conn), LINGER_TIMEOUT)
        except (asyncio.TimeoutError, h11.ProtocolError, OSError, ssl.SSLError):
            pass

    async def linger(self, conn) -> None:
        """Read (and drop) the rest of the refused request, bounded: closing with its body unread
        would reset the connection, and the sandbox's client would lose the answer."""
        total = 0
        while total < LINGER_BYTES:
            if conn.their_state is h11.ERROR:           # nothing more to parse: drop what comes
                data = await self.down.read()
                if not data:
                    return
                total += len(data)
                continue
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await self.down.read()
                if not data:
                    return
                total += len(data)
                conn.receive_data(data)
            elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)) or ev is h11.PAUSED:
                return


def _host_of(value: bytes) -> str:
    v = value.decode("ascii", "replace").strip().lower()
    if v.startswith("["):
        return v[1:v.find("]")] if "]" in v else v
    return v.rsplit(":", 1)[0].rstrip(".") if v.count(":") == 1 else v.rstrip(".")
