"""End-to-end networking through `pysandbox run` (the real launcher), as root.

SAFETY: like tests/system/test_network.py, this module moves the pytest process into a network
namespace of its own (fixture `testns`, imported from there) before anything is created;
every `pysandbox` it starts inherits that namespace. Traffic goes only to loopback, the
module's bridges and its own sandboxes; every wait is bounded.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import textwrap
import time

import pytest

from sandbox.network import bridge, store
from conftest import links, host_rules

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates network namespaces)")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import PYSANDBOX  # noqa: E402  (the installed entry points)
PY_IN = "/usr/bin/python3"


def run_argv(*opts, code: str, profile="default"):
    # --audit-log /dev/null: keep the machine's audit log free of test runs (a later one wins)
    return [PYSANDBOX, "run", "--profile", profile, "--audit-log", "/dev/null", *opts, "--", PY_IN, "-c",
            textwrap.dedent(code)]


def run(*opts, code: str, profile="default", timeout=30):
    return subprocess.run(run_argv(*opts, code=code, profile=profile), capture_output=True, text=True,
                          timeout=timeout)


def start(*opts, code: str, profile="default", stdin=None):
    p = subprocess.Popen(run_argv(*opts, code=code, profile=profile), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=stdin, text=True)
    return p


def wait_line(p, timeout=15):
    """Next stdout line of a started sandbox (own buffer over os.read: select() and a buffered
    reader do not mix)."""
    import select
    buf = getattr(p, "_linebuf", b"")
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no line from sandbox")
        r, _, _ = select.select([p.stdout], [], [], min(left, 0.2))
        if r:
            d = os.read(p.stdout.fileno(), 4096)
            if not d:
                p.wait(timeout=10)
                raise AssertionError(f"sandbox exited {p.returncode}: {p.stderr.read()}")
            buf += d
    line, p._linebuf = buf.split(b"\n", 1)
    return line.decode().strip()


def stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def cli(*args):
    return subprocess.run([PYSANDBOX, *args], capture_output=True, text=True, timeout=30)


SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ports = PORTS
socks = []
for p in ports:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", p)); s.listen(8)
    socks.append(s)
print("ready", flush=True)
import threading
def serve(s):
    for _ in range(20):
        c, _ = s.accept(); c.sendall(b"hello:%d" % s.getsockname()[1]); c.close()
ts = [threading.Thread(target=serve, args=(s,), daemon=True) for s in socks]
[t.start() for t in ts]
import time; time.sleep(60)
"""


def server(*opts, ports=(7000,)):
    return SERVER.replace("PORTS", repr(list(ports)))


CLIENT = """
import socket
out = []
for host, port in TARGETS:
    try:
        ip = socket.gethostbyname(host)
    except OSError:
        out.append("noname"); continue
    try:
        c = socket.create_connection((ip, port), timeout=2); out.append(c.recv(64).decode()); c.close()
    except OSError as e:
        out.append(f"err{e.errno}")
print(" ".join(out))
"""


def client(targets):
    return CLIENT.replace("TARGETS", repr(list(targets)))


@pytest.fixture
def nets(testns):
    made = []

    def make(name, *extra):
        r = cli("network", "create", name, *extra)
        assert r.returncode == 0, r.stderr
        made.append(name)
    yield make
    for n in made:
        cli("network", "rm", n)




def test_e2e_by_name_and_isolation(nets):
    nets("e2a")
    nets("e2b")
    bridge_a = store.load_network("e2a")["bridge"]
    a = start("--network", "e2a", "--name", "alpha", code=server())
    try:
        assert wait_line(a) == "ready"
        r = run("--network", "e2a", "--name", "beta", code=client([("alpha", 7000)]) +
                "\nprint(open('/etc/hosts').read())")
        assert r.returncode == 0, r.stderr
        first, hosts = r.stdout.split("\n", 1)
        assert first == "hello:7000"                         # B reaches A by name
        assert "\talpha\n" in hosts                      # a peer: by its name
        assert "\tbeta sandbox\n" in hosts               # itself: its name and its host name
        ip_a = bridge.inspect_network("e2a")["endpoints"][0]["address"]
        r = run("--network", "e2b", "--name", "gamma", code=client([("alpha", 7000), (ip_a, 7000)]))
        assert r.returncode == 0, r.stderr
        noname, by_ip = r.stdout.split()
        assert noname == "noname" and by_ip.startswith("err")   # another network: neither name nor route
    finally:
        stop(a)
    assert bridge.inspect_network("e2a")["endpoints"] == []
    assert not [x for x in links() if x.startswith("psv")]
    r = cli("network", "rm", "e2a")
    assert r.returncode == 0
    assert store.load_network("e2b")["bridge"] in links()                  # a network's bridge lives with it
    assert bridge_a not in links()


