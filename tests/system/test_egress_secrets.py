"""Secrets and http rules through the real egress proxy, end to end (docs/network.md, "Egress by
domain name" and "Secrets"): `pysandbox run` with host rules, `network.hosts` naming host-side test
servers, http rules and a secret; the program (/usr/bin/python3 of the host, in a `strict` root as
root, no profile base rootless) connects to the servers BY NAME with certificate verification on
(SSL_CERT_FILE: the sandbox's CA bundle), without proxy variables (the nft steering takes it to the
proxy) and with them (CONNECT); the proxy intercepts the hosts with http rules or secrets and
splices every other allowed host; the upstream server (a CA of the test's own, trusted by the
interception through $PYSANDBOX_EGRESS_UPSTREAM_CA of the supervisor) sees the real value.
Root on a private network, pasta and slirp4netns; rootless (uid 65534) on pasta.

While the program waits (it reads its stdin), the scenario scans from the host every process of the
sandbox (those below the supervisor in another pid namespace: /proc/PID/mem, environ, cmdline) and
every process's argv and environment but the supervisor's and its callers'; then explain, a
detached sandbox's `inspect`, the audit log, the state directory and the plan cache are searched
for the value.

SAFETY: each scenario runs in a child process started with `unshare --net --mount` (its own
network namespace with an "upstream" veth, 192.0.2.1 (TEST-NET-1), and a default route that leads
nowhere; its own mount namespace and state directory). The test servers listen there only.
SIMULATED (as tests/system/test_egress_domains.py): this machine's /dev/net/tun is 0600, so the
rootless scenario binds a 0666 tun node over it in its own mount namespace.
"""
from __future__ import annotations

import datetime
import http.server
import json
import os
import re
import secrets
import subprocess
import tempfile
import textwrap

import pytest

from conftest import PYSANDBOX, PYTHON
from probes import UPSTREAM

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (test namespaces, memory scans)")

NET = "secnet"
TLS_PORT, PLAIN_PORT = 8443, 8080
NAMES = ["api.test", "other.test", "plain.api.test", "spliced.test"]

# --- the upstream: HTTPS and HTTP servers with a CA of the test's own, recording what they receive --

def _test_ca(tmp, names):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "egress-secrets test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, chain = tmp / "upstream-ca.pem", tmp / "upstream.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(ca_file), str(chain)


