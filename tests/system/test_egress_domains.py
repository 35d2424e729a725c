"""Egress by domain name through `pysandbox run`: the egress proxy and resolver (sandbox/network/
egress/), root (pasta and a private network) and rootless (pasta as uid 65534).

SAFETY: each scenario runs in a child process started with `unshare --net --mount`: its own network
namespace (an "upstream" veth pair with 192.0.2.1 (TEST-NET-1) and 10.123.0.1 (a private address)
and a default route that leads nowhere) and its own mount namespace. The test servers (HTTP, HTTPS
with a CA the scenario makes with `cryptography`, and a raw TCP listener that records whether
anything reached it) listen there only. Nothing reaches the machine's interfaces, ruleset or files.

SIMULATED: the host resolver's answer for `internal.test` / `internal2.test` comes from an /etc/hosts
bind-mounted in the scenario's own mount namespace (the machine is offline; the proxy resolves
names that network.hosts does not name with the host's getaddrinfo). This machine's /dev/net/tun is
0600: the rootless scenario binds a 0666 tun node over it in its own mount namespace (as
tests/system/test_network_rootless.py does).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create the test namespaces")

from conftest import PYSANDBOX, PYTHON as PY  # noqa: E402

PROFILE = """\
version: 1
name: egress-domains
network:
  mode: {mode}
  hosts: {{web.test: 192.0.2.1, other.test: 192.0.2.1, web6.test: "2001:db8::1", other6.test: "2001:db8::1"}}
  egress:
    allow:
      - {{host: web.test, ports: [8080, 8443]}}
      - {{host: web6.test, ports: [8080, 8443]}}
      - {{host: web6b.test, ports: [8443]}}
      - {{host: internal6.test, ports: [8080]}}
      - {{host: internal.test, ports: [8080]}}
      - {{host: internal2.test, ports: [8080], allow_private: true}}
      - {{host: dual.test, ports: [8446, 8447]}}
filesystem:
  mounts:
    - {{type: bind, source: {d}/t, target: /t, read_only: true}}
