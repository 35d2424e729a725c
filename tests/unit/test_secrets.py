"""network.secrets and network.egress.http without a sandbox: the compiler (references only, bounded,
one line per error), the placeholders and the values (sandbox/network/egress/secrets.py), the
sandbox's CA (ca.py) and the interception's HTTP handling (intercept.py) over loopback TCP, with a
plaintext upstream in this process (the TLS side is tests/system/test_egress_secrets.py's)."""
from __future__ import annotations

import asyncio
import os
import pickle
import re
import ssl
import textwrap

import h11
import pytest

from policies.compiler import compile_profile
from policies.errors import ProfileError
from sandbox.network.egress import secrets as S

PROFILE = """\
version: 1
extends: default
network:
  mode: {mode}
  egress:
    allow:
      - {{host: api.example.com, ports: [443]}}
      - {{host: "*.corp.example", ports: [443]}}
    http:
      - {{host: API.example.com, methods: [get, post], paths: ["/repos/acme/*"]}}
  secrets:
    TOKEN: {{from: "{src}", hosts: [api.example.com, "*.corp.example"], header: {header}, format: "{fmt}"}}
"""


def _compile(tmp_path, mode="mynet", src="env:PSB_TEST_TOKEN", header="Authorization", fmt="Bearer {}"):
    p = tmp_path / "p.yaml"
    p.write_text(PROFILE.format(mode=mode, src=src, header=header, fmt=fmt))
    return compile_profile(str(p)).plan


def test_compiler_keeps_references_only(tmp_path, monkeypatch):
    monkeypatch.setenv("PSB_TEST_TOKEN", "the-real-value-123")
    plan = _compile(tmp_path)
    n = plan.network
    assert [(r.host, r.methods, r.paths) for r in n.http] == [("api.example.com", ("GET", "POST"), ("/repos/acme/*",))]
    (s,) = n.secrets
    assert (s.name, s.source, s.hosts, s.header, s.format) == \
        ("TOKEN", "env:PSB_TEST_TOKEN", ("api.example.com", "*.corp.example"), "Authorization", "Bearer {}")
    assert b"the-real-value-123" not in pickle.dumps(plan) and "the-real-value-123" not in repr(plan.to_dict())


@pytest.mark.parametrize("kw,msg", [
    ({"mode": "none"}, "needs an outbound network"),           # (the host rules: said first)
    ({"mode": "host"}, "needs an outbound network"),
    ({"header": "Host"}, "frames the request"),
    ({"header": "Content-Length"}, "frames the request"),
    ({"fmt": "Bearer"}, "must hold `{}`"),
    ({"fmt": "{} {}"}, "must hold `{}`"),
    ({"src": "file:relative/token"}, "must be an absolute path"),
    ({"src": "vault:x"}, "expected env:VARIABLE or file:/path"),
    ({"header": "Bad Header"}, "is no HTTP header name"),
])
def test_compiler_refuses_with_one_line(tmp_path, kw, msg):
    with pytest.raises(ProfileError) as e:
        _compile(tmp_path, **kw)
    text = str(e.value)
    assert msg in text and "\n" not in text and re.match(r".*p\.yaml:\d+:\d+: ", text), text


@pytest.mark.parametrize("allow,hosts,msg", [
    ("[{host: other.example, ports: [443]}]", "[api.example.com]",
     "network.secrets.T.hosts: 'api.example.com' is allowed by no egress `host:` rule"),
    ("[{host: api.example.com}]", "[192.0.2.7]",
     "network.secrets.T.hosts: '192.0.2.7' is an address: the egress proxy intercepts connections by host name"),
    ("[{host: '*.example.com'}]", "['*.sub.example.com', api.example.com]", None),
])
def test_compiler_secret_hosts_must_reach_the_proxy(tmp_path, allow, hosts, msg):
    """A secret's (or http rule's) host must be one an egress `host:` rule lets through the proxy:
    else it would never be substituted (refused, one line, exit 2); an address never is."""
    p = tmp_path / "p.yaml"
    p.write_text(f"version: 1\nnetwork:\n  mode: n\n  egress:\n    allow: {allow}\n"
                 f"  secrets:\n    T: {{from: 'env:X', hosts: {hosts}}}\n")
    if msg is None:
        assert compile_profile(str(p)).plan.network.secrets[0].hosts == ("*.sub.example.com", "api.example.com")
        return
    with pytest.raises(ProfileError) as e:
        compile_profile(str(p))
    assert msg in str(e.value) and "\n" not in str(e.value) and re.match(r".*p\.yaml:\d+:\d+: ", str(e.value))


