"""Hole 8: `pysandbox cgroups delegate` gave the user an unlimited cgroup at the hierarchy root.

Now the user's subtree (`<hierarchy>/pysandbox-user-<uid>/sandboxes`, owned by the user) sits below a
parent owned by root with finite limits (memory + memory+swap, pids, cpu.shares) that the user
cannot raise: its limit files are root's, and v1 limits are hierarchical, so a sandbox cgroup the
user creates with a higher limit is still capped by the parent. All real: this machine's cgroup v1
hierarchies, the real CLI, real sandboxes as a dedicated unprivileged user (`pysbx-cgdel`, created
once like conftest's test user; its delegation is made and removed by each test).
"""
from __future__ import annotations

import errno
import os
import pwd
import re
import signal
import subprocess
import textwrap

import pytest

from conftest import HOST_PYTHON, PYSANDBOX
from sandbox.cgroups.delegate import undelegate
from sandbox.cgroups.layout import detect
from sandbox.cgroups.placement import delegated_parent, delegated_subtree

V1 = detect().v1_map
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not {"memory", "pids", "cpu"} <= set(V1),
                                reason="needs root and cgroup v1 memory, pids, cpu hierarchies (this machine)")

USER = "pysbx-cgdel"                 # this file's own user: its delegation's limits are lowered here


def _user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", USER], check=True)
        return pwd.getpwnam(USER)


def _cli(*args, pw=None, home="/tmp", timeout=120):
    kw = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[]) if pw else {}
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": home}
    p = subprocess.run([PYSANDBOX, *args], capture_output=True, text=True, timeout=timeout, env=env,
                       cwd="/tmp", **kw)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def _as(pw, code: str):
    """Run a little host Python as the user (not sandboxed: what the user can do on the host)."""
    return subprocess.run([HOST_PYTHON, "-c", code], capture_output=True, text=True, timeout=60,
                          user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], cwd="/tmp")


def _kill_delegated(uid: int) -> None:
    """What still runs in the user's delegated cgroups (its sandboxes), by pidfd: the processes the
    cgroups list, not every process of the user on the host."""
    for m in set(V1.values()):
        for dirpath, _, files in os.walk(os.path.join(m, delegated_parent(uid))):
            if "cgroup.procs" not in files:
                continue
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    pids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            for pid in pids:
                try:
                    fd = os.pidfd_open(pid)
                except ProcessLookupError:
                    continue
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                finally:
                    os.close(fd)


@pytest.fixture
def delegated(shared_tmp):
    pw = _user()
    undelegate(pw.pw_uid)
    r = _cli("cgroups", "delegate", USER, "--memory", "192m", "--pids", "40", "--cpu-shares", "512")
    assert r.returncode == 0, r.stderr
    os.chown(shared_tmp, pw.pw_uid, pw.pw_gid)
    yield pw, [l for l in r.stdout.splitlines() if l]
    _kill_delegated(pw.pw_uid)
    r = _cli("cgroups", "undelegate", USER)
    assert r.returncode == 0, r.stderr
    assert not any(os.path.exists(os.path.join(m, delegated_parent(pw.pw_uid)))
                   for m in set(V1.values()))


def test_delegate_layout_parent_is_roots_with_finite_limits(delegated):
    pw, subtrees = delegated
    uid = pw.pw_uid
    top = {c: os.path.join(V1[c], delegated_parent(uid)) for c in ("memory", "pids", "cpu")}
    assert os.path.join(V1["pids"], delegated_subtree(uid)) in subtrees
    for c, d in top.items():
        st = os.stat(d)
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o755), d
        sub = os.path.join(d, "sandboxes")
        assert os.stat(sub).st_uid == uid
        assert os.stat(os.path.join(sub, "cgroup.procs")).st_uid == uid
    assert open(os.path.join(top["memory"], "memory.limit_in_bytes")).read().strip() == str(192 << 20)
    memsw = os.path.join(top["memory"], "memory.memsw.limit_in_bytes")
    if os.path.exists(memsw):
        assert open(memsw).read().strip() == str(2 * 192 << 20)
    assert open(os.path.join(top["pids"], "pids.max")).read().strip() == "40"
    assert open(os.path.join(top["cpu"], "cpu.shares")).read().strip() == "512"


def test_user_cannot_raise_or_escape_the_parent(delegated):
    pw, _ = delegated
    uid = pw.pw_uid
    files = [os.path.join(V1["memory"], delegated_parent(uid), f)
             for f in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.soft_limit_in_bytes",
                       "cgroup.procs", "tasks")]
    files += [os.path.join(V1["pids"], delegated_parent(uid), f) for f in ("pids.max", "cgroup.procs")]
    files += [os.path.join(V1["cpu"], delegated_parent(uid), f) for f in ("cpu.shares", "cpu.cfs_quota_us")]
    files = [f for f in files if os.path.exists(f)]
    code = textwrap.dedent(f"""\
        import errno, os
        for f in {files!r}:
            try:
                os.close(os.open(f, os.O_WRONLY))        # opened for writing, never written
                print("WRITABLE", f)
            except OSError as e:
                print("denied", errno.errorcode[e.errno], f)
        for f in {[os.path.join(V1["pids"], delegated_parent(uid), f) for f in ("pids.max", "tasks")]!r}:
            try:
                os.chmod(f, 0o666)
                print("CHMOD", f)
            except OSError as e:
                print("chmod denied", errno.errorcode[e.errno])
        try:
            os.rmdir({os.path.join(V1["pids"], delegated_subtree(uid))!r})
            print("REMOVED subtree")
        except OSError as e:
            print("rmdir denied", errno.errorcode[e.errno])
        # the legitimate use: a cgroup of its own below the subtree, with a limit above the parent's
        d = {os.path.join(V1["pids"], delegated_subtree(uid), "cgdel-own")!r}
        os.mkdir(d)
        with open(os.path.join(d, "pids.max"), "w") as f:
            f.write("100000")
        print("own child pids.max", open(os.path.join(d, "pids.max")).read().strip())
        os.rmdir(d)
    """)
    r = _as(pw, code)
    assert r.returncode == 0, r.stderr
    assert "WRITABLE" not in r.stdout and "CHMOD" not in r.stdout and "REMOVED" not in r.stdout, r.stdout
    assert sum(l.startswith("denied EACCES ") for l in r.stdout.splitlines()) == len(files), r.stdout
    assert r.stdout.count("chmod denied EPERM") == 2, r.stdout
    assert "rmdir denied EACCES" in r.stdout
    assert "own child pids.max 100000" in r.stdout
    # and as the user, `cgroups delegate` itself is refused (exit 1), changing nothing
    r2 = _cli("cgroups", "delegate", USER, "--pids", "100000", pw=pw)
    assert r2.returncode == 1 and "needs root" in r2.stderr, r2
    assert open(os.path.join(V1["pids"], delegated_parent(uid), "pids.max")).read().strip() == "40"