"""

INSIDE = r'''
import json, os, socket, ssl, urllib.request
out = {}
def tryit(key, fn):
    try:
        out[key] = fn()
    except Exception as e:
        out[key] = "err:" + type(e).__name__ + ":" + str(getattr(e, "errno", "") or getattr(e, "reason", "") or e)[:80]
ctx = ssl.create_default_context(cafile="/t/ca.pem")
direct = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
via_env = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx))
tryit("https_transparent", lambda: direct.open("https://web.test:8443/", timeout=10).read().decode())
tryit("https_proxy_env", lambda: via_env.open("https://web.test:8443/", timeout=10).read().decode())
tryit("http_transparent", lambda: direct.open("http://web.test:8080/", timeout=10).read().decode())
tryit("http_proxy_env", lambda: via_env.open("http://web.test:8080/", timeout=10).read().decode())
tryit("dns_evil", lambda: socket.gethostbyname("evil.test"))
tryit("dns_web", lambda: socket.gethostbyname("web.test"))
def tls_to(addr, sni):
    c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE
    with socket.create_connection((addr, 8443), timeout=10) as s:
        with c.wrap_socket(s, server_hostname=sni) as t:
            t.sendall(b"GET / HTTP/1.0\r\n\r\n"); return t.recv(100).decode()
tryit("sni_other_at_web_address", lambda: tls_to("192.0.2.1", "other.test"))
tryit("sni_web_at_wrong_address", lambda: tls_to("10.123.0.1", "web.test"))
def raw(addr="192.0.2.1"):
    with socket.create_connection((addr, 9999), timeout=10) as s:
        s.sendall(b"\x00\x01 not tls, not http\n"); return s.recv(100).decode()
tryit("raw_tcp", raw)
def udp(addr="192.0.2.1"):
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", (addr, 9999)); return "sent"
tryit("udp", udp)
tryit("dns_internal_private", lambda: socket.gethostbyname("internal.test"))
def http_host(addr, host):
    with socket.create_connection((addr, 8080), timeout=10) as s:
        s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()); return s.recv(200).decode().split("\r\n")[0]
tryit("internal_direct", lambda: http_host("10.123.0.1", "internal.test"))
tryit("internal2_allow_private", lambda: direct.open("http://internal2.test:8080/", timeout=10).read().decode())
# IPv6: AAAA answers, the same proxy on the IPv6 side (web6.test: network.hosts; web6b.test: the host's
# resolver; internal6.test: a unique local address, no allow_private)
def aaaa(n):
    return sorted({i[4][0] for i in socket.getaddrinfo(n, 443, socket.AF_INET6, socket.SOCK_STREAM)})
tryit("dns6_web6", lambda: aaaa("web6.test"))
tryit("dns6_web6b", lambda: aaaa("web6b.test"))
tryit("dns6_evil", lambda: aaaa("evil.test"))
tryit("dns6_internal6", lambda: aaaa("internal6.test"))
tryit("dns4_web6_nodata", lambda: socket.gethostbyname("web6.test"))
tryit("https6_transparent", lambda: direct.open("https://web6.test:8443/", timeout=10).read().decode())
tryit("https6_proxy_env", lambda: via_env.open("https://web6.test:8443/", timeout=10).read().decode())
tryit("http6_transparent", lambda: direct.open("http://web6.test:8080/", timeout=10).read().decode())
tryit("https6_host_resolver", lambda: direct.open("https://web6b.test:8443/", timeout=10).read().decode())
tryit("sni6_other_at_web6_address", lambda: tls_to("2001:db8::1", "other6.test"))
tryit("sni6_web6_at_wrong_address", lambda: tls_to("fd00:db8::1", "web6.test"))
tryit("sni6_web6_at_mapped_v4", lambda: tls_to("::ffff:10.123.0.1", "web6.test"))
tryit("raw_tcp6", lambda: raw("2001:db8::1"))
tryit("udp6", lambda: udp("2001:db8::1"))
tryit("internal6_direct", lambda: http_host("fd00:db8::1", "internal6.test"))
# dual.test: 192.0.2.1 refuses ports 8446/8447, 2001:db8::1 serves them: the proxy's next address
tryit("dual_http_proxy_env", lambda: via_env.open("http://dual.test:8446/", timeout=20).read().decode())
tryit("dual_https_proxy_env", lambda: via_env.open("https://dual.test:8447/", timeout=20).read().decode())
print("INSIDE " + json.dumps(out), flush=True)
'''

SCENARIO = r'''
import datetime, http.server, json, os, socket, ssl, subprocess, sys, threading
D, MODE, USER, PYSANDBOX = sys.argv[1:5]
def sh(*a):
    subprocess.run(a, check=True, capture_output=True)
sh("mount", "--make-rprivate", "/")
with open(f"{D}/hosts", "w") as f:
    f.write("127.0.0.1 localhost\n10.123.0.1 internal.test internal2.test\n"
            "2001:db8::1 web6b.test\nfd00:db8::1 internal6.test\n192.0.2.1 dual.test\n2001:db8::1 dual.test\n")
os.chmod(f"{D}/hosts", 0o644)
sh("mount", "--bind", f"{D}/hosts", "/etc/hosts")
if USER != "root":
    sh("mknod", f"{D}/tun", "c", "10", "200"); os.chmod(f"{D}/tun", 0o666)
    sh("mount", "--bind", f"{D}/tun", "/dev/net/tun")
sh("ip", "link", "set", "lo", "up")
sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
sh("ip", "link", "set", "v0", "up"); sh("ip", "link", "set", "v1", "up")
sh("ip", "addr", "add", "192.0.2.1/24", "dev", "v0"); sh("ip", "addr", "add", "10.123.0.1/24", "dev", "v0")
sh("ip", "route", "add", "default", "via", "192.0.2.254")
# IPv6 (documentation prefix as the "public" address, a unique local one as a private address)
sh("ip", "-6", "addr", "add", "2001:db8::1/64", "dev", "v0", "nodad")
sh("ip", "link", "add", "w0", "type", "veth", "peer", "name", "w1")  # not on v0: pasta copies v0's first
sh("ip", "link", "set", "w0", "up"); sh("ip", "link", "set", "w1", "up")   # address only
sh("ip", "-6", "addr", "add", "fd00:db8::1/64", "dev", "w0", "nodad")
sh("ip", "-6", "route", "add", "default", "via", "2001:db8::fe", "dev", "v0")
with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
    f.write("1")
# a CA and a server certificate for web.test (cryptography)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
now = datetime.datetime.now(datetime.timezone.utc)
def name(cn): return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
ca_key = ec.generate_private_key(ec.SECP256R1())
ca = (x509.CertificateBuilder().subject_name(name("egress test CA")).issuer_name(name("egress test CA"))
      .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
      .not_valid_after(now + datetime.timedelta(days=1))
      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
      .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
      .sign(ca_key, hashes.SHA256()))
key = ec.generate_private_key(ec.SECP256R1())
cert = (x509.CertificateBuilder().subject_name(name("web.test")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(2).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("web.test"), x509.DNSName("other.test"),
                                                       x509.DNSName("web6.test"), x509.DNSName("web6b.test"),
                                                       x509.DNSName("other6.test"), x509.DNSName("dual.test")]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256()))
os.mkdir(f"{D}/t", 0o755)
with open(f"{D}/t/ca.pem", "wb") as f:
    f.write(ca.public_bytes(serialization.Encoding.PEM))
with open(f"{D}/server.pem", "wb") as f:
    f.write(cert.public_bytes(serialization.Encoding.PEM))
    f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
os.chmod(f"{D}/t/ca.pem", 0o644)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello " + (self.headers.get("Host") or "?").split(":")[0] + " " + self.path).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
    address_family = socket.AF_INET6                 # dual stack: IPv4 and IPv6 clients
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
plain = S(("::", 8080), H)
tls = S(("::", 8443), H)
plain6 = S(("2001:db8::1", 8446), H)                 # IPv6 only: 192.0.2.1:8446 refuses
tls6 = S(("2001:db8::1", 8447), H)
sc = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sc.load_cert_chain(f"{D}/server.pem")
tls.socket = sc.wrap_socket(tls.socket, server_side=True)
tls6.socket = sc.wrap_socket(tls6.socket, server_side=True)
for srv in (plain, tls, plain6, tls6):
    threading.Thread(target=srv.serve_forever, daemon=True).start()
raw_hits = []
rs = socket.socket(socket.AF_INET6); rs.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
rs.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); rs.bind(("::", 9999)); rs.listen(8)
def raw_serve():
    while True:
        try:
            c, a = rs.accept()
        except OSError:
            return
        raw_hits.append(a[0]); c.close()
threading.Thread(target=raw_serve, daemon=True).start()
us = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); us.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
us.bind(("::", 9999)); us.settimeout(0.5)
with open(f"{D}/p.yaml", "w") as f:
    f.write(sys.stdin.read())
with open(f"{D}/t/inside.py", "w") as f:
    f.write(INSIDE)
os.chmod(D, 0o755)
for n in ("p.yaml", "t/inside.py"):
    os.chmod(f"{D}/{n}", 0o644)
res = {}
env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
pre = []
if MODE not in ("pasta", "slirp4netns") and USER == "root":
    env["PYSANDBOX_STATE_DIR"] = f"{D}/state"
    subprocess.run([PYSANDBOX, "network", "create", MODE, "--subnet", "10.124.0.0/24", "--ipv6"], check=True,
                   capture_output=True, env=env)
if USER != "root":
    os.chown(D, 65534, 65534)
    env.update({"HOME": D, "XDG_DATA_HOME": f"{D}/data", "XDG_CACHE_HOME": f"{D}/cache", "XDG_RUNTIME_DIR": f"{D}/run"})
    pre = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
else:
    env["PYSANDBOX_STATE_DIR"] = f"{D}/state"
audit = f"{D}/audit.jsonl"
p = subprocess.run(pre + [PYSANDBOX, "run", "--profile", f"{D}/p.yaml", "--audit-log", audit,
                          "--", "/usr/bin/python3", "/t/inside.py"],
                   capture_output=True, text=True, env=env, timeout=120)
res["rc"], res["stderr"] = p.returncode, p.stderr.strip()[-2000:]
for line in p.stdout.splitlines():
    if line.startswith("INSIDE "):
        res["inside"] = json.loads(line[7:])
res["raw_hits"] = raw_hits
try:
    us.recvfrom(10); res["udp_hits"] = 1
except OSError:
    res["udp_hits"] = 0
try:
    with open(audit) as f:
        res["events"] = [json.loads(x) for x in f if x.strip()]
except OSError:
    res["events"] = []
if USER == "root" and MODE == "pasta":
    # the Python API: the proxy then runs in the launch server (sandbox/server/), events come back
    api = ("import json, sys; from sandbox.api import Sandbox\n"
           "r = Sandbox(sys.argv[1]).run(['/usr/bin/python3', '/t/inside.py'], text=True)\n"
           "print('API ' + json.dumps({'rc': r.exit_code, 'out': r.stdout, "
           "'types': [e.get('type') for e in r.events]}))\n")
    q = subprocess.run([sys.executable, "-c", api, f"{D}/p.yaml"], capture_output=True, text=True,
                       env={**env, "PYTHONPATH": ""}, timeout=120)
    line = next((x for x in q.stdout.splitlines() if x.startswith("API ")), None)
    res["api"] = json.loads(line[4:]) if line else {"error": q.stderr[-1500:]}
if MODE not in ("pasta", "slirp4netns"):
    subprocess.run([PYSANDBOX, "network", "rm", MODE], capture_output=True, env=env)
# what the supervisor started is gone with it: no listener of its left in this namespace
res["threads_left"] = subprocess.run(["pgrep", "-f", "pysandbox run"], capture_output=True, text=True).stdout.split()
print("RESULT " + json.dumps(res))
'''


def scenario(mode: str, user: str = "root") -> dict:
    d = tempfile.mkdtemp(prefix="pysbx-egress-", dir="/tmp")
    try:
        script = SCENARIO.replace("INSIDE)", repr(INSIDE) + ")", 1)
        p = subprocess.run(["unshare", "--net", "--mount", PY, "-c", script, d, mode, user, PYSANDBOX],
                           input=PROFILE.format(mode=mode, d=d), capture_output=True, text=True, timeout=240)
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        assert line, p.stdout[-3000:] + p.stderr[-3000:]
        return json.loads(line[7:])
    finally:
        subprocess.run(["rm", "-rf", d], check=False)


def check(res: dict) -> None:
    """Every mode here gives the sandbox IPv6 (pasta, slirp4netns, a private network made with --ipv6)."""
    assert res.get("inside"), res
    i = res["inside"]
    check_ipv6(res)
    # allowed name, certificate verified, with and without the proxy variables
    assert i["https_transparent"] == "hello web.test /", res
    assert i["https_proxy_env"] == "hello web.test /", res
    assert i["http_transparent"] == "hello web.test /", res
    assert i["http_proxy_env"] == "hello web.test /", res
    assert i["dns_web"] == "192.0.2.1"
    # a name no rule allows: NXDOMAIN from the sandbox's resolver
    assert i["dns_evil"].startswith("err:gaierror"), i
    # the allowed name's address with another SNI; the allowed SNI at another address: refused
    assert i["sni_other_at_web_address"].startswith("err:"), i
    assert i["sni_web_at_wrong_address"].startswith("err:"), i
    # a program that ignores proxies and speaks neither TLS nor HTTP: never reaches the server
    assert not i["raw_tcp"].startswith("hello"), i
    assert res["raw_hits"] == [] and res["udp_hits"] == 0, res
    bad = [e for e in res["events"] if e["type"] == "integrity_violation"]
    assert not bad, json.dumps(bad)
    # allowed name resolving to a private address without allow_private: refused at DNS and proxy
    assert i["dns_internal_private"].startswith("err:gaierror"), i
    assert not i["internal_direct"].startswith("HTTP/1.0 200"), i
    # ... and with allow_private it works
    assert i["internal2_allow_private"] == "hello internal2.test /", i
    assert res["rc"] == 0, res
    ev = [e for e in res["events"] if e["type"].startswith("egress.")]
    allowed = [e["egress"] for e in ev if e["type"] == "egress.allowed"]
    denied = [e["egress"] for e in ev if e["type"] == "egress.denied"]
    assert {"name": "web.test", "address": "192.0.2.1", "port": 8443, "protocol": "tls",
            "rule": {"index": 0, "text": "{host: web.test, ports: [8080, 8443]}"}} in allowed, allowed
    assert any(a["name"] == "web.test" and a["protocol"] == "connect" for a in allowed), allowed
    assert any(d["name"] == "evil.test" and d["protocol"] == "dns" and d["rule"] is None for d in denied), denied
    assert any(d["name"] == "other.test" and d["protocol"] == "tls" and d["address"] == "192.0.2.1"
               for d in denied), denied
    assert any(d["name"] == "web.test" and d["address"] == "10.123.0.1"
               and d["reason"] == "address is not one the name resolves to" for d in denied), denied
    assert any(d["name"] == "internal.test" and d["protocol"] == "dns" and "private" in d["reason"]
               for d in denied), denied
    assert all(e["sandbox_id"] == ev[0]["sandbox_id"] for e in ev)


def check_ipv6(res: dict) -> None:
    i = res["inside"]
    # AAAA: allowed names get their IPv6 addresses (network.hosts, the host's resolver), in every mode
    assert i["dns6_web6"] == ["2001:db8::1"] and i["dns6_web6b"] == ["2001:db8::1"], i
    assert i["dns6_evil"].startswith("err:gaierror"), i                 # NXDOMAIN
    assert i["dns6_internal6"].startswith("err:gaierror"), i            # unique local, no allow_private
    assert i["dns4_web6_nodata"].startswith("err:gaierror"), i          # no IPv4 address: no A record
    # refused whatever the mode: another SNI at the allowed address, the allowed SNI elsewhere (a
    # unique local address; an IPv4-mapped one, which leaves as IPv4), a protocol without a name, UDP
    for k in ("sni6_other_at_web6_address", "sni6_web6_at_wrong_address", "sni6_web6_at_mapped_v4"):
        assert i[k].startswith("err:"), (k, i)
    assert not i["raw_tcp6"].startswith("hello") and not i["internal6_direct"].startswith("HTTP/1.0 200"), i
    assert i["udp6"] == "sent" or i["udp6"].startswith("err:"), i
    for k in ("https6_transparent", "https6_proxy_env", "http6_transparent"):
        assert i[k] == "hello web6.test /", (k, i)
    assert i["https6_host_resolver"] == "hello web6b.test /", i
    ev = [e for e in res["events"] if e["type"].startswith("egress.")]
    allowed = [e["egress"] for e in ev if e["type"] == "egress.allowed"]
    denied = [e["egress"] for e in ev if e["type"] == "egress.denied"]
    assert {"name": "web6.test", "address": "2001:db8::1", "port": 8443, "protocol": "tls",
            "rule": {"index": 1, "text": "{host: web6.test, ports: [8080, 8443]}"}} in allowed, allowed
    assert any(d["name"] == "other6.test" and d["protocol"] == "tls" and d["address"] == "2001:db8::1"
               for d in denied), denied
    assert any(d["name"] == "web6.test" and d["address"] == "fd00:db8::1"
               and d["reason"] == "address is not one the name resolves to" for d in denied), denied
    assert any(d["name"] is None and d["address"] == "2001:db8::1" and d["port"] == 9999 for d in denied), denied
    # proxy variables to a name whose IPv4 address refuses: its IPv6 address next, one decision each
    assert i["dual_http_proxy_env"] == "hello dual.test /" and i["dual_https_proxy_env"] == "hello dual.test /", i
    dual = [e for e in ev if e["egress"]["name"] == "dual.test"]
    assert sorted((e["type"], e["egress"]["protocol"], e["egress"]["address"], e["egress"].get("reason")) for e in dual
                  if e["type"] != "egress.closed") == [
        ("egress.allowed", "connect", "2001:db8::1", "after 192.0.2.1: Connection refused"),
        ("egress.allowed", "http", "2001:db8::1", "after 192.0.2.1: Connection refused")], dual


def test_egress_domains_pasta_root():
    res = scenario("pasta")
    check(res)
    api = res["api"]
    assert api.get("rc") == 0, api
    inside = json.loads(api["out"].strip().split("INSIDE ", 1)[1])
    assert inside["https_transparent"] == "hello web.test /" and inside["dns_evil"].startswith("err:"), inside
    assert "egress.allowed" in api["types"] and "egress.denied" in api["types"], api


def test_egress_domains_private_network_root():
    check(scenario("egnet"))


def test_egress_domains_pasta_rootless():
    check(scenario("pasta", user="65534"))


def test_egress_domains_slirp4netns_root():
    check(scenario("slirp4netns"))
