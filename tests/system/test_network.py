"""Networking mechanism tests (sandbox/network/), real kernel, no launcher needed.

SAFETY: every test that touches interfaces, routes or nftables runs inside a network
namespace this test module creates for itself (the pytest process unshares CLONE_NEWNET for
the module and setns()es back at the end; an assertion checks it really is a new namespace
before anything is touched). The host's own interfaces, routes and ruleset are never seen.
Traffic goes only to loopback, the module's bridges and the test's own "sandboxes".
"Sandboxes" here are plain child processes in a new user+net+mount namespace (the launcher's
clone), released after `NetHandle.attach` like the launcher does; their capabilities are cut
with setpriv (bounding set) before exec. Every wait is bounded.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import time

import pytest

from policies.plan import EgressRule, Network, PortMapping
from sandbox import _sys
from sandbox.network import bridge, doctor as network_doctor, endpoint, loopback, nft
from sandbox.network.common import NetworkError
from sandbox.procid import start_time as proc_starttime

from conftest import host_rules, links

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates network namespaces)")

PY = "/usr/bin/python3"
SETPRIV = "/usr/bin/setpriv"


def port_objects():
    """Chains and counters of table netdev pysandbox (one of each per attached sandbox port)."""
    out = nft.nft(args=["list", "table", "netdev", nft.HOST_TABLE], check=False).get("nftables", [])
    return sorted((k, o[k]["name"]) for o in out for k in ("chain", "counter") if k in o)


class Box:
    """A child in new user+net+mount namespaces: waits for `go`, optionally bind-mounts a hosts
    file on /etc/hosts, then execs python3 CODE under setpriv with the given bounding set.
    Its stdout is a pipe: lines are read with a deadline."""

    def __init__(self, code: str, caps: str = "-all", hosts: str | None = None):
        r_go, w_go = os.pipe()
        r_out, w_out = os.pipe()
        pid = _sys.clone_fork(_sys.CLONE_NEWUSER | _sys.CLONE_NEWNET | _sys.CLONE_NEWNS)
        if pid == 0:  # child
            try:
                os.close(w_go)
                os.close(r_out)
                if os.read(r_go, 1) != b"g":
                    os._exit(120)
                os.setresgid(0, 0, 0)          # become the mapped root (host uid 100000)
                os.setresuid(0, 0, 0)
                if hosts:
                    _sys.mount(None, "/", None, _sys.MS_REC | _sys.MS_PRIVATE)
                    _sys.mount(hosts, "/etc/hosts", None, _sys.MS_BIND)
                os.dup2(w_out, 1)
                os.execv(SETPRIV, [SETPRIV, f"--bounding-set={caps}", "--inh-caps=-all", "--", PY, "-c", code])
            except BaseException as e:  # noqa: BLE001
                os.write(2, f"box child: {e}\n".encode())
            os._exit(127)
        os.close(r_go)
        os.close(w_out)
        self.pid, self._go, self._out, self._buf = pid, w_go, r_out, b""
        for f in ("uid_map", "gid_map"):
            if f == "gid_map":
                with open(f"/proc/{pid}/setgroups", "w") as fh:
                    fh.write("deny")
            with open(f"/proc/{pid}/{f}", "w") as fh:
                fh.write("0 100000 65536")
        self.status = None

    def go(self):
        os.write(self._go, b"g")
        os.close(self._go)

    def line(self, timeout=10.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no output from box")
            r, _, _ = select.select([self._out], [], [], left)
            if r:
                d = os.read(self._out, 4096)
                if not d:
                    raise EOFError(f"box exited: {self._buf!r}")
                self._buf += d
        ln, self._buf = self._buf.split(b"\n", 1)
        return ln.decode()

    def wait(self, timeout=10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p, st = os.waitpid(self.pid, os.WNOHANG)
            if p:
                self.status = os.waitstatus_to_exitcode(st)
                os.close(self._out)
                return self.status
            time.sleep(0.01)
        self.kill()
        raise TimeoutError("box did not exit")

    def kill(self):
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.status = -9


# --- small programs run inside boxes (stdlib only) ------------------------------
ECHO_SERVER = r"""
import socket, sys, threading
ports = [int(p) for p in PORTS]
srvs = []
for p in ports:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", p)); s.listen(16)
    srvs.append(s)
