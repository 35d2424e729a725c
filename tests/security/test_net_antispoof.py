"""Hole: private-network anti-spoofing bypass (802.1Q/802.1ad tags, raw ethertypes, forged MACs).

The old per-port rules (table bridge pysandbox) dropped IPv4 and ARP with a foreign source and
IPv6 — filtering by what a frame is not. A sandbox holding NET_RAW (the `default` profile) wrapped
a forged IPv4 packet in an 802.1Q tag (VLAN 0) or an 802.1ad tag: `ether type` was 0x8100/0x88a8,
no rule matched, the bridge forwarded it and the neighbour's kernel untagged it and delivered the
forged datagram. STP-addressed frames and unknown ethertypes were forwarded likewise.

Now each port has an allow-list (table netdev pysandbox, hook ingress on the host side of its
veth, policy drop): IPv4 from its own address and MAC, ARP for its own address and MAC; nothing
else. These tests go through `pysandbox run` (the CLI) as root — private networks need root;
rootless they are refused (tests/system/test_network_rootless.py) — two sandboxes on one private network:
the attacker sends with an AF_PACKET socket (NET_RAW of `--profile default`), the neighbour
captures on its eth0 with an AF_PACKET socket and a deadline.

SAFETY: the pytest process is moved into a network namespace of its own (fixture `testns` of
tests/system/test_network.py) before anything is created; the sandboxes, bridges and nft tables live
there and go with it. Every wait is bounded.
"""
from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time

import pytest

from sandbox.network import nft, store
from conftest import host_rules, links

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="private networks need root (refused rootless: "
                                                          "tests/system/test_network_rootless.py)")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import PYSANDBOX  # noqa: E402  (the installed entry points)
PY_IN = "/usr/bin/python3"
NET = "asp-net"


def argv(*opts, code, profile="default"):
    return [PYSANDBOX, "run", "--profile", profile, "--audit-log", "/dev/null", *opts, "--", PY_IN, "-c",
            textwrap.dedent(code)]


def cli(*args):
    return subprocess.run([PYSANDBOX, *args], capture_output=True, text=True, timeout=60)


def read_line(p, timeout=20):
    import select
    buf = getattr(p, "_buf", b"")
    end = time.monotonic() + timeout
    while b"\n" not in buf:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError("no line from the sandbox")
        r, _, _ = select.select([p.stdout], [], [], min(left, 0.2))
        if r:
            d = os.read(p.stdout.fileno(), 65536)
            if not d:
                p.wait(timeout=10)
                raise AssertionError(f"sandbox exited {p.returncode}: {p.stderr.read()}")
            buf += d
    line, p._buf = buf.split(b"\n", 1)
    return line.decode()


def stop(p):
    if p.poll() is None:
        p.kill()
    p.wait(timeout=10)


@pytest.fixture
def net(testns):
    r = cli("network", "create", NET)
    assert r.returncode == 0, r.stderr
    yield store.load_network(NET)
    cli("network", "rm", NET)


# The neighbour: captures every frame on its eth0 (AF_PACKET, ETH_P_ALL) and every UDP datagram
# on 9999 until the attacker's legitimate "done" datagram arrives (+0.5 s) or 25 s pass; serves
# TCP 9998 (a legitimate connection by name). Markers "PSBX:<kind>" are in every test frame.
NEIGHBOUR = r"""
import json, re, select, socket, struct, time
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); raw.bind(("eth0", 0))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 9999))
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(("0.0.0.0", 9998)); t.listen(4)
print("ready", flush=True)
raw_seen, udp_seen, arp_senders = [], [], []
end = time.monotonic() + 25; done = None
while time.monotonic() < end and (done is None or time.monotonic() < done):
    r, _, _ = select.select([raw, u, t], [], [], 0.1)
    if raw in r:
        d, a = raw.recvfrom(65536)
        if a[2] != socket.PACKET_OUTGOING:
            raw_seen += [m.decode() for m in re.findall(rb"PSBX:[a-z0-9-]+", d)]
            if d[12:14] == b"\x08\x06" and len(d) >= 42:
                arp_senders.append([d[22:28].hex(":"), socket.inet_ntoa(d[28:32])])
    if u in r:
        d, a = u.recvfrom(2048)
        udp_seen.append([d.decode(errors="replace"), a[0]])
        if d == b"PSBX:done":
            done = time.monotonic() + 0.5
    if t in r:
        c, _ = t.accept(); c.sendall(b"pong:" + c.recv(16)); c.close()
v6 = open("/proc/net/if_inet6").read().split()
print(json.dumps({"raw": raw_seen, "udp": udp_seen, "arp": arp_senders, "arp_table": open("/proc/net/arp").read(),
                  "v6_eth0": [x for x in v6 if x == "eth0"]}), flush=True)
"""

