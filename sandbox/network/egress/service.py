"""One sandbox's egress proxy and resolver: `start` (from NetHandle.attach, after the sandbox's
network namespace exists and before its program runs) and `Service.stop` (NetHandle.release).

Where it runs: a thread of the sandbox's supervisor, with an asyncio loop of its own, in the
host's namespaces (its upstream connections and the host resolver are the host's). Per sandbox:
nothing is shared between sandboxes, nothing outlives the supervisor - a SIGKILLed supervisor takes
the thread, its sockets and its splice threads with it (no process, file or host rule to reclaim;
the steering rules live in the sandbox's own network namespace and go with it). The listening
sockets are made *inside* the sandbox's namespace (a short helper entered with nsenter, which hands
them back over a unix socket): 127.0.0.1:3128 for the proxy, UDP and TCP 127.0.0.1:53 for the
resolver, and the same on ::1 (IPv6), bound with IP_FREEBIND / IPV6_FREEBIND (the sandbox's `lo` is
brought up later by its PID 1).
"""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading

from policies import egress as E

from ..common import STEP_TIMEOUT, NetworkError
from . import dns, names as _names, proxy as _proxy

_HELPER = r"""
import errno, socket, sys
IP_FREEBIND, IPV6_FREEBIND = 15, 78
out, keep = [], []
for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    for typ, port in ((socket.SOCK_STREAM, %d), (socket.SOCK_DGRAM, %d), (socket.SOCK_STREAM, %d)):
        try:
            s = socket.socket(fam, typ)
        except OSError as e:
            if fam == socket.AF_INET6 and e.errno == errno.EAFNOSUPPORT:
                break                     # no IPv6 in this kernel: nothing to steer
            raise
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        else:
            s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        if typ == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        if typ == socket.SOCK_STREAM:
            s.listen(512)
        out.append(s.fileno())
        keep.append(s)
c = socket.socket(fileno=int(sys.argv[1]))
socket.send_fds(c, [b"ok"], out)
"""


def listen_in_netns(nsfd: int, userns_fd: int | None) -> list[socket.socket]:
    """[proxy TCP listener, resolver UDP socket, resolver TCP listener] on 127.0.0.1, then the same
    three on ::1 (unless the kernel has no IPv6), made in the namespace."""
    from ..nft import nsenter_prefix
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        script = _HELPER % (E.PROXY_ADDR[1], E.DNS_ADDR[1], E.DNS_ADDR[1])
        argv = nsenter_prefix(None, nsfd, userns_fd) + [sys.executable, "-I", "-S", "-c", script,
                                                         str(b.fileno())]
        fds = tuple(f for f in (nsfd, userns_fd, b.fileno()) if f is not None)
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=STEP_TIMEOUT, pass_fds=fds)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise NetworkError(f"network: egress proxy: cannot make its sockets in the sandbox: {e}") from None
        b.close()
        if p.returncode != 0:
            last = (p.stderr.strip().splitlines() or ["failed"])[-1]
            raise NetworkError(f"network: egress proxy: cannot make its sockets in the sandbox: {last}")
        a.settimeout(STEP_TIMEOUT)
        msg, fds_in, _, _ = socket.recv_fds(a, 16, 6)
        if msg != b"ok" or len(fds_in) not in (3, 6):
            for f in fds_in:
                os.close(f)
            raise NetworkError("network: egress proxy: its helper handed back no sockets")
        return [socket.socket(fileno=f) for f in fds_in]
    finally:
        a.close()
        if b.fileno() >= 0:
            b.close()


def _egress(name, addr, port, protocol: str, rule) -> dict:
    """An event's `egress` object (docs/audit.md)."""
    return {"name": name, "address": addr, "port": port, "protocol": protocol,
            "rule": {"index": rule.index, "text": E.rule_text(rule)} if rule is not None else None}


