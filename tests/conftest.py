"""Shared fixtures of both tiers (tests/unit/, tests/system/ with tests/security/ and tests/faults/):
run the real `pysandbox` CLI as root and as an unprivileged user, and a state directory per test.

Nothing here mocks the kernel: every sandbox is real. The unprivileged user
(`pysbx-test`, created once if missing, with a home directory) exercises the rootless path.

State: every test runs with a PYSANDBOX_STATE_DIR of its own (`own_state_dir`, autouse; the one
resolver is audit/paths.py): sandboxes, images, volumes, networks and the default audit log of a
test never meet another test's, /var/lib/pysandbox or the shared audit log. Root's directory is in
os.environ (the API, `sys.executable -m ...` children) and in Runner(None)'s environment; the
unprivileged runner gets one of its own (owned by it, as audit/paths.py requires); a command run
with an environment of its own takes `state_env(rootless)`. Fixtures of a wider scope see a
directory of that scope (session, module); a module in `testns` uses testns's directory.
"""
from __future__ import annotations

import errno
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# the interpreter running pytest and the entry point installed beside it (never a path in the work
# tree: the tests run against whatever `pip install` put there; missing, the tests that use it fail)
VENV_BIN = Path(sys.executable).parent
PYSANDBOX = str(VENV_BIN / "pysandbox")
PYSANDBOX_PY = str(VENV_BIN / "pysandbox-py")   # the Python CLI (PYSANDBOX: its C front end, sandbox/cli/front.c)
PYTHON = sys.executable
TEST_USER = "pysbx-test"
HOST_PYTHON = "/usr/bin/python3"


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def __repr__(self):
        return f"Run(rc={self.returncode}, stdout={self.stdout[-800:]!r}, stderr={self.stderr[-800:]!r})"


class _HostLock:
    """Serialises the set-up of host-wide test objects (the test user, its delegated cgroups)
    between pytest processes: `make test` runs two workers (pytest-xdist) at once."""

    def __enter__(self):
        import fcntl
        self.fd = os.open("/tmp/pysbx-test-setup.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        os.close(self.fd)


def ensure_test_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        with _HostLock():
            try:
                return pwd.getpwnam(TEST_USER)
            except KeyError:
                subprocess.run(["useradd", "-m", "-s", "/bin/sh", TEST_USER], check=True)
                return pwd.getpwnam(TEST_USER)


class Runner:
    """Runs `pysandbox ARGS` as root (user=None) or as the unprivileged test user."""

    def __init__(self, user: str | None):
        self.user = user
        self.rootless = user is not None
        if user:
            pw = ensure_test_user()
            self.uid, self.gid, self.home = pw.pw_uid, pw.pw_gid, pw.pw_dir
        else:
            self.uid, self.gid, self.home = 0, 0, "/root"

    def env(self, extra=None):
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "HOME": self.home}
        sd = _STATE.get("user" if self.user else "root")
        if sd:
            env[STATE_ENV] = sd
        if self.user:
            env["USER"] = self.user
        if extra:
            env.update(extra)
        return {k: v for k, v in env.items() if v is not None}     # (None: unset, e.g. the state dir)

    def __call__(self, *args, input=None, timeout=60, env=None, cwd=None, check_no_traceback=True) -> Run:
        cmd = [PYSANDBOX, *args]
        kw = {}
        if self.user:
            kw = dict(user=self.uid, group=self.gid, extra_groups=[])
            _ensure_delegation(self.uid, self.gid)
        p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                           env=self.env(env), cwd=cwd or ("/tmp" if self.user else str(REPO)), **kw)
        r = Run(p.returncode, p.stdout, p.stderr)
        if check_no_traceback:
            # pysandbox's own code must never show a traceback (the sandboxed program may)
            assert not ("Traceback" in p.stderr and str(REPO) in p.stderr), r
        return r

    def sh(self, script: str, *opts, profile="strict", **kw) -> Run:
        return self(*("run", "--profile", profile, *opts, "--", "/bin/sh", "-c", script), **kw)

    def py(self, code: str, *opts, profile="strict", **kw) -> Run:
        return self(*("run", "--profile", profile, *opts, "--", HOST_PYTHON, "-c", code), **kw)


