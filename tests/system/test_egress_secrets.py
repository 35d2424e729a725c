"""Secrets and http rules through the egress interception (docs/network.md, "Secrets"), as root:
a real sandbox on a private network, its program using the placeholder of a secret over HTTPS.

SIMULATED until the egress part is merged: the host-side egress proxy (DNS, the nft steering of
the sandbox's TCP, SNI/Host matching) is the egress part's work. Here a small asyncio accept loop
stands in for it: it runs in the supervisor's own process (a helper script that drives
launcher.Launch, as `pysandbox run` does, and keeps the secrets' values and the sandbox's CA in its
memory), listens on the private network's gateway — one port per upstream name, which is how it
knows the name the proxy would have matched by SNI — and hands each accepted connection to the real
`sandbox.network.egress.intercept.handle`. Everything else is real: the sandbox (pysandbox's
launcher, namespaces, rootfs with the trust store bound over the CA bundle paths), its client
(/usr/bin/python3 verifying certificates through SSL_CERT_FILE), the TLS termination and the
upstream HTTPS server (a test CA of its own, trusted by the interception through its test hook).

SAFETY: the module moves the pytest process into a network namespace of its own (`testns`).
"""
from __future__ import annotations

import datetime
import http.server
import json
import os
import re
import secrets
import ssl
import subprocess
import sys
import textwrap
import threading

import pytest

from conftest import PYSANDBOX, PYTHON

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a private network in a test netns)")

NET = "secnet"
PY_IN = "/usr/bin/python3"

# --- the upstream: an HTTPS server with a CA of the test's own, recording what it receives ---------

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