print("ready", flush=True)
def serve(s):
    for _ in range(50):
        c, _ = s.accept()
        d = c.recv(100); c.sendall(b"echo:" + d); c.close()
ts = [threading.Thread(target=serve, args=(s,), daemon=True) for s in srvs]
[t.start() for t in ts]
__import__("time").sleep(30)
"""

CLIENT = r"""
import socket, sys, json
out = []
for target in TARGETS:
    host, port = target.rsplit(":", 1)
    try:
        ip = socket.gethostbyname(host)
    except OSError as e:
        out.append(f"{target}=resolve-failed"); continue
    try:
        c = socket.create_connection((ip, int(port)), timeout=2)
        c.sendall(b"hi"); d = c.recv(100); c.close()
        out.append(f"{target}={d.decode()}")
    except OSError as e:
        out.append(f"{target}=err:{e.__class__.__name__}:{e.errno}")
print(" ".join(out), flush=True)
"""


def server_box(handle=None, ports=(7000,), caps="-all", hosts=None):
    code = ECHO_SERVER.replace("PORTS", repr(list(ports)))
    b = Box(code, caps=caps, hosts=hosts)
    if handle is not None:
        handle.attach(b.pid)
    b.go()
    assert b.line() == "ready"
    return b


def client_box(handle, targets, caps="-all"):
    code = CLIENT.replace("TARGETS", repr(list(targets)))
    b = Box(code, caps=caps, hosts=handle.hosts_path if handle else None)
    if handle is not None:
        handle.attach(b.pid)
    b.go()
    res = dict(kv.split("=", 1) for kv in b.line().split())
    b.wait()
    return res


@pytest.fixture
def cleanup():
    items = []
    yield items
    for it in reversed(items):
        try:
            if isinstance(it, Box):
                it.kill()
            elif isinstance(it, str):
                bridge.remove_network(it)
            else:
                it.release()
        except Exception:
            pass


def newnet(cleanup, name, subnet=None):
    nd = bridge.create_network(name, subnet)
    cleanup.append(name)
    return nd


def mk(mode, **kw):
    return Network(mode=mode, **kw)


# ---------------------------------------------------------------------------------
def test_bring_up_loopback_in_new_netns(testns):
    b = Box("import socket,fcntl,struct\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "f=struct.unpack('16sH22x',fcntl.ioctl(s.fileno(),0x8913,struct.pack('16sH22x',b'lo',0)))[1]\n"
            "print('up' if f & 1 else 'down', sorted(n for _,n in socket.if_nameindex()), flush=True)",
            caps="-all")
    # the launcher calls bring_up_loopback() inside the child; here we do it from the parent's
    # side by entering the child's netns in a short-lived helper process
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(f"/proc/{b.pid}/ns/net", os.O_RDONLY)
            _sys.setns(fd, _sys.CLONE_NEWNET)
            loopback.bring_up_loopback()
            os._exit(0)
        except BaseException:
            os._exit(1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    b.go()
    assert b.line() == "up ['lo']"
    assert b.wait() == 0


def test_none_has_only_lo_and_reaches_nothing(testns, cleanup):
    assert endpoint.prepare(mk("none"), "sbx-none", None, rootless=False) is None
    code = ("import socket\n"
            "print(sorted(n for _,n in socket.if_nameindex()), flush=True)\n"
            "r=[]\n"
            "for ip in ('10.89.0.1','192.0.2.1','8.8.8.8'):\n"
            "    try: socket.create_connection((ip,80),timeout=2); r.append('connected')\n"
            "    except OSError as e: r.append(e.errno)\n"
            "print(r, flush=True)")
    b = Box(code)
    cleanup.append(b)
    b.go()
    assert b.line() == "['lo']"
    import errno
    assert b.line() == str([errno.ENETUNREACH] * 3)
    assert b.wait() == 0


def test_host_mode_needs_nothing_and_refuses_ports_and_egress(testns):
    assert endpoint.prepare(mk("host"), "x", None, rootless=False) is None
    with pytest.raises(NetworkError, match="published ports"):
        endpoint.prepare(mk("host", ports=(PortMapping(8080, 80),)), "x", None, rootless=False)
    with pytest.raises(NetworkError, match="egress"):
        endpoint.prepare(mk("host", egress_default="deny"), "x", None, rootless=False)
    with pytest.raises(NetworkError, match="published ports"):
        endpoint.prepare(mk("none", ports=(PortMapping(8080, 80),)), "x", None, rootless=False)


def test_prepare_fails_closed(testns, cleanup):
    with pytest.raises(NetworkError, match="not found"):
        endpoint.prepare(mk("nosuchnet"), "x", None, rootless=False)
    newnet(cleanup, "fc1")
    with pytest.raises(NetworkError, match="need root"):
        endpoint.prepare(mk("fc1"), "x", None, rootless=True)
    with pytest.raises(NetworkError, match="protocol"):
        endpoint.prepare(mk("fc1", ports=(PortMapping(1, 2, proto="sctp"),)), "x", None, rootless=False)
    with pytest.raises(NetworkError, match="neither a CIDR"):
        endpoint.prepare(mk("fc1", egress_default="deny", egress_allow=(EgressRule("bad name!"),)), "x", None,
                  rootless=False)
    # a port already bound on the host side is refused before anything is created
    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    s.listen(1)
    busy = s.getsockname()[1]
    try:
        with pytest.raises(NetworkError, match="cannot publish"):
            endpoint.prepare(mk("fc1", ports=(PortMapping(busy, 80),)), "x", None, rootless=False)
    finally:
        s.close()
    assert bridge.inspect_network("fc1")["endpoints"] == []


def test_network_create_ls_inspect_rm(testns, cleanup):
    nd = bridge.create_network("lsnet", "10.77.5.0/24")
    assert nd["subnet"] == "10.77.5.0/24" and nd["gateway"] == "10.77.5.1"
    with pytest.raises(NetworkError, match="already exists"):
        bridge.create_network("lsnet")
    with pytest.raises(NetworkError, match="overlaps"):
        bridge.create_network("lsnet2", "10.77.0.0/16")
    with pytest.raises(NetworkError, match="reserved"):
        bridge.create_network("host")
    with pytest.raises(NetworkError, match="invalid name"):
        bridge.create_network("bad/name")
    auto = bridge.create_network("autonet")
    assert auto["subnet"].startswith("10.89.")
    assert {n["name"] for n in bridge.list_networks()} >= {"lsnet", "autonet"}
    h = endpoint.prepare(mk("lsnet"), "sbx-ls", "web", rootless=False)
    cleanup.append(h)
    b = server_box(h)
    cleanup.append(b)
    info = bridge.inspect_network("lsnet")
    assert [(e["name"], e["address"], e["state"]) for e in info["endpoints"]] == [("web", "10.77.5.2", "attached")]
    with pytest.raises(NetworkError, match="attached"):
        bridge.remove_network("lsnet")
    b.kill()
    h.release()
    bridge.remove_network("lsnet")
    bridge.remove_network("autonet")
    assert bridge.list_networks() == []
    assert not [n for n in links() if n.startswith(("psb-", "psv"))]     # bridges go with `network rm`
    assert host_rules() == [] and host_rules("bridge") == [] and port_objects() == []
    tables = nft.nft(args=["list", "tables"], check=False).get("nftables", [])
    assert not [o for o in tables if "table" in o and o["table"]["name"] == nft.HOST_TABLE]   # no table left


def test_two_sandboxes_reach_each_other_by_name_third_network_cannot(testns, cleanup):
    newnet(cleanup, "neta")
    newnet(cleanup, "netb")
    ha = endpoint.prepare(mk("neta"), "sbx-a", "alpha", rootless=False)
    cleanup.append(ha)
    a = server_box(ha, hosts=ha.hosts_path)
    cleanup.append(a)
    hb = endpoint.prepare(mk("neta"), "sbx-b", "beta", rootless=False)
    cleanup.append(hb)
    res = client_box(hb, ["alpha:7000", "beta:1"])
    assert res["alpha:7000"] == "echo:hi"                  # B reaches A by name
    assert res["beta:1"].startswith("err:ConnectionRefused")   # own name resolves to itself
    # A's hosts file learned about B while B was attached, and forgot it after B left
    assert f"{hb.address}\tbeta" in open(ha.hosts_path).read()
    hb.release()
    assert "beta" not in open(ha.hosts_path).read()
    assert "alpha" in ha.etc_hosts()
    # C on another network: no name, and no route through the host either (forward drop)
    hc = endpoint.prepare(mk("netb"), "sbx-c", "gamma", rootless=False)
    cleanup.append(hc)
    res = client_box(hc, ["alpha:7000", f"{ha.address}:7000"])
    assert res["alpha:7000"] == "resolve-failed"
    assert res[f"{ha.address}:7000"].startswith("err:")
    hc.release()
    a.kill()
    ha.release()
    ha.release()                                             # idempotent
    assert not [n for n in links() if n.startswith("psv")]


def test_published_port_dnat_and_loopback_proxy(testns, cleanup):
    newnet(cleanup, "pubnet")
    h = endpoint.prepare(mk("pubnet", ports=(PortMapping(8080, 80),)), "sbx-pub", "web", rootless=False)
    cleanup.append(h)
    srv = server_box(h, ports=(80,), caps="-all,+net_bind_service")
    cleanup.append(srv)
    comments = [r.get("comment") for r in host_rules()]
    assert comments.count("sbx:sbx-pub") == 2               # prerouting + output DNAT
    for addr in (h.netdef["gateway"], "127.0.0.1"):          # DNAT path; userspace proxy path
        c = socket.create_connection((addr, 8080), timeout=3)
        c.sendall(b"x")
        assert c.recv(100) == b"echo:x"
        c.close()
    srv.kill()
    h.release()
    assert "sbx:sbx-pub" not in [r.get("comment") for r in host_rules()]
    for addr in (h.netdef["gateway"], "127.0.0.1"):
        with pytest.raises(OSError):
            socket.create_connection((addr, 8080), timeout=1).close()
    assert not [r for r in host_rules() + host_rules("bridge") if (r.get("comment") or "").startswith("sbx:")]


def test_egress_allow_list(testns, cleanup):
    newnet(cleanup, "egnet")
    ha = endpoint.prepare(mk("egnet"), "sbx-ea", "db", rootless=False)
    cleanup.append(ha)
    a = server_box(ha, ports=(7000, 7001))
    cleanup.append(a)
    hc = endpoint.prepare(mk("egnet"), "sbx-ec", "other", rootless=False)
    cleanup.append(hc)
    c = server_box(hc, ports=(7000,))
    cleanup.append(c)
    net = mk("egnet", egress_default="deny",
             egress_allow=(EgressRule("db", ports=(7000,)), EgressRule("late", ports=(7000,))))
    hb = endpoint.prepare(net, "sbx-eb", "client", rootless=False)
    cleanup.append(hb)
    code = (CLIENT.replace("TARGETS", repr(["db:7000", "db:7001", "other:7000", "late:7000"]))
            + "\nimport subprocess\n"
              "p=subprocess.run(['/usr/sbin/nft','flush','ruleset'],capture_output=True,text=True)\n"
              "print('flush', p.returncode, 'Operation not permitted' in p.stderr, flush=True)\n"
              "import time\nmsg = 'late never connected'\n"
              "for i in range(100):\n"          # bounded: 100 x 50 ms
              "    time.sleep(0.05)\n"
              "    try:\n"
              "        s=socket.create_connection((socket.gethostbyname('late'),7000),timeout=2); s.sendall(b'z')\n"
              "        msg = 'late ' + s.recv(10).decode(); break\n"
              "    except OSError as e:\n"
              "        msg = f'late err {e}'\n"
              "print(msg, flush=True)\n")
    b = Box(code, caps="-all,+net_raw", hosts=hb.hosts_path)       # NET_RAW but no NET_ADMIN
    cleanup.append(b)
    hb.attach(b.pid)
    b.go()
    res = dict(kv.split("=", 1) for kv in b.line().split())
    assert res["db:7000"] == "echo:hi"                             # allowed peer:port
    assert res["db:7001"] == "err:OSError:113"              # other port on same peer
    assert res["other:7000"] == "err:OSError:113"           # other peer
    assert res["late:7000"] == "resolve-failed"                   # not there yet
    flush = b.line().split()
    assert flush[0] == "flush" and flush[1] != "0"                # cannot flush the rules
    assert flush[2] == "True"
    # a peer named in the allow-list joins later: name resolves and the rule admits it
    hl = endpoint.prepare(mk("egnet"), "sbx-el", "late", rootless=False)
    cleanup.append(hl)
    late = server_box(hl, ports=(7000,))
    cleanup.append(late)
    assert b.line() == "late echo:z"
    assert b.wait() == 0
    # rules are intact; the denied packets were counted
    assert hb.egress_denied() >= 2
    hb.release()
    assert hb.denied >= 2
    for x in (late, c, a):
        x.kill()
    for x in (hl, hc, ha):
        x.release()


def test_egress_ruleset_shape():
    cmds = nft.egress_ruleset("deny", [{"to": "10.0.0.0/8", "ports": [80, 443], "proto": "tcp"},
                                     {"to": "db", "ports": [], "proto": "udp"},
                                     {"to": "192.0.2.7", "ports": [], "proto": "any"}], {"db": ["10.89.0.5"]})
    chain = [c["add"]["chain"] for c in cmds if "chain" in c.get("add", {})][0]
    assert chain["hook"] == "output" and chain["policy"] == "drop"
    sets = [c["add"]["set"]["name"] for c in cmds if "set" in c.get("add", {})]
    assert sets == [nft.set_name("db"), nft.set_name6("db")] and sets[0].startswith("peer_db")  # IPv4, IPv6
    rules = [c["add"]["rule"]["expr"] for c in cmds if "rule" in c.get("add", {})]
    assert rules[-1][0] == {"counter": "denied"} and "reject" in rules[-1][1]
    assert rules[2][1]["match"]["right"] == {"set": [80, 443]}


def test_egress_on_none_network(testns, cleanup):
    net = mk("none", egress_default="deny", egress_allow=(EgressRule("127.0.0.0/8", ports=(1,)),))
    h = endpoint.prepare(net, "sbx-noneg", None, rootless=False)
    assert h is not None
    cleanup.append(h)
    b = Box("import subprocess\np=subprocess.run(['/usr/sbin/nft','-j','list','ruleset'],capture_output=True)\n"
            "print(p.returncode, flush=True)", caps="-all,+net_raw")
    cleanup.append(b)
    h.attach(b.pid)
    b.go()
    assert b.line() != "0"        # cannot even read the ruleset without CAP_NET_ADMIN
    b.wait()
    out = nft.nft(args=["list", "ruleset"], nsfd=h._nsfd)
    assert any("chain" in o and o["chain"]["name"] == "output" for o in out["nftables"])
    h.release()


def test_twenty_concurrent_join_leave(testns, cleanup):
    newnet(cleanup, "busy")
    n = 20
    r_res, w_res = os.pipe()
    r_go, w_go = os.pipe()
    pids = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r_res)
                os.close(w_go)
                h = endpoint.prepare(mk("busy"), f"sbx-busy-{i}", f"s{i}", rootless=False)
                b = Box("import time; print('ok', flush=True); time.sleep(20)")
                h.attach(b.pid)
                b.go()
                b.line()
                os.write(w_res, f"{h.address}\n".encode())
                select.select([r_go], [], [], 30)
                b.kill()
                h.release()
                code = 0
            except BaseException as e:  # noqa: BLE001
                os.write(w_res, f"ERR {e}\n".encode())
            os._exit(code)
        pids.append(pid)
    os.close(w_res)
    buf = b""
    deadline = time.monotonic() + 60
    while buf.count(b"\n") < n and time.monotonic() < deadline:
        r, _, _ = select.select([r_res], [], [], 1)
        if r:
            d = os.read(r_res, 4096)
            if not d:
                break
            buf += d
    addrs = buf.decode().split()
    attached = len([n_ for n_ in links() if n_.startswith("psv")])
    os.write(w_go, b"x" * n)
    os.close(w_go)
    codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
    os.close(r_res)
    assert not any(a.startswith("ERR") for a in addrs), buf
    assert len(addrs) == n and len(set(addrs)) == n, addrs
    assert attached == n                                   # all 20 were attached at once
    assert codes == [0] * n
    assert bridge.inspect_network("busy")["endpoints"] == []
    assert not [x for x in links() if x.startswith("psv")]


def test_reclaim_after_supervisor_crash(testns, cleanup):
    newnet(cleanup, "crash")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            h = endpoint.prepare(mk("crash", ports=(PortMapping(18080, 80),)), "sbx-crash", "victim", rootless=False)
            b = Box("import time; print('ok', flush=True); time.sleep(20)")
            h.attach(b.pid)
            b.go()
            b.line()
            os.write(w, f"{b.pid} {h._proxy_pid}\n".encode())
            select.select([], [], [], 30)
        finally:
            os._exit(1)
    os.close(w)
    line = b""
    deadline = time.monotonic() + 20
    while not line.endswith(b"\n") and time.monotonic() < deadline:
        rr, _, _ = select.select([r], [], [], 1)
        if rr:
            line += os.read(r, 100)
    os.close(r)
    box_pid, proxy_pid = map(int, line.split())
    box = os.pidfd_open(box_pid)
    os.kill(pid, signal.SIGKILL)                     # the supervisor crashes
    os.waitpid(pid, 0)
    signal.pidfd_send_signal(box, signal.SIGKILL)    # (the launcher's PDEATHSIG would do this)
    assert select.select([box], [], [], 10)[0], "the sandbox did not die"     # its pidfd: it has exited
    os.close(box)
    assert "sbx:sbx-crash" in [r_.get("comment") for r_ in host_rules()]
    veth = bridge.veth_name("sbx-crash")
    assert ("chain", veth) in port_objects() and ("counter", veth) in port_objects()
    bridge.reclaim_stale()
    assert bridge.inspect_network("crash")["endpoints"] == []
    assert "sbx:sbx-crash" not in [r_.get("comment") for r_ in host_rules() + host_rules("bridge")]
    assert [o for o in port_objects() if o[1] == veth] == []          # its port's allow-list is gone
    assert not [x for x in links() if x.startswith("psv")]
    deadline = time.monotonic() + 5
    while proc_starttime(proxy_pid) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc_starttime(proxy_pid) is None              # the port proxy is gone too


def test_doctor_report_shape():
    rep = network_doctor.doctor_report(rootless=False)
    assert all(isinstance(a, str) and isinstance(b, bool) and isinstance(c, str) for a, b, c in rep)
    assert any("pasta" in a for a, _, _ in rep)
    assert dict((a, b) for a, b, _ in network_doctor.doctor_report(rootless=True))[
        "network: private networks (bridge + veth)"] is False


def test_no_address_spoofing_on_a_private_network(testns, cleanup):
    """A sandbox with CAP_NET_ADMIN + CAP_NET_RAW in its own namespace adds another address and
    sends from it: its port's allow-list (table netdev pysandbox) drops it; its own address passes."""
    newnet(cleanup, "spoof")
    ha = endpoint.prepare(mk("spoof"), "sbx-sa", "victim", rootless=False)
    cleanup.append(ha)
    a = Box("import socket, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 7500)); s.settimeout(0.2)\n"
            "print('ready', flush=True)\n"
            "src = set(); end = time.monotonic() + 4\n"
            "while time.monotonic() < end:\n"
            "    try:\n"
            "        d, (ip, _) = s.recvfrom(100); src.add(ip)\n"
            "    except OSError: pass\n"
            "print(sorted(src), flush=True)\n")
    cleanup.append(a)
    ha.attach(a.pid)
    a.go()
    assert a.line() == "ready"
    hb = endpoint.prepare(mk("spoof"), "sbx-sb", "mallory", rootless=False)
    cleanup.append(hb)
    import ipaddress
    fake = str(ipaddress.ip_network(ha.netdef["subnet"])[200])
    code = ("import socket, subprocess\n"
            f"r = subprocess.run(['/usr/sbin/ip', 'addr', 'add', '{fake}/32', 'dev', 'eth0'], capture_output=True)\n"
            "print('addr', r.returncode, flush=True)\n"
            "for src in (%r, %r):\n"
            "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((src, 0))\n"
            "    for _ in range(3): s.sendto(b'x', (%r, 7500))\n" % (fake, hb.address, ha.address))
    b = Box(code, caps="-all,+net_admin,+net_raw")
    cleanup.append(b)
    hb.attach(b.pid)
    b.go()
    assert b.line() == "addr 0"                         # it did get the extra address in its namespace
    assert b.wait() == 0
    assert a.line() == str([hb.address])                # only its real address reached the victim
    assert nft.antispoof_dropped(hb.veth) >= 3           # the port's allow-list counted the forged ones
    hb.release()
    assert hb.spoof_dropped >= 3
    a.kill()
    ha.release()
    assert host_rules("netdev") == [] and host_rules("bridge") == [] and port_objects() == []