# ------------------------------------------------------------------------------------------------
# two workers at once (`make test`: pytest -n 2 --dist loadgroup -m "not exclusive", then the
# `exclusive` tests alone). A module runs whole on one worker (its module fixtures once). Modules
# that use the same host-wide objects run on one worker, one after another: the network family
# (bridges, veths, nft tables, published host ports, pasta/slirp4netns, egress servers) and the
# podman family (podman's image store, the registry), the plancache family (root's plan cache, which
# a launch server needs hits of, and a test shadows strict in for a while). `exclusive` modules change what every other
# test reads (/etc/subuid and /etc/subgid, the test user's delegated cgroups, another user's
# delegation) or measure rates and ratios that a second worker's load would disturb.

_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")

_FAMILIES = {
    "network": ("system/test_cli_docker_paths.py", "system/test_egress_domains.py",
                "system/test_egress_domains_faults.py", "system/test_egress_relay.py",
                "system/test_egress_upstream_bounds.py",
                "system/test_egress_secrets.py", "system/test_network.py", "system/test_network_e2e.py",
                "system/test_network_ipv6.py", "system/test_network_rootless.py",
                "security/test_image_symlink_escape.py", "security/test_name_trailing_newline.py",
                "security/test_net_antispoof.py", "security/test_net_hosts_readonly.py",
                "security/test_net_usermode_loopback.py", "security/test_secret_helper_environ.py",
                "security/test_secret_source_exposed.py", "faults/test_network_leftovers_after_sigkill.py"),
    "podman": ("system/test_bind_as_caller.py", "system/test_container_interface.py",
               "system/test_export_engines.py", "system/test_image_save.py", "system/test_oci_runtime.py",
               "system/test_oci_runtime_podman.py", "system/test_oci_runtime_front.py",
               "system/test_registry.py", "security/test_registry_bounds.py",
               "security/test_registry_digest_mismatch.py"),
    # root's plan cache (/var/cache/pysandbox/plans, one for every root run): the trust tests make it
    # untrusted for a while (mode changes), and a launch server serves cache hits only
    "plancache": ("security/test_plan_cache_trust.py", "system/test_plancache_resolution.py",
                  "security/test_launch_server_peer_not_here.py", "security/test_launch_server_peer_socket.py",
                  "system/test_cli_front.py", "system/test_fast_path_equivalence.py",
                  "system/test_launch_server_cli.py"),
}
_EXCLUSIVE = ("system/test_rootless_ranges.py", "system/test_rootless_subordinate.py",
              "security/test_profile_idmap_not_owned.py", "security/test_limits_enforced.py",
              "security/test_cgroup_delegate_limits.py", "system/test_doctor.py", "system/test_cgroups.py",
              "security/test_spare_maps_after_ranges_withdrawn.py")
_FAMILY_OF = {m: f for f, mods in _FAMILIES.items() for m in mods}


def pytest_configure(config):
    config.addinivalue_line("markers", "exclusive: runs alone, after the two workers (see tests/conftest.py)")
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        config._pysbx_parents_before = _delegated_parents()        # the controller of -n N
    if not hasattr(config, "workerinput"):
        config._pysbx_tmp_before = _tmp_leftovers()                # the controller, or the one process


def pytest_sessionstart(session):
    session.config._pysbx_session = session


def pytest_unconfigure(config):
    """The controller removes the delegated cgroup parents its workers made (never one that was
    there before the run: an administrator's), then checks that nothing of the session is left in
    /tmp or /var/tmp."""
    before = getattr(config, "_pysbx_parents_before", None)
    if before is not None:
        for d in _delegated_parents() - before:
            _remove_cgroup_tree(d)
    _check_tmp_leftovers(config)


# ------------------------------------------------------------------------------------------------
# nothing left behind in /tmp and /var/tmp: every pysbx-* name that appeared during the session
# must be gone at its end. Checked by the controller (or the one pytest process) in
# pytest_unconfigure: after the workers are done and torn down (xdist ends them in its
# pytest_sessionfinish), after the session's fixtures are finalized. Only names that were not
# there when the session started count (another session running at the same time on the same
# machine would show here too: CI runs one). A leftover is printed and fails the run (exit 1).

TMP_DIRS = ("/tmp", "/var/tmp")
TMP_KEPT = ("pysbx-test-setup.lock",)        # _HostLock's file: kept on purpose
TMP_GRACE = 3.0                              # seconds a leftover may take to go (a process ending)
# this session's id, inherited by its xdist workers: in the names of the state directories it makes,
# so that another session's (same machine, same time) are told apart
SESSION = os.environ.setdefault("PYSBX_TEST_SESSION", os.urandom(3).hex())