def test_e2e_none_only_lo(testns):
    r = run("--network", "none", code="""
        import socket
        print(sorted(n for _, n in socket.if_nameindex()))
        try:
            socket.create_connection(("10.89.0.1", 80), timeout=2)
        except OSError as e:
            print(e.errno)
        """)
    assert r.returncode == 0, r.stderr
    import errno
    assert r.stdout.split("\n")[:2] == ["['lo']", str(errno.ENETUNREACH)]


def test_e2e_published_port(nets):
    nets("e2p")
    p = start("--network", "e2p", "--name", "web", "-p", "8080:80", "--cap-add", "NET_BIND_SERVICE",
              code=server(ports=(80,)))
    try:
        assert wait_line(p) == "ready"
        gw = store.load_network("e2p")["gateway"]
        assert "sbx:" in " ".join(r.get("comment") or "" for r in host_rules())
        for addr in ("127.0.0.1", gw):
            c = socket.create_connection((addr, 8080), timeout=3)
            assert c.recv(64) == b"hello:80"
            c.close()
    finally:
        stop(p)
    assert not any((r.get("comment") or "").startswith("sbx:") for r in host_rules())
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", 8080), timeout=1).close()


def test_e2e_egress_allow_list(nets, tmp_path):
    nets("e2e")
    prof = tmp_path / "egress.yaml"
    prof.write_text(textwrap.dedent("""\
        version: 1
        name: egress-test
        extends: default
        network:
          mode: e2e
          egress:
            default: deny
            allow:
              - {to: db, ports: [7000]}
        """))
    os.chmod(tmp_path, 0o755)
    db = start("--network", "e2e", "--name", "db", code=server(ports=(7000, 7001)))
    other = start("--network", "e2e", "--name", "other", code=server(ports=(7000,)))
    try:
        assert wait_line(db) == "ready" and wait_line(other) == "ready"
        code = client([("db", 7000), ("db", 7001), ("other", 7000)]) + textwrap.dedent("""
            import subprocess
            p = subprocess.run(["/usr/sbin/nft", "flush", "ruleset"], capture_output=True, text=True)
            print(p.returncode, "Operation not permitted" in p.stderr)
            """)
        log = tmp_path / "audit.jsonl"
        r = run("--name", "client", "--cap-add", "NET_RAW", "--audit-log", str(log), code=code, profile=str(prof))
        assert r.returncode == 0, r.stderr
        lines = r.stdout.split("\n")
        assert lines[0].split() == ["hello:7000", "err113", "err113"]   # allowed; other port; other peer
        rc, eperm = lines[1].split()
        assert rc != "0" and eperm == "True"                               # NET_RAW cannot flush the rules
        # the denied packets are counted and reach the audit log
        import json
        evs = [json.loads(x) for x in log.read_text().splitlines()]
        eg = [e for e in evs if e["type"] == "limit_exceeded" and e["limit"]["name"] == "network.egress"]
        assert eg and eg[0]["limit"]["peak"] >= 2, evs
    finally:
        stop(db)
        stop(other)


