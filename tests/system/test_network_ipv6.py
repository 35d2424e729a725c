"""Issue 25, IPv6 on private networks: `network create --ipv6` makes a dual-stack network.

Each sandbox gets an IPv6 address from the network's unique local /64 (derived from the network's
name) with its IPv4 one, the IPv6 default route via the bridge, /etc/hosts lines for both, the
same anti-spoofing (its port's allow-list passes IPv6 only from its own MAC and address, no router
advertisements or redirects, no neighbour advertisement for another address) and the same egress
rules (IPv6 CIDRs). Shown through `pysandbox run` as root - private networks need root (refused
rootless: tests/system/test_network_rootless.py) - with two sandboxes on one network; the
spoofer sends with an AF_PACKET socket (NET_RAW of `--profile default`), the neighbour captures
with a deadline. No duplicate address detection (addresses are usable at once: nothing to wait
for). A network made without --ipv6 stays IPv4 only (tests/security/test_net_antispoof.py).

SAFETY: the pytest process runs in a network namespace of its own (fixture `testns`).
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import textwrap
import time

import pytest

from conftest import PYSANDBOX

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="private networks need root")

PY = "/usr/bin/python3"
NET = "v6-net"


def cli(*args, timeout=60):
    return subprocess.run([PYSANDBOX, *args], capture_output=True, text=True, timeout=timeout)


def start(name, code, *opts, profile="default"):
    return subprocess.Popen([PYSANDBOX, "run", "--profile", profile, "--audit-log", "/dev/null", "--network", NET,
                             "--name", name, *opts, "--", PY, "-c", textwrap.dedent(code)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def line(p, timeout=20):
    import select
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r, _, _ = select.select([p.stdout], [], [], 0.2)
        if r:
            got = p.stdout.readline()
            if not got:
                raise AssertionError(f"sandbox ended ({p.wait(timeout=10)}): {p.stderr.read()}")
            return got.strip()
    raise TimeoutError("no line from the sandbox")


def stop(p):
    """End a sandbox still running through its supervisor (SIGTERM: forwarded, then the supervisor
    cleans up its port), SIGKILL only as the last resort."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
    p.wait(timeout=10)


@pytest.fixture
def net(testns):
    r = cli("network", "create", "--ipv6", NET)
    assert r.returncode == 0, r.stderr
    nd = json.loads(cli("network", "inspect", NET).stdout)
    yield nd
    cli("network", "rm", NET)


# serves TCP on [::]:9998 (v6 only) and reports every UDP datagram on 9999 (v6) and the IPv6
# frames with a PSBX marker its eth0 received, until "PSBX:done" (+0.5 s) or 20 s
NEIGHBOUR = r"""
import json, select, socket, time
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); raw.bind(("eth0", 0))
t = socket.socket(socket.AF_INET6); t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
t.bind(("::", 9998)); t.listen(4)
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.bind(("::", 9999))
addrs = [l.split() for l in open("/proc/net/if_inet6")]
print(json.dumps({"eth0": [a[0] for a in addrs if a[5] == "eth0"], "hosts": open("/etc/hosts").read(),
                  "routes": open("/proc/net/ipv6_route").read()}), flush=True)
seen, udp = [], []
end = time.monotonic() + 20; done = None
while time.monotonic() < end and (done is None or time.monotonic() < done):
    r, _, _ = select.select([raw, t, u], [], [], 0.1)
    if raw in r:
        d, a = raw.recvfrom(65536)
        if a[2] != socket.PACKET_OUTGOING and d[12:14] == b"\x86\xdd" and b"PSBX:" in d:
            seen.append(d[d.index(b"PSBX:"):].split(b"\0")[0].decode(errors="replace"))
    if t in r:
        c, peer = t.accept(); c.sendall(b"pong6:" + c.recv(16) + b":" + peer[0].encode()); c.close()
    if u in r:
        d, a = u.recvfrom(2048); udp.append([d.decode(errors="replace"), a[0]])
        if d == b"PSBX:done":
            done = time.monotonic() + 0.5
print(json.dumps({"raw": seen, "udp": udp, "snmp": [l for l in open("/proc/net/snmp6") if "Udp6" in l or "Discard" in l]}), flush=True)
"""