def _tmp_leftovers() -> set:
    out = set()
    for d in TMP_DIRS:
        try:
            out |= {os.path.join(d, n) for n in os.listdir(d) if n.startswith("pysbx-") and n not in TMP_KEPT
                    and (not n.startswith("pysbx-state-") or f"-{SESSION}-" in n)}
        except OSError:
            pass
    return out


def _describe_leftover(p: str) -> str:
    try:
        st = os.lstat(p)
        what = ("empty directory" if not os.listdir(p) else f"directory of {len(os.listdir(p))} entries") \
            if os.path.isdir(p) and not os.path.islink(p) else "file"
        mounted = " (mounts below it)" if os.path.isdir(p) and _mounts_below(p) else ""
        return f"{p}: {what}{mounted}, uid {st.st_uid}, mode {st.st_mode & 0o7777:04o}"
    except OSError as e:
        return f"{p}: {e.strerror}"


def _check_tmp_leftovers(config) -> None:
    before = getattr(config, "_pysbx_tmp_before", None)
    if before is None:
        return
    import time
    deadline = time.monotonic() + TMP_GRACE
    if os.environ.get("PYSBX_TMP_CHECK") == "0":   # (a developer's machine shared by sessions at once)
        return
    while (left := sorted(_tmp_leftovers() - before)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not left:
        return
    lines = [f"pysbx leftovers: {len(left)} name(s) made during this test session are still in "
             f"{' and '.join(TMP_DIRS)} (tests/conftest.py, _check_tmp_leftovers):"]
    lines += [f"  {_describe_leftover(p)}" for p in left]
    sys.stderr.write("\n" + "\n".join(lines) + "\n")
    session = getattr(config, "_pysbx_session", None)
    if session is not None and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_collection_modifyitems(config, items):
    for item in items:
        mod = item.nodeid.split("::")[0].removeprefix("tests/")
        if mod in _EXCLUSIVE:
            item.add_marker(pytest.mark.exclusive)
        item.add_marker(pytest.mark.xdist_group(_FAMILY_OF.get(mod, mod)))


def _delegated_parents() -> set:
    try:
        uid = pwd.getpwnam(TEST_USER).pw_uid
    except KeyError:
        return set()
    from sandbox.cgroups.placement import delegated_parent
    return {d for c in DELEGATED_CONTROLLERS for d in [os.path.join(CGROUP_V1, c, delegated_parent(uid))]
            if os.path.isdir(d)}


class SubidBackup:
    """/etc/subuid and /etc/subgid as they were (bytes, mode, owner), put back exactly by restore()
    (tests that withdraw or add subordinate ranges: they are `exclusive`)."""
    FILES = ("/etc/subuid", "/etc/subgid")

    def __init__(self):
        self.saved = {p: (Path(p).read_bytes(), os.stat(p)) for p in self.FILES}

    def restore(self):
        for p, (data, st) in self.saved.items():
            tmp = p + ".pysbx-idm"
            with open(tmp, "wb") as f:
                f.write(data)
            os.chmod(tmp, st.st_mode & 0o7777)
            os.chown(tmp, st.st_uid, st.st_gid)
            os.replace(tmp, p)


CGROUP_V1 = "/sys/fs/cgroup"
DELEGATED_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "cpuset", "blkio", "freezer")


def _delegate_cgroups(uid: int, gid: int) -> list[str]:
    """What an administrator does for a rootless user on cgroup v1: `pysandbox cgroups delegate USER`
    (a subtree per hierarchy, `<hierarchy>/pysandbox-user-<uid>/sandboxes`, owned by the user, below a
    root-owned parent with finite limits). Returns the parents this call created (removed again at
    the end of the session)."""
    from sandbox.cgroups.delegate import delegate
    from sandbox.cgroups.placement import delegated_parent
    made = [os.path.join(CGROUP_V1, c, delegated_parent(uid)) for c in DELEGATED_CONTROLLERS
            if os.path.isdir(os.path.join(CGROUP_V1, c)) and not os.path.islink(os.path.join(CGROUP_V1, c))]
    with _HostLock():
        made = [d for d in made if not os.path.isdir(d)]
        delegate(uid, gid)
    return made


