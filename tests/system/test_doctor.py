"""`pysandbox doctor` names why a sandbox cannot start, and the remedy (issue 19).

Each reason is produced for real where this machine can, as root and as the unprivileged user:
  * user.max_user_namespaces=0: set to 0 inside a private user namespace (`unshare -U -r`; the
    limit is per user namespace, so the host's value is untouched - checked), where doctor runs;
  * a container's seccomp filter: doctor runs under a real seccomp filter (libseccomp, as Docker's
    default profile does) that denies unshare/clone with CLONE_NEWUSER (EPERM) and clone3 (ENOSYS);
  * a namespace created but unusable - what Ubuntu's AppArmor restriction
    (kernel.apparmor_restrict_unprivileged_userns=1) does to an unconfined program: SIMULATED with
    a seccomp filter that makes mount(2) fail with EACCES (this kernel has no AppArmor);
  * no subordinate ids, no cgroup delegation: as `nobody`, who has neither.
The other side each time: without the obstacle the same doctor reports the namespace available.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import PYSANDBOX, TEST_USER, ensure_test_user

PY = sys.executable

SECCOMP_WRAPPER = textwrap.dedent('''
    import errno, os, sys
    import pyseccomp as sc
    NEWUSER = 0x10000000
    f = sc.SyscallFilter(sc.ALLOW)
    if sys.argv[1] == "deny-userns":
        for name in ("unshare", "clone"):
            f.add_rule(sc.ERRNO(errno.EPERM), name, sc.Arg(0, sc.MASKED_EQ, NEWUSER, NEWUSER))
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    else:                                   # "deny-mount": a namespace without use
        f.add_rule(sc.ERRNO(errno.EACCES), "mount")
    f.load()
    os.execv(sys.argv[2], sys.argv[2:])
''')


@pytest.fixture(params=["root", "rootless"])
def who(request):
    if os.geteuid() != 0:
        pytest.skip("needs root (to create the unprivileged test user)")
    if request.param == "root":
        return {}
    pw = ensure_test_user()
    return dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])


def _doctor(argv_prefix=(), ident=None, user_env=TEST_USER) -> dict:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}
    p = subprocess.run([*argv_prefix, PYSANDBOX, "doctor", "--json"], capture_output=True, text=True,
                       cwd="/tmp", env=env, timeout=120, **(ident or {}))
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    return {r["control"]: r for r in json.loads(p.stdout)}


@pytest.fixture
def wrapper(shared_tmp):
    w = shared_tmp / "seccomp_wrapper.py"
    w.write_text(SECCOMP_WRAPPER)
    os.chmod(w, 0o644)
    return str(w)


def test_userns_available_is_reported(who):
    rows = _doctor(ident=who)
    assert rows["user namespace"]["ok"] and rows["user namespace"]["detail"] == "available"


def test_max_user_namespaces_zero(who):
    host = Path("/proc/sys/user/max_user_namespaces").read_text()
    # in a private user namespace (its own per-namespace limit), set the limit to 0, then doctor
    script = f"echo 0 > /proc/sys/user/max_user_namespaces && exec {PYSANDBOX} doctor --json"
    p = subprocess.run(["unshare", "-U", "-r", "/bin/sh", "-c", script], capture_output=True, text=True,
                       cwd="/tmp", timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"}, **who)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    row = {r["control"]: r for r in json.loads(p.stdout)}["user namespace"]
    assert not row["ok"]
    assert "No space left on device" in row["detail"]
    assert "user.max_user_namespaces is 0" in row["detail"]
    assert "sysctl -w user.max_user_namespaces=" in row["detail"]          # the remedy
    assert Path("/proc/sys/user/max_user_namespaces").read_text() == host   # host untouched


def test_container_seccomp_filter_denies_userns(who, wrapper):
    row = _doctor([PY, wrapper, "deny-userns"], ident=who)["user namespace"]
    assert not row["ok"]
    assert "Operation not permitted" in row["detail"]
    assert "a seccomp filter on this process denies creating namespaces" in row["detail"]
    assert "seccomp=unconfined" in row["detail"]                             # the remedy


def test_namespace_created_but_unusable(who, wrapper):
    """What AppArmor's restriction does to an unconfined program - SIMULATED (no AppArmor here):
    the namespace is created, but mount(2) in it fails (EACCES)."""
    row = _doctor([PY, wrapper, "deny-mount"], ident=who)["user namespace"]
    assert not row["ok"]
    assert row["detail"].startswith("created, but unusable (mount: Permission denied)"), row


def test_apparmor_remedy_names_the_shipped_profile():
    """The AppArmor remedy (what doctor adds when kernel.apparmor_restrict_unprivileged_userns=1;
    that sysctl does not exist on this kernel, so its text is checked here) points at a profile
    that is shipped and grants user namespaces to the interpreter it names."""
    from sandbox import doctor
    text = doctor.apparmor_remedy()
    prof = Path(doctor.apparmor_profile())
    assert str(prof) in text and os.path.realpath(sys.executable) in text and "docs/install.md" in text
    body = prof.read_text()
    assert "userns," in body and "abi <abi/4.0>" in body and "flags=(unconfined)" in body


def test_no_subordinate_ids_no_cgroup_delegation(delegated_cgroups):
    """nobody has neither subordinate ids nor a delegated cgroup: both named, with the command
    that fixes them; the test user (who has both) gets no such complaint."""
    nobody = _doctor(ident=dict(user=65534, group=65534, extra_groups=[]))
    assert not nobody["subordinate ids"]["ok"]
    assert "usermod --add-subuids" in nobody["subordinate ids"]["detail"]
    assert not nobody["cgroup delegation"]["ok"]
    assert "pysandbox cgroups delegate nobody" in nobody["cgroup delegation"]["detail"]
    pw = ensure_test_user()
    user = _doctor(ident=dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[]))
    assert "cgroup delegation" not in user
    root = _doctor()
    assert root["subordinate ids"]["ok"] and "cgroup delegation" not in root