def test_two_sandboxes_reach_each_other_by_name_over_ipv6(net):
    net6 = ipaddress.ip_network(net["subnet6"])
    assert net6.subnet_of(ipaddress.ip_network("fd00::/8")) and net6.prefixlen == 64, net
    b = start("v6-b", NEIGHBOUR)
    try:
        info = json.loads(line(b))
        client = textwrap.dedent("""
            import socket
            a = socket.getaddrinfo("v6-b", 9998, socket.AF_INET6, socket.SOCK_STREAM)[0][4]
            c = socket.create_connection(a[:2], timeout=5); c.sendall(b"hi"); print(c.recv(100).decode())
            u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.sendto(b"PSBX:done", (a[0], 9999))
            print(open("/proc/net/if_inet6").read())
        """)
        r = cli("run", "--profile", "strict", "--audit-log", "/dev/null", "--network", NET, "--name", "v6-a", "--",
                PY, "-c", client)
        out = json.loads(line(b, timeout=30))
    finally:
        stop(b)
    assert r.returncode == 0, r
    # the neighbour: one IPv6 address on eth0 (no link-local), from the network's /64, the default
    # route via the bridge's address, its peer's name with both addresses in /etc/hosts
    assert len(info["eth0"]) == 1, info
    b6 = ipaddress.IPv6Address(int(info["eth0"][0], 16))
    assert b6 in net6 and b6 != ipaddress.IPv6Address(net["gateway6"]), info
    gw = ipaddress.IPv6Address(net["gateway6"]).packed.hex()
    assert any(ln.split()[0] == "0" * 32 and ln.split()[4] == gw for ln in info["routes"].splitlines()), info
    hosts = [ln.split() for ln in info["hosts"].splitlines() if not ln.startswith("#")]
    assert [str(b6), "v6-b", "sandbox"] in hosts, info["hosts"]
    assert any(h[0] == str(ipaddress.IPv4Address(int(b6) & 0xFFFFFFFF)) and h[1] == "v6-b" for h in hosts), hosts
    # the connection by name, over IPv6, from the client's own address
    first, rest = r.stdout.split("\n", 1)
    a6 = [ipaddress.IPv6Address(int(x.split()[0], 16)) for x in rest.splitlines() if x.split() and x.split()[-1] == "eth0"]
    assert first == f"pong6:hi:{a6[0]}" and a6[0] in net6 and len(a6) == 1, r.stdout
    assert ["PSBX:done", str(a6[0])] in out["udp"], out


SPOOFER = r"""
import json, socket, struct, time
B = socket.getaddrinfo("v6-b", 9999, socket.AF_INET6, socket.SOCK_DGRAM)[0][4][0]
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.connect((B, 9999)); u.send(b"PSBX:legit")
me = u.getsockname()[0]
time.sleep(0.3)
bmac = next(bytes.fromhex(l.split()[4].replace(":", "")) for l in __import__("subprocess").run(
    ["/usr/sbin/ip", "-6", "neigh", "show", B], capture_output=True, text=True).stdout.splitlines() if "lladdr" in l)
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); raw.bind(("eth0", 0))
mymac = raw.getsockname()[4]
GW = GATEWAY6

def csum(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff

def ip6(src, dst, nh, payload):
    s, d = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    pseudo = s + d + struct.pack("!I3xB", len(payload), nh)
    c = csum(pseudo + payload)
    off = 6 if nh == 17 else 2
    payload = payload[:off] + struct.pack("!H", c) + payload[off + 2:]
    return struct.pack("!IHBB", 0x60000000, len(payload), nh, 255) + s + d + payload

def udp(src, marker):
    data = b"PSBX:" + marker.encode()
    return ip6(src, B, 17, struct.pack("!HHHH", 4321, 9999, 8 + len(data), 0) + data)

def icmp(src, dst, typ, body, marker):
    return ip6(src, dst, 58, struct.pack("!BBH", typ, 0, 0) + body + b"PSBX:" + marker.encode() + b"\0")

tgt = lambda a: socket.inet_pton(socket.AF_INET6, a)
frames = {
    "own": (bmac, udp(me, "own")),                                   # the control: its own address
    "forged-gw": (bmac, udp(GW, "forged-gw")),
    "forged-other": (bmac, udp("fd00::bad", "forged-other")),
    "link-local": (bmac, udp("fe80::bad", "link-local")),
    "router-advert": (bytes.fromhex("333300000001"), icmp(me, "ff02::1", 134, b"\x40\x00\x07\x08" + b"\0" * 8, "router-advert")),
    "redirect": (bmac, icmp(me, B, 137, b"\0" * 4 + tgt(GW) + tgt(B), "redirect")),
    "na-foreign": (bmac, icmp(me, B, 136, b"\x20\0\0\0" + tgt(GW) + b"\x02\x01" + mymac, "na-foreign")),
    "na-own": (bmac, icmp(me, B, 136, b"\x20\0\0\0" + tgt(me) + b"\x02\x01" + mymac, "na-own")),
}
for _ in range(3):
    for dst, pkt in frames.values():
        raw.send(dst + mymac + b"\x86\xdd" + pkt)
    time.sleep(0.05)
time.sleep(0.3)
u.send(b"PSBX:done")
print(json.dumps({"me": me}), flush=True)
"""