def _remove_cgroup_tree(d: str) -> None:
    for dirpath, dirnames, _ in sorted(os.walk(d), key=lambda t: -t[0].count("/")):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


_DELEGATED: dict = {}          # uid -> directories this session created (removed at its end)


def _ensure_delegation(uid: int, gid: int) -> None:
    """Idempotent: re-create a delegated directory if a test removed it meanwhile."""
    if uid in _DELEGATED:
        from sandbox.cgroups.placement import delegated_subtree
        if all(os.path.isdir(os.path.join(CGROUP_V1, c, delegated_subtree(uid))) for c in DELEGATED_CONTROLLERS
               if os.path.isdir(os.path.join(CGROUP_V1, c)) and not os.path.islink(os.path.join(CGROUP_V1, c))):
            return                          # (delegating again would reset limits a test has set)
        _DELEGATED[uid].extend(d for d in _delegate_cgroups(uid, gid) if d not in _DELEGATED[uid])


@pytest.fixture(scope="session")
def delegated_cgroups():
    """Delegate cgroup subtrees to the unprivileged test user for the session (cleaned up after)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    pw = ensure_test_user()
    _DELEGATED[pw.pw_uid] = _delegate_cgroups(pw.pw_uid, pw.pw_gid)
    from sandbox.cgroups.placement import delegated_subtree
    yield [os.path.join(CGROUP_V1, c, delegated_subtree(pw.pw_uid)) for c in DELEGATED_CONTROLLERS]
    if _XDIST_WORKER:
        return                              # the other worker may still use them: pytest_unconfigure
    for d in _DELEGATED.pop(pw.pw_uid, []):
        _remove_cgroup_tree(d)


@pytest.fixture(scope="session")
def root_runner():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    return Runner(None)


@pytest.fixture(scope="session")
def user_runner(delegated_cgroups):
    if os.geteuid() != 0:
        pytest.skip("needs root to create the unprivileged test user")
    return Runner(TEST_USER)


@pytest.fixture(params=["root", "rootless"], scope="session")
def runner(request):
    """Every demonstration runs twice: as root and as an unprivileged user (with the cgroup
    subtrees an administrator would delegate to it, since the shipped profiles set limits)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to create the unprivileged test user)")
    if request.param == "root":
        return Runner(None)
    request.getfixturevalue("delegated_cgroups")
    return Runner(TEST_USER)


@pytest.fixture
def shared_tmp():
    """A temporary directory the unprivileged user can read too (pytest's tmp_path is root-only)."""
    import tempfile
    d = tempfile.mkdtemp(prefix="pysbx-test-", dir="/tmp")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def img(runner, shared_tmp):
    """(runner, state dir, work dir): busybox:test (tests/imagebuild.py) imported by the runner's
    user into a store of its own; imagebuild.cli/sh run commands against it."""
    import imagebuild as ib
    os.chown(shared_tmp, runner.uid, runner.gid)
    state, work = shared_tmp / "state", shared_tmp / "work"
    work.mkdir()
    ib.write_docker_save(str(work / "save.tar"))
    for p in (work, work / "save.tar"):
        os.chown(p, runner.uid, runner.gid)
    env = (runner, str(state), str(work))
    r = ib.cli(env, "image", "import", str(work / "save.tar"))
    assert r.returncode == 0, r
    return env


@pytest.fixture
def tmp_profile(shared_tmp):
    """Write a profile file readable by the unprivileged user too."""
    def write(text: str, name: str = "p.yaml") -> str:
        p = shared_tmp / name
        p.write_text(text)
        os.chmod(p, 0o644)
        return str(p)
    return write


# ------------------------------------------------------------------------------------------------
# a state directory per test

STATE_ENV = "PYSANDBOX_STATE_DIR"
_STATE: dict = {}              # "root"/"user" -> the state directory of the running test (or scope)


def _new_state_dirs(tag: str) -> dict:
    """/tmp/pysbx-state-TAG-XXXX (0711, root's) with root/ (made by pysandbox itself, 0711) and, as
    root, user/ owned by the test user. Both reachable by a sandbox's mapped root (0711 parents)."""
    base = tempfile.mkdtemp(prefix=f"pysbx-state-{tag}-{SESSION}-", dir="/tmp")
    try:                                   # (a failure here used to leave BASE behind, empty)
        os.chmod(base, 0o711)
        dirs = {"base": base, "root": os.path.join(base, "root")}
        if os.geteuid() == 0:
            pw = ensure_test_user()
            user = os.path.join(base, "user")
            os.mkdir(user, 0o711)
            os.chown(user, pw.pw_uid, pw.pw_gid)
            dirs["user"] = user
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    return dirs


