"""Issue 20 item 13: bind sources are opened by the supervisor with the caller's own credentials
(launcher.open_bind_sources), not by the sandbox's mapped root; the caller's access decides what
it may bind. Run the way the user did: `pysandbox run -v SRC:DST` (CLI) and `Sandbox(volumes=…)`
(API), as root and as the unprivileged test user. Nothing simulated."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import uuid

import pytest

from conftest import REPO, TEST_USER


@pytest.fixture
def root_only_dir():
    """/root/pysbx-bindcaller-XYZ (0700, root's; /root is 0700 too) holding `data/` (0755) with a
    0644 file, and `private/` (0700) with one: removed afterwards."""
    d = f"/root/pysbx-bindcaller-{uuid.uuid4().hex[:8]}"
    os.mkdir(d, 0o700)
    try:
        os.mkdir(f"{d}/data", 0o755)
        with open(f"{d}/data/f", "w") as f:
            f.write("root's data\n")
        os.chmod(f"{d}/data/f", 0o644)
        os.mkdir(f"{d}/private", 0o700)
        with open(f"{d}/private/secret", "w") as f:
            f.write("secret\n")
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_root_binds_a_source_only_root_can_reach(root_runner, root_only_dir):
    """Before: exit 125 'bind source: Permission denied' (the mapped root, host uid 1000000000,
    cannot enter /root). Now the caller (root) opened it: the bind works, read-only or not."""
    for opt in ("", ":ro"):
        r = root_runner("run", "--profile", "strict", "-v", f"{root_only_dir}/data:/x{opt}", "--", "cat", "/x/f")
        assert r.returncode == 0 and r.stdout == "root's data\n", r
    # the denied side: the sandbox's root is still nobody on the host — a 0700 directory of host
    # root's is bound (the caller may), but the program cannot enter it (as under podman/docker
    # user-namespace remapping); its write to the read-only bind fails too
    r = root_runner("run", "--profile", "strict", "-v", f"{root_only_dir}:/x", "--", "/bin/sh", "-c",
                    "cat /x/private/secret; echo rc=$?; ls -ld /x | cut -c1-10")
    assert r.returncode == 0 and "rc=1" in r.stdout and "drwx------" in r.stdout, r
    assert "secret\n" not in r.stdout and "Permission denied" in r.stderr, r
    r = root_runner("run", "--profile", "strict", "-v", f"{root_only_dir}/data:/x:ro", "--", "/bin/sh", "-c",
                    "echo x > /x/new; echo rc=$?")
    assert "Read-only file system" in r.stderr and not os.path.exists(f"{root_only_dir}/data/new"), r


def test_root_only_source_refused_when_program_keeps_sys_admin(root_runner, root_only_dir):
    """A tree the supervisor cloned in the host's mount namespace is not locked by the kernel (the
    program could unmount its submounts or clear a read-only flag the host set): with
    CAP_SYS_ADMIN kept, only a source the sandbox's root reaches itself (cloned in its own, locked,
    copy of the mount table) is bound; the other is refused, one line, exit 125."""
    r = root_runner("run", "--profile", "strict", "--cap-add", "SYS_ADMIN", "-v", f"{root_only_dir}/data:/x",
                    "--", "cat", "/x/f")
    assert r.returncode == 125, r
    assert f"bind source {root_only_dir}/data" in r.stderr and "CAP_SYS_ADMIN" in r.stderr, r
    assert len(r.stderr.strip().splitlines()) == 1, r
    r = root_runner("run", "--profile", "strict", "--cap-add", "SYS_ADMIN", "-v", "/usr/share/doc:/x",
                    "--", "ls", "-d", "/x")
    assert r.returncode == 0, r


def test_rootless_cannot_bind_what_it_cannot_open(user_runner, root_only_dir, shared_tmp):
    """The unprivileged user cannot enter /root: one line naming the path and its errno, exit 125,
    nothing traced back. A directory it owns binds as before: readable to a root that is the
    caller (a map of its own ids); with subordinate ids (rootless `auto` with a range) it binds
    too, but its 0600 file is the caller's, not the sandbox root's (EACCES)."""
    r = user_runner("run", "--profile", "strict", "-v", f"{root_only_dir}/data:/x", "--", "cat", "/x/f")
    assert r.returncode == 125, r
    assert r.stderr.strip() == (f"pysandbox: bind source {root_only_dir}/data: Permission denied "
                                f"(opened as uid {user_runner.uid})"), r
    assert "root's data" not in r.stdout
    mine = shared_tmp / "mine"
    mine.mkdir(mode=0o700)
    (mine / "f").write_text("mine\n")
    os.chown(mine, user_runner.uid, user_runner.gid)
    os.chown(mine / "f", user_runner.uid, user_runner.gid)
    (mine / "f").chmod(0o600)
    own = shared_tmp / "own.yaml"
    own.write_text("version: 1\nextends: strict\nuser:\n  uid_map: [{inside: 0, outside: caller, count: 1}]\n"
                   "  gid_map: [{inside: 0, outside: caller, count: 1}]\n")
    os.chmod(own, 0o644)
    r = user_runner("run", "--profile", str(own), "-v", f"{mine}:/x", "--", "cat", "/x/f")
    assert r.returncode == 0 and r.stdout == "mine\n", r
    r = user_runner("explain", "--profile", "strict")
    if "subordinate ids" in r.stdout:
        os.chmod(mine, 0o755)
        r = user_runner("run", "--profile", "strict", "-v", f"{mine}:/x", "--", "cat", "/x/f")
        assert r.returncode == 1 and "Permission denied" in r.stderr and "mine" not in r.stdout, r


def test_api_root_binds_a_source_only_root_can_reach(root_runner, root_only_dir):
    from sandbox.api import Sandbox
    sb = Sandbox("strict", volumes=[f"{root_only_dir}/data:/x:ro"])
    for _ in range(2):                     # a plan with binds is never built ahead: each run opens it
        r = sb.run(["cat", "/x/f"], text=True)
        assert r.exit_code == 0 and r.stdout == "root's data\n", r
    r = Sandbox("strict", volumes=[f"{root_only_dir}:/x"]).run(["cat", "/x/private/secret"], text=True)
    assert r.exit_code == 1 and "Permission denied" in r.stderr, r


API_ROOTLESS = r'''
import json, sys
from sandbox.api import Sandbox
out = []
for src in sys.argv[1:]:
    r = Sandbox("strict", volumes=[src + ":/x"]).run(["cat", "/x/f"], text=True)
    out.append([r.exit_code, r.stdout, r.message])
print(json.dumps(out))
'''


def test_api_rootless(user_runner, root_only_dir, shared_tmp):
    pw = pwd.getpwnam(TEST_USER)
    mine = shared_tmp / "mine"
    mine.mkdir(mode=0o755)
    (mine / "f").write_text("mine\n")
    os.chmod(mine / "f", 0o644)
    p = subprocess.run([sys.executable, "-c", API_ROOTLESS, f"{root_only_dir}/data", str(mine)],
                       capture_output=True, text=True, timeout=120, user=pw.pw_uid, group=pw.pw_gid,
                       extra_groups=[], cwd="/tmp",
                       env={"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr[-2000:]
    (code, out, msg), (code2, out2, _) = json.loads(p.stdout)
    assert code == 125 and out == "" and f"bind source {root_only_dir}/data: Permission denied" in msg, (code, msg)
    assert code2 == 0 and out2 == "mine\n", (code2, out2)


def test_source_replaced_after_the_caller_opened_it_is_refused(root_runner, shared_tmp):
    """PID 1 clones the source by name in its copy of the mount table and checks it is the object
    the caller opened: a directory swapped in between (here: by a launch hook of this test, the
    supervisor's open_bind_sources wrapped in-process) is refused, never bound."""
    code = r'''
import os, sys
from sandbox import launcher
src = sys.argv[1]
real = launcher.open_bind_sources
def swapped(plan, rootless):
    out = real(plan, rootless)
    os.rename(src, src + ".old"); os.mkdir(src); open(src + "/f", "w").write("swapped\n")
    return out
launcher.open_bind_sources = swapped
# the CLI's launcher, in this process (the API's launch server is another process)
from policies.compiler import compile_profile
from sandbox.api import _overrides, _kernel_version
plan = compile_profile("strict", _overrides({"volumes": [src + ":/x"]}), kernel=_kernel_version()).plan
r = launcher.launch(plan, ["cat", "/x/f"])
print(r.exit_code, r.message)
'''
    src = shared_tmp / "src"
    src.mkdir()
    (src / "f").write_text("original\n")
    p = subprocess.run([sys.executable, "-c", code, str(src)], capture_output=True, text=True, timeout=60,
                       cwd=str(REPO))
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("125 ") and "replaced while the sandbox was set up" in p.stdout, p.stdout
    assert "swapped" not in p.stdout
