"""A secret's value in a helper process's environment.

Hole found by tests/system/test_egress_secrets.py's rootless run: the supervisor spawns helpers
(pasta, slirp4netns, newuidmap, nsenter/nft) that inherit its environment, so a secret read from
the caller's environment (`from: env:VAR`) sat in pasta's /proc/PID/environ for the sandbox's whole
life — readable by the caller's other processes, and not "only in the proxy's memory". The
supervisor now moves every `env:` source out of its environment (secrets.take_env_sources) before
the launch spawns anything.

As root with pasta and slirp4netns in a network namespace of this module's own (`testns`, with an
"upstream" veth and a default route, as tests/system/test_network_e2e.py's user-mode test): while
the sandbox runs, no process but the supervisor (where the caller put the value) and this test
holds it in its environment or argv.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import textwrap

import pytest

from conftest import PYSANDBOX

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a test network namespace)")


@pytest.fixture(scope="module")
def upstream_route(testns):
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        ipr.link("add", ifname="sh0", kind="veth", peer={"ifname": "sh1"})
        i0, i1 = ipr.link_lookup(ifname="sh0")[0], ipr.link_lookup(ifname="sh1")[0]
        for i in (i0, i1):
            ipr.link("set", index=i, state="up")
        ipr.addr("add", index=i0, address="192.0.2.1", prefixlen=24)
        ipr.route("add", dst="0.0.0.0/0", gateway="192.0.2.254")
    yield
    with IPRoute() as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname="sh0")[0])


@pytest.mark.parametrize("mode", ["pasta", "slirp4netns"])
def test_helpers_do_not_inherit_a_secret(upstream_route, tmp_path, mode):
    if shutil.which(mode) is None:
        pytest.fail(f"{mode} is not installed (Makefile DEB_PKGS)")
    value = "v_" + secrets.token_hex(16)
    prof = tmp_path / "p.yaml"
    prof.write_text(textwrap.dedent(f"""\
        version: 1
        extends: default
        network:
          mode: {mode}
          secrets:
            TOKEN: {{from: "env:PSB_HELPER_SECRET", hosts: [api.test]}}
          egress:
            allow: [{{host: api.test, ports: [443]}}]     # (the proxy only intercepts what a host rule allows)
        """))
    p = subprocess.Popen([PYSANDBOX, "run", "--profile", str(prof), "--", "/bin/sh", "-c", "echo up; read x"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, PSB_HELPER_SECRET=value))
    try:
        assert p.stdout.readline() == b"up\n", p.stderr.read()
        mine = {p.pid, os.getpid()}
        holders = []
        for d in os.listdir("/proc"):
            if d.isdigit() and int(d) not in mine:
                for f in ("environ", "cmdline"):
                    try:
                        with open(f"/proc/{d}/{f}", "rb") as fh:
                            if value.encode() in fh.read():
                                holders.append((d, f, open(f"/proc/{d}/comm").read().strip()))
                    except OSError:
                        pass
        helpers = [d for d in os.listdir("/proc") if d.isdigit() and _parent(d) == p.pid]
        assert helpers                                     # (the helper and PID 1 are the supervisor's children)
        assert holders == []
    finally:
        p.communicate(b"\n", timeout=60)
    assert p.returncode == 0


def _parent(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1