FORK_BOMB = textwrap.dedent("""\
    import errno, os, time
    ok = eagain = 0
    kids = []
    for _ in range(400):                     # bounded fork bomb
        try:
            pid = os.fork()
        except OSError as e:
            if e.errno != errno.EAGAIN:
                raise
            eagain += 1
            continue
        if pid == 0:
            time.sleep(5)
            os._exit(0)
        ok += 1
        kids.append(pid)
    print("forked", ok, "eagain", eagain, flush=True)
    for k in kids:
        os.kill(k, 9)
""")


def test_fork_bomb_stops_at_the_parents_pids_max(delegated, shared_tmp):
    """The sandbox asks for --pids-limit 300 (written to its own cgroup, which the user may), but the
    delegated parent's pids.max 40 holds: at most 40 tasks in all (PID 1, the program, children)."""
    pw, _ = delegated
    r = _cli("run", "--profile", "strict", "--pids-limit", "300", "--", HOST_PYTHON, "-c", FORK_BOMB,
             pw=pw, home=str(shared_tmp))
    assert r.returncode == 0, r.stderr
    m = re.search(r"forked (\d+) eagain (\d+)", r.stdout)
    assert m, (r.stdout, r.stderr)
    forked, eagain = int(m.group(1)), int(m.group(2))
    assert forked <= 38 and eagain >= 400 - 38, r.stdout
    # the legitimate use: a sandbox within the budget runs
    r = _cli("run", "--profile", "strict", "--pids-limit", "20", "--", "/bin/sh", "-c", "echo ok",
             pw=pw, home=str(shared_tmp))
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr


ALLOC = ("import sys\nn=int(sys.argv[1])*1024*1024\nb=bytearray(n)\n"
         "b[::4096]=b'x'*len(range(0,n,4096))\nprint('allocated', n, flush=True)\n")


def test_memory_capped_by_the_parent_not_the_sandboxs_own_limit(delegated, shared_tmp):
    """--memory 1g for the sandbox, but the user's parent allows 192 MiB: a 300 MiB program is
    OOM-killed (137, reported); 64 MiB runs."""
    pw, _ = delegated
    r = _cli("run", "--profile", "strict", "--memory", "1g", "--", HOST_PYTHON, "-c", ALLOC, "300",
             pw=pw, home=str(shared_tmp))
    assert r.returncode == 137, (r.stdout, r.stderr)
    assert "allocated" not in r.stdout and "killed by OOM" in r.stderr, r.stderr
    r = _cli("run", "--profile", "strict", "--memory", "1g", "--", HOST_PYTHON, "-c", ALLOC, "64",
             pw=pw, home=str(shared_tmp))
    assert r.returncode == 0 and "allocated" in r.stdout, r.stderr


def test_old_unlimited_layout_is_not_used(shared_tmp):
    """`<hierarchy>/pysandbox-<uid>` owned by the user (what delegate made before, with no limit
    above it) is not a delegation any more: a rootless run that needs the controller fails closed."""
    pw = _user()
    undelegate(pw.pw_uid)
    os.chown(shared_tmp, pw.pw_uid, pw.pw_gid)
    old = os.path.join(V1["pids"], f"pysandbox-{pw.pw_uid}")
    os.mkdir(old)
    try:
        for f in ("", "cgroup.procs", "tasks"):
            os.chown(os.path.join(old, f) if f else old, pw.pw_uid, pw.pw_gid)
        r = _cli("run", "--profile", "strict", "--", "/bin/true", pw=pw, home=str(shared_tmp))
        assert r.returncode == 125, r
        assert "no delegated cgroup" in r.stderr and "cgroups delegate" in r.stderr, r.stderr
        assert os.listdir(old) and not any(os.path.isdir(os.path.join(old, e)) for e in os.listdir(old))
    finally:
        os.rmdir(old)


def test_delegate_bad_values_change_nothing():
    pw = _user()
    undelegate(pw.pw_uid)
    for args in (("--memory", "lots"), ("--pids", "-1"), ("--memory", "-1"), ("--cpu-shares", "1")):
        r = _cli("cgroups", "delegate", USER, *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "pysandbox:" in r.stderr, (args, r)
    assert not os.path.exists(os.path.join(V1["pids"], delegated_parent(pw.pw_uid)))
