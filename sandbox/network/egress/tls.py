"""The server name (SNI) of a TLS ClientHello: a bounded parser of the first handshake message
(RFC 8446 4.1.2, RFC 6066 3). Hostile input: every length is checked against what is there, the
message is at most MAX_HELLO bytes (it may span several records), nothing is decrypted.
"""
from __future__ import annotations

MAX_HELLO = 16384 + 5       # one record's worth: a ClientHello larger than this is refused


class NeedMore(Exception):
    """Not enough bytes yet for the ClientHello."""


class NotTLS(ValueError):
    """Not a TLS ClientHello (or a malformed one)."""


def looks_like_tls(first: bytes) -> bool:
    return len(first) >= 1 and first[0] == 0x16


def _handshake(data: bytes) -> bytes:
    """The handshake bytes of the leading records (type 22), NeedMore until the ClientHello is whole."""
    out = bytearray()
    pos = 0
    while True:
        if len(data) - pos < 5:
            raise NeedMore
        ctype, major, ln = data[pos], data[pos + 1], int.from_bytes(data[pos + 3:pos + 5], "big")
        if ctype != 0x16 or major != 3 or ln == 0 or ln > 16384 + 256:
            raise NotTLS("not a TLS handshake record")
        if len(data) - pos - 5 < ln:
            raise NeedMore
        out += data[pos + 5:pos + 5 + ln]
        pos += 5 + ln
        if len(out) >= 4:
            if out[0] != 1:
                raise NotTLS("not a ClientHello")
            need = int.from_bytes(out[1:4], "big") + 4
            if need > MAX_HELLO:
                raise NotTLS("ClientHello too large")
            if len(out) >= need:
                return bytes(out[4:need])
        if pos > MAX_HELLO:
            raise NotTLS("ClientHello too large")


class _R:
    __slots__ = ("b", "p")

    def __init__(self, b: bytes):
        self.b, self.p = b, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.p + n > len(self.b):
            raise NotTLS("truncated ClientHello")
        v = self.b[self.p:self.p + n]
        self.p += n
        return v

    def u(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")


def server_name(data: bytes) -> str | None:
    """The SNI host name of the ClientHello at the start of data (None: the hello has none).
    NeedMore: read more bytes; NotTLS: refuse the connection."""
    r = _R(_handshake(data))
    r.take(2 + 32)                    # legacy_version, random
    r.take(r.u(1))                    # session id
    r.take(r.u(2))                    # cipher suites
    r.take(r.u(1))                    # compression methods
    if r.p == len(r.b):
        return None                   # no extensions
    ext = _R(r.take(r.u(2)))
    name = None
    seen = set()
    while ext.p < len(ext.b):
        typ, body = ext.u(2), ext.take(ext.u(2))
        if typ in seen:
            raise NotTLS("duplicate extension")        # RFC 8446: at most one of each
        seen.add(typ)
        if typ != 0:
            continue
        lst = _R(body)
        names = _R(lst.take(lst.u(2)))
        while names.p < len(names.b):
            kind, value = names.u(1), names.take(names.u(2))
            if kind == 0:
                if name is not None:
                    raise NotTLS("two host names in server_name")
                try:
                    name = value.decode("ascii")
                except UnicodeDecodeError:
                    raise NotTLS("server name is not ASCII") from None
    return name
