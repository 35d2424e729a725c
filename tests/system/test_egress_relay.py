"""The egress proxy's splice relay (sandbox/network/egress/relay.py).

Through `pysandbox run` (root on a private network; rootless, uid 65534, on pasta): 64 MiB up and 64 MiB down on one connection that
the proxy allowed by name and spliced, both checked by SHA-256 at the other end, and the client's
half-close (shutdown(SHUT_WR) after its upload) reaching the server, whose reply (sent only after it
saw the end of the upload) still arrives in full.

The relay alone, on real loopback TCP connections (no sandbox: the proxy's decision is not part of
it): the idle limit ends a connection on which nothing moves, a reset ends both ways, the byte
counters count both directions (and the proxy's `egress.closed` event reports them for the large
transfer), close_all (the proxy's stop) ends what is still relayed and waits for its on_end. The idle
limit and tick are made short for the test (the proxy's are 300 s and 5 s).

SAFETY: the scenario runs in a child started with `unshare --net --mount` (an "upstream" veth with
192.0.2.1 and the server there, as bench/egress.py does); nothing reaches the machine's network.
SIMULATED: this machine's /dev/net/tun is 0600: the rootless scenario binds a 0666 tun node over it
in its own mount namespace (as tests/system/test_egress_domains.py does).
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import subprocess
import tempfile
import threading

import pytest

import audit
from conftest import PYSANDBOX, PYTHON as PY
from probes import UPSTREAM

from sandbox.network.egress import relay as R

SIZE = 64 << 20

INSIDE = r'''
import hashlib, json, os, socket, sys
size = int(sys.argv[1])
up = os.urandom(size)
s = socket.create_connection(("192.0.2.1", 8080), timeout=60)
s.sendall(b"PUT /%d HTTP/1.0\r\nHost: web.test\r\n\r\n" % size)
s.sendall(up)
s.shutdown(socket.SHUT_WR)                 # half-close: the server answers only after this EOF
data = bytearray()
while True:
    k = s.recv(1 << 20)
    if not k:
        break
    data += k
s.close()
head, _, body = bytes(data).partition(b"\r\n\r\n")
hdr = dict(l.split(b": ", 1) for l in head.split(b"\r\n")[1:])
print("INSIDE " + json.dumps({"status": head.split(b"\r\n")[0].decode(), "up_sent": hashlib.sha256(up).hexdigest(),
      "up_seen": hdr.get(b"X-Up", b"").decode(), "up_len": int(hdr.get(b"X-Up-Len", b"-1")),
      "down_sent": hdr.get(b"X-Down", b"").decode(), "down_seen": hashlib.sha256(body).hexdigest(),
      "down_len": len(body)}), flush=True)
'''

SCENARIO = r'''
import hashlib, json, os, socket, subprocess, sys, threading
D, PYSANDBOX, SIZE, USER = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
''' + UPSTREAM + r'''
sh("ip", "route", "add", "default", "via", "192.0.2.254")             # pasta copies the default route
down = os.urandom(SIZE)
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("192.0.2.1", 8080)); srv.listen(8)
def one(c):
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            d = c.recv(65536)
            if not d:
                return
            data += d
        body = hashlib.sha256(data.partition(b"\r\n\r\n")[2]); n = len(data.partition(b"\r\n\r\n")[2])
        while True:                          # until the client's half-close
            d = c.recv(1 << 20)
            if not d:
                break
            body.update(d); n += len(d)
        c.sendall(b"HTTP/1.0 200 OK\r\nX-Up: %s\r\nX-Up-Len: %d\r\nX-Down: %s\r\n\r\n"
                  % (body.hexdigest().encode(), n, hashlib.sha256(down).hexdigest().encode()))
        c.sendall(down)
    except OSError:
        pass
    finally:
        c.close()
def serve():
    while True:
        c, _ = srv.accept()
        threading.Thread(target=one, args=(c,), daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "PYSANDBOX_STATE_DIR": f"{D}/state"}
pre, mode = [], "egrelay"
if USER == "root":
    sh(PYSANDBOX, "network", "create", "egrelay", "--subnet", "10.126.0.0/24", env=env)
else:
    mode = "pasta"
    sh("mknod", f"{D}/tun", "c", "10", "200"); os.chmod(f"{D}/tun", 0o666)
    sh("mount", "--bind", f"{D}/tun", "/dev/net/tun")
    os.chown(D, 65534, 65534)
    env.update({"HOME": D, "XDG_DATA_HOME": f"{D}/data", "XDG_CACHE_HOME": f"{D}/cache", "XDG_RUNTIME_DIR": f"{D}/run",
                "PYSANDBOX_STATE_DIR": f"{D}/state"})
    pre = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
os.chmod(D, 0o755)
with open(f"{D}/p.yaml", "w") as f:
    f.write(f"version: 1\nname: egress-relay\nnetwork:\n  mode: {mode}\n  hosts: {{web.test: 192.0.2.1}}\n"
            "  egress:\n    allow:\n      - {host: web.test, ports: [8080]}\n")
os.chmod(f"{D}/p.yaml", 0o644)
res = {}
p = subprocess.run(pre + [PYSANDBOX, "run", "--profile", f"{D}/p.yaml", "--audit-log", f"{D}/audit.jsonl", "--",
                    "/usr/bin/python3", "-c", INSIDE, str(SIZE)], capture_output=True, text=True, env=env, timeout=120)
res["rc"], res["stderr"] = p.returncode, p.stderr[-2000:]
for line in p.stdout.splitlines():
    if line.startswith("INSIDE "):
        res["inside"] = json.loads(line[7:])
try:
    with open(f"{D}/audit.jsonl") as f:
        res["events"] = [json.loads(x) for x in f if x.strip()]
except OSError:
    res["events"] = []
if USER == "root":
    subprocess.run([PYSANDBOX, "network", "rm", "egrelay"], capture_output=True, env=env)
print("RESULT " + json.dumps(res))
'''


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create the test namespaces")
@pytest.mark.parametrize("user", ["root", "rootless"])
def test_large_transfer_both_ways_and_half_close_through_the_proxy(user):
    d = tempfile.mkdtemp(prefix="pysbx-egrelay-", dir="/tmp")
    try:
        script = SCENARIO.replace("INSIDE, str(SIZE)", repr(INSIDE) + ", str(SIZE)", 1)
        p = subprocess.run(["unshare", "--net", "--mount", PY, "-c", script, d, PYSANDBOX, str(SIZE), user],
                           capture_output=True, text=True, timeout=240)
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        assert line, p.stdout[-3000:] + p.stderr[-3000:]
        res = json.loads(line[7:])
    finally:
        subprocess.run(["rm", "-rf", d], check=False)
    assert res["rc"] == 0, res["stderr"]
    r = res["inside"]
    assert r["status"] == "HTTP/1.0 200 OK"
    assert r["up_len"] == SIZE and r["up_seen"] == r["up_sent"]          # the server got the upload intact
    assert r["down_len"] == SIZE and r["down_seen"] == r["down_sent"]    # and the client the download
    allowed = [e for e in res["events"] if e.get("type") == "egress.allowed"]
    assert allowed and allowed[0]["egress"]["name"] == "web.test" and "reason" not in allowed[0]["egress"], allowed
    # its end: one egress.closed with the bytes each way of this known transfer (heads included)
    closed = [e for e in res["events"] if e.get("type") == "egress.closed"]
    assert len(closed) == 1, closed
    up_head = len(b"PUT /%d HTTP/1.0\r\nHost: web.test\r\n\r\n" % SIZE)
    down_head = len(b"HTTP/1.0 200 OK\r\nX-Up: %s\r\nX-Up-Len: %d\r\nX-Down: %s\r\n\r\n" % (b"0" * 64, SIZE, b"0" * 64))
    eg = closed[0]["egress"]
    assert (eg["name"], eg["address"], eg["port"], eg["protocol"]) == ("web.test", "192.0.2.1", 8080, "http"), eg
    assert (eg["bytes_up"], eg["bytes_down"]) == (up_head + SIZE, down_head + SIZE), eg
    assert closed[0]["duration"] >= 0 and closed[0]["sandbox_id"] == allowed[0]["sandbox_id"]
    for e in allowed + closed:
        audit.validate(e)


# ---- the relay alone, on loopback TCP --------------------------------------------------------

class Pair:
    """peer_c <-> [relay: client | upstream] <-> peer_u, all loopback TCP."""

    def __init__(self, relay: R.Relay):
        self.ended = threading.Event()
        self.conn = None
        ls, lu = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
        try:
            self.peer_c = socket.create_connection(ls.getsockname())
            client, _ = ls.accept()
            up = socket.create_connection(lu.getsockname())
            self.peer_u, _ = lu.accept()
        finally:
            ls.close()
            lu.close()
        for s in (self.peer_c, self.peer_u):
            s.settimeout(20)
        self.conn = relay.start(client, up, 0, lambda c: self.ended.set())

    def close(self):
        self.peer_c.close()
        self.peer_u.close()


def _read_all(s: socket.socket) -> bytes:
    out = bytearray()
    while True:
        try:
            k = s.recv(1 << 16)
        except ConnectionResetError:
            break
        if not k:
            break
        out += k
    return bytes(out)


@pytest.fixture
def relay():
    r = R.Relay(16, idle=0.5, tick=0.1)
    yield r
    r.close_all()


def test_relay_counts_both_ways_and_passes_half_close(relay):
    p = Pair(relay)
    try:
        up, down = os.urandom(3 << 20), os.urandom(5 << 20)
        t = threading.Thread(target=p.peer_c.sendall, args=(up,))
        t.start()
        got = bytearray()
        while len(got) < len(up):
            got += p.peer_u.recv(1 << 20)
        t.join()
        p.peer_c.shutdown(socket.SHUT_WR)
        assert p.peer_u.recv(1) == b""                      # the half-close reached the upstream
        p.peer_u.sendall(down)                              # which still answers
        p.peer_u.shutdown(socket.SHUT_WR)
        assert hashlib.sha256(_read_all(p.peer_c)).digest() == hashlib.sha256(down).digest()
        assert bytes(got) == up
        assert p.ended.wait(20)
        assert (p.conn.up, p.conn.down) == (len(up), len(down))
        tot = relay.totals()
        assert tot["connections"] == 1 and tot["active"] == 0
        assert (tot["bytes_up"], tot["bytes_down"]) == (len(up), len(down))
    finally:
        p.close()


def test_relay_idle_limit_ends_the_connection(relay):
    p = Pair(relay)
    try:
        p.peer_c.sendall(b"x")
        assert p.peer_u.recv(1) == b"x"
        assert p.ended.wait(20)                             # nothing moved for `idle` seconds
        assert _read_all(p.peer_c) == b"" and _read_all(p.peer_u) == b""
    finally:
        p.close()


def test_relay_reset_ends_both_ways(relay):
    p = Pair(relay)
    try:
        p.peer_c.sendall(b"hello")
        assert p.peer_u.recv(5) == b"hello"
        p.peer_u.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        p.peer_u.close()                                    # RST to the relay's upstream socket
        assert _read_all(p.peer_c) == b""                   # the client's side is ended too
        assert p.ended.wait(20)
    finally:
        p.close()


def test_relay_close_all_ends_active_connections():
    r = R.Relay(16)                                         # the proxy's own limits: only close_all ends it
    p = Pair(r)
    try:
        p.peer_c.sendall(b"ping")
        assert p.peer_u.recv(4) == b"ping"
        assert r.totals()["active"] == 1
        r.close_all()
        assert p.ended.wait(20)
        assert _read_all(p.peer_c) == b"" and _read_all(p.peer_u) == b""
        assert r.totals()["active"] == 0
    finally:
        p.close()
