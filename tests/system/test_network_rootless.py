"""Rootless networking through `pysandbox run` as an unprivileged user (uid 65534).

SAFETY: each scenario runs in a child process started with `unshare --net --mount`: its own
network namespace (an "upstream" veth pair with TEST-NET-1 addresses 192.0.2.0/24 and a
default route that leads nowhere) and its own mount namespace. Nothing reaches the machine's
interfaces, routes, ruleset or /dev. Every wait is bounded.

SIMULATED: this machine's /dev/net/tun is mode 0600 (root only), so user-mode networking is
unavailable to unprivileged users here — the tests show pysandbox failing closed on it. To show
the working side too, a scenario bind-mounts a tun node with Debian's default mode 0666 over
/dev/net/tun inside the scenario's own mount namespace (the real device is untouched).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create the test namespaces "
                                                          "and the unprivileged user's environment")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import PYSANDBOX, PYTHON as PY  # noqa: E402  (the installed entry points)

SCENARIO = r'''
import json, os, socket, subprocess, sys, threading, time
D, MODE, TUN = sys.argv[1], sys.argv[2], sys.argv[3]
PYSANDBOX = sys.argv[4]
def sh(*a):
    subprocess.run(a, check=True, capture_output=True)
# this process is in fresh net + mount namespaces (unshare --net --mount)
sh("mount", "--make-rprivate", "/")
if TUN in ("0666", "0600"):
    sh("mknod", f"{D}/tun", "c", "10", "200"); os.chmod(f"{D}/tun", int(TUN, 8))
    sh("mount", "--bind", f"{D}/tun", "/dev/net/tun")
sh("ip", "link", "set", "lo", "up")
sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
sh("ip", "link", "set", "v0", "up"); sh("ip", "link", "set", "v1", "up")
sh("ip", "addr", "add", "192.0.2.1/24", "dev", "v0"); sh("ip", "addr", "add", "192.0.2.2/24", "dev", "v0")
sh("ip", "route", "add", "default", "via", "192.0.2.254")
# IPv6 (pasta takes v0's address and route; the listeners' address is on another veth)
sh("ip", "-6", "addr", "add", "2001:db8::1/64", "dev", "v0", "nodad")
sh("ip", "-6", "route", "add", "default", "via", "2001:db8::fe", "dev", "v0")
sh("ip", "link", "add", "w0", "type", "veth", "peer", "name", "w1"); sh("ip", "link", "set", "w0", "up")
sh("ip", "-6", "addr", "add", "2001:db8:1::2/64", "dev", "w0", "nodad")
def listener(port, addr="192.0.2.2"):
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(4); s.settimeout(20)
    def serve():
        for _ in range(4):
            try:
                c, _ = s.accept()
            except OSError:
                return
            c.sendall(b"up%d" % port); c.close()
    threading.Thread(target=serve, daemon=True).start()
listener(9000); listener(9001); listener(9000, "2001:db8:1::2"); listener(9001, "2001:db8:1::2")
prof = f"{D}/p.yaml"
with open(prof, "w") as f:
    f.write("version: 1\nname: rootless-net\nnetwork:\n  mode: " + MODE + "\n"
            "  egress:\n    default: deny\n    allow:\n      - {to: 192.0.2.2/32, ports: [9000]}\n"
            "      - {to: \"2001:db8:1::2/128\", ports: [9000]}\n")
os.chmod(D, 0o777); os.chmod(prof, 0o644)
code = r"""
import socket
out = [sorted(n for _, n in socket.if_nameindex())]
for addr in ("192.0.2.2", "2001:db8:1::2"):
    for port in (9000, 9001):
        try:
            c = socket.create_connection((addr, port), timeout=3); out.append(c.recv(10).decode())
        except OSError as e:
            out.append(f"err{e.errno}")
import subprocess
p = subprocess.run(["/usr/sbin/nft", "flush", "ruleset"], capture_output=True, text=True)
out.append(p.returncode)
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 7000)); s.listen(2); s.settimeout(15)
print(__import__("json").dumps(out), flush=True)
for _ in range(2):
    try:
        a, _ = s.accept(); a.sendall(b"published"); a.close()
    except OSError:
        break
"""
env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": D, "XDG_DATA_HOME": f"{D}/data",
       "XDG_CACHE_HOME": f"{D}/cache", "XDG_RUNTIME_DIR": f"{D}/run"}
argv = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", PYSANDBOX, "run", "--profile", prof,
        "-p", "18090:7000", "--", "/usr/bin/python3", "-c", code]
p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
res = {}
import select
r, _, _ = select.select([p.stdout], [], [], 20)
line = p.stdout.readline() if r else ""
if line:
    res["inside"] = json.loads(line)
    for k, a in (("published", "127.0.0.1"), ("published6", "::1")):
        try:
            c = socket.create_connection((a, 18090), timeout=5); res[k] = c.recv(20).decode()
        except OSError as e:
            res[k] = f"err{e.errno}"
try:
    p.wait(timeout=20)
except subprocess.TimeoutExpired:
    p.kill(); p.wait()
res["rc"] = p.returncode
res["stderr"] = p.stderr.read().strip()
# private networks: fail closed rootless
q = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", PYSANDBOX, "run",
                    "--profile", prof, "--network", "somenet", "--", "/bin/true"],
                   capture_output=True, text=True, env=env, timeout=30)
res["private_rc"], res["private_err"] = q.returncode, q.stderr.strip()
print("RESULT " + json.dumps(res))
'''


def scenario(mode: str, tun: str) -> dict:
    d = tempfile.mkdtemp(prefix="pysbx-rootless-", dir="/tmp")
    try:
        with open(os.path.join(d, "scenario.py"), "w") as f:
            f.write(SCENARIO)
        p = subprocess.run(["unshare", "--net", "--mount", "--", PY, os.path.join(d, "scenario.py"), d, mode, tun,
                            PYSANDBOX], capture_output=True, text=True, timeout=120)
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        assert line, p.stdout + p.stderr
        return json.loads(line[0][7:])
    finally:
        subprocess.run(["rm", "-rf", d], check=False)




@pytest.mark.parametrize("mode,iface", [("pasta", "v0"), ("slirp4netns", "tap0")])
def test_rootless_usermode_network_egress_and_ports(mode, iface):
    import shutil
    if shutil.which(mode) is None:
        pytest.skip(f"{mode} not installed")
    res = scenario(mode, "0666")                      # simulated Debian default /dev/net/tun
    assert res["rc"] == 0, res
    names, allowed, denied, allowed6, denied6, flush_rc = res["inside"]
    assert names == ["lo", iface]
    assert allowed == "up9000"                         # allow-listed host:port through the user-mode stack
    assert denied == "err113"                          # another port: refused by the sandbox's own nft rules
    assert flush_rc != 0                               # the program cannot flush them
    assert res["published"] == "published"             # -p 18090:7000 from the host's loopback
    assert (allowed6, denied6) == ("up9000", "err13"), res   # IPv6: the same allow-list (slirp4netns -6)
    if mode == "pasta":                                # published on ::1 too (slirp4netns: IPv4 only)
        assert res["published6"] == "published", res
    assert "need root" in res["private_err"] and res["private_rc"] == 125


def test_rootless_usermode_fails_closed_without_tun():
    res = scenario("pasta", "0600")                    # this machine's real mode, reproduced
    assert res["rc"] == 125 and "inside" not in res
    assert res["stderr"].splitlines() == [
        "pysandbox: network pasta: /dev/net/tun (mode 0600) is not usable by uid 65534; user-mode networking "
        "needs it (Debian's default is 0666)"]
