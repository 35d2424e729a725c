"""A RUN step that tries to get out -- write outside its root, mount, reach the network -- is denied,
and the denial is in the audit log (profile `build`), as root and rootless; the build itself goes on
(the step's shell ignores the failures) and nothing on the host changed."""
from __future__ import annotations

import json
import os
import socket
import threading
import uuid

from buildhelpers import build, ctx_dir


def _host_address() -> str:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))            # no packet is sent: picks the outgoing address
        return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        s.close()


def _listen(timeout: float) -> tuple:
    """A TCP server on the host's outgoing address: (socket, address, port)."""
    addr = _host_address()
    srv = socket.socket()
    srv.bind((addr, 0))
    srv.listen(4)
    srv.settimeout(timeout)
    return srv, addr, srv.getsockname()[1]


def test_run_cannot_write_outside_mount_or_reach_the_network(img):
    marker = f"/tmp/pysbx-build-escape-{uuid.uuid4().hex[:8]}"
    srv, addr, port = _listen(0.2)
    got = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                got.append(srv.accept()[0])
            except OSError:
                pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    script = (f"echo x > /hostroot{marker}; echo x > /proc/1/root{marker}; echo x > /proc/self/root{marker}; "
              f"mount -t tmpfs none /mnt; echo mount=$?; "
              f"/bin/busybox nc -w 2 {addr} {port} </dev/null; echo net=$?; "
              f"/bin/busybox nc -w 2 127.0.0.1 {port} </dev/null; echo lo=$?; true")
    d = ctx_dir(img, {"Dockerfile": f"FROM busybox:test\nRUN {script}\n"})
    try:
        r = build(img, d, tag="esc:1")
    finally:
        stop.set()
        t.join(5)
        srv.close()
        for c in got:
            c.close()
    assert r.returncode == 0, r
    assert "mount=0" not in r.stdout and "mount=" in r.stdout, r
    assert "net=0" not in r.stdout and "lo=0" not in r.stdout, r
    assert "Network is unreachable" in r.stdout + r.stderr, r
    assert not got                                  # no connection reached the host
    assert not os.path.exists(marker)
    events = [json.loads(line) for line in open(os.path.join(img[1], "audit.jsonl"))]
    mounts = [e for e in events if e.get("profile") == "build" and e.get("type") in ("escape_attempt", "denial")
              and (e.get("syscall") or {}).get("name") == "mount"]
    assert mounts, [e.get("type") for e in events]


def test_network_only_when_asked(img):
    """The other side: `--network host` gives the RUN steps the host's network (the connection arrives)."""
    srv, addr, port = _listen(60)
    got = []

    def accept():
        try:
            c = srv.accept()[0]
            got.append(c.recv(16))
            c.close()
        except OSError:
            pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    d = ctx_dir(img, {"Dockerfile": f"FROM busybox:test\nRUN echo hello | /bin/busybox nc -w 5 {addr} {port}; true\n"})
    try:
        r = build(img, d, "--network", "host", tag="net:1")
    finally:
        t.join(30)
        srv.close()
    assert r.returncode == 0, r
    assert got == [b"hello\n"], (got, r)