def test_compiler_bad_hosts_and_bounds(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(textwrap.dedent("""\
        version: 1
        extends: default
        network:
          mode: n
          egress: {http: [{host: "bad host!"}]}
          secrets:
            T: {from: "env:X", hosts: ["*"]}
        """))
    with pytest.raises(ProfileError) as e:
        compile_profile(str(p))
    assert "'bad host!' is no host name" in str(e.value) and "'*' is no host name" in str(e.value)
    many = "\n".join(f"    S{i}: {{from: 'env:X', hosts: [a.b]}}" for i in range(65))
    p.write_text(f"version: 1\nextends: default\nnetwork:\n  mode: n\n  secrets:\n{many}\n")
    with pytest.raises(ProfileError):
        compile_profile(str(p))


def _secret(src="env:PSB_T", hosts=("api.example.com",), fmt="Bearer {}"):
    from policies.plan import Secret
    return Secret(name="TOKEN", source=src, hosts=tuple(hosts), header="Authorization", format=fmt)


def test_placeholders_are_random_per_sandbox_and_hide_the_value():
    a, b = S.SecretSet([_secret()]), S.SecretSet([_secret()])
    pa, pb = a.env()["TOKEN"], b.env()["TOKEN"]
    assert re.fullmatch(r"pysandbox-secret:TOKEN:[0-9a-f]{32}", pa) and pa != pb
    a.load({"PSB_T": "v4lue"})
    (m,) = a.minted
    assert m.value == b"v4lue"
    assert "v4lue" not in repr(a) and "v4lue" not in repr(m) and m.token not in repr(m)
    assert m.header_value(pa.encode()) == b"Bearer v4lue"                 # the placeholder alone: the format
    assert m.header_value(b"token " + pa.encode()) == b"token v4lue"      # inside a value: replaced
    assert a.found_in(b"x" + pa.replace(":", "%3A").encode()) == [m]      # re-quoted: the random part
    assert a.found_in(b"nothing here") == []
    a.clear()
    assert m.value is None


def test_values_from_env_and_file_fail_closed(tmp_path):
    f = tmp_path / "tok"
    f.write_bytes(b"from-file\n")
    s = S.SecretSet([_secret(src=f"file:{f}")])
    s.load({})
    assert s.minted[0].value == b"from-file"                              # one trailing newline dropped
    cases = [(f"env:PSB_NOPE", {}, "not set"), ("env:PSB_T", {"PSB_T": ""}, "empty"),
             ("env:PSB_T", {"PSB_T": "a\r\nX-Evil: 1"}, "control characters"),
             ("env:PSB_T", {"PSB_T": "x" * (S.MAX_VALUE + 1)}, "longer than"),
             (f"file:{tmp_path}", {}, "not a regular file"), (f"file:{tmp_path}/missing", {}, "No such file")]
    big = tmp_path / "big"
    big.write_bytes(b"x" * (S.MAX_VALUE + 10))
    cases.append((f"file:{big}", {}, "larger than"))
    for src, env, msg in cases:
        with pytest.raises(S.SecretError) as e:
            S.SecretSet([_secret(src=src)]).load(env)
        assert msg in str(e.value) and "\n" not in str(e.value)
        assert "X-Evil" not in str(e.value) and "xxxx" not in str(e.value)   # never the value


def test_host_matching():
    assert S.host_matches("api.example.com", "API.example.com.")
    assert S.host_matches("*.corp.example", "a.b.corp.example")
    assert not S.host_matches("*.corp.example", "corp.example")
    assert not S.host_matches("*.corp.example", "evilcorp.example")
    assert not S.host_matches("api.example.com", "api.example.com.evil")


def test_ca_leaf_chains_to_it_and_is_name_constrained():
    from cryptography import x509
    from sandbox.network.egress import ca
    c = ca.SandboxCA("abc123", ["api.example.com", "*.corp.example"])
    nc = c.cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical and {g.value for g in nc.value.permitted_subtrees} == {"api.example.com", "corp.example"}
    assert {str(g.value) for g in nc.value.excluded_subtrees} == {"0.0.0.0/0", "::/0"}   # no IP host: none
    ip_ca = ca.SandboxCA("x", ["192.0.2.7"])
    ip_nc = ip_ca.cert.extensions.get_extension_for_class(x509.NameConstraints).value
    assert [str(g.value) for g in ip_nc.permitted_subtrees] == ["192.0.2.7/32"] and ip_nc.excluded_subtrees is None
    ip_ca.server_context("192.0.2.7")
    assert c.cert.not_valid_after_utc - c.cert.not_valid_before_utc <= ca.VALIDITY + ca.SKEW
    bundle = c.bundle()
    assert "PRIVATE KEY" not in bundle and bundle.rstrip().endswith(c.cert_pem().rstrip())
    assert c.server_context("api.example.com") is c.server_context("API.example.com")   # cached per host
    leaf = c.leaf("api.example.com")[0]
    leaf.verify_directly_issued_by(c.cert)
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["api.example.com"]
    assert ca.trust_env()["SSL_CERT_FILE"] == ca.BUNDLE_IN_SANDBOX


# --- intercept.handle over loopback, plaintext (a stand-in for the proxy's accept loop) ---------

class _Ctx:
    def __init__(self, network, secrets_):
        self.egress, self.secrets, self.events, self.ca, self.sandbox = network, secrets_, [], None, "t"

    def audit(self, t, f):
        self.events.append((t, f))


async def _upstream(seen):
    async def serve(r, w):
        conn = h11.Connection(h11.SERVER)
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await r.read(65536)
                conn.receive_data(data)
                if not data:
                    break
                continue
            if isinstance(ev, h11.Request):
                seen.append([ev.method, ev.target, dict(ev.headers), b""])
            elif isinstance(ev, h11.Data):
                seen[-1][3] += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                body = b"ok"
                w.write(conn.send(h11.Response(status_code=200, headers=[("content-length", "2")])))
                w.write(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
                await w.drain()
                conn.start_next_cycle()
            else:
                break
        w.close()
    return await asyncio.start_server(serve, "127.0.0.1", 0)


def test_intercept_plaintext_rules_keepalive_and_exfiltration():
    """Plain HTTP through handle(): rules per request on one kept-alive connection; a placeholder of
    a secret for another host refused in the head and in a body across read boundaries."""
    from policies.plan import HttpRule, Network, Secret
    from sandbox.network.egress import intercept
    net = Network(mode="n", http=(HttpRule("up.test", ("GET",), ("/ok/*",)), HttpRule("other.test")),
                  secrets=(Secret("TOKEN", "env:X", ("up.test",)),))
    sec = S.SecretSet(net.secrets)
    sec.load({"X": "VALUE"})
    ph = sec.env()["TOKEN"].encode()
    assert intercept.wants(net, "UP.test") and not intercept.wants(net, "unrelated.test")

    async def main():
        seen = []
        up = await _upstream(seen)
        port = up.sockets[0].getsockname()[1]
        results = {}

        async def client(host, payload):
            ctx = _Ctx(net, sec)

            async def accept(r, w):
                first = await r.read(100)
                await intercept.handle(r, w, first, host=host, port=port, addrs=["127.0.0.1"], ctx=ctx)
            proxy = await asyncio.start_server(accept, "127.0.0.1", 0)
            r, w = await asyncio.open_connection(*proxy.sockets[0].getsockname()[:2])
            for i in range(0, len(payload), 1000):              # small writes: bodies split across reads
                w.write(payload[i:i + 1000])
                await w.drain()
            w.write_eof()
            out = await asyncio.wait_for(r.read(), 20)
            w.close()
            proxy.close()
            return out, ctx.events

        req = lambda m, p, h=b"", body=b"": (m + b" " + p + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + h +
                                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        host = b"up.test"
        results["up"] = await client("up.test", req(b"GET", b"/ok/1") + req(b"GET", b"/ok/2", b"X-A: " + ph + b"\r\n")
                                     + req(b"DELETE", b"/ok/3"))
        host = b"other.test"
        results["other"] = await client("other.test", req(b"POST", b"/x", body=b"y" * 5000 + ph))
        results["other_head"] = await client("other.test", req(b"GET", b"/x?" + ph))
        host = b"evil.test"
        results["host_mismatch"] = await client("up.test", req(b"GET", b"/ok/1"))
        up.close()
        return seen, results

    seen, res = asyncio.run(main())
    out, ev = res["up"]
    assert out.count(b"HTTP/1.1 200") == 2 and b"HTTP/1.1 403" in out          # GET, GET kept alive; DELETE refused
    assert [(s[0], s[1]) for s in seen if s[1].startswith(b"/ok")] == [(b"GET", b"/ok/1"), (b"GET", b"/ok/2")]
    assert [t for t, _ in ev] == ["egress.http.allowed", "egress.http.allowed", "egress.http.denied"]
    assert ev[2][1]["http"]["method"] == "DELETE" and ev[2][1]["http"]["rule"] == "network.egress.http[0]"
    out, ev = res["other"]
    assert b"HTTP/1.1 403" in out and ("egress.secret_exfiltration", {"secret": "TOKEN", "where": "body"}) in \
        [(t, f["http"]) for t, f in ev]
    assert all(f["egress"]["name"] == "other.test" and f["egress"]["protocol"] == "http" for _, f in ev)
    assert not [s for s in seen if s[1] == b"/x" and s[3].endswith(ph)]       # never a whole request upstream
    out, ev = res["other_head"]
    assert b"HTTP/1.1 403" in out and ev[0][0] == "egress.secret_exfiltration"
    assert all(ph.decode() not in repr(f) for _, f in ev)                    # the audit masks the placeholder
    out, ev = res["host_mismatch"]
    assert b"HTTP/1.1 403" in out and "Host header" in ev[0][1]["egress"]["reason"]
    assert all(b"VALUE" not in repr(s).encode() for s in seen)               # plaintext: the value never sent


def test_interception_events_are_audit_event_types():
    """Every event intercept.py emits is one the audit recorder accepts (audit/events.py)."""
    import inspect as _inspect
    from audit.events import DEFAULT_SEVERITY
    from sandbox.network.egress import intercept
    emitted = set(re.findall(r'self\.audit\("([a-z_.]+)"', _inspect.getsource(intercept)))
    assert emitted == {"egress.http.allowed", "egress.http.denied", "egress.http.upstream_error",
                       "egress.secret_exfiltration", "egress.secret_reflected"}
    assert emitted <= set(DEFAULT_SEVERITY)
    assert DEFAULT_SEVERITY["egress.secret_exfiltration"] == "critical"


def test_intercept_bounds_the_request_head():
    """A request head over MAX_HEAD (64 KiB; h11 bounds what it buffers of an incomplete head, and one
    read adds at most CHUNK) is answered 431 and audited, never buffered further."""
    from policies.plan import HttpRule, Network
    from sandbox.network.egress import intercept
    net = Network(mode="n", http=(HttpRule("up.test"),))

    async def main():
        ctx = _Ctx(net, S.SecretSet())

        async def accept(r, w):
            await intercept.handle(r, w, await r.read(100), host="up.test", port=9, addrs=["127.0.0.1"], ctx=ctx)
        proxy = await asyncio.start_server(accept, "127.0.0.1", 0)
        r, w = await asyncio.open_connection(*proxy.sockets[0].getsockname()[:2])
        w.write(b"GET / HTTP/1.1\r\nHost: up.test\r\n" + b"X-Pad: " + b"a" * (intercept.MAX_HEAD * 3) + b"\r\n\r\n")
        await w.drain()
        out = await asyncio.wait_for(r.read(), 20)
        w.close()
        proxy.close()
        return out, ctx.events
    out, ev = asyncio.run(main())
    assert out.startswith(b"HTTP/1.1 431 ") and ev[0][0] == "egress.http.denied"
    assert ev[0][1]["egress"]["reason"].startswith("malformed request")


def test_interception_events_and_their_coalesced_records_follow_the_audit_schema():
    """The proxy's Audit (service.py) with the interception's events past the per-sandbox rate
    limit: every record written, full or coalesced, validates against audit/schema/event.schema.json
    (a coalesced one keeps `egress` and `http` without per-request fields)."""
    import audit
    from audit.events import Recorder
    from sandbox.network.egress import intercept, service
    rec = Recorder("abc123", profile="p")
    out = []
    a = service.Audit(lambda t, **f: out.append(rec.build(t, **f)))
    s = intercept._Session("api.test", 443, ["192.0.2.1"], type("C", (), {"audit": a, "egress": None,
                                                                          "secrets": None})(), tls=True)
    for i in range(300):
        s.audit("egress.http.allowed", {"method": "GET", "path": f"/r/{i}", "rule": "network.egress.http[0]",
                                        "secrets": ["T"]})
    s.audit("egress.secret_exfiltration", {"secret": "T", "where": "body"})
    s.audit("egress.http.denied", {"method": None, "path": None, "rule": None, "reason": "malformed request"})
    a.flush(final=True)
    assert any(e.get("count") for e in out) and len(out) < 300       # the rate limit coalesced some
    for e in out:
        e["seq"] = 1
        audit.validate(e)
    assert {e["type"] for e in out} >= {"egress.http.allowed", "egress.secret_exfiltration", "egress.http.denied"}
