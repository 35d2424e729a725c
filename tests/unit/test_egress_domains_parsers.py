"""Egress by domain name, the parts without a kernel: names and rules (policies/egress.py), the
compiler's host rules, the bounded ClientHello and request-head parsers, the resolver's answers
(sandbox/network/egress/). Pure: no root, no sockets beyond the test's own."""
from __future__ import annotations

import asyncio
import ssl

import pytest

from policies import egress as E
from policies import plan as P
from policies.compiler import Overrides, compile_profile
from policies.errors import ProfileError
from sandbox.network.egress import dns, http, names, tls


def test_names_normalised_and_bounded():
    assert E.normalise_name("API.GitHub.com.") == "api.github.com"
    assert E.normalise_name("Büro.example") == "xn--bro-hoa.example"
    assert E.normalise_name("*.PyPI.org", pattern=True) == "*.pypi.org"
    assert E.normalise_name("*", pattern=True) == "*"
    for bad in ("a.*.com", "*example.com", "-a.com", "a" * 64 + ".com", "x." * 130 + "com", "1.2.3.4", "",
                "a..b", "exa mple.com"):
        with pytest.raises(ValueError):
            E.normalise_name(bad, pattern=True)
    with pytest.raises(ValueError):
        E.normalise_name("*.example.com")               # a wildcard only in a rule


def test_wildcard_matches_below_the_suffix_only():
    assert E.matches("*.example.com", "a.example.com")
    assert E.matches("*.example.com", "a.b.example.com")
    assert not E.matches("*.example.com", "example.com")
    assert not E.matches("*.example.com", "badexample.com")
    assert E.matches("*", "anything.test")


def test_private_ranges():
    for a in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254",
              "::1", "fd00::1", "fe80::1", "::ffff:127.0.0.1", "0.0.0.0", "not-an-ip"):
        assert E.is_private(a), a
    for a in ("192.0.2.1", "172.32.0.1", "8.8.8.8", "2001:db8::1"):
        assert not E.is_private(a), a


def test_add_host():
    assert E.parse_add_host("Web.Test:192.0.2.1") == ("web.test", "192.0.2.1")
    assert E.parse_add_host("v6.test:[2001:db8::1]") == ("v6.test", "2001:db8::1")
    for bad in ("web.test", "web.test:nope", ":1.2.3.4", "*.x.test:1.2.3.4"):
        with pytest.raises(ValueError):
            E.parse_add_host(bad)


def _compile(net: dict, **ov):
    import json
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/p.yaml"
        with open(path, "w") as f:
            f.write("version: 1\nnetwork: " + json.dumps(net) + "\n")
        return compile_profile(path, Overrides(**ov)).plan


def test_compiler_host_rules_defaults_and_errors():
    plan = _compile({"mode": "pasta", "hosts": {"Web.Test": "192.0.2.1"},
                     "egress": {"allow": [{"to": "10.0.0.0/8", "ports": [5432]},
                                          {"host": "pypi.org"},
                                          {"host": "*.Example.com", "ports": [443], "allow_private": True}]}},
                    add_hosts=("x.test:10.9.9.9",))
    n = plan.network
    assert n.egress_default == "deny"
    assert [r.to for r in n.egress_allow] == ["10.0.0.0/8"]
    assert n.egress_hosts == (P.EgressHostRule("pypi.org", (80, 443), False, 1),
                              P.EgressHostRule("*.example.com", (443,), True, 2))
    assert n.hosts == (P.HostEntry("web.test", "192.0.2.1"), P.HostEntry("x.test", "10.9.9.9"))
    env = dict(plan.process.env_set)
    assert env["HTTPS_PROXY"] == env["http_proxy"] == E.PROXY_URL
    for net, msg in (({"mode": "none", "egress": {"allow": [{"host": "a.test"}]}}, "outbound network"),
                     ({"mode": "pasta", "egress": {"allow": [{"host": "a.*.test"}]}}, "wildcard"),
                     ({"mode": "pasta", "egress": {"allow": [{"host": "a.test", "ports": [0]}]}}, "p.yaml:"),
                     ({"mode": "pasta", "egress": {"default": "allow", "allow": [{"host": "a.test"}]}}, "default deny"),
                     ({"mode": "pasta", "egress": {"allow": [{"to": "example.com"}]}}, "host:"),
                     ({"mode": "pasta", "hosts": {"a.test": "nope"}}, "not an IP address"),
                     ({"mode": "pasta", "hosts": {"a.test": "192.0.2.1"}}, "`host:` rules only")):
        with pytest.raises(ProfileError) as e:
            _compile(net)
        assert msg in str(e.value), (net, str(e.value))


