"""Hole 9: `exec` trusted namespace identities recorded after the program had started.

The cgroup (and time) namespace `exec` joined was read from the program's process once it had
exec'd, so a program that made itself new namespaces at once could have `exec` join them (or, when
it was quicker than the recorder, make `exec` fail). Now the identities (device + inode) of the
namespaces `exec` joins are read from PID 1 before it is released; `exec` pins PID 1 with a pidfd,
accepts only namespace files with the recorded identity and makes its own cgroup and time
namespaces. Real sandboxes as root and rootless (`runner`). The pid-reuse case is simulated: the
state's recorded PID 1 is pointed at a decoy process of the test's in namespaces of its own, as if
PID 1's pid had been given to it (pid + start time both match the decoy, as they would).
"""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from conftest import HOST_PYTHON

PROFILE = """\
version: 1
extends: strict
namespaces: {time: true}
capabilities: {drop: [ALL], add: [SYS_ADMIN]}
seccomp: {enabled: false}
"""

# The program makes itself new uts, mount, ipc, net and cgroup namespaces first thing, names
# its host "evil", then reports them and waits.
UNSHARER = r"""
import ctypes, os, socket, time
libc = ctypes.CDLL(None, use_errno=True)
# CLONE_NEWUTS | NEWNS | NEWIPC | NEWNET | NEWCGROUP (the host's python3 has no os.unshare)
if libc.unshare(0x04000000 | 0x00020000 | 0x08000000 | 0x40000000 | 0x02000000) != 0:
    raise OSError(ctypes.get_errno(), "unshare")
socket.sethostname("evil")
print("prog", *(os.readlink(f"/proc/self/ns/{t}") for t in ("uts", "mnt", "ipc", "net", "cgroup")), flush=True)
time.sleep(120)
"""

SHOW = ("hostname; for t in uts mnt ipc net cgroup time pid user; do readlink /proc/self/ns/$t; done; "
        "cat /proc/self/cgroup")


def _name(runner, tag):
    return f"secns-{tag}-{os.getpid()}-{'u' if runner.rootless else 'r'}"


def _inspect(runner, name):
    r = runner("inspect", name)
    assert r.returncode == 0, r
    return json.loads(r.stdout)[0]


