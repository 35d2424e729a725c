"""User-mode networks (pasta, slirp4netns) do not reach the host's loopback.

pysandbox runs pasta with `--no-map-gw -T none -U none` (IPv6 too) and slirp4netns with
`--disable-host-loopback` (which covers IPv6 too: slirp4netns runs `--enable-ipv6`). Without those
flags the tools map an address inside the sandbox to the host's 127.0.0.1 or ::1 (slirp4netns:
10.0.2.2, fd00::2; pasta: the gateway) or splice
the sandbox's own loopback ports to the host's (pasta -T/-U): services that trust "only local
processes can connect" would be open to the sandbox.

Each scenario runs `pysandbox run --network pasta|slirp4netns` (the CLI), as root and as an
unprivileged user (uid 65534), inside a child started with `unshare --net --mount`: the "host" is
that namespace. In it: TCP servers on 127.0.0.1 and ::1, a UDP server on 127.0.0.1:53 (with a
resolv.conf naming 127.0.0.1, so a DNS forwarder of the tool would aim at it), and an "upstream"
non-loopback address (192.0.2.2, TEST-NET-1, on a veth pair; the default route leads nowhere),
and the same for IPv6 (2001:db8:1::2 on another veth, a default route via 2001:db8::fe).
The sandbox probes 127.0.0.1, ::1, its gateways (IPv4 and IPv6), 10.0.2.2 and 10.0.2.3 (TCP) and the DNS
addresses (UDP 53): not one connection or datagram may reach the host's loopback servers, while
a TCP connection to the upstream address works (outward connectivity, offline).

SIMULATED: this machine's /dev/net/tun is mode 0600, so for the unprivileged runs a tun node of
Debian's default mode 0666 is bind-mounted over /dev/net/tun inside the scenario's own mount
namespace (the real device is untouched). Root runs use the real device.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create the test namespaces")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import PYSANDBOX, PYTHON as PY  # noqa: E402  (the installed entry points)

SCENARIO = r'''
import json, os, select, socket, subprocess, sys, threading, time
D, MODE, WHO, PYSANDBOX, PARENT_NS = sys.argv[1:6]
def sh(*a):
    subprocess.run(a, check=True, capture_output=True)
assert os.readlink("/proc/self/ns/net") != PARENT_NS, "not in a scenario netns"
sh("mount", "--make-rprivate", "/")
if WHO == "rootless":                     # SIMULATED: Debian's default tun mode, in this mount ns only
    sh("mknod", f"{D}/tun", "c", "10", "200"); os.chmod(f"{D}/tun", 0o666)
    sh("mount", "--bind", f"{D}/tun", "/dev/net/tun")
with open(f"{D}/resolv.conf", "w") as f:
    f.write("nameserver 127.0.0.1\n")
os.chmod(f"{D}/resolv.conf", 0o644)
sh("mount", "--bind", f"{D}/resolv.conf", "/etc/resolv.conf")
sh("ip", "link", "set", "lo", "up")
sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
sh("ip", "link", "set", "v0", "up"); sh("ip", "link", "set", "v1", "up")
sh("ip", "addr", "add", "192.0.2.1/24", "dev", "v0"); sh("ip", "addr", "add", "192.0.2.2/24", "dev", "v0")
sh("ip", "route", "add", "default", "via", "192.0.2.254")
sh("ip", "-6", "addr", "add", "2001:db8::1/64", "dev", "v0", "nodad")
sh("ip", "link", "add", "w0", "type", "veth", "peer", "name", "w1")    # not on v0: pasta would take it
sh("ip", "link", "set", "w0", "up"); sh("ip", "-6", "addr", "add", "2001:db8:1::2/64", "dev", "w0", "nodad")
sh("ip", "-6", "route", "add", "default", "via", "2001:db8::fe", "dev", "v0")
hits = {"lo4": 0, "lo6": 0, "dns": 0, "upstream": 0, "upstream6": 0}
def tcp_server(fam, addr, port, key):
    s = socket.socket(fam); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((addr, port)); s.listen(8)
    def serve():
        while True:
            c, _ = s.accept(); hits[key] += 1; c.sendall(key.encode()); c.close()
    threading.Thread(target=serve, daemon=True).start()
tcp_server(socket.AF_INET, "127.0.0.1", 7071, "lo4")
tcp_server(socket.AF_INET6, "::1", 7071, "lo6")
tcp_server(socket.AF_INET, "192.0.2.2", 7073, "upstream")
tcp_server(socket.AF_INET6, "2001:db8:1::2", 7073, "upstream6")
def dns_serve(fam, addr):
    dns = socket.socket(fam, socket.SOCK_DGRAM); dns.bind((addr, 53))
    def serve():
        while True:
            d, a = dns.recvfrom(512); hits["dns"] += 1; dns.sendto(b"dns-lo", a)
    threading.Thread(target=serve, daemon=True).start()
dns_serve(socket.AF_INET, "127.0.0.1"); dns_serve(socket.AF_INET6, "::1")
code = r"""
import json, socket, struct
gw = next((socket.inet_ntoa(struct.pack("<I", int(l.split()[2], 16))) for l in open("/proc/net/route").read().splitlines()[1:]
           if l.split()[1] == "00000000"), None)