# The attacker: legitimate traffic first (UDP, TCP by name: the kernel's own ARP resolves the
# neighbour), then forged frames on an AF_PACKET socket, then the legitimate "done".
ATTACKER = r"""
import json, socket, struct, time
B = socket.gethostbyname("asp-b")
GW = GATEWAY
c = socket.create_connection(("asp-b", 9998), timeout=5); c.sendall(b"tcp"); tcp = c.recv(16).decode(); c.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect((B, 9999)); me = u.getsockname()[0]
u.send(b"PSBX:legit-udp")
bmac = next(bytes.fromhex(l.split()[3].replace(":", "")) for l in open("/proc/net/arp").read().splitlines()[1:]
            if l.split()[0] == B)
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); raw.bind(("eth0", 0))
mymac = raw.getsockname()[4]

def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff

def ipv4(src, marker):
    data = b"PSBX:" + marker.encode()
    udp = struct.pack("!HHHH", 4321, 9999, 8 + len(data), 0) + data
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(B))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + udp

def eth(ethertype, payload, src=None, dst=None):
    return (dst or bmac) + (src or mymac) + ethertype + payload

def arp(op, smac, sip, tmac, tip, marker):
    a = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, smac, socket.inet_aton(sip), tmac, socket.inet_aton(tip))
    return a + b"PSBX:" + marker.encode()            # trailer: ignored by ARP, seen by a capture

v6 = (struct.pack("!IHBB16s16s", 0x60000000, 8 + 13, 17, 64, bytes.fromhex("fe80" + "00" * 13 + "0bad"),
                  bytes.fromhex("ff02" + "00" * 13 + "0001")) + struct.pack("!HHHH", 4321, 9999, 21, 0) + b"PSBX:ipv6-raw")
frames = {
    "forged-ip": eth(b"\x08\x00", ipv4(GW, "forged-ip")),
    "vlan0-forged": eth(b"\x81\x00", b"\x00\x00\x08\x00" + ipv4(GW, "vlan0-forged")),
    "vlan0-own": eth(b"\x81\x00", b"\x00\x00\x08\x00" + ipv4(me, "vlan0-own")),
    "vlan5-own": eth(b"\x81\x00", b"\x00\x05\x08\x00" + ipv4(me, "vlan5-own")),
    "qinq-forged": eth(b"\x88\xa8", b"\x00\x00\x81\x00\x00\x00\x08\x00" + ipv4(GW, "qinq-forged")),
    "ad-forged": eth(b"\x88\xa8", b"\x00\x00\x08\x00" + ipv4(GW, "ad-forged")),
    "ipv6-raw": eth(b"\x86\xdd", v6, dst=bytes.fromhex("333300000001")),
    "arp-forged": eth(b"\x08\x06", arp(2, mymac, GW, bmac, B, "arp-forged")),
    "arp-forged-mac": eth(b"\x08\x06", arp(2, bytes.fromhex("0250deadbeef"), me, bmac, B, "arp-forged-mac")),
    "mac-forged": eth(b"\x08\x00", ipv4(me, "mac-forged"), src=bytes.fromhex("0250deadbeef")),
    "stp": eth(b"\x00\x26", b"\x42\x42\x03" + b"\x00" * 8 + b"PSBX:stp", dst=bytes.fromhex("0180c2000000")),
    "ethertype-raw": eth(b"\x88\xb5", b"PSBX:ethertype-raw"),
}
for _ in range(3):
    for f in frames.values():
        raw.send(f)
    time.sleep(0.05)
# IPv6 through the stack: no address (not even link-local) on eth0
try:
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s6.sendto(b"PSBX:ipv6-sock", ("ff02::1%eth0", 9999)); v6sock = "sent"
except OSError as e:
    v6sock = f"err{e.errno}"
time.sleep(0.3)
u.send(b"PSBX:legit-after")
time.sleep(0.2)
u.send(b"PSBX:done")
print(json.dumps({"tcp": tcp, "me": me, "mac": mymac.hex(":"), "frames": sorted(frames), "v6sock": v6sock,
                  "v6_eth0": [x for x in open("/proc/net/if_inet6").read().split() if x == "eth0"]}), flush=True)
"""