def _wait_log(runner, name, prefix, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in runner("logs", name).stdout.splitlines():
            if line.startswith(prefix):
                return line
        time.sleep(0.1)
    pytest.fail(f"no {prefix!r} in the logs of {name}")


def _links(out: str) -> dict:
    return {l.split(":", 1)[0]: l for l in out.splitlines() if l.endswith("]") and ":[" in l}


OWN_IDS = ("user:\n  uid_map: [{inside: 0, outside: caller, count: 1}]\n"
           "  gid_map: [{inside: 0, outside: caller, count: 1}]\n")


def test_exec_with_subordinate_ids_refuses_namespaces_the_program_made(user_runner, tmp_profile):
    """Rootless with subordinate ids (rootless `auto` with a range): PID 1 runs an image the caller
    owns but the sandbox's root cannot read, so the kernel ties its memory to the initial user
    namespace and its namespace files are closed to the caller; `exec` then has only the
    program's process to open them from, whose namespaces are not the recorded ones: refused
    (exit 125, one line) - never joined."""
    from conftest import single_id
    if single_id(user_runner):
        pytest.skip("the test user has no subordinate ids here")
    prof = tmp_profile(PROFILE, "sub.yaml")
    name = _name(user_runner, "unshare-sub")
    try:
        r = user_runner("run", "-d", "--name", name, "--profile", prof, "--", HOST_PYTHON, "-c", UNSHARER)
        assert r.returncode == 0, r
        _wait_log(user_runner, name, "prog ")
        ex = user_runner("exec", name, "--", "/bin/sh", "-c", SHOW)
        assert ex.returncode == 125 and ex.stdout == "", ex
        assert ex.stderr == (f"pysandbox: {name}: namespaces.mount: cannot open the sandbox's namespace (gone, or it "
                             f"changed since the start)\n"), ex
    finally:
        user_runner("rm", "-f", name)


def test_exec_ignores_namespaces_the_program_made(runner, tmp_profile):
    """(Rootless: the caller's own ids, root inside is the caller: PID 1's namespace files are
    open to it. With subordinate ids: the test above.)"""
    prof = tmp_profile(PROFILE + (OWN_IDS if runner.rootless else ""))
    name = _name(runner, "unshare")
    try:
        r = runner("run", "-d", "--name", name, "--profile", prof, "--", HOST_PYTHON, "-c", UNSHARER)
        assert r.returncode == 0, r
        prog = _wait_log(runner, name, "prog ").split()[1:]
        prog_uts, prog_mnt, prog_ipc, prog_net, prog_cgroup = prog
        info = _inspect(runner, name)
        rec = info["namespaces"]
        assert "cgroup" not in rec and "time" not in rec            # never taken from the program

        ex = runner("exec", name, "--", "/bin/sh", "-c", SHOW)
        assert ex.returncode == 0, ex
        lines = ex.stdout.splitlines()
        assert lines[0] == "sandbox", ex                          # the sandbox's uts, not "evil"
        links = _links(ex.stdout)
        for t, theirs in (("uts", prog_uts), ("mnt", prog_mnt), ("ipc", prog_ipc), ("net", prog_net)):
            assert links[t] == f"{t}:[{rec[t]}]" != theirs, (t, ex.stdout)
        assert links["pid"] == f"pid:[{rec['pid']}]" and links["user"] == f"user:[{rec['user']}]"
        assert links["cgroup"] != prog_cgroup                     # exec's own cgroup namespace ...
        cg_lines = [l for l in lines if l.count(":") >= 2 and not l.endswith("]")]
        assert cg_lines and all(l.endswith(":/") for l in cg_lines), ex.stdout   # ... rooted at the sandbox's
    finally:
        runner("rm", "-f", name)


def _state_file(runner, name) -> str:
    return os.path.join(_inspect(runner, name)["state_dir"], "state.json")


def _tamper(path: str, **fields) -> None:
    """Rewrite the state in place (its owner and mode stay): what the recorded pid would name after
    a reuse."""
    with open(path, "r+") as f:
        st = json.load(f)
        st.update(fields)
        f.seek(0)
        f.truncate()
        json.dump(st, f)


def _starttime(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        s = f.read()
    return int(s[s.rindex(b")") + 2:].split()[19])


def _decoy(runner):
    """A process of the caller's in namespaces of its own (user, uts, mount, ipc, net)."""
    kw = dict(user=runner.uid, group=runner.gid, extra_groups=[]) if runner.rootless else {}
    p = subprocess.Popen(["unshare", "--user", "--map-root-user", "--uts", "--mount", "--ipc", "--net",
                          "sleep", "60"], **kw)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if os.readlink(f"/proc/{p.pid}/exe").endswith("sleep"):
                break
        except OSError:
            pass
        time.sleep(0.02)
    return p


def test_reused_pid_cannot_redirect_exec(runner, tmp_profile):
    prof = tmp_profile(PROFILE)
    name = _name(runner, "reuse")
    decoy = None
    try:
        r = runner("run", "-d", "--name", name, "--profile", prof, "--", "/bin/sleep", "120")
        assert r.returncode == 0, r
        info = _inspect(runner, name)
        rec = info["namespaces"]
        path = _state_file(runner, name)
        decoy = _decoy(runner)
        decoy_uts = os.readlink(f"/proc/{decoy.pid}/ns/uts")
        assert decoy_uts != f"uts:[{rec['uts']}]"
        # PID 1's pid "reused" by the decoy: exec finds the sandbox's namespaces through the
        # program's process (checked against the identities recorded from the real PID 1 before
        # the program ran) or refuses; it never joins the decoy's
        real_pid1, real_start = info["pid1"], info["pid1_start"]
        _tamper(path, pid1=decoy.pid, pid1_start=_starttime(decoy.pid))
        ex = runner("exec", name, "--", "/bin/sh", "-c", SHOW)
        if ex.returncode == 0:
            links = _links(ex.stdout)
            for t in ("uts", "mnt", "ipc", "net", "pid", "user"):
                assert links[t] == f"{t}:[{rec[t]}]", (t, ex.stdout)
            assert ex.stdout.splitlines()[0] == "sandbox"
        else:
            assert ex.returncode == 125 and "namespaces." in ex.stderr, ex
        # both recorded processes "reused" by the decoy: refused, nothing joined
        _tamper(path, program_pid=decoy.pid, program_start=_starttime(decoy.pid))
        ex = runner("exec", name, "--", "/bin/sh", "-c", "hostname")
        assert ex.returncode == 125, ex
        assert "cannot open the sandbox's namespace (gone, or it changed since the start)" in ex.stderr, ex
        assert ex.stderr.count("\n") == 1 and ex.stdout == "", ex
        # a recorded PID 1 that is gone (its pid not reused): refused
        decoy.kill()
        decoy.wait()
        ex = runner("exec", name, "--", "/bin/true")
        assert ex.returncode == 125 and "PID 1 is gone" in ex.stderr, ex
        # the real ones back: exec works
        _tamper(path, pid1=real_pid1, pid1_start=real_start, program_pid=info["program_pid"],
                program_start=info["program_start"])
        ex = runner("exec", name, "--", "/bin/sh", "-c", SHOW)
        assert ex.returncode == 0 and ex.stdout.splitlines()[0] == "sandbox", ex
        assert _links(ex.stdout)["uts"] == f"uts:[{rec['uts']}]"
    finally:
        if decoy is not None and decoy.poll() is None:
            decoy.kill()
            decoy.wait()
        runner("rm", "-f", name)


def test_identity_not_recorded_refuses(runner, tmp_profile):
    """A state without the recorded identities (an older pysandbox's, or damaged): refused, exit 125."""
    prof = tmp_profile(PROFILE)
    name = _name(runner, "norec")
    try:
        r = runner("run", "-d", "--name", name, "--profile", prof, "--", "/bin/sleep", "120")
        assert r.returncode == 0, r
        _tamper(_state_file(runner, name), namespaces_dev={})
        ex = runner("exec", name, "--", "/bin/true")
        assert ex.returncode == 125 and "identity not recorded" in ex.stderr, ex
    finally:
        runner("rm", "-f", name)
