"""Landlock rules of a profile (issue 24): each rule both ways on this kernel (ABI 7), as root and
rootless, in today's (namespaces) backend; the ABI check; strict's rules derived from its mounts.
The program's errors are read from inside (Python's errno names); denials are Landlock's EACCES,
told apart from the mounts' EROFS and from a missing listener's ECONNREFUSED."""
from __future__ import annotations

import os

import pytest

from probes import STEP
from sandbox import _sys

pytestmark = pytest.mark.skipif(_sys.landlock_abi() < 4, reason="needs Landlock ABI 4 (network rules)")

# a probe run inside: each line "<what> <ok|ERRNO>"
PROBE = STEP + r"""
import errno, os, socket, subprocess, sys
def exec_(p):
    subprocess.run([p], check=True)
def bind(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    KEEP.append(s)
def connect(port):
    s = socket.socket()
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    s.close()
KEEP = []
for line in sys.argv[1:]:
    what, _, arg = line.partition(":")
    fn = {"write": write, "read": lambda p: open(p).read(), "exec": exec_, "bind": lambda p: bind(int(p)),
          "connect": lambda p: connect(int(p)), "copy": lambda p: (write(p), os.chmod(p, 0o755),
          open(p, "wb").write(open("/usr/bin/true", "rb").read()))}[what]
    t(line, lambda: fn(arg))
"""

PROFILE = """\
version: 1
extends: strict
filesystem:
  mounts: !extend
    - {type: tmpfs, target: /scratch, size: 1m}
landlock:
  abi: 4
  filesystem:
    read: [/usr, /lib, /lib64, /bin, /etc, /proc, /dev, /run]
    write: [/tmp, /dev/null]
    execute: [/usr/bin, /usr/lib, /lib, /lib64, /bin]
  network:
    bind: [40411]
    connect: [40411]
"""


def probe(runner, profile, *checks, opts=()):
    r = runner("run", "--profile", profile, *opts, "--", "/usr/bin/python3", "-I", "-c", PROBE, *checks)
    assert r.returncode == 0, r
    return dict(line.rsplit(" ", 1) for line in r.stdout.splitlines())


def test_each_rule_both_ways(runner, tmp_profile):
    """write, execute, bind, connect: allowed where listed, EACCES elsewhere (a writable tmpfs
    the rules do not list, a copy of /usr/bin/true in /tmp, port 40412)."""
    p = tmp_profile(PROFILE)
    got = probe(runner, p, "write:/tmp/a", "write:/dev/null", "write:/scratch/a", "read:/etc/hostname",
                "copy:/tmp/true", "exec:/usr/bin/true", "exec:/tmp/true",
                "bind:40411", "bind:40412", "connect:40411", "connect:40412")
    assert got == {"write:/tmp/a": "ok", "write:/dev/null": "ok", "write:/scratch/a": "EACCES",
                   "read:/etc/hostname": "ok", "copy:/tmp/true": "ok", "exec:/usr/bin/true": "ok",
                   "exec:/tmp/true": "EACCES", "bind:40411": "ok", "bind:40412": "EACCES",
                   "connect:40411": "ok", "connect:40412": "EACCES"}, got


def test_writable_mount_not_listed_is_contained(runner, tmp_profile, shared_tmp):
    """Defence in depth: a bind mount made writable by mistake (here -v DIR:/data, rw) is writable
    as far as the mounts go - /proc/self/mounts says rw - but Landlock does not list /data, so
    the program cannot write there (EACCES), nor change the host's directory."""
    host = shared_tmp / "data"
    host.mkdir()
    os.chown(host, runner.uid, runner.gid)
    p = tmp_profile(PROFILE)
    r = runner("run", "--profile", p, "-v", f"{host}:/data", "--", "/bin/sh", "-c",
               "grep ' /data ' /proc/self/mounts | cut -d' ' -f4 | cut -d, -f1; echo x > /data/f")
    assert r.returncode == 2 and r.stdout == "rw\n" and "Permission denied" in r.stderr, r
    assert not (host / "f").exists()


def test_missing_write_path_refused(runner, tmp_profile):
    """A write rule on a path the sandbox does not have: refused at launch, naming it (exit 125);
    a read rule on one is skipped (it would grant nothing)."""
    p = tmp_profile(PROFILE.replace("write: [/tmp, /dev/null]", "write: [/tmp, /no/such]"))
    r = runner("run", "--profile", p, "--", "/bin/true")
    assert r.returncode == 125 and "/no/such" in r.stderr and r.stderr.count("\n") == 1, r
    p = tmp_profile(PROFILE.replace("read: [/usr,", "read: [/no/such, /usr,"), "p2.yaml")
    assert runner("run", "--profile", p, "--", "/bin/true").returncode == 0


