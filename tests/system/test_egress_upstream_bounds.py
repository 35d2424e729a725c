"""Egress proxy: an upstream connection is bounded in addresses and in time, whatever the
resolver answers (sandbox/network/egress/upstream.py; docs/network.md, "Upstream connections").

The interception's connect (intercept.py) used to try every address the name resolved to, each
for 15 s: a hostile answer of 64 addresses that drop the SYN held the connection for 16 minutes.
Now it shares the proxy's bounded connect: at most MAX_ATTEMPTS addresses, ATTEMPT_TIMEOUT each,
CONNECT_TIMEOUT in all; the give-up is one `egress.http.upstream_error` naming what was tried.

SAFETY: runs in a child process started with `unshare --net --mount` (its own network namespace
with an "upstream" veth, 192.0.2.1, tests/probes.py UPSTREAM; its own /etc/hosts bound over the
host's in its own mount namespace; an nft table of that namespace; a private network made there
with its own state directory). `web.test` resolves (the supervisor's getaddrinfo, through that
/etc/hosts) to 20 addresses: 192.0.2.2, whose SYNs are dropped (a black hole), then 19 local
addresses where nothing listens (refused at once).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create the test namespaces")

from conftest import PYSANDBOX, PYTHON as PY  # noqa: E402
from probes import UPSTREAM  # noqa: E402

ADDRS = ["192.0.2.2"] + [f"192.0.2.{i}" for i in range(101, 120)]

SCENARIO = r'''
import json, os, subprocess, sys
D, PYSANDBOX, ADDRS = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
''' + UPSTREAM + r'''
for a in ADDRS:
    sh("ip", "addr", "add", f"{a}/32", "dev", "v0")            # local, nothing on 8080: refused (the first: dropped, below)
sh("nft", "add table inet pysbx_blackhole")
sh("nft", "add chain inet pysbx_blackhole out { type filter hook output priority 0 ; }")
sh("nft", f"add rule inet pysbx_blackhole out ip daddr {ADDRS[0]} tcp dport 8080 drop")
with open(f"{D}/hosts", "w") as f:
    f.write("127.0.0.1 localhost\n" + "".join(f"{a} web.test\n" for a in ADDRS))
sh("mount", "--bind", f"{D}/hosts", "/etc/hosts")
env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "PYSANDBOX_STATE_DIR": f"{D}/state"}
sh(PYSANDBOX, "network", "create", "egbound", "--subnet", "10.127.0.0/24", env=env)
os.chmod(D, 0o755)
with open(f"{D}/p.yaml", "w") as f:
    f.write("version: 1\nname: egress-bounds\nnetwork:\n  mode: egbound\n  egress:\n    allow:\n"
            "      - {host: web.test, ports: [8080], allow_private: true}\n"
            "    http:\n      - {host: web.test}\n")
os.chmod(f"{D}/p.yaml", 0o644)
inside = ("import socket\n"
          "s = socket.create_connection(('127.0.0.1', 3128), timeout=120)\n"
          "s.sendall(b'GET http://web.test:8080/x HTTP/1.1\\r\\nHost: web.test:8080\\r\\nConnection: close\\r\\n\\r\\n')\n"
          "print(s.recv(200).decode().splitlines()[0], flush=True)\n")
r = subprocess.run([PYSANDBOX, "run", "--profile", f"{D}/p.yaml", "--audit-log", f"{D}/audit.jsonl", "--",
                    "/usr/bin/python3", "-c", inside], capture_output=True, text=True, env=env, timeout=150)
events = [json.loads(ln) for ln in open(f"{D}/audit.jsonl")]
res = {"rc": r.returncode, "out": r.stdout, "err": r.stderr[-1500:],
       "errors": [e for e in events if e["type"] == "egress.http.upstream_error"]}
res["rm"] = subprocess.run([PYSANDBOX, "network", "rm", "egbound"], capture_output=True, env=env).returncode
print("RESULT " + json.dumps(res))
'''


def test_upstream_connect_is_bounded_and_the_give_up_audited():
    d = tempfile.mkdtemp(prefix="pysbx-egbound-", dir="/tmp")
    try:
        p = subprocess.run(["unshare", "--net", "--mount", PY, "-c", SCENARIO, d, PYSANDBOX, ",".join(ADDRS)],
                           capture_output=True, text=True, timeout=180)
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        assert line, p.stdout[-2000:] + p.stderr[-2000:]
        res = json.loads(line[7:])
    finally:
        subprocess.run(["rm", "-rf", d], check=False)
    assert res["rc"] == 0 and res["out"].startswith("HTTP/1.1 502"), res
    assert len(res["errors"]) == 1, res
    reason = res["errors"][0]["egress"]["reason"]
    assert reason.startswith("gave up after 8 of 20 addresses (at most 8 tried)"), reason
    tried = reason.split(": ", 1)[1].split("; ")
    assert len(tried) == 8, tried
    assert tried[0] == "192.0.2.2: timeout", tried                 # the black hole: one attempt's time
    assert all(t.endswith(": Connection refused") for t in tried[1:]), tried
    assert {t.split(":")[0] for t in tried} <= set(ADDRS), tried
    assert res["rm"] == 0, res
