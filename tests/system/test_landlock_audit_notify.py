"""Landlock denials audited by the seccomp notify layer (issue 24's fallback, sandbox/notify/
landlock_fallback.py): this machine's kernel audit is disabled, so every run here records its
Landlock denials through the supervisor's listener (`landlock_denied`, via user_notif). Both sides:
a denied write and exec are EACCES for the program and one event each (path, access); the allowed
write and exec work and leave none. Under strict and a custom `landlock:` profile, the namespaces
and the namespace-free (`--isolation landlock`) backends, as root and rootless; a symlink the
program plants is judged by its target; a flood gives bounded events; the API's launch server
records them too."""
from __future__ import annotations

import json
import os

import pytest

from conftest import audit_log
from probes import STEP

from sandbox import _sys, landlock

pytestmark = pytest.mark.skipif(_sys.landlock_abi() < 4 or landlock.audit_enabled(),
                                reason="needs Landlock ABI 4 and the kernel's audit off (the fallback's case)")

# argv: a private directory name in /tmp, a file the rules deny writing, where the program's
# symbolic link points; prints "<what> <ok|ERRNO>" per step and cleans up after itself
PROBE = STEP + r"""
import os, shutil, subprocess, sys
d, denied, target = "/tmp/" + sys.argv[1], sys.argv[2], sys.argv[3]
os.mkdir(d)
try:
    t("write-allowed", lambda: write(d + "/ok"))
    t("write-denied", lambda: write(denied))
    os.symlink(target, d + "/lnk")
    t("write-symlink", lambda: write(d + "/lnk"))
    shutil.copy("/usr/bin/true", d + "/t")
    os.chmod(d + "/t", 0o755)
    t("exec-allowed", lambda: subprocess.run(["/usr/bin/true"], check=True))
    t("exec-denied", lambda: subprocess.run([d + "/t"], check=True))
finally:
    shutil.rmtree(d)
"""

CUSTOM = """\
version: 1
extends: strict
landlock:
  filesystem:
    read: [/usr, /lib, /lib64, /bin, /etc, /proc, /dev, /run, /tmp]
    write: [/tmp, /dev/null]
    execute: [/usr/bin, /usr/lib, /lib, /lib64, /bin]
"""

# (a file the rules deny writing while the mounts, or the host, would let it be written, the access
# missing, a symbolic link's target, the access missing there): a custom profile leaves /dev/shm out;
# strict's derived rules follow its mounts, so what Landlock alone refuses there is a write to /proc
# (read-only in its rules, a writable file system) and, without namespaces, the host's /var
CREATE, WRITE = ["make_reg"], ["write_file", "truncate"]
DENIED = {("strict", "namespaces"): ("/proc/self/oom_score_adj", WRITE, "/proc/self/comm", WRITE),
          ("custom", "namespaces"): ("/dev/shm/llx", CREATE, "/dev/shm/lltarget", CREATE),
          ("strict", "landlock"): ("/var/llx", CREATE, "/var/lltarget", CREATE),
          ("custom", "landlock"): ("/dev/shm/llx", CREATE, "/dev/shm/lltarget", CREATE)}


def _events(runner, kind="landlock_denied") -> list:
    with open(audit_log(runner)) as f:
        return [e for e in map(json.loads, f) if e["type"] == kind]


@pytest.mark.parametrize("backend", ["namespaces", "landlock"])
@pytest.mark.parametrize("profile", ["strict", "custom"])
def test_denials_recorded_allowed_calls_not(runner, tmp_profile, profile, backend):
    name = f"llan-{os.getpid()}-{profile}-{backend}"
    denied, denied_access, target, target_access = DENIED[profile, backend]
    p = tmp_profile(CUSTOM) if profile == "custom" else "strict"
    opts = ("--isolation", "landlock") if backend == "landlock" else ()
    r = runner("run", "--profile", p, *opts, "--", "/usr/bin/python3", "-I", "-c", PROBE, name, denied, target)
    assert r.returncode == 0, r
    got = dict(line.rsplit(" ", 1) for line in r.stdout.splitlines())
    assert got == {"write-allowed": "ok", "write-denied": "EACCES", "write-symlink": "EACCES",
                   "exec-allowed": "ok", "exec-denied": "EACCES"}, got
    ev = {e["path"]: e for e in _events(runner)}
    d = f"/tmp/{name}"
    assert set(ev) == {denied, f"{d}/lnk", f"{d}/t"}, ev                  # none for what was allowed
    assert ev[denied]["detail"]["access"] == denied_access, ev[denied]
    assert ev[f"{d}/lnk"]["detail"]["access"] == target_access, ev        # judged by its target
    assert ev[f"{d}/t"]["detail"]["access"] == ["execute"] and ev[f"{d}/t"]["syscall"]["name"] == "execve"
    for e in ev.values():
        assert e["errno"] == 13 and e["via"] == "user_notif" and e["pid"] > 0, e
    assert not os.path.lexists(denied if backend == "landlock" and "/var/" in denied else d)


