"""Issue 20 item 15: programs and checkers can tell they run in a sandbox, by the container
interface conventions of systemd and podman: `container=pysandbox` in PID 1's environment
(/proc/1/environ) and in the program's, /run/host/container-manager (systemd's) and
/run/.containerenv (podman's), read-only, carrying nothing of the host's. For a root we build
(`root: host`), as root and rootless, CLI and API (including the launch server's roots built
ahead). Nothing simulated: the real systemd-detect-virt of this host is run inside."""
from __future__ import annotations

import json
import os
import pwd
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import PYSANDBOX, REPO, TEST_USER, state_env

HOST_PYTHON = "/usr/bin/python3"


def containerenv(rootless: bool) -> str:
    return f'engine="pysandbox-0.1.0"\nimage=""\nimageid=""\nrootless={1 if rootless else 0}\n'


def test_program_sees_the_container_interface(runner):
    r = runner.sh('echo "env=$container"; cat /run/.containerenv; echo ---; cat /run/host/container-manager; '
                  'stat -c "%a %F" /run/.containerenv /run/host/container-manager /run/host')
    assert r.returncode == 0, r
    env, rest = r.stdout.split("\n", 1)
    assert env == "env=pysandbox", r
    ce, rest = rest.split("---\n", 1)
    assert ce == containerenv(runner.rootless), r                 # nothing of the host's: exact content
    assert rest.splitlines() == ["pysandbox", "444 regular file", "444 regular file", "555 directory"], r
    # the denied side: the program cannot change what checkers read (strict's root is read-only)
    r = runner.sh("echo engine=host > /run/.containerenv; echo rc=$?; echo x > /run/host/container-manager; "
                  "echo rc=$?; rm -f /run/.containerenv; echo rc=$?; cat /run/host/container-manager")
    assert r.stdout.split() == ["rc=2", "rc=2", "rc=1", "pysandbox"], r
    assert r.stderr.count("Read-only file system") == 3, r


def test_checkers_detect_the_sandbox(runner):
    """systemd-detect-virt -c (systemd 252 here: reads /run/host/container-manager, the program
    not being PID 1; 'pysandbox' is no engine it knows: container-other) and a plain Python check.
    (This test machine is itself a docker container: on the host it answers docker; the sandbox's
    answer is the sandbox's own, nothing of the host's.)"""
    if not os.path.exists("/usr/bin/systemd-detect-virt"):
        pytest.fail("systemd-detect-virt is installed on this test machine (Debian 12)")
    r = runner("run", "--profile", "strict", "--", "/usr/bin/systemd-detect-virt", "-c")
    assert r.returncode == 0 and r.stdout == "container-other\n", r
    r = runner.py("import os; print(os.environ.get('container'), os.path.exists('/run/.containerenv'), "
                  "open('/run/host/container-manager').read().strip())")
    assert r.returncode == 0 and r.stdout.split() == ["pysandbox", "True", "pysandbox"], r


def test_profile_env_may_set_container(runner):
    """The variable is the sandbox's default: a profile's or the command line's own value wins
    (e.g. a tool that insists on docker); the files still say pysandbox."""
    r = runner.sh('echo "$container"; cat /run/host/container-manager', "-e", "container=docker")
    assert r.returncode == 0 and r.stdout.split() == ["docker", "pysandbox"], r


def test_exec_commands_see_it_too(runner):
    """A `pysandbox exec` command into a running sandbox has the variable and sees the files."""
    import uuid
    name = f"rfdock-ci-{uuid.uuid4().hex[:8]}"
    try:
        r = runner("run", "-d", "--name", name, "--profile", "strict", "--", "/bin/sleep", "60")
        assert r.returncode == 0, r
        ex = runner("exec", name, "--", "/bin/sh", "-c", 'echo "$container"; cat /run/host/container-manager')
        assert ex.returncode == 0 and ex.stdout.split() == ["pysandbox", "pysandbox"], ex
    finally:
        runner("rm", "-f", name)