def test_forged_tagged_and_foreign_frames_never_reach_the_neighbour(net, tmp_path):
    gw = net["gateway"]
    b = subprocess.Popen(argv("--network", NET, "--name", "asp-b", code=NEIGHBOUR), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        assert read_line(b) == "ready"
        log = tmp_path / "audit.jsonl"
        a = subprocess.run(argv("--network", NET, "--name", "asp-a", "--audit-log", str(log),
                                code=ATTACKER.replace("GATEWAY", repr(gw))),
                           capture_output=True, text=True, timeout=60)
        assert a.returncode == 0, a.stderr
        att = json.loads(a.stdout)
        seen = json.loads(read_line(b, timeout=30))
        assert b.wait(timeout=15) == 0
    finally:
        stop(b)
    # the legitimate side: TCP by name, UDP from its own address (before and after the forged burst),
    # the kernel's own ARP for its own address and MAC
    assert att["tcp"] == "pong:tcp"
    assert ["PSBX:legit-udp", att["me"]] in seen["udp"] and ["PSBX:legit-after", att["me"]] in seen["udp"]
    assert [att["mac"], att["me"]] in seen["arp"]
    # the attack side: not one forged, tagged, foreign-MAC, IPv6, STP or raw-ethertype frame arrived
    assert att["frames"] and len(att["frames"]) == 12
    forged = sorted({m[5:] for m in seen["raw"]} - {"legit-udp", "legit-after", "done"})
    assert forged == [], f"reached the neighbour: {forged}"
    assert [d for d, _ in seen["udp"] if d not in ("PSBX:legit-udp", "PSBX:legit-after", "PSBX:done")] == []
    assert all(ip != gw for _, ip in seen["arp"]), seen["arp"]          # no ARP claims the gateway's address
    assert not any(ln.split()[0] == gw and att["mac"] in ln for ln in seen["arp_table"].splitlines()[1:])
    # no IPv6 address on either sandbox's eth0, IPv6 from the stack goes nowhere
    assert att["v6_eth0"] == [] and seen["v6_eth0"] == []
    assert "ipv6-sock" not in forged
    # denials: counted by the port's allow-list and recorded once in the attacker's audit log
    evs = [json.loads(x) for x in log.read_text().splitlines()]
    sp = [e for e in evs if e["type"] == "limit_exceeded" and e["limit"]["name"] == "network.antispoof"]
    assert len(sp) == 1 and sp[0]["limit"]["peak"] >= 36, sp            # 12 kinds x 3, at least
    # nothing left behind: no port, no per-port chain or counter
    assert not [x for x in links() if x.startswith("psv")]
    out = nft.nft(args=["list", "table", "netdev", nft.HOST_TABLE], check=False).get("nftables", [])
    assert not [o for o in out if "chain" in o or "counter" in o]


V6_NEIGHBOUR = r"""
import json, re, select, socket, subprocess, time
r = subprocess.run(["/usr/sbin/ip", "-6", "addr", "add", "fd00:5b::2/64", "dev", "eth0", "nodad"], capture_output=True)
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); raw.bind(("eth0", 0))
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
u6.bind(("::", 9999))
u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u4.bind(("0.0.0.0", 9999))
print("ready", r.returncode, flush=True)
raw_v6, got = 0, []
end = time.monotonic() + 20; done = None
while time.monotonic() < end and (done is None or time.monotonic() < done):
    rd, _, _ = select.select([raw, u6, u4], [], [], 0.1)
    if raw in rd:
        d, a = raw.recvfrom(65536)
        if a[2] != socket.PACKET_OUTGOING and d[12:14] == b"\x86\xdd" and b"PSBX:" in d:
            raw_v6 += 1             # (the host's bridge sends IPv6 of its own: only the sender's count)
    for s in (u6, u4):
        if s in rd:
            d, a = s.recvfrom(2048); got.append(d.decode(errors="replace"))
            if d == b"PSBX:done":
                done = time.monotonic() + 0.5
print(json.dumps({"raw_v6": raw_v6, "got": got}), flush=True)
"""

V6_SENDER = r"""
import json, socket, subprocess, time
B = socket.gethostbyname("asp-b")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect((B, 9999)); u.send(b"PSBX:legit-udp")
time.sleep(0.2)
bmac = next(l.split()[3] for l in open("/proc/net/arp").read().splitlines()[1:] if l.split()[0] == B)
ip = lambda *a: subprocess.run(["/usr/sbin/ip", *a], capture_output=True).returncode
rc = [ip("-6", "addr", "add", "fd00:5b::1/64", "dev", "eth0", "nodad"),
      ip("-6", "neigh", "replace", "fd00:5b::2", "lladdr", bmac, "dev", "eth0", "nud", "permanent")]
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
sent = 0
for _ in range(5):
    try:
        s6.sendto(b"PSBX:v6-own-address", ("fd00:5b::2", 9999)); sent += 1
    except OSError:
        pass
    time.sleep(0.05)
time.sleep(0.3)
u.send(b"PSBX:done")
print(json.dumps({"rc": rc, "sent": sent}), flush=True)
"""


def test_ipv6_dropped_even_with_an_address_the_sandbox_gave_itself(net):
    """No IPv6 address is assigned on a private network (not even link-local), and the port's
    allow-list has no IPv6 entry: a sandbox with NET_ADMIN that adds an IPv6 address and a static
    neighbour entry itself sends IPv6 datagrams that never reach the neighbour (which has an
    address of its own and listens); IPv4 between them works."""
    b = subprocess.Popen(argv("--network", NET, "--name", "asp-b", "--cap-add", "NET_ADMIN", code=V6_NEIGHBOUR),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert read_line(b) == "ready 0"                        # the neighbour did get its IPv6 address
        a = subprocess.run(argv("--network", NET, "--name", "asp-a", "--cap-add", "NET_ADMIN", code=V6_SENDER),
                           capture_output=True, text=True, timeout=60)
        assert a.returncode == 0, a.stderr
        att = json.loads(a.stdout)
        seen = json.loads(read_line(b, timeout=30))
    finally:
        stop(b)
    assert att["rc"] == [0, 0] and att["sent"] == 5            # the kernel sent them from its own address
    assert "PSBX:legit-udp" in seen["got"] and "PSBX:done" in seen["got"]     # IPv4 works
    assert "PSBX:v6-own-address" not in seen["got"] and seen["raw_v6"] == 0, seen   # no IPv6 frame arrived


def test_kernel_nft_ether_type_sees_the_outer_tag(testns):
    """What the design relies on, shown on this kernel: a frame with an 802.1Q or 802.1ad tag arrives
    at a veth's ingress with the outer tag already moved into the skb's metadata (skb_vlan_untag);
    nft's `ether type` still reads the outer tag (nft puts it back for the match), while
    `meta protocol` reads the protocol behind it — so `meta protocol ip` (or the old
    `ether type ip ip saddr != X drop`, which no tagged frame matches) is not a filter, and
    `ether type ip` in an allow-list is. Both veth ends live in this module's network namespace."""
    import socket
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        ipr.link("add", ifname="aspk0", kind="veth", peer={"ifname": "aspk1"})
        for n in ("aspk0", "aspk1"):
            ipr.link("set", index=ipr.link_lookup(ifname=n)[0], state="up")
        # both ends operationally up before a frame is sent (under load the carrier can lag the
        # administrative state: frames sent before it are dropped, and nothing is counted)
        deadline = time.monotonic() + 10
        while any(ipr.get_links(ipr.link_lookup(ifname=n)[0])[0].get_attr("IFLA_OPERSTATE") != "UP"
                  for n in ("aspk0", "aspk1")):
            assert time.monotonic() < deadline, "the probe veth never came up"
            time.sleep(0.01)
    T = {"family": "netdev", "table": "asp_probe"}
    probes = {"et_ip": [nft.m(nft.payload("ether", "type"), "ip")],
              "et_8100": [nft.m(nft.payload("ether", "type"), 0x8100)],
              "et_88a8": [nft.m(nft.payload("ether", "type"), 0x88a8)],
              "mp_ip": [nft.m(nft.meta("protocol"), "ip")],
              "mp_8100": [nft.m(nft.meta("protocol"), 0x8100)]}
    try:
        nft.nft([{"add": {"table": {"family": "netdev", "name": "asp_probe"}}},
               {"add": {"chain": {**T, "name": "in", "type": "filter", "hook": "ingress", "dev": "aspk1",
                                  "prio": 0, "policy": "drop"}}}]
              + [{"add": {"rule": {**T, "chain": "in", "comment": k, "expr": e + [{"counter": None}]}}}
                 for k, e in probes.items()])
        ip = bytes.fromhex("4500001c0000000040110000c0000201c0000202") + b"\x00" * 8
        dst, src = bytes.fromhex("0250c0000202"), bytes.fromhex("0250c0000201")
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind(("aspk0", 0))
        s.send(dst + src + b"\x08\x00" + ip)                                        # plain IPv4
        s.send(dst + src + b"\x81\x00\x00\x00\x08\x00" + ip)                        # VLAN 0
        s.send(dst + src + b"\x88\xa8\x00\x00\x81\x00\x00\x00\x08\x00" + ip)        # 802.1ad + 802.1Q
        s.close()
        deadline = time.monotonic() + 10             # the frames are counted in softirq: under load, late
        while True:
            out = nft.nft(args=["list", "chain", "netdev", "asp_probe", "in"]).get("nftables", [])
            got = {o["rule"]["comment"]: next(x["counter"]["packets"] for x in o["rule"]["expr"] if "counter" in x)
                   for o in out if "rule" in o}
            if got["et_ip"] + got["et_8100"] + got["et_88a8"] >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        nft.nft([{"delete": {"table": {"family": "netdev", "name": "asp_probe"}}}], check=False)
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname="aspk0")
            if idx:
                ipr.link("del", index=idx[0])
    # ether type: the outer ethertype of each frame, tag or not
    assert (got["et_ip"], got["et_8100"], got["et_88a8"]) == (1, 1, 1), got
    # meta protocol: behind the (first) tag - the VLAN-0 frame counts as IPv4
    assert (got["mp_ip"], got["mp_8100"]) == (2, 1), got