class _Recorder(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list = []

    def _any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if len(body) != n:
            return                                                # an incomplete request: not served
        type(self).seen.append({"peer": self.client_address[1], "method": self.command, "path": self.path,
                                "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body.decode()})
        out = f"ok {self.command} {self.path}".encode()           # echoes a header back only when asked:
        if self.path.endswith("/echo"):                              # an "echo my headers" endpoint
            out = self.headers.get("Authorization", "").encode()
        elif self.path.endswith("/echo-big"):                        # ... with the value across reads
            out = b"a" * 100000 + self.headers.get("Authorization", "").encode() + b"b" * 1000
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = _any

    def log_message(self, *a):
        pass

# --- the program in the sandbox ------------------------------------------------------------

CLIENT = r'''
import base64, http.client, json, os, socket, ssl, sys, urllib.request
P = int(os.environ.get("UP_TLS_PORT", "8443"))
tok = os.environ["GITHUB_TOKEN"]
ctx = ssl.create_default_context()          # trusts what SSL_CERT_FILE names: the mounted bundle
auth = {"Authorization": "Bearer " + tok}


def conn(name):
    return http.client.HTTPSConnection(name, P, context=ctx, timeout=20)   # by name, no proxy variables


def req(c, method, path, headers=None, body=None):
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return [r.status, r.read().decode()]
    except Exception as e:
        return ["error", type(e).__name__]


def issuer(name, cafile=None):
    c = ssl.create_default_context(cafile=cafile) if cafile else ctx
    try:
        with socket.create_connection((name, P), timeout=20) as s, c.wrap_socket(s, server_hostname=name) as t:
            cn = dict(x[0] for x in t.getpeercert()["issuer"])["commonName"]
            t.sendall(b"GET /cert HTTP/1.1\r\nHost: " + name.encode() + b"\r\nConnection: close\r\n\r\n")
            first = b""
            while b"\r\n" not in first:
                more = t.recv(4096)
                if not more:
                    break
                first += more
            return [cn, first.split(b"\r\n")[0].decode()]
    except ssl.SSLCertVerificationError:
        return ["verify-failed"]
    except Exception as e:
        return ["error", type(e).__name__]


out = {"env": tok, "cert_file": os.environ.get("SSL_CERT_FILE"), "node": os.environ.get("NODE_EXTRA_CA_CERTS"),
       "https_proxy": os.environ.get("HTTPS_PROXY")}
c = conn("api.test")
out["get1"] = req(c, "GET", "/repos/acme/one", auth)                     # keep-alive: one connection
out["get2"] = req(c, "GET", "/repos/acme/two", auth)
out["post"] = req(c, "POST", "/repos/acme/one", auth, b"x")              # the rule allows GET only
out["echo"] = req(conn("api.test"), "GET", "/repos/acme/echo", auth)     # the upstream reflects the value
out["echo_big"] = req(conn("api.test"), "GET", "/repos/acme/echo-big", auth)
out["other_path"] = req(conn("api.test"), "GET", "/orgs/acme", auth)     # outside the rule's paths
out["dotdot"] = req(conn("api.test"), "GET", "/repos/acme/../../orgs/acme", auth)   # not normalised
out["other_ok"] = req(conn("other.test"), "GET", "/fine")
out["leak_header"] = req(conn("other.test"), "GET", "/x", {"X-Token": tok})
out["leak_path"] = req(conn("other.test"), "GET", "/x?t=" + tok.replace(":", "%3A"))
out["leak_body"] = req(conn("other.test"), "POST", "/x", {}, b"a" * 70000 + tok.encode())
plain = http.client.HTTPConnection("plain.api.test", int(os.environ.get("UP_PLAIN_PORT", "8080")), timeout=20)
out["plain"] = req(plain, "GET", "/repos/acme/one", auth)
# through the proxy variables (urllib: HTTPS_PROXY -> CONNECT api.test:PORT): intercepted the same
opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx))
try:
    r = opener.open(urllib.request.Request(f"https://api.test:{P}/repos/acme/proxied", headers=auth), timeout=20)
    out["via_proxy_env"] = [r.status, r.read().decode()]
except Exception as e:
    out["via_proxy_env"] = ["error", type(e).__name__, str(e)[:200]]
# who signed the certificate: the sandbox's CA for an intercepted host, the server's own CA for a
# host with no http rule or secret (spliced); the test CA alone does not verify an intercepted one
out["cert_api"] = issuer("api.test")
out["cert_spliced"] = issuer("spliced.test", cafile="/t/ca.pem")
out["untrusted"] = issuer("api.test", cafile="/t/ca.pem")
with open("/proc/self/environ", "rb") as f:
    out["environ"] = base64.b64encode(f.read()).decode()
with open(os.environ["SSL_CERT_FILE"], "rb") as f:
    out["bundle"] = base64.b64encode(f.read()).decode()
print(json.dumps(out), flush=True)
sys.stdin.read()                            # held until the test has scanned this process's memory
'''


def _profile(mode: str, user: str, *, source="env:GH_TEST_TOKEN", d="/t") -> str:
    return textwrap.dedent(f"""\
        version: 1
        name: secrets-test
        {"extends: strict" if user == "root" else "# no base: uid 65534 has no delegated cgroups"}
        network:
          mode: {mode}
          hosts: {{api.test: 192.0.2.1, other.test: 192.0.2.1, plain.api.test: 192.0.2.1, spliced.test: 192.0.2.1}}
          egress:
            allow:
              - {{host: api.test, ports: [{TLS_PORT}]}}
              - {{host: other.test, ports: [{TLS_PORT}]}}
              - {{host: plain.api.test, ports: [{PLAIN_PORT}]}}
              - {{host: spliced.test, ports: [{TLS_PORT}]}}
            http:
              - {{host: api.test, methods: [GET], paths: ["/repos/acme/*"]}}
              - {{host: other.test}}
              - {{host: plain.api.test}}
          secrets:
            GITHUB_TOKEN: {{from: "{source}", hosts: [api.test, plain.api.test], header: Authorization,
                            format: "Bearer {{}}"}}
        filesystem:
          mounts:
            - {{type: bind, source: {d}, target: /t, read_only: true}}
        """)


# --- the scenario: in its own net + mount namespaces (see the module docstring) --------------------

SCENARIO = r"""
import base64, http.server, json, os, ssl, subprocess, sys, threading, time
from pathlib import Path
D, HERE, MODE, USER, PYSANDBOX = sys.argv[1:6]
sys.path[:0] = [HERE, os.path.dirname(HERE)]
import test_egress_secrets as T
VALUE = os.environ["SECRET_VALUE"]
started = time.time() - 1
""" + UPSTREAM + r"""
if USER != "root":
    sh("mknod", f"{D}/tun", "c", "10", "200"); os.chmod(f"{D}/tun", 0o666)
    sh("mount", "--bind", f"{D}/tun", "/dev/net/tun")
sh("ip", "route", "add", "default", "via", "192.0.2.254")
os.makedirs(f"{D}/t", 0o755)
ca_file, chain = T._test_ca(Path(D), T.NAMES)
with open(ca_file, "rb") as f, open(f"{D}/t/ca.pem", "wb") as g:
    g.write(f.read())
with open(f"{D}/t/client.py", "w") as f:
    f.write(T.CLIENT)
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
tls, plain = S(("192.0.2.1", T.TLS_PORT), T._Recorder), S(("192.0.2.1", T.PLAIN_PORT), T._Recorder)
sc = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sc.load_cert_chain(chain)
tls.socket = sc.wrap_socket(tls.socket, server_side=True)
for srv in (tls, plain):
    threading.Thread(target=srv.serve_forever, daemon=True).start()
with open(f"{D}/p.yaml", "w") as f:
    f.write(T._profile(MODE, USER, d=f"{D}/t"))
for n in (D, f"{D}/t"):
    os.chmod(n, 0o755)
for n in ("p.yaml", "upstream-ca.pem", "t/ca.pem", "t/client.py"):
    os.chmod(f"{D}/{n}", 0o644)
env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "GH_TEST_TOKEN": VALUE,
       "PYSANDBOX_EGRESS_UPSTREAM_CA": ca_file}
pre = []
if USER == "root":
    env["PYSANDBOX_STATE_DIR"] = state = f"{D}/state"
    if MODE not in ("pasta", "slirp4netns"):
        sh(PYSANDBOX, "network", "create", MODE, "--subnet", "10.125.0.0/24", env=env)
else:
    for n in (D, f"{D}/p.yaml"):
        os.chown(n, 65534, 65534)
    env.update({"HOME": D, "XDG_DATA_HOME": f"{D}/data", "XDG_CACHE_HOME": f"{D}/cache",
                "XDG_RUNTIME_DIR": f"{D}/run"})
    state = f"{D}/data/pysandbox"
    pre = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
audit = f"{D}/audit.jsonl"
p = subprocess.Popen(pre + [PYSANDBOX, "run", "--profile", f"{D}/p.yaml", "--audit-log", audit, "--",
                            "/usr/bin/python3", "/t/client.py"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
res = T._scan(p, VALUE)
res["seen"] = T._Recorder.seen
with open(audit) as f:
    res["audit"] = f.read()
if USER == "root" and MODE == "pasta":
    # the Python API: the proxy (and the values) then live in the launch server (sandbox/server/),
    # the interception's events come back to the API process
    api = ("import json, sys; from sandbox.api import Sandbox\n"
           "r = Sandbox(sys.argv[1]).run(['/usr/bin/python3', '-c', sys.argv[2]], text=True)\n"
           "print('API ' + json.dumps({'rc': r.exit_code, 'out': r.stdout, 'err': r.stderr[-500:], "
           "'events': [e for e in r.events if e.get('type', '').startswith('egress.http')]}))\n")
    one = ("import http.client, os, ssl\n"
           "c = http.client.HTTPSConnection('api.test', 8443, context=ssl.create_default_context(), timeout=20)\n"
           "c.request('GET', '/repos/acme/api', headers={'Authorization': 'Bearer ' + os.environ['GITHUB_TOKEN']})\n"
           "r = c.getresponse(); print(r.status, r.read().decode())\n")
    q = subprocess.run([sys.executable, "-c", api, f"{D}/p.yaml", one], capture_output=True, text=True,
                       env={**env, "PYTHONPATH": ""}, timeout=120)
    line = next((x for x in q.stdout.splitlines() if x.startswith("API ")), None)
    res["api"] = json.loads(line[4:]) if line else {"error": q.stderr[-1500:]}
# never shown: explain (text and JSON), a detached sandbox's inspect
res["shown"] = []
for args in (["explain", "--profile", f"{D}/p.yaml"], ["explain", "--json", "--profile", f"{D}/p.yaml"],
             ["run", "-d", "--name", "secinspect", "--profile", f"{D}/p.yaml", "--", "/bin/sleep", "60"],
             ["inspect", "secinspect"], ["ps"], ["rm", "-f", "secinspect"]):
    q = subprocess.run(pre + [PYSANDBOX, *args], capture_output=True, text=True, env=env, timeout=60)
    res["shown"].append([" ".join(args[:2]), q.returncode,
                         "GITHUB_TOKEN" in q.stdout, VALUE in q.stdout + q.stderr, q.stderr[-300:]])
def detached_left():
    out = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if b"secinspect" in f.read().split(b"\0"):        # (an argument, not this script's text)
                    out.append(d)
        except OSError:
            pass
    return out
for _ in range(100):                 # the detached sandbox's supervisor ends (and cleans up) first
    if not detached_left():
        break
    time.sleep(0.1)
res["detached_left"] = detached_left()
# nowhere on disk: the state directory, the audit log, plan cache entries written since
cache = "/var/cache/pysandbox/plans" if USER == "root" else f"{D}/cache/pysandbox/plans"
files = [p for p in Path(state).rglob("*") if p.is_file()] + [Path(audit)]
files += [p for p in Path(cache).glob("*") if p.is_file() and p.stat().st_mtime >= started]
res["files_scanned"] = len(files)
res["files_with_value"] = [str(p) for p in files if VALUE.encode() in p.read_bytes()]
if USER == "root" and MODE not in ("pasta", "slirp4netns"):
    sh(PYSANDBOX, "network", "rm", MODE, env=env)
tls.shutdown(); plain.shutdown()
print("RESULT " + json.dumps(res))
"""


def _scan(p, value: str) -> dict:
    """While the program waits: its output, and where the value is (see the module docstring).
    No assertion here (the scenario reports back)."""
    res = {"violations": []}
    try:
        line = p.stdout.readline()
        if not line:
            res["violations"].append("no output from the client")
            return res
        res["out"] = out = json.loads(line)
        ns = os.readlink(f"/proc/{p.pid}/ns/pid")
        procs = [q for q in _tree(p.pid) if _ns(q) not in (ns, None)]     # PID 1 and the program
        res["procs"] = len(procs)
        token = out["env"].rsplit(":", 1)[1].encode()
        for pid in procs:
            if _memory_has(pid, [value.encode(), token])[value.encode()]:
                res["violations"].append(f"the value in the memory of sandbox process {pid}")
            for f in ("environ", "cmdline"):
                with open(f"/proc/{pid}/{f}", "rb") as fh:
                    if value.encode() in fh.read():
                        res["violations"].append(f"the value in /proc/{pid}/{f}")
        program = [q for q in procs if b"client.py" in open(f"/proc/{q}/cmdline", "rb").read()]
        res["scan_sees_placeholder"] = len(program) == 1 and _memory_has(program[0], [token])[token]
        # no process's argv, and no environment but the supervisor's (it read the value from its own:
        # `from: env:`) and its callers' (the scenario gave it): not PID 1's, the program's, pasta's...
        callers, q = {p.pid}, os.getpid()
        while q > 1:
            callers.add(q)
            with open(f"/proc/{q}/stat") as fh:
                q = int(fh.read().rsplit(")", 1)[1].split()[1])
        for d in os.listdir("/proc"):
            if d.isdigit():
                for f in ("cmdline", "environ"):
                    if f == "environ" and int(d) in callers:
                        continue
                    try:
                        with open(f"/proc/{d}/{f}", "rb") as fh:
                            if value.encode() in fh.read():
                                res["violations"].append(f"the value in /proc/{d}/{f} ({_comm(d)})")
                    except OSError:
                        pass
    finally:
        _, err = p.communicate(b"", timeout=90)
        res["rc"], res["err"] = p.returncode, err.decode(errors="replace")[-2000:]
    return res


def _ns(pid) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _scenario(mode: str, user: str = "root") -> tuple[dict, str]:
    d = tempfile.mkdtemp(prefix="pysbx-secrets-", dir="/tmp")
    value = "ghp_" + secrets.token_hex(20)
    try:
        p = subprocess.run(["unshare", "--net", "--mount", "--", PYTHON, "-c", SCENARIO, d,
                            os.path.dirname(os.path.abspath(__file__)), mode, user, PYSANDBOX],
                           capture_output=True, text=True, timeout=300, env=dict(os.environ, SECRET_VALUE=value))
    finally:
        subprocess.run(["rm", "-rf", d], check=False)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(line[0][7:]), value


def _check(res: dict, value: str) -> None:
    import base64

    import audit
    seen = res["seen"]
    assert res["rc"] == 0 and not res["violations"], res
    out = res["out"]
    assert res["procs"] >= 2 and res["scan_sees_placeholder"]    # the scan does see what is there
    # the program: a placeholder as GITHUB_TOKEN, the trust variables, the bundle with the sandbox's CA
    assert re.fullmatch(r"pysandbox-secret:GITHUB_TOKEN:[0-9a-f]{32}", out["env"])
    token = out["env"].rsplit(":", 1)[1]
    assert out["cert_file"] == out["node"] == "/etc/ssl/certs/ca-certificates.crt"
    assert out["https_proxy"] == "http://127.0.0.1:3128"
    environ, bundle = (base64.b64decode(out[k]) for k in ("environ", "bundle"))
    assert value.encode() not in environ and value.encode() not in bundle
    assert b"pysandbox: this sandbox's CA" in bundle and b"PRIVATE KEY" not in bundle
    # intercepted: the sandbox's CA signed api.test's certificate (the test's CA alone does not
    # verify it); spliced: spliced.test's certificate is the server's own
    assert out["cert_api"][0].startswith("pysandbox sandbox ") and out["cert_api"][0].endswith(" CA"), out
    assert out["untrusted"] == ["verify-failed"], out
    assert out["cert_spliced"] == ["egress-secrets test CA", "HTTP/1.1 200 OK"], out

    # allowed: the server saw the real value, in the header only, both requests on one connection;
    # the program using the proxy variables (CONNECT) is intercepted the same
    assert out["get1"] == [200, "ok GET /repos/acme/one"] and out["get2"] == [200, "ok GET /repos/acme/two"]
    assert out["via_proxy_env"] == [200, "ok GET /repos/acme/proxied"], out
    api = [s for s in seen if s["path"].startswith("/repos/acme/") and s["path"] != "/repos/acme/api"]
    if "api" in res:               # (root, pasta) the Python API's launch server intercepts alike
        a = res["api"]
        assert a.get("rc") == 0 and a["out"] == "200 ok GET /repos/acme/api\n", a
        assert [x["headers"]["authorization"] for x in seen if x["path"] == "/repos/acme/api"] == [f"Bearer {value}"]
        assert [(e["egress"]["name"], e["http"]["path"], e["http"].get("secrets")) for e in a["events"]] == \
            [("api.test", "/repos/acme/api", ["GITHUB_TOKEN"])], a
        assert value not in json.dumps(a)
    assert [s["path"] for s in api] == [f"/repos/acme/{p}" for p in ("one", "two", "echo", "echo-big", "proxied")]
    assert [s["headers"]["authorization"] for s in api] == [f"Bearer {value}"] * 5
    assert api[0]["peer"] == api[1]["peer"]
    # reflected by the upstream: cut off before the sandbox sees it (502, or a body cut short)
    assert out["echo"][0] == 502 and value not in json.dumps(out["echo"])
    assert out["echo_big"] in (["error", "IncompleteRead"], ["error", "RemoteDisconnected"]), out["echo_big"]
    # denied by the http rule: never reached the server
    for k in ("post", "other_path", "dotdot"):
        assert out[k][0] == 403, (k, out[k])
    assert not [s for s in seen if s["method"] == "POST" and s["path"].startswith("/repos")]
    assert not [s for s in seen if s["path"].startswith("/orgs")]
    # another host: fine without the placeholder, refused with it anywhere (header, path, body)
    assert out["other_ok"] == [200, "ok GET /fine"]
    for k in ("leak_header", "leak_path", "leak_body"):
        assert out[k][0] == 403, (k, out[k])
    assert [s["path"] for s in seen if s["headers"].get("host", "").startswith("other.test")] == ["/fine"]
    # plaintext HTTP: the secret is never put on it
    assert out["plain"][0] == 403
    assert not [s for s in seen if s["headers"].get("host", "").startswith("plain.api.test")]
    assert [s["path"] for s in seen if s["headers"].get("host", "").startswith("spliced.test")] == ["/cert"]
    assert not any(value in json.dumps(s) for s in seen if not s["path"].startswith("/repos/acme/"))

    # never shown or stored: explain, inspect, the audit log, the state directory, the plan cache
    for what, rc, named, leaked, err in res["shown"]:
        assert rc == 0 and not leaked, (what, rc, leaked, err)
        if what.startswith("explain"):
            assert named, what
    assert res["files_scanned"] > 1 and res["files_with_value"] == [], res["files_with_value"]
    assert res["detached_left"] == [], res["detached_left"]
    text = res["audit"]
    assert value not in text and token not in text, text
    evs = [json.loads(x) for x in text.splitlines()]
    for e in evs:
        audit.validate(e)
    http_ev = [e for e in evs if e["type"].startswith("egress.http.") or e["type"].startswith("egress.secret_")]
    assert all(e["egress"]["name"] and e["egress"]["port"] for e in http_ev), http_ev
    allowed = [e for e in evs if e["type"] == "egress.http.allowed" and e["egress"]["name"] == "api.test"]
    assert [(e["http"]["method"], e["http"]["path"], e["http"]["rule"], e["http"].get("secrets"))
            for e in allowed] == \
        [("GET", f"/repos/acme/{p}", "network.egress.http[0]", ["GITHUB_TOKEN"])
         for p in ("one", "two", "echo", "echo-big", "proxied")]
    denied = [(e["egress"]["name"], e["http"]["method"], e["http"]["path"])
              for e in evs if e["type"] == "egress.http.denied"]
    assert ("api.test", "POST", "/repos/acme/one") in denied and ("api.test", "GET", "/orgs/acme") in denied
    assert ("plain.api.test", "GET", "/repos/acme/one") in denied
    assert [(e["http"]["path"], e["http"]["secret"]) for e in evs if e["type"] == "egress.secret_reflected"] == \
        [("/repos/acme/echo", "GITHUB_TOKEN"), ("/repos/acme/echo-big", "GITHUB_TOKEN")]
    exfil = [e for e in evs if e["type"] == "egress.secret_exfiltration"]
    assert [(e["egress"]["name"], e["http"]["secret"], e["http"]["where"]) for e in exfil] == \
        [("other.test", "GITHUB_TOKEN", "head"), ("other.test", "GITHUB_TOKEN", "head"),
         ("other.test", "GITHUB_TOKEN", "body")]
    # the proxy's own decision: each connection allowed by its host rule, spliced or intercepted
    conns = {(e["egress"]["name"], e["egress"]["protocol"]) for e in evs if e["type"] == "egress.allowed"}
    assert {("api.test", "tls"), ("api.test", "connect"), ("other.test", "tls"), ("plain.api.test", "http"),
            ("spliced.test", "tls")} <= conns, conns
    assert not [e for e in http_ev if e["egress"]["name"] == "spliced.test"]


def test_secret_through_the_proxy_private_network_root():
    _check(*_scenario("secwire"))


def test_secret_through_the_proxy_pasta_root():
    _check(*_scenario("pasta"))


def test_secret_through_the_proxy_slirp4netns_root():
    _check(*_scenario("slirp4netns"))


def test_secret_through_the_proxy_pasta_rootless():
    """As uid 65534 (the supervisor, and so the proxy, unprivileged), the sandbox on pasta."""
    import shutil
    if not shutil.which("pasta"):
        pytest.fail("pasta is not installed (Makefile DEB_PKGS)")
    _check(*_scenario("pasta", "65534"))


# --- the launch's own checks (a private network in the test netns: no server needed) -------------

@pytest.fixture(scope="module")
def secnet(testns):
    """The private network NET in the module's test network namespace (no upstream server needed)."""
    r = subprocess.run([PYSANDBOX, "network", "create", NET], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    try:
        yield {}
    finally:
        subprocess.run([PYSANDBOX, "network", "rm", NET], capture_output=True, timeout=60)


def _simple_profile(tmp, *, source="env:GH_TEST_TOKEN"):
    p, t = tmp / "secrets.yaml", tmp / "t"          # (/t: a directory apart from a file secret's)
    t.mkdir(exist_ok=True)
    p.write_text(_profile(NET, "root", source=source, d=str(t)))
    os.chmod(p, 0o644)
    return str(p)


def test_missing_secret_stops_the_launch(secnet, tmp_path):
    """Fail closed: a secret whose source is missing stops the launch before the program runs."""
    os.chmod(tmp_path, 0o755)
    r = subprocess.run([PYSANDBOX, "run", "--profile", _simple_profile(tmp_path), "--", "/bin/echo", "ran"],
                       capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "GH_TEST_TOKEN"})
    assert r.returncode == 125 and "ran" not in r.stdout
    assert r.stderr.strip().splitlines() == [
        "pysandbox: network.secrets: secret GITHUB_TOKEN (env:GH_TEST_TOKEN): the variable is not set"]
    missing = tmp_path / "nope"
    r = subprocess.run([PYSANDBOX, "run", "--profile", _simple_profile(tmp_path, source=f"file:{missing}"), "--",
                        "/bin/echo", "ran"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 125 and "No such file" in r.stderr and "ran" not in r.stdout


def test_secret_from_a_file_and_explain_shows_names_only(secnet, tmp_path):
    os.chmod(tmp_path, 0o755)
    value = "filetok_" + secrets.token_hex(16)
    f = tmp_path / "token"
    f.write_text(value + "\n")
    prof = _simple_profile(tmp_path, source=f"file:{f}")
    from pathlib import Path
    from sandbox.plancache import cache_dir
    log, started = tmp_path / "audit.jsonl", __import__("time").time() - 1
    for _ in range(2):                     # the second run may take a cached plan
        r = subprocess.run([PYSANDBOX, "run", "--profile", prof, "--audit-log", str(log), "--", "/bin/sh", "-c",
                            "echo $GITHUB_TOKEN"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("pysandbox-secret:GITHUB_TOKEN:") and value not in r.stdout + r.stderr
    # nowhere on disk but its file: not the plan cache (entries written since), the state directory,
    # the audit log
    stored = [p for d in (os.environ["PYSANDBOX_STATE_DIR"], log.parent) for p in Path(d).rglob("*")
              if p.is_file() and p != f]
    stored += [p for p in Path(cache_dir()).glob("*") if p.is_file() and p.stat().st_mtime >= started]
    assert log in stored and [str(p) for p in stored if value.encode() in p.read_bytes()] == []
    for args in (["explain", "--profile", prof], ["explain", "--json", "--profile", prof]):
        r = subprocess.run([PYSANDBOX, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "GITHUB_TOKEN" in r.stdout and value not in r.stdout

@pytest.mark.parametrize("runner", ["root"], indirect=True)
def test_image_root_gets_the_trust_store_and_placeholder(secnet, img, tmp_profile):
    """An image without /etc/ssl (busybox:test): the bundle's mount point is made in the image's
    writable layer, the trust variables name it; the image's files are not changed otherwise."""
    import imagebuild as ib
    r = ib.cli(img, "network", "create", "secimg")
    assert r.returncode == 0, r
    try:
        prof = tmp_profile(textwrap.dedent("""\
            version: 1
            extends: strict
            network:
              mode: secimg
              secrets:
                GITHUB_TOKEN: {from: "env:GH_TEST_TOKEN", hosts: [api.test]}
              egress:
                allow: [{host: api.test}]
            """))
        runner = img[0]
        r = runner("run", "--profile", prof, "--image", "busybox:test", "--", "/bin/sh", "-c",
                   'echo "$GITHUB_TOKEN $SSL_CERT_FILE"; grep -c "pysandbox: this sandbox" $SSL_CERT_FILE',
                   env={"PYSANDBOX_STATE_DIR": img[1], "GH_TEST_TOKEN": "image-secret-value"})
        assert r.returncode == 0, r
        first, count = r.stdout.split("\n")[:2]
        assert re.fullmatch(r"pysandbox-secret:GITHUB_TOKEN:[0-9a-f]{32} /etc/ssl/certs/ca-certificates.crt", first)
        assert count == "1" and "image-secret-value" not in r.stdout
    finally:
        ib.cli(img, "network", "rm", "secimg")


def test_directory_root_gets_the_trust_store_and_stays_untouched(secnet, shared_tmp):
    """A read-only `root:` directory without /etc/ssl: the mount point comes from the sandbox's top
    layer (store/mountpoints), nothing is written into the directory."""
    import shutil
    tmp_path = shared_tmp                  # (the sandbox's root must reach it: pytest's tmp_path is 0700)
    root = tmp_path / "rootdir"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for a in ("sh", "grep", "echo"):
        (root / "bin" / a).symlink_to("busybox")
    os.chmod(tmp_path, 0o755)
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    prof = tmp_path / "d.yaml"
    prof.write_text(textwrap.dedent(f"""\
        version: 1
        extends: strict
        filesystem: {{root: {{path: {root}}}, read_only: true}}
        network:
          mode: {NET}
          secrets:
            GITHUB_TOKEN: {{from: "env:GH_TEST_TOKEN", hosts: [api.test]}}
          egress:
            allow: [{{host: api.test}}]
        """))
    r = subprocess.run([PYSANDBOX, "run", "--profile", str(prof), "--", "/bin/sh", "-c",
                        'echo "$GITHUB_TOKEN"; grep -c "pysandbox: this sandbox" "$SSL_CERT_FILE"'],
                       capture_output=True, text=True, timeout=60, env=dict(os.environ, GH_TEST_TOKEN="dir-secret"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("pysandbox-secret:GITHUB_TOKEN:") and r.stdout.split("\n")[1] == "1"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before


def _comm(pid) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _tree(root: int) -> list:
    """root and its descendants (host pids), from /proc/*/stat."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(c for c, pp in parent.items() if pp == p)
    return out


def _memory_has(pid: int, needles) -> dict:
    """Which of `needles` (bytes) occur in the readable memory of `pid` (read from the host through
    /proc/PID/mem, as root)."""
    found = {n: False for n in needles}
    keep = max(len(n) for n in needles)
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read().splitlines()
        for line in maps:
            addr, perms = line.split()[:2]
            if perms[0] != "r" or line.endswith(("[vvar]", "[vsyscall]", "[vvar_vclock]")):
                continue
            start, end = (int(x, 16) for x in addr.split("-"))
            tail, pos = b"", start
            while pos < end:
                try:
                    chunk = os.pread(fd, min(1 << 20, end - pos), pos)
                except OSError:
                    break
                if not chunk:
                    break
                data = tail + chunk
                for n in needles:
                    if n in data:
                        found[n] = True
                tail, pos = data[-keep:], pos + len(chunk)
    finally:
        os.close(fd)
    return found