def _pid1_environ(runner) -> bytes:
    """PID 1's environment as the host sees it (/proc/PID/environ read by this test, host root):
    the program itself cannot read /proc/1/environ (PID 1 is non-dumpable and out of its reach)."""
    kw = {}
    if runner.rootless:
        kw = dict(user=runner.uid, group=runner.gid, extra_groups=[])
    p = subprocess.Popen([PYSANDBOX, "run", "--profile", "strict", "--", "/bin/sh", "-c",
                          "cat /proc/1/environ >/dev/null 2>&1 || echo denied; echo ready; exec sleep 30"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=runner.env(),
                         cwd="/tmp" if runner.rootless else str(REPO), **kw)
    try:
        assert p.stdout.readline() == "denied\n"
        assert p.stdout.readline() == "ready\n"
        kids = open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()
        envs = []
        for k in kids:
            try:
                if os.readlink(f"/proc/{k}/ns/pid") != os.readlink(f"/proc/{p.pid}/ns/pid"):
                    envs.append(open(f"/proc/{k}/environ", "rb").read())
            except OSError:
                pass
        assert len(envs) == 1, (kids, envs)
        return envs[0]
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()


def test_pid1_environment(runner):
    env = _pid1_environ(runner)
    assert env == b"container=pysandbox\0", env            # that, and nothing of the host's


def test_version_is_the_distribution_version():
    """/run/.containerenv's engine version is a constant (reading the installed metadata costs ~45 ms,
    at every launch); it must be the one pyproject.toml declares."""
    from sandbox import interface
    m = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert m and interface.VERSION == m.group(1)


BUILT_AHEAD = r'''
import json, os, time
from sandbox.api import Sandbox
from sandbox.server.client import Client
sb = Sandbox("strict")
cmd = ["/bin/sh", "-c", "echo $container; cat /run/.containerenv /run/host/container-manager"]
out = {"runs": [sb.run(cmd, text=True).stdout]}
server = Client.get().proc.pid
built = None
deadline = time.monotonic() + 10
while built is None and time.monotonic() < deadline:
    for k in open(f"/proc/{server}/task/{server}/children").read().split():
        try:
            with open(f"/proc/{k}/root/run/.containerenv") as f:
                built = f.read()
                out["spare"] = int(k)
        except PermissionError:
            # not root: a spare whose builder thread took the sandbox's identity is no longer
            # dumpable (its root cannot be looked into from outside): that refusal is the sign
            if os.geteuid() != 0:
                built, out["spare"] = "<not dumpable>", int(k)
        except OSError:
            pass
    time.sleep(0.05)
out["built"] = built
out["runs"].append(sb.run(cmd, text=True).stdout)
print(json.dumps(out))
'''


@pytest.mark.parametrize("who", ["root", "rootless"])
def test_api_and_roots_built_ahead(who, request):
    """The API's launch server builds a prebuildable plan's root ahead (a spare PID 1 that pivoted
    before any run): its root has the same files, and the run that takes it sees them."""
    run_as = {"env": {**os.environ, "PYTHONPATH": str(REPO)}}
    rootless = who == "rootless"
    if rootless:
        request.getfixturevalue("delegated_cgroups")
        pw = pwd.getpwnam(TEST_USER)
        run_as = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                      env={"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir, "PYTHONPATH": str(REPO), **state_env(True)})
    p = subprocess.run([sys.executable, "-c", BUILT_AHEAD], capture_output=True, text=True, timeout=120,
                       cwd="/tmp", **run_as)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    want = "pysandbox\n" + containerenv(rootless) + "pysandbox\n"
    # the spare's root, before its run (rootless: a built spare cannot be looked into, see
    # BUILT_AHEAD; its files are checked by the run that takes it, below)
    assert out["built"] == ("<not dumpable>" if rootless else containerenv(rootless)), out
    assert out["runs"][0] == want and out["runs"][1] == want, out


# --------------------------------------------------------------------------- image and directory roots
# The same files for a root we did not make (an image's, a read-only `root:` directory's), written
# into a top layer of the sandbox's own (sandbox/store/mountpoints.py): present and read-only, and
# neither the image's layers nor the user's directory are written to.

CHECK = ('echo "env=$container"; cat /run/.containerenv; echo ---; cat /run/host/container-manager; '
         'stat -c "%a %F" /run/.containerenv /run/host/container-manager /run/host')
DENY = ("echo engine=host > /run/.containerenv; echo rc=$?; echo x > /run/host/container-manager; echo rc=$?; "
        "rm -f /run/.containerenv; echo rc=$?; cat /run/host/container-manager")


def _tree(top) -> dict:
    """Every entry below top (top included): type and mode, owner, size, mtime, content."""
    import hashlib
    out = {}
    for dp, dns, fns in os.walk(top):
        for n in [""] + dns + fns:
            p = os.path.join(dp, n) if n else dp
            st = os.lstat(p)
            data = None
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    data = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(p, top)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, data)
    return out


def _sees_the_interface(r, rootless: bool) -> None:
    assert r.returncode == 0, r
    env, rest = r.stdout.split("\n", 1)
    assert env == "env=pysandbox", r
    ce, rest = rest.split("---\n", 1)
    assert ce == containerenv(rootless), r                  # as for a host root: nothing of the host's
    assert rest.splitlines() == ["pysandbox", "444 regular file", "444 regular file", "555 directory"], r


def _cannot_change_it(r) -> None:
    rcs = r.stdout.split()
    assert len(rcs) == 4 and all(x.startswith("rc=") and x != "rc=0" for x in rcs[:3]) and rcs[3] == "pysandbox", r
    assert r.stderr.count("Read-only file system") == 3, r


def test_image_root_has_the_container_interface(img):
    """`--image`: the files are in the sandbox's own top layer, over the image's /run (which has
    none of them); the image's layers are not touched, and the program cannot change the files."""
    runner, state, _ = img
    before = _tree(os.path.join(state, "layers"))
    env = {"PYSANDBOX_STATE_DIR": state}
    r = runner("run", "--profile", "strict", "--image", "busybox:test", "--", "/bin/sh", "-c", CHECK, env=env)
    _sees_the_interface(r, runner.rootless)
    r = runner("run", "--profile", "strict", "--image", "busybox:test", "--", "/bin/sh", "-c", DENY, env=env)
    _cannot_change_it(r)
    assert _tree(os.path.join(state, "layers")) == before


def _dir_root(runner, shared_tmp) -> str:
    import imagebuild as ib
    os.chown(shared_tmp, runner.uid, runner.gid)
    root = str(shared_tmp / "root")
    ib.write_rootfs_dir(root)                      # bin/busybox, sh, cat, ls; etc/motd — no proc, dev, run
    for a in ("stat", "rm"):
        os.symlink("busybox", os.path.join(root, "bin", a))
    return root


def test_directory_root_has_the_container_interface(runner, shared_tmp, tmp_profile):
    """`root: {path: DIR}` (read-only, strict's default): the files are there, read-only, and
    nothing is written into DIR — not even the mount points it lacks (/proc, /dev, /sys, /tmp,
    /etc/hosts: a bind of DIR had them made in it)."""
    root = _dir_root(runner, shared_tmp)
    before = _tree(root)
    prof = tmp_profile(f"extends: strict\nfilesystem:\n  root: {{path: {root}}}\n")
    r = runner("run", "--profile", prof, "--", "/bin/sh", "-c", CHECK)
    _sees_the_interface(r, runner.rootless)
    r = runner("run", "--profile", prof, "--", "/bin/sh", "-c", DENY)
    _cannot_change_it(r)
    r = runner("run", "--profile", prof, "--", "/bin/cat", "/etc/motd")
    assert r.returncode == 0 and r.stdout == "Welcome to the pysandbox test image\n", r
    assert _tree(root) == before


def test_directory_root_keeps_its_own_run(runner, shared_tmp, tmp_profile):
    """DIR's /run: its entries stay, its mode too; the two files are added beside them."""
    root = _dir_root(runner, shared_tmp)
    os.mkdir(os.path.join(root, "run"))
    os.chmod(os.path.join(root, "run"), 0o775)
    with open(os.path.join(root, "run", "app.pid"), "w") as f:
        f.write("42\n")
    before = _tree(root)
    prof = tmp_profile(f"extends: strict\nfilesystem:\n  root: {{path: {root}}}\n")
    r = runner("run", "--profile", prof, "--", "/bin/sh", "-c",
               "cat /run/app.pid; stat -c %a /run; ls -a /run; cat /run/host/container-manager")
    assert r.returncode == 0, r
    assert r.stdout.split() == ["42", "775", ".", "..", ".containerenv", "app.pid", "host", "pysandbox"], r
    assert _tree(root) == before
