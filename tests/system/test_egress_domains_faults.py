"""Egress by domain name, when the supervisor is SIGKILLed with a connection open through its
egress proxy: nothing survives it — the upstream side of the connection is closed (the proxy was a
thread of the supervisor), the sandbox is gone, and the next pysandbox command leaves no owner
record, endpoint or veth of it behind.

SAFETY: runs in a child process started with `unshare --net --mount` (its own network namespace
with an "upstream" veth, 192.0.2.1; a private network made there with its own state directory).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create the test namespaces")

from conftest import PYSANDBOX, PYTHON as PY  # noqa: E402
from probes import UPSTREAM

SCENARIO = r'''
import json, os, signal, socket, subprocess, sys, threading, time
D, PYSANDBOX = sys.argv[1:3]
''' + UPSTREAM + r'''
got, eof = threading.Event(), threading.Event()
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("192.0.2.1", 8080)); srv.listen(4)
def serve():
    c, _ = srv.accept()
    c.recv(4096); got.set()
    c.sendall(b"HTTP/1.0 200 OK\r\n\r\nstarted")
    c.settimeout(30)
    try:
        while c.recv(4096):
            pass
    except OSError:
        pass
    eof.set()
threading.Thread(target=serve, daemon=True).start()
env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "PYSANDBOX_STATE_DIR": f"{D}/state"}
sh(PYSANDBOX, "network", "create", "egfault", "--subnet", "10.126.0.0/24", env=env)
os.chmod(D, 0o755)
with open(f"{D}/p.yaml", "w") as f:
    f.write("version: 1\nname: egress-fault\nnetwork:\n  mode: egfault\n  hosts: {web.test: 192.0.2.1}\n"
            "  egress:\n    allow:\n      - {host: web.test, ports: [8080]}\n")
os.chmod(f"{D}/p.yaml", 0o644)
inside = ("import socket, time\n"
          "s = socket.create_connection(('web.test', 8080), timeout=10)\n"
          "s.sendall(b'GET / HTTP/1.0\\r\\nHost: web.test\\r\\n\\r\\n')\n"
          "print(s.recv(100).decode().split()[-1], flush=True)\n"
          f"time.sleep({60 * 2 + 1})\n")     # (written so: this script's own text does not match)
p = subprocess.Popen([PYSANDBOX, "run", "--profile", f"{D}/p.yaml", "--audit-log", "/dev/null", "--",
                      "/usr/bin/python3", "-c", inside], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     text=True, env=env)
res = {"first": p.stdout.readline().strip(), "request_seen": got.wait(20)}
os.kill(p.pid, signal.SIGKILL)
p.wait(10)
res["upstream_closed"] = eof.wait(15)
time.sleep(1)
res["sandbox_left"] = subprocess.run(["pgrep", "-f", "time.sleep\\(121\\)"], capture_output=True,
                                     text=True).stdout.split()
subprocess.run([PYSANDBOX, "ps"], capture_output=True, env=env, timeout=60)      # reclaims
owners = f"{D}/state/owners"
res["owners_left"] = [n for n in os.listdir(owners) if not n.startswith(".")] if os.path.isdir(owners) else []
eps = f"{D}/state/networks/egfault/endpoints"
res["endpoints_left"] = os.listdir(eps) if os.path.isdir(eps) else []
res["veths_left"] = [n for _, n in socket.if_nameindex() if n.startswith("psv")]
r = subprocess.run([PYSANDBOX, "network", "rm", "egfault"], capture_output=True, text=True, env=env)
res["rm"] = r.returncode
print("RESULT " + json.dumps(res))
'''


def test_supervisor_sigkill_leaves_no_proxy_behind():
    d = tempfile.mkdtemp(prefix="pysbx-egfault-", dir="/tmp")
    try:
        p = subprocess.run(["unshare", "--net", "--mount", PY, "-c", SCENARIO, d, PYSANDBOX],
                           capture_output=True, text=True, timeout=180)
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        assert line, p.stdout[-2000:] + p.stderr[-2000:]
        res = json.loads(line[7:])
    finally:
        subprocess.run(["rm", "-rf", d], check=False)
    assert res["first"] == "started" and res["request_seen"], res
    assert res["upstream_closed"], res               # the proxy's upstream socket died with it
    assert res["sandbox_left"] == [], res
    assert res["owners_left"] == [] and res["endpoints_left"] == [] and res["veths_left"] == [], res
    assert res["rm"] == 0, res