def test_spoofed_ipv6_is_dropped_at_the_port(net, tmp_path):
    from sandbox.network import nft
    b = start("v6-b", NEIGHBOUR)
    try:
        line(b)
        log = tmp_path / "audit.jsonl"
        a = subprocess.run([PYSANDBOX, "run", "--profile", "default", "--audit-log", str(log), "--network", NET,
                            "--name", "v6-s", "--", PY, "-c",
                            textwrap.dedent(SPOOFER).replace("GATEWAY6", repr(net["gateway6"]))],
                           capture_output=True, text=True, timeout=60)
        out = json.loads(line(b, timeout=30))
        b.wait(timeout=15)
    finally:
        stop(b)
    assert a.returncode == 0, a.stderr
    me = json.loads(a.stdout)["me"]
    # allowed: its own datagrams (through the stack and raw), its own neighbour advertisement
    assert ["PSBX:legit", me] in out["udp"] and ["PSBX:own", me] in out["udp"], out
    assert "PSBX:na-own" in out["raw"], out
    # dropped: every other source, router advertisements, redirects, advertisements for another address
    leaked = sorted({m[5:] for m in out["raw"]} - {"legit", "own", "na-own", "done"})
    assert leaked == [], f"reached the neighbour: {leaked}"
    assert not [d for d, src in out["udp"] if src != me], out
    evs = [json.loads(x) for x in log.read_text().splitlines()]
    sp = [e for e in evs if e["type"] == "limit_exceeded" and e["limit"]["name"] == "network.antispoof"]
    assert len(sp) == 1 and sp[0]["limit"]["peak"] >= 18, sp          # 6 kinds x 3, at least
    out = nft.nft(args=["list", "table", "netdev", nft.HOST_TABLE], check=False).get("nftables", [])
    assert not [o for o in out if "chain" in o or "counter" in o]


def test_egress_rules_for_ipv6_cidrs(net, tmp_path):
    """egress default deny with an IPv6 CIDR allowed: the peer's allowed port works over IPv6 (the
    rules let neighbour discovery through), another port is refused at once (the reject is ICMPv6
    "administratively prohibited", which Linux reports as EACCES - EHOSTUNREACH is IPv4's)."""
    b = start("v6-b", NEIGHBOUR.replace("9998", "9997"))      # (9998: no listener - refused would be ECONNREFUSED)
    try:
        info = json.loads(line(b))
        b6 = ipaddress.IPv6Address(int(info["eth0"][0], 16))
        prof = tmp_path / "egress6.yaml"
        prof.write_text(f"version: 1\nextends: strict\nnetwork:\n  mode: {NET}\n  egress:\n    default: deny\n"
                        f"    allow:\n      - {{to: '{net['subnet6']}', ports: [9997]}}\n")
        code = textwrap.dedent(f"""
            import errno, socket
            c = socket.create_connection(("{b6}", 9997), timeout=5); c.sendall(b"ok"); print(c.recv(100).decode()[:8])
            try:
                socket.create_connection(("{b6}", 9998), timeout=5); print("connected")
            except OSError as e:
                print(errno.errorcode.get(e.errno, e.errno))
            u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            try:
                u.sendto(b"PSBX:done", ("{b6}", 9999))
            except OSError:
                pass
        """)
        r = cli("run", "--profile", str(prof), "--audit-log", "/dev/null", "--network", NET, "--name", "v6-e", "--",
                PY, "-c", code)
    finally:
        stop(b)
    assert r.returncode == 0, r
    assert r.stdout.split() == ["pong6:ok", "EACCES"], r


# a dual-stack TCP server on 9998 answering with the peer's address; stops after 20 s
SERVER = r"""
import socket, time
t = socket.socket(socket.AF_INET6); t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
t.bind(("::", 9998)); t.listen(8); t.settimeout(20)
print("ready", flush=True)
end = time.monotonic() + 20
while time.monotonic() < end:
    try:
        c, peer = t.accept()
    except OSError:
        break
    c.sendall(b"pong:" + peer[0].encode()); c.close()
"""