def _mounts_below(d: str) -> list[str]:
    d = d.rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [ln.split()[4].encode().decode("unicode_escape") for ln in f]
    return sorted((p for p in points if p.startswith(d)), key=len, reverse=True)


def _remove_state_dirs(dirs: dict) -> None:
    """What a test left running is removed the way a user would (`pysandbox rm -f`), mounts below the
    directory are detached, then the directory goes. With a mount left, the directory stays (rmtree
    must never walk into a mounted host directory)."""
    for who in ("root", "user"):
        sd = dirs.get(who)
        # named or detached sandboxes (sandboxes/) and kept containers (containers/) left: rm -f
        if not sd or not any(os.path.isdir(p) and os.listdir(p) for p in (os.path.join(sd, "sandboxes"),
                                                                          os.path.join(sd, "containers"))):
            continue
        try:                               # (a command that times out must not keep the rest from running)
            run = Runner(TEST_USER if who == "user" else None)
            names = run("ps", "-a", "-q", env={STATE_ENV: sd}, timeout=60, check_no_traceback=False).stdout.split()
            if names:
                run("rm", "-f", *names, env={STATE_ENV: sd}, timeout=120, check_no_traceback=False)
        except (OSError, subprocess.SubprocessError) as e:
            sys.stderr.write(f"conftest: removing what was left running in {sd}: {e}\n")
    for m in _mounts_below(dirs["base"]):
        subprocess.run(["umount", "-l", m], capture_output=True)
    if not _mounts_below(dirs["base"]):
        shutil.rmtree(dirs["base"], ignore_errors=True)


def _launch_server():
    """This process's API launch servers (sandbox/server/client.py: one per state directory), if
    any was started."""
    z = sys.modules.get("sandbox.server.client")
    return dict(z.Client.servers) if z else {}


def _end_launch_server_started_since(before) -> None:
    """The API's launch server is per process and state directory: one started during a scope is
    ended with it (it kills what still runs), so that no server outlives its test's directory."""
    z = sys.modules.get("sandbox.server.client")
    for where, c in list(_launch_server().items()):
        if before.get(where) is not c:
            c.close()
            if z.Client.servers.get(where) is c:
                del z.Client.servers[where]


def _state_scope(tag: str):
    saved_env, saved = os.environ.get(STATE_ENV), dict(_STATE)
    server = _launch_server()
    dirs = _new_state_dirs(tag)
    try:
        os.environ[STATE_ENV] = dirs["root"]
        _STATE.clear()
        _STATE.update({k: v for k, v in dirs.items() if k in ("root", "user")})
        yield dirs
    finally:
        try:
            _end_launch_server_started_since(server)
        finally:                           # (the directories go whatever happened above)
            if saved_env is None:
                os.environ.pop(STATE_ENV, None)
            else:
                os.environ[STATE_ENV] = saved_env
            _STATE.clear()
            _STATE.update(saved)
            _remove_state_dirs(dirs)


@pytest.fixture(scope="session", autouse=True)
def _session_state_dir():
    """Session fixtures (delegated cgroups, wheels) see a session-wide directory."""
    yield from _state_scope("session")


@pytest.fixture(scope="module", autouse=True)
def _module_state_dir(_session_state_dir):
    """Module fixtures (an API object, a network namespace) see a module-wide directory."""
    yield from _state_scope("module")


_PINNED: list = []             # a module fixture's own state directory its tests share (testns)


@pytest.fixture(autouse=True)
def own_state_dir(_module_state_dir):
    """Each test's own state directories: {"base": ..., "root": ..., "user": ...} (see the module's
    docstring); removed after the test. In a module running in `testns` (a network namespace with
    a state directory of its own, where its fixtures create networks) the tests use that one."""
    if _PINNED:
        yield {"root": _PINNED[-1]}
        return
    yield from _state_scope("test")


# ------------------------------------------------------------------------------------------------
# a sandbox's processes, found by what pysandbox reports (never by scanning the host's /proc)

