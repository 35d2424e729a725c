"""A private network's /etc/hosts is read-only inside the sandbox.

Each sandbox on a private network has its own hosts file in the state dir, bind-mounted
read-only over /etc/hosts and rewritten in place by the supervisors as peers join and leave. A
sandbox that could write it would redirect its own lookups only — but the file lives on the host:
writing it would be a write to the host's filesystem, and (were the sandbox's root mapped to the
host's) to state the supervisors trust. Through `pysandbox run` as root (private networks need
root; rootless they are refused, tests/system/test_network_rootless.py): opening it for writing fails
(EROFS from the read-only bind mount, or EACCES from the file's host owner, whichever the kernel
checks first for the open's flags), also with DAC_OVERRIDE (the `default` profile); with CAP_SYS_ADMIN added, a remount
read-write is possible in the sandbox's own mount namespace, but the file still cannot be opened
for writing (it belongs to the host's root, whom the sandbox's root is not: EACCES). Reading
works and peers resolve by name. Probes open for writing and never write.

SAFETY: the pytest process is moved into a network namespace of its own (fixture `testns` of
tests/system/test_network.py); state dir, bridge and sandboxes live there. Waits are bounded.
"""
from __future__ import annotations

import json
import os
import subprocess
import textwrap

import pytest

from sandbox.network import bridge, store

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="private networks need root")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import PYSANDBOX  # noqa: E402  (the installed entry points)
NET = "hro-net"

PROBE = r"""
import errno, json, os, socket, subprocess, sys
out = {}
def try_open(flags):
    try:
        os.close(os.open("/etc/hosts", flags)); return "opened"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
out["rw"] = try_open(os.O_RDWR)
out["append"] = try_open(os.O_WRONLY | os.O_APPEND)
out["trunc"] = try_open(os.O_WRONLY | os.O_TRUNC) if out["rw"] != "opened" else "skipped"
out["mount_opts"] = [l.split()[5] for l in open("/proc/self/mountinfo") if l.split()[4] == "/etc/hosts"]
out["read"] = open("/etc/hosts").read()
out["peer"] = socket.gethostbyname("hro-peer")
out["self"] = socket.gethostbyname("hro-self")
if "remount" in sys.argv:
    r = subprocess.run(["/usr/bin/mount", "-o", "remount,bind,rw", "/etc/hosts"], capture_output=True, text=True)
    out["remount"] = r.returncode
    out["rw_after_remount"] = try_open(os.O_RDWR)
print(json.dumps(out))
"""


def run(*opts, code, args=()):
    return subprocess.run([PYSANDBOX, "run", "--profile", "default", "--audit-log", "/dev/null", *opts, "--",
                           "/usr/bin/python3", "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def net(testns):
    r = subprocess.run([PYSANDBOX, "network", "create", NET], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    yield store.load_network(NET)
    subprocess.run([PYSANDBOX, "network", "rm", NET], capture_output=True, timeout=60)


def test_etc_hosts_is_read_only_and_resolves(net):
    peer = subprocess.Popen([PYSANDBOX, "run", "--profile", "default", "--audit-log", "/dev/null", "--network", NET,
                             "--name", "hro-peer", "--", "/usr/bin/python3", "-c",
                             "import sys, time; print('up', flush=True); sys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert peer.stdout.readline().strip() == "up"
        peer_ip = next(e["address"] for e in bridge.inspect_network(NET)["endpoints"] if e["name"] == "hro-peer")
        files_before = {p: open(p).read() for p in _hosts_files()}          # the peer's
        r = run("--network", NET, "--name", "hro-self", code=PROBE)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        # denied: no way to open it for writing, though the default profile holds DAC_OVERRIDE. Two
        # layers: the bind mount is read-only (EROFS: O_TRUNC asks the mount first; mountinfo says ro) and
        # the file belongs to the host's root, whom the sandbox's root is not (EACCES: a plain O_RDWR /
        # O_APPEND open is checked against the inode's owner before the mount)
        assert out["mount_opts"] and out["mount_opts"][-1].split(",")[0] == "ro", out
        assert out["trunc"] == "EROFS", out
        assert out["rw"] in ("EROFS", "EACCES") and out["append"] in ("EROFS", "EACCES"), out
        # works: reading, and peers / itself by name
        assert f"{peer_ip}\thro-peer" in out["read"]
        assert out["peer"] == peer_ip and out["self"] != peer_ip and out["self"].startswith(net["subnet"][:6])
        # CAP_SYS_ADMIN: it may remount its own bind mount read-write, the host's file stays closed to it
        r = run("--network", NET, "--name", "hro-self", "--cap-add", "SYS_ADMIN", code=PROBE, args=("remount",))
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["trunc"] == "EROFS" and out["rw"] in ("EROFS", "EACCES")
        assert out["rw_after_remount"] in ("EROFS", "EACCES", "EPERM"), out
        # the peer's hosts file is as before (hro-self joined and left twice; the probes never wrote)
        assert files_before and {p: open(p).read() for p in files_before} == files_before
    finally:
        peer.kill()
        peer.wait(timeout=10)


def _hosts_files():
    d = store.state_dir() / NET / "hosts"
    return [str(p) for p in d.iterdir()] if d.is_dir() else []