gw6 = [l.split()[4] for l in open("/proc/net/ipv6_route").read().splitlines() if l.startswith("0" * 32 + " 00 ")]
gw6 = [socket.inet_ntop(socket.AF_INET6, bytes.fromhex(g)) for g in gw6 if g != "0" * 32]
out = {"gw": gw, "gw6": gw6}
def tcp(fam, addr, port):
    try:
        c = socket.socket(fam); c.settimeout(1.5); c.connect((addr, port)); d = c.recv(16).decode(); c.close(); return d
    except OSError as e:
        return f"err{e.errno}" if e.errno else "timeout"
def udp(addr, port):
    try:
        s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.0); s.sendto(b"q", (addr, port))
        return s.recv(16).decode()
    except OSError as e:
        return f"err{e.errno}" if e.errno else "timeout"
for a in ["127.0.0.1", gw, "10.0.2.2", "10.0.2.3"]:
    if a:
        out[f"tcp {a}"] = tcp(socket.AF_INET, a, 7071)
out["tcp ::1"] = tcp(socket.AF_INET6, "::1", 7071)
for a in gw6 + ["2001:db8::fe", "fd00::2", "fd00::3"]:
    out[f"tcp [{a}]"] = tcp(socket.AF_INET6, a, 7071)
for a in [gw, "10.0.2.3", "fd00::3"]:
    if a:
        out[f"udp {a}:53"] = udp(a, 53)
out["upstream"] = tcp(socket.AF_INET, "192.0.2.2", 7073)
out["upstream6"] = tcp(socket.AF_INET6, "2001:db8:1::2", 7073)
print(json.dumps(out), flush=True)
"""
prof = f"{D}/p.yaml"
with open(prof, "w") as f:
    f.write(f"version: 1\nname: loopback-{MODE}\nnetwork: {MODE}\n")
os.chmod(D, 0o755); os.chmod(prof, 0o644)
env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": D, "XDG_DATA_HOME": f"{D}/data",
       "XDG_CACHE_HOME": f"{D}/cache", "XDG_RUNTIME_DIR": f"{D}/run"}
if WHO == "root":                         # the test's own state directory (rootless: XDG_DATA_HOME above)
    env["PYSANDBOX_STATE_DIR"] = os.environ["PYSANDBOX_STATE_DIR"]
argv = [PYSANDBOX, "run", "--profile", prof, "--audit-log", "/dev/null", "--", "/usr/bin/python3", "-c", code]
if WHO == "rootless":
    os.chmod(D, 0o777)
    argv = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"] + argv
p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=90)
res = {"rc": p.returncode, "stderr": p.stderr.strip()[-500:], "hits": dict(hits)}
try:
    res["inside"] = json.loads(p.stdout.strip().splitlines()[-1])
except (IndexError, ValueError):
    res["stdout"] = p.stdout[-500:]
print("RESULT " + json.dumps(res))
'''


def scenario(mode: str, who: str) -> dict:
    d = tempfile.mkdtemp(prefix="pysbx-ulo-", dir="/tmp")
    try:
        with open(os.path.join(d, "scenario.py"), "w") as f:
            f.write(SCENARIO)
        p = subprocess.run(["unshare", "--net", "--mount", "--", PY, os.path.join(d, "scenario.py"), d, mode, who,
                            PYSANDBOX, os.readlink("/proc/self/ns/net")], capture_output=True, text=True, timeout=150)
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        assert line, p.stdout + p.stderr
        return json.loads(line[0][7:])
    finally:
        subprocess.run(["rm", "-rf", d], check=False)


@pytest.mark.parametrize("who", ["root", "rootless"])
@pytest.mark.parametrize("mode", ["pasta", "slirp4netns"])
def test_usermode_network_does_not_reach_host_loopback(mode, who):
    if shutil.which(mode) is None:
        pytest.skip(f"{mode} not installed")
    res = scenario(mode, who)
    assert res["rc"] == 0 and "inside" in res, res
    inside = res["inside"]
    # the legitimate side: outward TCP to a non-loopback address of the "host" works
    assert inside["upstream"] == "upstream", res
    # both give the sandbox IPv6: pasta's gateway is the host's IPv6 gateway, slirp4netns's fd00::2
    assert inside["upstream6"] == "upstream6", res
    assert inside["gw6"] == (["2001:db8::fe"] if mode == "pasta" else ["fd00::2"]), res
    # the attack side: nothing reached a loopback service of the host, by any address
    assert res["hits"]["lo4"] == 0 and res["hits"]["lo6"] == 0 and res["hits"]["dns"] == 0, res
    probes = {k: v for k, v in inside.items() if k.startswith(("tcp ", "udp "))}
    assert "tcp 10.0.2.2" in probes and "tcp ::1" in probes and "tcp [fd00::2]" in probes and inside["gw"], res
    assert not [k for k, v in probes.items() if v in ("lo4", "lo6", "dns-lo")], res
    # the sandbox's own loopback answers its 127.0.0.1 and ::1: refused, not the host's server
    assert probes["tcp 127.0.0.1"] == "err111" and probes["tcp ::1"] == "err111", res