class Audit:
    """egress.allowed / egress.denied / egress.closed through the sandbox's audit sinks (the
    launcher's emit), rate-limited per sandbox like seccomp denials (audit/throttle.py). Used from
    the loop's thread and, for egress.closed, from the relay's pump threads: a lock serialises them."""

    def __init__(self, on_event):
        from audit.throttle import Throttle
        self.on_event = on_event
        self.thr = Throttle()
        self.lock = threading.RLock()

    def _emit(self, etype: str, name, addr, port, protocol: str, rule, reason: str) -> None:
        if self.on_event is None:
            return
        ev = _egress(name, addr, port, protocol, rule)
        if reason:
            ev["reason"] = reason
        self(etype, {"egress": ev, "via": "supervisor",
                     "message": f"{'allowed' if etype == 'egress.allowed' else 'denied'} {protocol} "
                                f"{name or '?'} {addr or ''}{':' + str(port) if port else ''}"
                                + (f": {reason}" if reason else "")})

    def __call__(self, etype: str, fields: dict) -> None:
        """One event, rate-limited: the proxy's and the resolver's (`allowed`, `denied`) and the
        interception's (intercept.py: egress.http.*, egress.secret_*)."""
        if self.on_event is None:
            return
        with self.lock:
            try:
                if self.thr.admit(etype, fields):
                    self.on_event(etype, **fields)
                self.flush()
            except Exception:   # noqa: BLE001 - auditing never takes the proxy down
                pass

    def allowed(self, name, addr, port, protocol, rule, reason="") -> None:
        self._emit("egress.allowed", name, addr, port, protocol, rule, reason)

    def denied(self, name, addr, port, protocol, rule, reason="") -> None:
        self._emit("egress.denied", name, addr, port, protocol, rule, reason)

    def closed(self, name, addr, port, protocol, rule, up: int, down: int, duration: float) -> None:
        """egress.closed: an allowed, relayed connection ended (both directions), with the bytes
        each way (the sandbox's side: up = sent by the sandbox) and how long it lasted."""
        ev = {**_egress(name, addr, port, protocol, rule), "bytes_up": up, "bytes_down": down}
        self("egress.closed", {"egress": ev, "duration": round(max(duration, 0.0), 3), "via": "supervisor",
                               "message": f"closed {protocol} {name} {addr}:{port}: {up} bytes up, "
                                          f"{down} down in {duration:.1f} s"})

    def flush(self, final: bool = False) -> None:
        if self.on_event is None:
            return
        with self.lock:
            self._flush(final)

    def _flush(self, final: bool) -> None:
        for etype, fields in (self.thr.finish() if final else self.thr.due()):
            if etype.startswith("egress."):
                fields.pop("syscall", None)
                fields["egress"] = {"name": None, "protocol": "tcp",
                                    "reason": "coalesced by the audit rate limit"}
                if not etype.startswith(("egress.allowed", "egress.denied", "egress.closed")):
                    fields["http"] = {}             # an interception kind's coalesced record
            try:
                self.on_event(etype, **fields)
            except Exception:   # noqa: BLE001
                pass


class Service:
    def __init__(self, network, sandbox_id: str, on_event, socks: list[socket.socket], intercept=None):
        self.audit = Audit(on_event)
        self.names = _names.Names(network.egress_hosts, network.hosts)
        secrets, ca = intercept or (None, None)
        self.ctx = _proxy.Ctx(sandbox_id=sandbox_id, audit=self.audit, egress=network, names=self.names,
                              secrets=secrets, ca=ca)
        self.socks = socks
        self.loop = asyncio.new_event_loop()
        self.proxy = _proxy.Proxy(self.ctx, E.PROXY_ADDR)
        self._tasks: list = []
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"egress-{sandbox_id}", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._tasks = [self.loop.create_task(self._tick())]
        for i in range(0, len(self.socks), 3):         # IPv4's listeners, then IPv6's
            lsock, udp, tcp = self.socks[i:i + 3]
            self._tasks += [self.loop.create_task(self.proxy.serve(lsock)),
                            self.loop.create_task(dns.serve(self.names, self.audit, udp, tcp))]
        self._ready.set()
        try:
            self.loop.run_until_complete(asyncio.gather(*self._tasks, return_exceptions=True))
            rest = asyncio.all_tasks(self.loop)          # connections still deciding, DNS answers
            for t in rest:
                t.cancel()
            if rest:
                self.loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        finally:
            self.loop.close()

    async def _tick(self) -> None:
        while True:                      # coalesced audit records whose time has come
            await asyncio.sleep(1.0)
            self.audit.flush()

    def start(self) -> "Service":
        self.thread.start()
        self._ready.wait(STEP_TIMEOUT)
        return self

    def stop(self) -> None:
        """Idempotent: cancel the loop, end every spliced connection, close the sockets, write
        the pending coalesced audit records."""
        if self.thread.is_alive():
            def cancel():
                for t in self._tasks:
                    t.cancel()
            try:
                self.loop.call_soon_threadsafe(cancel)
            except RuntimeError:
                pass
            self.thread.join(5)
        self.proxy.close_all()
        for s in self.socks:
            s.close()
        self.audit.flush(final=True)


def start(network, sandbox_id: str, nsfd: int, userns_fd: int | None, on_event, intercept=None) -> Service:
    """The egress proxy and resolver of one sandbox, running (see the module's docstring).
    intercept: (SecretSet, SandboxCA) of the launch when the plan has http rules or secrets."""
    socks = listen_in_netns(nsfd, userns_fd)
    try:
        return Service(network, sandbox_id, on_event, socks, intercept).start()
    except Exception:
        for s in socks:
            s.close()
        raise