@pytest.fixture(scope="module")
def upstream(testns, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("upstream")
    os.chmod(tmp, 0o755)
    ca_file, chain = _test_ca(tmp, ["api.test", "other.test"])
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    r = subprocess.run([PYSANDBOX, "network", "create", NET], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    from sandbox.network import store
    try:
        yield {"port": srv.server_address[1], "ca": ca_file, "gw": store.load_network(NET)["gateway"],
               "seen": _Recorder.seen}
    finally:
        subprocess.run([PYSANDBOX, "network", "rm", NET], capture_output=True, timeout=60)
        srv.shutdown()
        srv.server_close()


# --- the supervisor with the stand-in for the egress proxy (see the module docstring) -------------

HELPER = r'''
import asyncio, json, os, socket, sys, threading
from policies.compiler import compile_profile
from sandbox import launcher
from sandbox.network.egress import intercept
profile, gw, up_port, up_ca, audit_path, pid_path = sys.argv[1:7]
names = sys.argv[7].split(",")       # one listening port on the gateway per name (the SNI the proxy matched)
argv = sys.argv[8:]
plan = compile_profile(profile).plan
socks = {}
for name in names:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_IP, 15, 1)   # IP_FREEBIND: the bridge gets its gateway address with its first sandbox
    s.bind((gw, 0)); s.listen(16); socks[name] = s
os.environ["PROXY_PORTS"] = json.dumps({n: s.getsockname()[1] for n, s in socks.items()})
from dataclasses import replace
plan = replace(plan, process=replace(plan.process, env_set=plan.process.env_set + (
    ("PROXY_PORTS", os.environ["PROXY_PORTS"]), ("GW", gw))))
run = launcher.Launch(plan, argv, name="secrets-client")
audit = open(audit_path, "a")

class Ctx:
    sandbox = run.sandbox_id
    egress = plan.network
    upstream_ca = up_ca
    def audit(self, event, fields):
        audit.write(json.dumps({"type": event, "sandbox": run.sandbox_id, **fields}) + "\n"); audit.flush()

ok = run.start()
if ok:
    ctx = Ctx(); ctx.secrets, ctx.ca = run.egress_secrets, run.egress_ca
    loop = asyncio.new_event_loop()
    async def serve():
        for name, s in socks.items():
            async def conn(r, w, name=name):
                first = await r.read(4096)
                await intercept.handle(r, w, first, host=name, port=int(up_port), addrs=["127.0.0.1"], ctx=ctx)
            await asyncio.start_server(conn, sock=s)
    loop.run_until_complete(serve())
    threading.Thread(target=loop.run_forever, daemon=True).start()
    with open(pid_path, "w") as f:
        f.write(str(run.pid))
    run.wait()
res = run.finish()
sys.stderr.write(res.message or "")
sys.exit(res.exit_code)
'''

CLIENT = r'''
import base64, http.client, json, os, socket, ssl, sys
ports = json.loads(os.environ["PROXY_PORTS"]); gw = os.environ["GW"]
tok = os.environ["GITHUB_TOKEN"]
ctx = ssl.create_default_context()          # trusts what SSL_CERT_FILE names: the mounted bundle
class C(http.client.HTTPSConnection):
    def __init__(self, name):
        super().__init__(name, ports[name], context=ctx, timeout=20)
    def connect(self):
        self.sock = ctx.wrap_socket(socket.create_connection((gw, self.port), timeout=20), server_hostname=self.host)
def req(c, method, path, headers=None, body=None):
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return [r.status, r.read().decode()]
    except Exception as e:
        return ["error", type(e).__name__]
out = {"env": tok, "cert_file": os.environ.get("SSL_CERT_FILE"), "node": os.environ.get("NODE_EXTRA_CA_CERTS")}
c = C("api.test")
auth = {"Authorization": "Bearer " + tok}
out["get1"] = req(c, "GET", "/repos/acme/one", auth)                     # keep-alive: one connection
out["get2"] = req(c, "GET", "/repos/acme/two", auth)
out["post"] = req(c, "POST", "/repos/acme/one", auth, b"x")              # the rule allows GET only
out["echo"] = req(C("api.test"), "GET", "/repos/acme/echo", auth)      # the upstream reflects the value
out["echo_big"] = req(C("api.test"), "GET", "/repos/acme/echo-big", auth)
c = C("api.test")
out["other_path"] = req(c, "GET", "/orgs/acme", auth)                    # outside the rule's paths
c = C("api.test")
out["dotdot"] = req(c, "GET", "/repos/acme/../../orgs/acme", auth)       # not normalised
c = C("other.test")
out["other_ok"] = req(c, "GET", "/fine")
out["leak_header"] = req(C("other.test"), "GET", "/x", {"X-Token": tok})
out["leak_path"] = req(C("other.test"), "GET", "/x?t=" + tok.replace(":", "%3A"))
out["leak_body"] = req(C("other.test"), "POST", "/x", {}, b"a" * 70000 + tok.encode())
plain = http.client.HTTPConnection(gw, ports["plain.api.test"], timeout=20)
out["plain"] = req(plain, "GET", "/repos/acme/one", {"Host": "plain.api.test", "Authorization": "Bearer " + tok})
try:
    ssl.create_default_context(cafile="/usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt").wrap_socket(
        socket.create_connection((gw, ports["api.test"]), timeout=20), server_hostname="api.test")
    out["untrusted"] = "connected"
except ssl.SSLCertVerificationError:
    out["untrusted"] = "verify-failed"
with open("/proc/self/environ", "rb") as f:
    out["environ"] = base64.b64encode(f.read()).decode()
with open(os.environ["SSL_CERT_FILE"], "rb") as f:
    out["bundle"] = base64.b64encode(f.read()).decode()
print(json.dumps(out), flush=True)
sys.stdin.read()                            # held until the test has scanned this process's memory
'''


def _profile(tmp, *, source="env:GH_TEST_TOKEN", mode=NET):
    p = tmp / "secrets.yaml"
    p.write_text(textwrap.dedent(f"""\
        version: 1
        name: secrets-test
        {"extends: default" if mode == NET else "# no limits: uid 65534 has no delegated cgroups"}
        network:
          mode: {mode}
          egress:
            http:
              - {{host: api.test, methods: [GET], paths: ["/repos/acme/*"]}}
              - {{host: other.test}}
              - {{host: plain.api.test}}
          secrets:
            GITHUB_TOKEN: {{from: "{source}", hosts: [api.test, plain.api.test], header: Authorization,
                            format: "Bearer {{}}"}}
        """))
    os.chmod(p, 0o644)
    return str(p)


def _drive(tmp, up, value, *, mode=NET, runas=(), env=None) -> dict:
    """Run the helper (supervisor + stand-in proxy) with the client in a sandbox; while the client
    waits, look for the value from the host: every sandbox process's memory (/proc/PID/mem),
    environ and cmdline, and every process's cmdline. Returns what was seen (no assertion here: a
    rootless scenario runs this in a namespace of its own and reports back)."""
    audit, pid_file = tmp / "audit.jsonl", tmp / "pid1"
    env = dict(env if env is not None else os.environ, GH_TEST_TOKEN=value)
    p = subprocess.Popen([*runas, PYTHON, "-c", HELPER, _profile(tmp, mode=mode), up["gw"], str(up["port"]), up["ca"],
                          str(audit), str(pid_file), "api.test,other.test,plain.api.test", PY_IN, "-c", CLIENT],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    res = {"violations": []}
    try:
        line = p.stdout.readline()
        if not line:
            res["violations"].append("no output from the client")
            return res
        res["out"] = out = json.loads(line)
        procs = _tree(int(pid_file.read_text()))     # PID 1 (pysandbox-init) and the program
        res["procs"] = len(procs)
        token = out["env"].rsplit(":", 1)[1].encode()
        for pid in procs:
            if _memory_has(pid, [value.encode(), token])[value.encode()]:
                res["violations"].append(f"the value in the memory of sandbox process {pid}")
            for f in ("environ", "cmdline"):
                with open(f"/proc/{pid}/{f}", "rb") as fh:
                    if value.encode() in fh.read():
                        res["violations"].append(f"the value in /proc/{pid}/{f}")
        program = [q for q in procs if b"python3" in open(f"/proc/{q}/cmdline", "rb").read()]
        res["scan_sees_placeholder"] = len(program) == 1 and _memory_has(program[0], [token])[token]
        # no process's argv, and no environment but the supervisor's (it read the value from its own:
        # `from: env:`) and its callers' (this test gave it): not PID 1's, the program's, pasta's...
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
        _, err = p.communicate(b"", timeout=60)
        res["rc"], res["err"] = p.returncode, err.decode(errors="replace")[-2000:]
        res["audit"] = audit.read_text() if audit.exists() else ""
    return res


def _check(res: dict, value: str, seen: list) -> None:
    import base64
    assert res["rc"] == 0 and not res["violations"], res
    out = res["out"]
    assert res["procs"] >= 2 and res["scan_sees_placeholder"]    # the scan does see what is there
    # the program: a placeholder as GITHUB_TOKEN, the trust variables, the bundle with the sandbox's CA
    assert re.fullmatch(r"pysandbox-secret:GITHUB_TOKEN:[0-9a-f]{32}", out["env"])
    token = out["env"].rsplit(":", 1)[1]
    assert out["cert_file"] == out["node"] == "/etc/ssl/certs/ca-certificates.crt"
    environ, bundle = (base64.b64decode(out[k]) for k in ("environ", "bundle"))
    assert value.encode() not in environ and value.encode() not in bundle
    assert b"pysandbox: this sandbox's CA" in bundle and b"PRIVATE KEY" not in bundle
    assert out["untrusted"] == "verify-failed"            # the leaf chains to the sandbox's CA only

    # allowed: the server saw the real value, in the header only, both requests on one connection
    assert out["get1"] == [200, "ok GET /repos/acme/one"] and out["get2"] == [200, "ok GET /repos/acme/two"]
    api = [s for s in seen if s["path"].startswith("/repos/acme/")]
    assert [s["headers"]["authorization"] for s in api] == [f"Bearer {value}"] * 4
    api = [s for s in api if "echo" not in s["path"]]
    # reflected by the upstream: cut off before the sandbox sees it (502, or a body cut short)
    assert out["echo"][0] == 502 and value not in json.dumps(out["echo"])
    assert out["echo_big"] in (["error", "IncompleteRead"], ["error", "RemoteDisconnected"]), out["echo_big"]
    assert api[0]["peer"] == api[1]["peer"]
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
    assert not any(value in json.dumps(s) for s in seen if not s["path"].startswith("/repos/acme/"))

    text = res["audit"]
    assert value not in text, text
    assert token not in text, text
    evs = [json.loads(x) for x in text.splitlines()]
    allowed = [e for e in evs if e["type"] == "egress.http.allowed" and e["host"] == "api.test"]
    assert [(e["method"], e["path"], e["rule"], e.get("secrets")) for e in allowed] == \
        [("GET", f"/repos/acme/{p}", "network.egress.http[0]", ["GITHUB_TOKEN"])
         for p in ("one", "two", "echo", "echo-big")]
    denied = [(e["host"], e["method"], e["path"]) for e in evs if e["type"] == "egress.http.denied"]
    assert ("api.test", "POST", "/repos/acme/one") in denied and ("api.test", "GET", "/orgs/acme") in denied
    assert ("plain.api.test", "GET", "/repos/acme/one") in denied
    assert [(e["path"], e["secret"]) for e in evs if e["type"] == "egress.secret_reflected"] == \
        [("/repos/acme/echo", "GITHUB_TOKEN"), ("/repos/acme/echo-big", "GITHUB_TOKEN")]
    exfil = [e for e in evs if e["type"] == "egress.secret_exfiltration"]
    assert [(e["host"], e["secret"], e["where"]) for e in exfil] == \
        [("other.test", "GITHUB_TOKEN", "head"), ("other.test", "GITHUB_TOKEN", "head"),
         ("other.test", "GITHUB_TOKEN", "body")]


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


def test_secret_substituted_for_its_host_only_and_never_in_the_sandbox(upstream, tmp_path):
    os.chmod(tmp_path, 0o755)
    value = "ghp_" + secrets.token_hex(20)
    upstream["seen"].clear()
    _check(_drive(tmp_path, upstream, value), value, upstream["seen"])


def test_missing_secret_stops_the_launch(upstream, tmp_path):
    """Fail closed: a secret whose source is missing stops the launch before the program runs."""
    os.chmod(tmp_path, 0o755)
    r = subprocess.run([PYSANDBOX, "run", "--profile", _profile(tmp_path), "--", "/bin/echo", "ran"],
                       capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "GH_TEST_TOKEN"})
    assert r.returncode == 125 and "ran" not in r.stdout
    assert r.stderr.strip().splitlines() == [
        "pysandbox: network.secrets: secret GITHUB_TOKEN (env:GH_TEST_TOKEN): the variable is not set"]
    missing = tmp_path / "nope"
    r = subprocess.run([PYSANDBOX, "run", "--profile", _profile(tmp_path, source=f"file:{missing}"), "--",
                        "/bin/echo", "ran"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 125 and "No such file" in r.stderr and "ran" not in r.stdout


def test_secret_from_a_file_and_explain_shows_names_only(upstream, tmp_path):
    os.chmod(tmp_path, 0o755)
    value = "filetok_" + secrets.token_hex(16)
    f = tmp_path / "token"
    f.write_text(value + "\n")
    prof = _profile(tmp_path, source=f"file:{f}")
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


# --- rootless: pasta, as an unprivileged user ---------------------------------------------------

SCENARIO = r'''
import json, os, ssl, subprocess, sys, threading, http.server
from pathlib import Path
D, HERE = sys.argv[1], sys.argv[2]
sys.path[:0] = [HERE, os.path.dirname(HERE)]
import test_egress_secrets as T
def sh(*a):
    subprocess.run(a, check=True, capture_output=True)
# this process is in fresh net + mount namespaces (unshare --net --mount)
sh("mount", "--make-rprivate", "/")
sh("mknod", f"{D}/tun", "c", "10", "200"); os.chmod(f"{D}/tun", 0o666)
sh("mount", "--bind", f"{D}/tun", "/dev/net/tun")
sh("ip", "link", "set", "lo", "up")
sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
sh("ip", "link", "set", "v0", "up"); sh("ip", "link", "set", "v1", "up")
sh("ip", "addr", "add", "192.0.2.1/24", "dev", "v0"); sh("ip", "addr", "add", "192.0.2.2/24", "dev", "v0")
sh("ip", "route", "add", "default", "via", "192.0.2.254")
os.chmod(D, 0o777)
ca_file, chain = T._test_ca(Path(D), ["api.test", "other.test"])
os.chmod(ca_file, 0o644)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), T._Recorder)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(chain)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
threading.Thread(target=srv.serve_forever, daemon=True).start()
up = {"gw": "192.0.2.2", "port": srv.server_address[1], "ca": ca_file}
env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": D, "XDG_DATA_HOME": f"{D}/data",
       "XDG_CACHE_HOME": f"{D}/cache", "XDG_RUNTIME_DIR": f"{D}/run"}
res = T._drive(Path(D), up, os.environ["SECRET_VALUE"], mode="pasta", env=env,
               runas=["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"])
res["seen"] = T._Recorder.seen
srv.shutdown()
print("RESULT " + json.dumps(res))
'''


def test_rootless_pasta_secret_substituted_and_never_in_the_sandbox():
    """The same as root's test, rootless: the supervisor (and the stand-in proxy) as uid 65534, the
    sandbox on pasta. SIMULATED like tests/system/test_network_rootless.py: this machine's
    /dev/net/tun is mode 0600, so the scenario (its own net + mount namespaces: `unshare`) binds a
    tun node of Debian's default mode 0666 over it; the upstream server listens in that namespace."""
    import shutil
    if not shutil.which("pasta"):
        pytest.fail("pasta is not installed (Makefile DEB_PKGS)")
    import tempfile
    d = tempfile.mkdtemp(prefix="pysbx-secrets-", dir="/tmp")     # (pytest's tmp_path is root's only)
    value = "ghp_" + secrets.token_hex(20)
    try:
        p = subprocess.run(["unshare", "--net", "--mount", "--", PYTHON, "-c", SCENARIO, d,
                            os.path.dirname(os.path.abspath(__file__))], capture_output=True, text=True,
                           timeout=180, env=dict(os.environ, SECRET_VALUE=value))
    finally:
        subprocess.run(["rm", "-rf", d], check=False)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(line[0][7:])
    _check(res, value, res["seen"])


@pytest.mark.parametrize("runner", ["root"], indirect=True)
def test_image_root_gets_the_trust_store_and_placeholder(upstream, img, tmp_profile):
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


def test_directory_root_gets_the_trust_store_and_stays_untouched(upstream, shared_tmp):
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
        """))
    r = subprocess.run([PYSANDBOX, "run", "--profile", str(prof), "--", "/bin/sh", "-c",
                        'echo "$GITHUB_TOKEN"; grep -c "pysandbox: this sandbox" "$SSL_CERT_FILE"'],
                       capture_output=True, text=True, timeout=60, env=dict(os.environ, GH_TEST_TOKEN="dir-secret"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("pysandbox-secret:GITHUB_TOKEN:") and r.stdout.split("\n")[1] == "1"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before