def _client_hello(sni: str | None) -> bytes:
    """A real ClientHello from the ssl module (memory BIOs: no socket)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    i, o = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(i, o, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return o.read()


def test_sni_parser():
    hello = _client_hello("api.example.com")
    assert tls.server_name(hello) == "api.example.com"
    assert tls.server_name(_client_hello(None)) is None
    for cut in (1, 5, 40, len(hello) - 1):
        with pytest.raises(tls.NeedMore):
            tls.server_name(hello[:cut])
    with pytest.raises(tls.NotTLS):
        tls.server_name(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")    # a ServerHello
    with pytest.raises(tls.NotTLS):
        tls.server_name(b"GET / HTTP/1.1\r\n")
    # a length that points past the message: refused, never an IndexError
    bad = bytearray(hello)
    bad[9 + 2 + 32] = 0xff                                               # session id length
    with pytest.raises((tls.NotTLS, tls.NeedMore)):
        tls.server_name(bytes(bad))
    with pytest.raises(tls.NotTLS):
        tls.server_name(b"\x16\x03\x01\x40\x00\x01\xff\xff\xff" + b"\x00" * 20000)   # too large


def test_http_head_parser():
    h = http.parse(b"GET /x HTTP/1.1\r\nHost: Web.Test:8080\r\n\r\nbody")
    assert (h.host, h.port, h.connect) == ("Web.Test", 8080, False)
    h = http.parse(b"CONNECT web.test:443 HTTP/1.1\r\nHost: web.test:443\r\n\r\n")
    assert (h.host, h.port, h.connect) == ("web.test", 443, True)
    raw = b"GET http://web.test/a?b=1 HTTP/1.1\r\nHost: web.test\r\n\r\n"
    h = http.parse(raw)
    assert (h.host, h.port, h.origin) == ("web.test", 80, "/a?b=1")
    assert http.to_origin_form(raw, h).startswith(b"GET /a?b=1 HTTP/1.1\r\n")
    with pytest.raises(http.NeedMore):
        http.parse(b"GET / HTTP/1.1\r\nHost: a")
    for bad in (b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
                b"GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n",
                b"CONNECT a.test HTTP/1.1\r\nHost: a.test\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 20000 + b"\r\n\r\n"):
        with pytest.raises(http.BadRequest):
            http.parse(bad)
    with pytest.raises(http.BadRequest):
        http.parse(b"A" * (http.MAX_HEAD + 1))


class _Audit:
    def __init__(self):
        self.events = []

    def denied(self, *a):
        self.events.append(("denied",) + a)

    def allowed(self, *a):
        self.events.append(("allowed",) + a)


def test_resolver_answers_allowed_names_only():
    from dnslib import DNSRecord, QTYPE, RCODE
    rules = (P.EgressHostRule("web.test", (443,), False, 0), P.EgressHostRule("priv.test", (443,), False, 1))
    n = names.Names(rules, (P.HostEntry("web.test", "192.0.2.1"), P.HostEntry("priv.test", "10.0.0.1")))
    a = _Audit()

    def ask(name, qtype="A"):
        out = asyncio.run(dns.answer(n, a, DNSRecord.question(name, qtype).pack()))
        return DNSRecord.parse(out)

    r = ask("web.test")
    assert r.header.rcode == RCODE.NOERROR and [str(x.rdata) for x in r.rr] == ["192.0.2.1"]
    # network.hosts names of an allowed rule: their address even when private (documented)
    assert [str(x.rdata) for x in ask("priv.test").rr] == ["10.0.0.1"]
    assert ask("WEB.test", "AAAA").rr == [] and ask("web.test", "TXT").rr == []
    r = ask("evil.test")
    assert r.header.rcode == RCODE.NXDOMAIN
    assert a.events[-1][:5] == ("denied", "evil.test", None, 53, "dns")
    assert asyncio.run(dns.answer(n, a, b"\x00" * 3)) is None          # garbage: dropped
    assert asyncio.run(dns.answer(n, a, b"\x00" * (dns.MAX_QUERY + 1))) is None
    # many addresses: over UDP the reply is truncated (TC, no answers), over TCP whole
    many = names.Names(rules, ())
    many._cache["web.test"] = (float("inf"), tuple(f"192.0.2.{i}" for i in range(1, 60)))
    q = DNSRecord.question("web.test", "A").pack()
    udp = DNSRecord.parse(asyncio.run(dns.answer(many, a, q, udp=True)))
    assert udp.header.tc == 1 and udp.rr == []
    assert len(DNSRecord.parse(asyncio.run(dns.answer(many, a, q))).rr) == 59
    assert QTYPE.A == 1


def test_parsers_on_hostile_bytes_raise_only_their_own_errors():
    """Random and mutated input: the parsers answer with a name, NeedMore or their refusal - never
    another exception (the proxy would log it as a proxy error), never unbounded work."""
    from hypothesis import given, settings, strategies as st
    hello = _client_hello("api.example.com")

    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=600), st.integers(0, 600), st.integers(0, 255))
    def run(noise, pos, byte):
        mutated = bytearray(hello)
        mutated[pos % len(mutated)] = byte
        for data in (noise, b"\x16\x03\x01" + noise, bytes(mutated)):
            try:
                tls.server_name(data)
            except (tls.NeedMore, tls.NotTLS):
                pass
        for data in (noise, b"GET / HTTP/1.1\r\n" + noise + b"\r\n\r\n", b"CONNECT " + noise + b"\r\n\r\n"):
            try:
                http.parse(data)
            except (http.NeedMore, http.BadRequest):
                pass
    run()


def test_ipv6_private_ranges_and_embedded_ipv4():
    """SSRF over IPv6: loopback, unspecified, unique-local, link-local, site-local, local-use NAT64;
    IPv4-mapped and NAT64 (64:ff9b::/96) addresses judged by the IPv4 address they carry."""
    for a in ("::", "fc00::1", "fec0::1", "64:ff9b:1::1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
              "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::192.168.0.1"):
        assert E.is_private(a), a
    for a in ("::ffff:8.8.8.8", "64:ff9b::808:808", "2606:4700::1111"):
        assert not E.is_private(a), a


def test_resolver_answers_aaaa_per_family():
    """AAAA answers an allowed name's IPv6 addresses; a name with addresses of the other family only
    gets NODATA (NOERROR, no records), never NXDOMAIN; ANY gets both; private IPv6 answers of the
    host's resolver are dropped as IPv4 ones are."""
    from dnslib import DNSRecord, RCODE
    rules = (P.EgressHostRule("dual.test", (443,), False, 0), P.EgressHostRule("v6.test", (443,), False, 1),
             P.EgressHostRule("ula.test", (443,), False, 2), P.EgressHostRule("ula2.test", (443,), True, 3))
    n = names.Names(rules, (P.HostEntry("dual.test", "192.0.2.1"), P.HostEntry("dual.test", "2001:db8::1"),
                            P.HostEntry("v6.test", "2001:db8::2")))
    n._cache["ula.test"] = (float("inf"), ("fd00::1",))                 # the host resolver's answer
    n._cache["ula2.test"] = (float("inf"), ("fd00::1",))
    a = _Audit()

    def ask(name, qtype):
        r = DNSRecord.parse(asyncio.run(dns.answer(n, a, DNSRecord.question(name, qtype).pack())))
        return r.header.rcode, sorted(str(x.rdata) for x in r.rr)

    assert ask("dual.test", "A") == (RCODE.NOERROR, ["192.0.2.1"])
    assert ask("dual.test", "AAAA") == (RCODE.NOERROR, ["2001:db8::1"])
    assert ask("dual.test", "ANY") == (RCODE.NOERROR, ["192.0.2.1", "2001:db8::1"])
    assert ask("v6.test", "AAAA") == (RCODE.NOERROR, ["2001:db8::2"])
    assert ask("v6.test", "A") == (RCODE.NOERROR, [])                   # NODATA
    assert ask("evil.test", "AAAA")[0] == RCODE.NXDOMAIN
    assert ask("ula.test", "AAAA")[0] == RCODE.NXDOMAIN                 # private, no allow_private
    assert ask("ula2.test", "AAAA") == (RCODE.NOERROR, ["fd00::1"])
    # the proxy's check: the IPv6 address given is one the name resolves to; another is not
    ok = asyncio.run(n.address_ok("dual.test", rules[0], "2001:db8::1"))[0]
    bad = asyncio.run(n.address_ok("dual.test", rules[0], "2001:db8::9"))[0]
    assert ok and not bad