class SandboxProcs:
    """PID 1 of a sandbox (host pid from the `sandbox_start` event of its audit log) held by a pidfd,
    and the sandbox's cgroups. When PID 1 of a PID namespace has exited, the kernel has killed and
    reaped every other process of that namespace first; a cgroup that is gone or lists no process
    holds none. `gone()` waits on the pidfd (an event, no sleeping) and then checks the cgroups."""

    def __init__(self, event: dict):
        self.pid = event["pid"]
        self.cgroups = list(event.get("cgroups") or ())
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self.pidfd = None                     # already gone

    @classmethod
    def from_log(cls, log, timeout: float = 30) -> "SandboxProcs":
        """From the first `sandbox_start` of LOG (a test's own state directory's audit.jsonl: it
        is written before the program starts). Polls for the line with a deadline: the log is a
        file written by another process, there is no event to wait on."""
        import json
        import time
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(log) as f:
                    for line in f:
                        ev = json.loads(line)
                        if ev.get("type") == "sandbox_start":
                            return cls(ev)
            except FileNotFoundError:
                pass
            assert time.monotonic() < deadline, f"no sandbox_start in {log}"
            time.sleep(0.02)

    def gone(self, timeout: float = 10) -> bool:
        import select
        if self.pidfd is not None:
            p = select.poll()
            p.register(self.pidfd, select.POLLIN)
            if not p.poll(int(timeout * 1000)):
                return False
        for d in self.cgroups:
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    if f.read().split():
                        return False
            except FileNotFoundError:
                pass                              # removed: an rmdir succeeds only on an empty cgroup
            except OSError as e:                  # ENODEV: removed between the open and the read
                if e.errno != errno.ENODEV:
                    raise
        return True

    def kill(self) -> None:
        import signal
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def single_id(runner) -> bool:
    """Whether RUNNER's sandboxes map one id only: rootless without 65536 subordinate uids and gids
    (/etc/subuid, /etc/subgid). Else a rootless `auto` maps the caller's subordinate range, and ids
    other than root exist inside as they do for root (docs/profile-format.md)."""
    if not runner.rootless:
        return False
    from policies import subids
    return not all(subids.first_ids(subids.ranges(w, runner.uid)) for w in ("uid", "gid"))


def state_env(rootless: bool) -> dict:
    """For a command run with an environment of its own (as root, or as the test user): the
    running test's state directory for that caller."""
    return {STATE_ENV: _STATE["user" if rootless else "root"]}


def audit_log(runner) -> str:
    """The default audit log of RUNNER in the running test's state directory."""
    return os.path.join(_STATE["user" if runner.user else "root"], "audit.jsonl")


# ------------------------------------------------------------------------------------------------
# a network namespace of its own (tests that touch interfaces, routes or nftables)

def _ns_ino(path="/proc/self/ns/net"):
    return os.stat(path).st_ino


@pytest.fixture(scope="module")
def testns():
    """Move this pytest process into a fresh network namespace for the module; private state dir.
    (sandbox imports are here, not at the top: the unit tier collects this file too.)"""
    from sandbox import _sys
    from sandbox.network import loopback
    saved = os.open("/proc/self/ns/net", os.O_RDONLY)
    before = _ns_ino()
    _sys.unshare(_sys.CLONE_NEWNET)
    assert _ns_ino() != before, "refusing to run network tests outside a private netns"
    loopback.bring_up_loopback()
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:      # this netns's own sysctl
        f.write("1")
    state = tempfile.mkdtemp(prefix="pysbx-nettest-", dir="/tmp")
    os.chmod(state, 0o711)
    old, saved_state = os.environ.get("PYSANDBOX_STATE_DIR"), dict(_STATE)
    os.environ["PYSANDBOX_STATE_DIR"] = state
    _STATE["root"] = state
    _PINNED.append(state)
    try:
        yield state
    finally:
        _PINNED.pop()
        _STATE.clear()
        _STATE.update(saved_state)
        if old is None:
            os.environ.pop("PYSANDBOX_STATE_DIR", None)
        else:
            os.environ["PYSANDBOX_STATE_DIR"] = old
        _sys.setns(saved, _sys.CLONE_NEWNET)
        os.close(saved)
        assert _ns_ino() == before
        subprocess.run(["rm", "-rf", state], check=False)


def links():
    import socket
    return sorted(n for _, n in socket.if_nameindex())


def host_rules(family="ip"):
    from sandbox.network import nft
    return nft.host_rules(family)