def test_e2e_twenty_concurrent(nets):
    nets("e2c")
    code = """
        import socket, fcntl, struct, sys
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ip = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, struct.pack('256s', b'eth0'))[20:24])
        print(ip, flush=True)
        sys.stdin.read()
        """
    # all twenty hold their address at once: each runs until its stdin closes, after every address
    # is known (a fixed sleep let the first ones end - and free theirs - before the last started)
    procs = [start("--network", "e2c", "--name", f"s{i}", code=code, stdin=subprocess.PIPE) for i in range(20)]
    addrs = []
    try:
        for p in procs:
            addrs.append(wait_line(p, timeout=60))
        for p in procs:
            p.stdin.close()
        for p in procs:
            p.wait(timeout=60)
    finally:
        for p in procs:
            stop(p)
    assert [p.returncode for p in procs] == [0] * 20, [p.stderr.read() for p in procs if p.returncode]
    assert len(set(addrs)) == 20, addrs
    assert bridge.inspect_network("e2c")["endpoints"] == []
    assert not [x for x in links() if x.startswith("psv")]


def test_e2e_supervisor_crash_is_reclaimed(nets):
    nets("e2k")
    p = start("--network", "e2k", "--name", "victim", "-p", "18081:7000", code=server())
    try:
        assert wait_line(p) == "ready"
        assert [e["name"] for e in bridge.inspect_network("e2k")["endpoints"]] == ["victim"]
        os.kill(p.pid, signal.SIGKILL)                        # the supervisor dies
        p.wait(timeout=10)
    finally:
        stop(p)
    deadline = time.monotonic() + 10                          # its sandbox dies with it (PDEATHSIG)
    while [x for x in links() if x.startswith("psv")] and time.monotonic() < deadline:
        time.sleep(0.1)
    r = cli("network", "ls")                                  # reclaims stale endpoints
    assert r.returncode == 0
    assert bridge.inspect_network("e2k")["endpoints"] == []
    assert not any((r_.get("comment") or "").startswith("sbx:") for r_ in host_rules())
    assert not [x for x in links() if x.startswith("psv")]


def test_e2e_errors_fail_closed(testns):
    r = run("--network", "nosuch", code="print('ran')")
    assert r.returncode == 125 and "ran" not in r.stdout
    assert r.stderr.strip().splitlines() == [
        "pysandbox: network 'nosuch' not found (create it with: pysandbox network create nosuch)"]
    r = cli("network", "rm", "nosuch")
    assert r.returncode == 1 and r.stderr.strip() == "pysandbox: network 'nosuch' not found"


@pytest.mark.parametrize("mode", ["pasta", "slirp4netns"])
def test_e2e_usermode_network_as_root(testns, mode):
    """pasta / slirp4netns as root: outbound through the user-mode stack to an "upstream" veth of
    this module's own netns (TEST-NET-1 addresses), and a published port."""
    import shutil
    if shutil.which(mode) is None:
        pytest.skip(f"{mode} not installed")
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        ipr.link("add", ifname="up0", kind="veth", peer={"ifname": "up1"})
        i0, i1 = ipr.link_lookup(ifname="up0")[0], ipr.link_lookup(ifname="up1")[0]
        for i in (i0, i1):
            ipr.link("set", index=i, state="up")
        ipr.addr("add", index=i0, address="192.0.2.1", prefixlen=24)
        ipr.addr("add", index=i0, address="192.0.2.2", prefixlen=24)
        ipr.route("add", dst="0.0.0.0/0", gateway="192.0.2.254")
    ls = socket.socket()
    try:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("192.0.2.2", 9000))
        ls.listen(2)
        ls.settimeout(15)
        p = start("--network", mode, "-p", "18097:7000", code="""
            import socket
            print(sorted(n for _, n in socket.if_nameindex()), flush=True)
            c = socket.create_connection(("192.0.2.2", 9000), timeout=5); print(c.recv(10).decode(), flush=True)
            s = socket.socket(); s.bind(("0.0.0.0", 7000)); s.listen(1); s.settimeout(15)
            print("listening", flush=True)
            a, _ = s.accept(); a.sendall(b"published"); a.close()
            """)
        try:
            names = wait_line(p)
            c, _ = ls.accept()
            c.sendall(b"upstream")
            c.close()
            assert wait_line(p) == "upstream"
            assert wait_line(p) == "listening"
            c = socket.create_connection(("127.0.0.1", 18097), timeout=5)
            assert c.recv(20) == b"published"
            c.close()
            assert p.wait(timeout=15) == 0
            assert names.startswith("['lo', ")
        finally:
            stop(p)
    finally:
        ls.close()
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname="up0")
            if idx:
                ipr.link("del", index=idx[0])


