"""The CLI's launch server serves only a caller exactly as confined as itself (sandbox/server/peer.py,
docs/security.md "The CLI's launch server"). A caller with no_new_privs (which may hide a Landlock
domain), a seccomp filter, another network namespace, other supplementary groups, fewer
capabilities (root with a bounding capability dropped), another umask or other rlimits, another
nice value, CPU affinity or OOM score adjustment (which PID 1 would inherit) gets the
ordinary path — the sandbox it would have had without the server, never a weaker one and never an
error. The caller's confinement is real (setpriv, unshare, prlimit, a seccomp filter loaded with
prctl); which path was taken is read from the modules the CLI imported (tests/launchserver.py)."""
from __future__ import annotations

import pytest

import launchserver
from launchserver import server  # noqa: F401  (a fixture)
from conftest import HOST_PYTHON

PROBE = ["/bin/sh", "-c", "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; id -u"]
# loads an allow-everything seccomp filter (root: CAP_SYS_ADMIN, no no_new_privs needed), then execs
WITH_FILTER = [HOST_PYTHON, "-c", (
    "import ctypes, os, struct, sys\n"
    "ins = struct.pack('HBBI', 0x06, 0, 0, 0x7fff0000)\n"            # BPF_RET|BPF_K, SECCOMP_RET_ALLOW
    "buf = ctypes.create_string_buffer(ins)\n"
    "class P(ctypes.Structure): _fields_ = [('len', ctypes.c_ushort), ('f', ctypes.c_void_p)]\n"
    "p = P(1, ctypes.cast(buf, ctypes.c_void_p))\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "assert libc.prctl(22, 2, ctypes.byref(p), 0, 0) == 0, ctypes.get_errno()\n"   # PR_SET_SECCOMP
    "os.execv(sys.argv[1], sys.argv[1:])\n")]

CALLERS = {
    "no_new_privs": ["setpriv", "--no-new-privs"],
    "seccomp_filter": WITH_FILTER,
    "other_netns": ["unshare", "-n"],
    "other_groups": ["setpriv", "--groups", "4242"],
    "dropped_bounding_cap": ["setpriv", "--bounding-set", "-sys_ptrace"],
    "other_umask": ["/bin/sh", "-c", 'umask 077; exec "$@"', "-"],
    "other_rlimits": ["prlimit", "--nofile=512:4096", "--"],
    "other_nice": ["nice", "-n", "5"],
    "other_cpu_affinity": ["taskset", "-c", "0"],
    "other_oom_score_adj": ["choom", "-n", "500", "--"],
}


def _strict(out: str) -> None:
    st = dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)
    assert st["CapEff"] == st["CapBnd"] == "0000000000000000" and st["NoNewPrivs"] == "1" \
        and st["Seccomp"] == "2", out


def test_a_caller_as_confined_as_the_server_is_served(root_runner, server):
    p, via = launchserver.run(root_runner, PROBE)
    assert p.returncode == 0 and via, p
    _strict(p.stdout)


@pytest.mark.parametrize("caller", sorted(CALLERS))
def test_a_differently_confined_caller_gets_the_ordinary_path(root_runner, server, caller):
    served, via = launchserver.run(root_runner, PROBE)
    assert via, served
    p, via = launchserver.run(root_runner, PROBE, prefix=CALLERS[caller])
    assert p.returncode == 0 and not via, p                # the ordinary path, no error
    assert p.stderr == "", p.stderr
    assert p.stdout == served.stdout                       # strict's sandbox all the same
    _strict(p.stdout)


def test_a_rootless_caller_with_no_new_privs_gets_the_ordinary_path(user_runner, own_state_dir):
    launchserver.run(user_runner, ["/bin/true"])
    s = launchserver.Server(user_runner)
    try:
        served, via = launchserver.run(user_runner, PROBE)
        assert served.returncode == 0 and via, served
        p, via = launchserver.run(user_runner, PROBE, prefix=["setpriv", "--no-new-privs"])
        assert p.returncode == 0 and not via, p
        # (rootless: a caller with no_new_privs maps only its own id, policies/subids.py — the
        # ordinary path's sandbox, whatever it is, is what it gets)
        _strict(p.stdout)
    finally:
        s.stop()


def test_a_caller_with_another_home_xdg_or_pysandbox_variable_gets_the_ordinary_path(root_runner, server):
    """The server looks the plan up and opens the audit session on the caller's behalf: only with
    the same values of what decides them (HOME, XDG_*, PYSANDBOX_*)."""
    for extra in ({"XDG_CACHE_HOME": "/nonexistent"}, {"PYSANDBOX_SYSLOG": "0"}, {"HOME": "/tmp"}):
        p, via = launchserver.run(root_runner, PROBE, env=extra)
        assert p.returncode == 0 and not via, (extra, p)
        _strict(p.stdout)
    p, via = launchserver.run(root_runner, PROBE, env={"SOMETHING_ELSE": "1"})
    assert p.returncode == 0 and via, p


def test_a_server_whose_code_changed_since_it_started_serves_nobody(root_runner, server):
    """An upgrade or an edit of the installation under a running server: its modules in memory are
    not the ones on disk any more, so the sandbox could differ from the CLI's own: not here."""
    import os
    from sandbox import runout
    st = os.stat(runout.__file__)
    os.utime(runout.__file__, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        p, via = launchserver.run(root_runner, PROBE)
        assert p.returncode == 0 and not via, p
    finally:
        os.utime(runout.__file__, ns=(st.st_atime_ns, st.st_mtime_ns))
    p, via = launchserver.run(root_runner, PROBE)
    assert p.returncode == 0 and via, p


def test_why_not_here_is_said_when_asked(root_runner, server):
    """PYSANDBOX_SERVER_DEBUG=1 (not compared with the server's): the reason on stderr."""
    p, via = launchserver.run(root_runner, PROBE, prefix=CALLERS["other_nice"], env={"PYSANDBOX_SERVER_DEBUG": "1"})
    assert p.returncode == 0 and not via and "launch server: not here: the peer's nice differs" in p.stderr, p
    p, via = launchserver.run(root_runner, PROBE, env={"PYSANDBOX_SERVER_DEBUG": "1"})
    assert p.returncode == 0 and via and p.stderr == "", p
