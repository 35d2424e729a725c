"""Shared fixtures: run the real `pysandbox` CLI as root and as an unprivileged user.

Nothing here mocks the kernel: every sandbox is real. The unprivileged user
(`pysbx-test`, created once if missing, with a home directory) exercises the rootless path.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PYSANDBOX = str(VENV_BIN / "pysandbox")
TEST_USER = "pysbx-test"
HOST_PYTHON = "/usr/bin/python3"


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def __repr__(self):
        return f"Run(rc={self.returncode}, stdout={self.stdout[-800:]!r}, stderr={self.stderr[-800:]!r})"


def ensure_test_user() -> pwd.struct_passwd:
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
        if self.user:
            env["USER"] = self.user
        if extra:
            env.update(extra)
        return env

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
def tmp_profile(shared_tmp):
    """Write a profile file readable by the unprivileged user too."""
    def write(text: str, name: str = "p.yaml") -> str:
        p = shared_tmp / name
        p.write_text(text)
        os.chmod(p, 0o644)
        return str(p)
    return write