def test_e2e_egress_refused_with_net_admin(testns, tmp_path):
    prof = tmp_path / "eg.yaml"
    prof.write_text("version: 1\nname: eg\nextends: default\nnetwork:\n  mode: none\n  egress:\n"
                    "    default: deny\n    allow:\n      - {to: 10.0.0.0/8, proto: icmp}\n")
    r = run("--cap-add", "NET_ADMIN", code="print('ran')", profile=str(prof))
    assert r.returncode == 2 and "ran" not in r.stdout
    assert "CAP_NET_ADMIN" in r.stderr and r.stderr.startswith(f"pysandbox: {prof}:")
    r = run(code="print('ran')", profile=str(prof))
    assert r.returncode == 0 and r.stdout.strip() == "ran", r.stderr


def _helpers(mode):
    out = subprocess.run(["pgrep", "-f", f"^/usr/bin/{mode} .*/proc/[0-9]+/ns/net"], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


@pytest.mark.parametrize("mode", ["pasta", "slirp4netns"])
def test_e2e_usermode_helper_dies_with_supervisor(testns, mode):
    import shutil
    if shutil.which(mode) is None:
        pytest.skip(f"{mode} not installed")
    from pyroute2 import IPRoute
    with IPRoute() as ipr:                    # pasta needs an "upstream" interface with a default route
        ipr.link("add", ifname="up0", kind="veth", peer={"ifname": "up1"})
        for n in ("up0", "up1"):
            ipr.link("set", index=ipr.link_lookup(ifname=n)[0], state="up")
        ipr.addr("add", index=ipr.link_lookup(ifname="up0")[0], address="192.0.2.1", prefixlen=24)
        ipr.route("add", dst="0.0.0.0/0", gateway="192.0.2.254")
    before = set(_helpers(mode))
    try:
        p = start("--network", mode, code="print('up', flush=True); import time; time.sleep(30)")
        try:
            assert wait_line(p) == "up"
            mine = set(_helpers(mode)) - before
            assert len(mine) == 1
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        finally:
            stop(p)
        deadline = time.monotonic() + 5
        while set(_helpers(mode)) & mine and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not set(_helpers(mode)) & mine
    finally:
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname="up0")
            if idx:
                ipr.link("del", index=idx[0])


def test_e2e_network_cli(nets):
    r = cli("network", "create", "clinet", "--subnet", "10.66.1.0/24")
    assert r.returncode == 0 and r.stdout.strip() == "clinet"
    try:
        r = cli("network", "create", "clinet")
        assert r.returncode == 1 and r.stderr.strip() == "pysandbox: network create: network 'clinet' already exists"
        r = cli("network", "create", "x2", "--subnet", "nonsense")
        assert r.returncode == 1 and r.stderr.startswith("pysandbox: network create: --subnet nonsense")
        r = cli("network", "ls")
        assert r.returncode == 0
        assert r.stdout.splitlines()[0].split() == ["NAME", "SUBNET", "GATEWAY", "BRIDGE", "SANDBOXES"]
        assert any(ln.split()[:2] == ["clinet", "10.66.1.0/24"] for ln in r.stdout.splitlines())
        import json
        r = cli("network", "ls", "--json")
        assert [n for n in json.loads(r.stdout) if n["name"] == "clinet"][0]["gateway"] == "10.66.1.1"
        p = start("--network", "clinet", "--name", "svc", code="print('up', flush=True); import time; time.sleep(20)")
        try:
            assert wait_line(p) == "up"
            info = json.loads(cli("network", "inspect", "clinet").stdout)
            assert [(e["name"], e["address"]) for e in info["endpoints"]] == [("svc", "10.66.1.2")]
            r = cli("network", "rm", "clinet")
            assert r.returncode == 1 and "attached" in r.stderr and "svc" in r.stderr
        finally:
            stop(p)
        r = cli("network", "inspect", "nosuch")
        assert r.returncode == 1 and r.stderr.strip() == "pysandbox: network 'nosuch' not found"
    finally:
        r = cli("network", "rm", "clinet")
    assert r.returncode == 0
    assert "clinet" not in cli("network", "ls").stdout