def test_published_udp_and_loopback_only_port(testns, cleanup):
    newnet(cleanup, "udpnet")
    net = mk("udpnet", ports=(PortMapping(15353, 5353, proto="udp"),
                              PortMapping(18082, 7000, host_ip="127.0.0.1")))
    h = endpoint.prepare(net, "sbx-udp", "dns", rootless=False)
    cleanup.append(h)
    b = Box("import socket, threading\n"
            "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0', 5353))\n"
            "t = socket.socket(); t.bind(('0.0.0.0', 7000)); t.listen(4)\n"
            "def tcp():\n"
            "    for _ in range(4):\n"
            "        c, _ = t.accept(); c.sendall(b'tcp-ok'); c.close()\n"
            "threading.Thread(target=tcp, daemon=True).start()\n"
            "print('ready', flush=True)\n"
            "for _ in range(4):\n"
            "    d, a = u.recvfrom(100); u.sendto(b'udp:' + d, a)\n")
    cleanup.append(b)
    h.attach(b.pid)
    b.go()
    assert b.line() == "ready"
    rules = [r for r in host_rules() if r.get("comment") == "sbx:sbx-udp"]
    assert len(rules) == 2                      # udp DNAT (prerouting + output); none for 127.0.0.1
    for addr in (h.netdef["gateway"], "127.0.0.1"):           # DNAT; proxy
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(3)
        u.sendto(b"q", (addr, 15353))
        assert u.recvfrom(100)[0] == b"udp:q"
        u.close()
    c = socket.create_connection(("127.0.0.1", 18082), timeout=3)     # bound to loopback only
    assert c.recv(20) == b"tcp-ok"
    c.close()
    with pytest.raises(OSError):                               # not on the gateway address
        socket.create_connection((h.netdef["gateway"], 18082), timeout=1).close()
    b.kill()
    h.release()
    assert not [r for r in host_rules() if r.get("comment") == "sbx:sbx-udp"]


def test_compiled_egress_defaults_to_deny_when_rules_are_given(tmp_path):
    from policies.compiler import compile_profile
    p = tmp_path / "p.yaml"
    p.write_text("version: 1\nname: p\nextends: default\nnetwork:\n  mode: none\n  egress:\n"
                 "    allow:\n      - {to: 10.0.0.0/8, ports: [443]}\n")
    net = compile_profile(str(p)).plan.network
    assert net.egress_default == "deny" and net.egress_allow[0].ports == (443,)
    p.write_text("version: 1\nname: p\nextends: default\nnetwork: none\n")
    assert compile_profile(str(p)).plan.network.egress_default == "allow"