def test_flood_of_denied_writes_is_bounded(root_runner):
    """3000 denied creations: every one EACCES for the program, the records bounded by the audit
    rate limit (the first ones in full, the rest counted in coalesced records and audit_suppressed)."""
    code = ("import errno\nn = 0\nfor i in range(3000):\n    try:\n        open('/proc/self/oom_score_adj', 'w')\n"
            "    except OSError as e:\n        n += e.errno == errno.EACCES\nprint(n)")
    r = root_runner("run", "--profile", "strict", "--", "/usr/bin/python3", "-I", "-c", code)
    assert r.returncode == 0 and r.stdout == "3000\n", r
    ev = _events(root_runner)
    full = [e for e in ev if "count" not in e]
    assert 0 < len(full) <= 200 and len(ev) < 300, len(ev)
    assert sum(e.get("count", 1) for e in ev) == 3000
    assert _events(root_runner, "audit_suppressed"), "no suppression summary"


@pytest.mark.skipif(os.geteuid() != 0, reason="the API's launch server, as root")
def test_api_launch_server_records_them():
    from sandbox.api import Sandbox
    r = Sandbox("strict").run(["/bin/sh", "-c", "cp /bin/true /tmp/t && /tmp/t; echo x > /tmp/ok"], text=True)
    assert r.exit_code == 0 and "Permission denied" in r.stderr, r
    ev = [e for e in r.events if e["type"] == "landlock_denied"]
    assert [(e["path"], e["detail"]["access"]) for e in ev] == [("/tmp/t", ["execute"])], ev


def test_explain_names_the_source(runner):
    r = runner("explain", "--profile", "strict")
    assert r.returncode == 0 and "denials: the seccomp notify layer" in r.stdout, r


NET_PROBE = STEP + r"""
import socket
def conn(port):
    s = socket.socket()
    s.settimeout(3)
    s.connect(("127.0.0.1", port))
def bind(port):
    socket.socket().bind(("127.0.0.1", port))
def udp(port):
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).connect(("127.0.0.1", port))
t("connect-40411", lambda: conn(40411))
t("connect-40412", lambda: conn(40412))
t("bind-40411", lambda: bind(40411))
t("bind-40412", lambda: bind(40412))
t("udp-40412", lambda: udp(40412))
"""


@pytest.mark.parametrize("backend", ["namespaces", "landlock"])
def test_tcp_denials_recorded(runner, tmp_profile, backend):
    """A custom profile's TCP rules (bind and connect 40411 only): 40412 is EACCES and one event
    each (port, access); 40411 is allowed (connect: ECONNREFUSED, nobody listens); UDP is not
    Landlock's (allowed, no event)."""
    p = tmp_profile(CUSTOM + "  network:\n    bind: [40411]\n    connect: [40411]\n")
    opts = ("--isolation", "landlock") if backend == "landlock" else ()
    r = runner("run", "--profile", p, *opts, "--", "/usr/bin/python3", "-I", "-c", NET_PROBE)
    assert r.returncode == 0, r
    got = dict(line.rsplit(" ", 1) for line in r.stdout.splitlines())
    assert got == {"connect-40411": "ECONNREFUSED", "connect-40412": "EACCES", "bind-40411": "ok",
                   "bind-40412": "EACCES", "udp-40412": "ok"}, got
    ev = sorted((e["syscall"]["name"], e["detail"]["port"], e["detail"]["access"]) for e in _events(runner))
    assert ev == [("bind", 40412, ["bind_tcp"]), ("connect", 40412, ["connect_tcp"])], ev


def test_exec_command_denials_recorded(runner):
    """`pysandbox exec` into a detached strict sandbox: the command's denied exec is recorded by the
    sandbox's supervisor (its listener handed over), its allowed write leaves no event."""
    r = runner("run", "-d", "--name", "llan-exec", "--profile", "strict", "--", "/bin/sleep", "60")
    assert r.returncode == 0, r
    try:
        r = runner("exec", "llan-exec", "/bin/sh", "-c",
                   "echo x > /tmp/a && echo write-ok; cp /bin/true /tmp/t; /tmp/t || echo exec=$?")
        assert r.returncode == 0 and r.stdout == "write-ok\nexec=126\n", r
    finally:
        runner("rm", "-f", "llan-exec")
    ev = [(e["path"], e["detail"]["access"]) for e in _events(runner)]
    assert ev == [("/tmp/t", ["execute"])], ev