def test_add_host_one_address_per_family():
    plan = _compile({"mode": "pasta", "hosts": {"web.test": "192.0.2.1"},
                     "egress": {"allow": [{"host": "web.test"}]}},
                    add_hosts=("web.test:[2001:db8::1]", "web.test:2001:db8::2"))
    assert sorted((h.name, h.address) for h in plan.network.hosts) == [("web.test", "192.0.2.1"),
                                                                      ("web.test", "2001:db8::2")]


def test_steering_covers_ipv6():
    """The sandbox's nat chain redirects IPv6 TCP and DNS as IPv4 (to the sockets on ::1), and the
    filter accepts the redirected IPv6 traffic."""
    from sandbox.network import nft
    cmds = nft.egress_ruleset("deny", [{"to": "2001:db8::/32", "ports": [5432], "proto": "tcp"}], {},
                              steer=(3128, 53))
    rules = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]
    steer = [r["expr"] for r in rules if r["chain"] == "steer"]
    v6 = [e for e in steer if {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv6"}} in e]
    assert sum(1 for e in v6 if e[-1] == {"redirect": {"port": 53}}) == 2            # UDP and TCP DNS
    assert sum(1 for e in v6 if e[-1] == {"redirect": {"port": 3128}}) == 1
    out = [r["expr"] for r in rules if r["chain"] == "output"]
    assert any({"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "::1"}}
               in e for e in out)
