"""The userspace port proxy of a private network's published ports: a forked child of the
supervisor, bound to HOSTIP:HOSTPORT, serving 127.0.0.1 (where nftables DNAT cannot: routing a
loopback source to a bridge is martian) and holding the port reservation. It dies with the
supervisor (PDEATHSIG)."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time

from .common import NetworkError


def start(ports: list[dict], address: str) -> int:
    """Fork the proxy for `ports` (published to the sandbox at `address`); its pid. A fork, not a
    new interpreter: no start-up cost; the child closes every descriptor but its sockets.
    An IPv6 host address is bound with an IPv6 socket (`[::1]` served here, relayed to the
    sandbox's IPv4 address); a port published on 0.0.0.0 of a dual-stack network also binds `[::]`
    (p["also6"]: reserves the port on IPv6 and serves ::1; DNAT serves the other addresses)."""
    socks, spec = [], []
    try:
        for p in ports:
            typ = socket.SOCK_STREAM if p["proto"] == "tcp" else socket.SOCK_DGRAM
            for hip in [p["host_ip"]] + (["::"] if p.get("also6") else []):
                fam = socket.AF_INET6 if ":" in hip else socket.AF_INET
                s = socket.socket(fam, typ)
                socks.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if fam == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.bind((hip, p["host_port"]))
                except OSError as e:
                    raise NetworkError(f"network: cannot publish {hip}:{p['host_port']}/{p['proto']}: "
                                       f"{e.strerror}") from None
                if typ == socket.SOCK_STREAM:
                    s.listen(128)
                spec.append({"fd": s.fileno(), "fam": fam, "proto": p["proto"], "ip": address, "port": p["port"]})
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                keep = sorted(x["fd"] for x in spec)
                lo = 3
                for fd in keep + [1 << 20]:
                    if fd > lo:
                        os.closerange(lo, min(fd, 65536))
                    lo = fd + 1
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                if devnull > 2:
                    os.close(devnull)
                os.setsid()
                _serve(parent, spec)
                code = 0
            finally:
                os._exit(code)
        return pid
    finally:
        for s in socks:
            s.close()


def _serve(parent: int, spec: list[dict]) -> None:
    """The proxy's life: one thread per published port (and per connection / UDP client)."""
    try:
        import prctl                                 # lazy: ~3 ms, needed in the forked child only
        prctl.set_pdeathsig(signal.SIGKILL)          # dies with the supervisor
    except Exception:
        pass
    if os.getppid() != parent:
        return
    max_conns = threading.BoundedSemaphore(512)

    def pipe(a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        finally:
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def serve_tcp(ls, ip, port):
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                time.sleep(0.05)
                continue
            if not max_conns.acquire(blocking=False):
                c.close()
                continue

            def conn(c=c):
                try:
                    u = socket.create_connection((ip, port), timeout=10)
                    u.settimeout(None)
                except OSError:
                    c.close()
                    max_conns.release()
                    return
                t = threading.Thread(target=pipe, args=(u, c), daemon=True)
                t.start()
                pipe(c, u)
                t.join()
                c.close()
                u.close()
                max_conns.release()
            threading.Thread(target=conn, daemon=True).start()

    def serve_udp(ls, ip, port):
        clients: dict = {}

        def back(u, addr):
            u.settimeout(60)
            try:
                while True:
                    d = u.recv(65536)
                    ls.sendto(d, addr)
            except OSError:
                pass
            finally:
                clients.pop(addr, None)
                u.close()
        while True:
            try:
                d, addr = ls.recvfrom(65536)
            except OSError:
                time.sleep(0.05)
                continue
            u = clients.get(addr)
            if u is None:
                if len(clients) >= 256:
                    continue
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.connect((ip, port))
                clients[addr] = u
                threading.Thread(target=back, args=(u, addr), daemon=True).start()
            try:
                u.send(d)
            except OSError:
                pass

    threads = []
    for s in spec:
        typ = socket.SOCK_STREAM if s["proto"] == "tcp" else socket.SOCK_DGRAM
        ls = socket.socket(s.get("fam", socket.AF_INET), typ, fileno=s["fd"])
        f = serve_tcp if s["proto"] == "tcp" else serve_udp
        threads.append(threading.Thread(target=f, args=(ls, s["ip"], s["port"]), daemon=True))
    for t in threads:
        t.start()
    while True:
        time.sleep(3600)