def _ask(addr: str, port: int) -> str:
    import socket
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        with socket.socket(fam) as c:
            c.settimeout(5)
            c.connect((addr, port))
            return c.recv(100).decode()
    except OSError as e:
        return f"err{e.errno}"


def test_published_ports_over_ipv6(net):
    """-p on a dual-stack network publishes on IPv6 too (as Docker does): 0.0.0.0's port answers on
    the host's IPv6 addresses (DNAT in `table ip6 pysandbox` to the sandbox's IPv6 address) and on
    ::1 (the userspace proxy's [::] socket, relayed to its IPv4 address), an IPv6 host address
    (`-p [::1]:PORT:PORT`) binds only there; an IPv4-only network refuses IPv6 host addresses."""
    gw4, gw6 = net["gateway"], net["gateway6"]
    b = start("v6-p", SERVER, "-p", "18080:9998", "-p", "[::1]:18081:9998")
    try:
        assert line(b) == "ready"
        got = {a: _ask(a, 18080) for a in (gw6, "::1", gw4, "127.0.0.1")}
        got["[::1]:18081"] = _ask("::1", 18081)
        got["127.0.0.1:18081"] = _ask("127.0.0.1", 18081)
    finally:
        stop(b)
    net6 = ipaddress.ip_network(net["subnet6"])
    assert got[gw6].startswith("pong:") and ipaddress.ip_address(got[gw6][5:]) in net6, got   # DNAT, IPv6
    for a in ("::1", gw4, "127.0.0.1", "[::1]:18081"):
        assert got[a].startswith("pong:"), (a, got)
    assert got["127.0.0.1:18081"] == "err111", got              # [::1] only
    # after the sandbox: its IPv6 DNAT rules are gone with it
    rules = subprocess.run(["nft", "list", "table", "ip6", "pysandbox"], capture_output=True, text=True).stdout
    assert "sbx:" not in rules, rules
    # an IPv4-only network: an IPv6 host address fails closed before anything is created
    assert cli("network", "create", "v4-only").returncode == 0
    try:
        r = cli("run", "--profile", "strict", "--audit-log", "/dev/null", "--network", "v4-only",
                "-p", "[::1]:18082:80", "--", "/bin/true")
    finally:
        cli("network", "rm", "v4-only")
    assert r.returncode == 125 and "IPv4 only" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r
    # slirp4netns: the sandbox has IPv6 outbound, but its port API publishes IPv4 only: refused too
    r = cli("run", "--profile", "strict", "--audit-log", "/dev/null", "--network", "slirp4netns",
            "-p", "[::1]:18082:80", "--", "/bin/true")
    assert r.returncode == 125 and "slirp4netns publishes IPv4 only" in r.stderr, r
    assert len(r.stderr.strip().splitlines()) == 1, r


def test_peer_names_in_egress_rules_match_ipv6_with_the_egress_proxy(net, tmp_path):
    """`to: PEER` allows the peer's IPv6 address too (a second nft set per name), also when host
    rules steer the rest of the sandbox's TCP to the egress proxy: the peer answers by name over
    IPv6 on the allowed port; another port of it goes to the proxy, which refuses (no name)."""
    b = start("v6-b", NEIGHBOUR.replace("9998", "9997"))
    try:
        json.loads(line(b))
        prof = tmp_path / "peer6.yaml"
        prof.write_text(f"version: 1\nextends: strict\nnetwork:\n  mode: {NET}\n  egress:\n    allow:\n"
                        f"      - {{to: v6-b, ports: [9997]}}\n      - {{host: example.test, ports: [443]}}\n")
        code = textwrap.dedent("""
            import socket
            a = socket.getaddrinfo("v6-b", 9997, socket.AF_INET6, socket.SOCK_STREAM)[0][4][:2]
            c = socket.create_connection(a, timeout=5); c.sendall(b"ok"); print(c.recv(100).decode()[:8])
            try:
                c = socket.create_connection((a[0], 9996), timeout=5); c.sendall(b"raw"); print(c.recv(10) or b"closed")
            except OSError as e:
                print("err", e.errno)
        """)
        r = cli("run", "--profile", str(prof), "--audit-log", "/dev/null", "--network", NET, "--name", "v6-n", "--",
                PY, "-c", code)
    finally:
        stop(b)
    assert r.returncode == 0, r
    out = r.stdout.split("\n")
    assert out[0] == "pong6:ok", r
    assert out[1] in ("b'closed'", "err 104"), r
