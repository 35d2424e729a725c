"""The target of a plain HTTP/1.x request head (h11: a well-kept HTTP/1.1 parser), bounded: the head
is at most MAX_HEAD bytes. Transparent connections give the Host header; the explicit proxy
(HTTP_PROXY) gives `CONNECT host:port` or an absolute-form `GET http://host[:port]/...`.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEAD = 16384


class NeedMore(Exception):
    pass


class BadRequest(ValueError):
    pass


@dataclass
class Head:
    method: str
    host: str | None          # from the Host header or the request target
    port: int | None          # from the request target (CONNECT, absolute form), else None
    connect: bool             # CONNECT: the bytes after the head belong to the tunnel
    length: int               # bytes of the head (request line + headers + blank line)
    origin: str | None = None  # absolute form: the target in origin form, for the server


def to_origin_form(data: bytes, head: Head) -> bytes:
    """The request with its absolute-form target (a proxy request) in origin form: what an origin
    server expects (the first request of the connection; later ones are the client's business)."""
    line, sep, rest = data.partition(b"\r\n")
    parts = line.split(b" ")
    if head.origin is None or len(parts) != 3:
        return data
    return b" ".join((parts[0], head.origin.encode("ascii"), parts[2])) + sep + rest


def looks_like_http(first: bytes) -> bool:
    return first[:1].isalpha() and first[:1].isupper()


def _split_hostport(value: str, default: int | None) -> tuple[str, int | None]:
    if value.startswith("["):
        raise BadRequest("IPv6 literals are not names")
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, default
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequest(f"bad port in {value!r}")
    return host, int(port)


def parse(data: bytes) -> Head:
    """The request head at the start of data. NeedMore: not complete yet; BadRequest: refuse."""
    import h11
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) >= MAX_HEAD:
            raise BadRequest("request head too large")
        raise NeedMore
    if end + 4 > MAX_HEAD:
        raise BadRequest("request head too large")
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    conn.receive_data(data[:end + 4])
    try:
        ev = conn.next_event()
    except h11.RemoteProtocolError as e:
        raise BadRequest(f"malformed request: {e}") from None
    if not isinstance(ev, h11.Request):
        raise BadRequest("not an HTTP request")
    method = ev.method.decode("ascii", "replace")
    target = ev.target.decode("ascii", "replace")
    hosts = [v.decode("ascii", "replace") for k, v in ev.headers if k == b"host"]
    if len(hosts) > 1:
        raise BadRequest("more than one Host header")
    if method == "CONNECT":
        host, port = _split_hostport(target, None)
        if port is None:
            raise BadRequest("CONNECT needs host:port")
        return Head(method, host, port, True, end + 4)
    if target.startswith(("http://", "HTTP://")):
        u = urlsplit(target)
        try:
            port = u.port or 80
        except ValueError:
            raise BadRequest("bad port in the request target") from None
        if not u.hostname:
            raise BadRequest("no host in the request target")
        if hosts and _split_hostport(hosts[0], None)[0].lower() != u.hostname.lower():
            raise BadRequest("Host header and request target disagree")
        return Head(method, u.hostname, port, False, end + 4,
                    origin=(u.path or "/") + (f"?{u.query}" if u.query else ""))
    if not hosts:
        return Head(method, None, None, False, end + 4)
    host, port = _split_hostport(hosts[0], None)
    return Head(method, host, port, False, end + 4)