def test_abi_above_the_kernel_is_refused(runner, tmp_profile):
    p = tmp_profile("version: 1\nextends: strict\nlandlock: {abi: 99}\n")
    r = runner("run", "--profile", p, "--", "/bin/true")
    assert r.returncode == 125 and r.stderr.count("\n") == 1, r
    assert f"Landlock ABI {_sys.landlock_abi()}" in r.stderr and "abi 99" in r.stderr, r


def test_bad_rule_path_is_a_profile_error(runner, tmp_profile):
    p = tmp_profile("version: 1\nextends: strict\nlandlock:\n  filesystem:\n    write: [tmp]\n")
    r = runner("run", "--profile", p, "--", "/bin/true")
    assert r.returncode == 2 and ":5:13: landlock.filesystem.write.0" in r.stderr, r


def test_strict_derived_rules(runner):
    """strict's rules come from its mounts: what it needs works (its /tmp, /dev/null, /dev/shm, ls /,
    /etc, /proc, the system directories) and its writable /tmp - a tmpfs the mounts leave
    executable - is not executable (W^X): a binary copied there does not run."""
    got = probe(runner, "strict", "write:/tmp/a", "write:/dev/null", "write:/dev/shm/a", "read:/etc/passwd",
                "read:/proc/self/status", "copy:/tmp/true", "exec:/usr/bin/true", "exec:/tmp/true")
    assert got == {"write:/tmp/a": "ok", "write:/dev/null": "ok", "write:/dev/shm/a": "ok",
                   "read:/etc/passwd": "ok", "read:/proc/self/status": "ok", "copy:/tmp/true": "ok",
                   "exec:/usr/bin/true": "ok", "exec:/tmp/true": "EACCES"}, got
    r = runner("run", "--profile", "strict", "--", "/bin/sh", "-c", "ls / >/dev/null && grep ' /tmp ' /proc/self/mounts")
    assert r.returncode == 0 and "noexec" not in r.stdout, r      # the mount alone would let it run


def test_python_fallback_enters_the_same_rules(user_runner, tmp_profile):
    """A rootless caller mapped to itself (uid: caller) has no root in its namespace: the program's
    set-up is the Python copy (sequence.program), not pysandbox-init; the same ruleset applies."""
    p = tmp_profile(PROFILE + "user: {uid: caller, gid: caller}\n")
    got = probe(user_runner, p, "write:/tmp/a", "write:/scratch/a", "copy:/tmp/true", "exec:/tmp/true",
                "exec:/usr/bin/true")
    assert got == {"write:/tmp/a": "ok", "write:/scratch/a": "EACCES", "copy:/tmp/true": "ok",
                   "exec:/tmp/true": "EACCES", "exec:/usr/bin/true": "ok"}, got


def test_explain_shows_rules_and_backend(runner, tmp_profile):
    r = runner("explain", "--profile", "strict")
    assert r.returncode == 0, r
    assert "landlock     abi >= 1; file system: derived from the mounts" in r.stdout
    assert "write (where present): /dev/shm /tmp" in r.stdout and "backend      namespaces" in r.stdout, r
    r = runner("explain", "--profile", tmp_profile(PROFILE))
    assert "tcp bind: 40411; tcp connect: 40411" in r.stdout and "execute: /usr/bin" in r.stdout, r


def test_exec_command_enters_the_same_rules(runner):
    """`pysandbox exec` into a running strict sandbox: the command gets the profile's rules too
    (built after it joined the sandbox's mount namespace): /tmp writable, not executable."""
    r = runner("run", "-d", "--name", "ll-exec", "--profile", "strict", "--", "/bin/sleep", "60")
    assert r.returncode == 0, r
    try:
        r = runner("exec", "ll-exec", "/bin/sh", "-c",
                   "echo x > /tmp/a && echo write-ok; cp /bin/true /tmp/t; /tmp/t || echo exec=$?")
        assert r.returncode == 0 and r.stdout == "write-ok\nexec=126\n" and "Permission denied" in r.stderr, r
    finally:
        runner("rm", "-f", "ll-exec")
