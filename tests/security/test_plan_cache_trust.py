"""The plan cache (sandbox/plancache.py) on the real `pysandbox run` path: nothing proved it.

A cache entry is a compiled plan plus its seccomp program, loaded by `run` without compiling: a
way around the policy if anyone but the caller can write it. Proven here with a *poisoned* entry -
the same entry with seccomp switched off (plan.seccomp.enabled = False, no BPF), observed by the
program as `Seccomp: 0` in /proc/self/status instead of `2`:
  * control: a poisoned entry that is trusted (the caller's, mode 0600) IS used - so each refusal
    below is the trust check at work, not a miss;
  * group- or world-writable entry, entry owned by another user, entry that is a symlink, cache
    directory group/world-writable: ignored (the policy is compiled again: Seccomp: 2);
  * invalidation: an edit of a parent profile in the `extends` chain, of an imported seccomp JSON,
    of a `--security-opt seccomp=FILE`, a profile of the same name appearing earlier in the search
    path, another PYSANDBOX_PROFILE_PATH, and a change of the policy code (simulated: the entry's
    recorded signature of policies/compiler.py altered, since the test must not edit the code
    other tests run) - each makes the entry stale.
Root's cache directory (/var/cache/pysandbox/plans) is shared with every concurrent run on this
machine, so the directory-permission case runs for the unprivileged user only (its own
XDG_CACHE_HOME); the code path (`_trusted(lstat(dir))`) is the same for root.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import pwd
import shutil
import stat
from pathlib import Path

import pytest

from conftest import TEST_USER

STATUS = ("/bin/grep", "^Seccomp:", "/proc/self/status")


def _cache_dir(runner, env) -> Path:
    if not runner.rootless:
        return Path("/var/cache/pysandbox/plans")
    return Path(env["XDG_CACHE_HOME"]) / "pysandbox" / "plans"


def _env(runner, shared_tmp, **extra):
    env = dict(extra)
    if runner.rootless:
        d = shared_tmp / "xdg-cache"
        d.mkdir(exist_ok=True)
        os.chown(d, runner.uid, runner.gid)
        os.chmod(d, 0o700)
        env["XDG_CACHE_HOME"] = str(d)
    return env


def _entry(cache: Path, token: str) -> Path:
    hits = [p for p in cache.glob("*.pickle") if token.encode() in p.read_bytes()]
    assert len(hits) == 1, (token, hits)
    return hits[0]


def _run(runner, token, env, *opts, profile="strict", argv=STATUS):
    r = runner("run", "--profile", profile, "--hostname", token, *opts, "--", *argv, env=env)
    assert r.returncode == 0, r
    return r.stdout.strip()


def _poison(entry: Path, owner=None, mode=0o600, **plan_changes) -> None:
    st = entry.stat()
    data = pickle.loads(entry.read_bytes())
    plan = data["plan"]
    if plan_changes:
        plan = dataclasses.replace(plan, process=dataclasses.replace(plan.process, **plan_changes))
    else:
        plan = dataclasses.replace(plan, seccomp=dataclasses.replace(plan.seccomp, enabled=False))
        data["bpf"] = None
    data["plan"] = plan
    tmp = entry.with_name(".poison")
    tmp.write_bytes(pickle.dumps(data))
    uid, gid = owner if owner is not None else (st.st_uid, st.st_gid)
    os.chown(tmp, uid, gid)
    os.chmod(tmp, mode)
    os.replace(tmp, entry)


def _someone_else(runner):
    if runner.rootless:
        return (0, 0)
    pw = pwd.getpwnam(TEST_USER)
    return (pw.pw_uid, pw.pw_gid)


def test_untrusted_entries_are_never_used(runner, shared_tmp):
    env = _env(runner, shared_tmp)
    token = f"pcache-{os.urandom(4).hex()}"
    assert _run(runner, token, env) == "Seccomp:\t2"         # compiled, stored
    entry = _entry(_cache_dir(runner, env), token)
    assert _run(runner, token, env) == "Seccomp:\t2"         # a hit of the honest entry
    # control: a trusted poisoned entry is used (the cache IS a way around the policy)
    _poison(entry)
    assert _run(runner, token, env) == "Seccomp:\t0"
    for case, kw in (("group-writable", dict(mode=0o620)), ("world-writable", dict(mode=0o602)),
                     ("another user's", dict(owner=_someone_else(runner)))):
        _poison(entry, **kw)
        assert _run(runner, token, env) == "Seccomp:\t2", case    # ignored: compiled again
        # ... and replaced by an honest entry of the caller's, which is used again
        st = entry.stat()
        assert st.st_uid == runner.uid and not st.st_mode & 0o022, case
        assert _run(runner, token, env) == "Seccomp:\t2", case
    # an entry that is a symlink to a poisoned file of the caller's: not followed
    _poison(entry)
    real = entry.with_name("real.pickle")
    os.replace(entry, real)
    os.symlink(real.name, entry)
    try:
        assert _run(runner, token, env) == "Seccomp:\t2"
    finally:
        real.unlink(missing_ok=True)


def test_untrusted_cache_directory_is_not_used(user_runner, shared_tmp):
    env = _env(user_runner, shared_tmp)
    token = f"pcache-{os.urandom(4).hex()}"
    assert _run(user_runner, token, env) == "Seccomp:\t2"
    cache = _cache_dir(user_runner, env)
    entry = _entry(cache, token)
    _poison(entry)
    assert _run(user_runner, token, env) == "Seccomp:\t0"     # control: trusted, used
    for mode in (0o770, 0o707):
        os.chmod(cache, mode)
        try:
            _poison(entry)
            assert _run(user_runner, token, env) == "Seccomp:\t2", oct(mode)
        finally:
            os.chmod(cache, 0o700)
    # the directory replaced by a symlink to a trusted directory holding the poisoned entry
    _poison(entry)
    moved = cache.with_name("plans-real")
    os.replace(cache, moved)
    os.symlink(moved.name, cache)
    assert _run(user_runner, token, env) == "Seccomp:\t2"


def _stale_after(runner, env, token, change, *opts, profile="strict"):
    """Prove a hit first (a trusted entry with a poisoned hostname is used), then `change()`
    must make it stale."""
    cache = _cache_dir(runner, env)
    first = _run(runner, token, env, *opts, profile=profile, argv=("/bin/hostname",))
    entry = _entry(cache, token)
    _poison(entry, hostname="poisoned")
    assert _run(runner, token, env, *opts, profile=profile, argv=("/bin/hostname",)) == "poisoned"
    change(entry)
    return first


def test_extends_chain_edit_invalidates(runner, shared_tmp, tmp_profile):
    env = _env(runner, shared_tmp)
    token = f"pcache-{os.urandom(4).hex()}"
    parent = tmp_profile("version: 1\nextends: strict\nprocess: {cwd: /}\n", "parent.yaml")
    child = tmp_profile("version: 1\nextends: parent.yaml\n", "child.yaml")

    def edit(_):
        Path(parent).write_text("version: 1\nextends: strict\nprocess: {cwd: /tmp}\n")
    _stale_after(runner, env, token, edit, profile=child)
    assert _run(runner, token, env, profile=child, argv=("/bin/pwd",)) == "/tmp"


def test_seccomp_json_edits_invalidate(runner, shared_tmp, tmp_profile):
    env = _env(runner, shared_tmp)
    allow_all = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}
    deny_uname = {"defaultAction": "SCMP_ACT_ALLOW",
                  "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
    js = shared_tmp / "sec.json"
    js.write_text(json.dumps(allow_all))
    os.chmod(js, 0o644)
    # imported by the profile
    p = tmp_profile("version: 1\nextends: strict\nseccomp:\n  import: sec.json\n", "imp.yaml")
    token = f"pcache-{os.urandom(4).hex()}"
    _stale_after(runner, env, token, lambda _: js.write_text(json.dumps(deny_uname)), profile=p)
    assert _run(runner, token, env, profile=p, argv=("/bin/hostname",)) == token     # recompiled
    # given as --security-opt seccomp=FILE
    js.write_text(json.dumps(allow_all))
    token = f"pcache-{os.urandom(4).hex()}"
    opt = ("--security-opt", f"seccomp={js}")
    _stale_after(runner, env, token, lambda _: js.write_text(json.dumps(deny_uname)), *opt)
    # recompiled with the edited file: its uname (hostname's) now fails with EPERM
    r = runner("run", "--profile", "strict", "--hostname", token, *opt, "--", "/bin/hostname", env=env)
    assert r.returncode != 0 and "poisoned" not in r.stdout and "not permitted" in r.stderr, r


def test_profile_name_resolution_changes_invalidate(runner, shared_tmp):
    a, b = shared_tmp / "a", shared_tmp / "b"
    for d in (a, b):
        d.mkdir()
        os.chmod(d, 0o755)
    name = f"pcache{os.urandom(3).hex()}"
    (b / f"{name}.yaml").write_text("version: 1\nextends: strict\nprocess: {cwd: /}\n")
    os.chmod(b / f"{name}.yaml", 0o644)
    env = _env(runner, shared_tmp, PYSANDBOX_PROFILE_PATH=f"{a}:{b}")
    token = f"pcache-{os.urandom(4).hex()}"

    def shadow(_):        # a profile of the same name appears earlier in the search path
        (a / f"{name}.yaml").write_text("version: 1\nextends: strict\nprocess: {cwd: /tmp}\n")
        os.chmod(a / f"{name}.yaml", 0o644)
    _stale_after(runner, env, token, shadow, profile=name)
    assert _run(runner, token, env, profile=name, argv=("/bin/pwd",)) == "/tmp"
    # another search path, same options: another key
    env2 = dict(env, PYSANDBOX_PROFILE_PATH=str(b))
    assert _run(runner, token, env2, profile=name, argv=("/bin/pwd",)) == "/"


def test_policy_code_change_invalidates(runner, shared_tmp):
    """Simulated: the entry records (mtime, size, inode) of each policy module; an entry whose
    record of policies/compiler.py differs from the file (as after an upgrade) is stale."""
    env = _env(runner, shared_tmp)
    token = f"pcache-{os.urandom(4).hex()}"

    def code_changed(entry):
        data = pickle.loads(entry.read_bytes())
        deps = [(p, (0, 0, 0) if p.endswith("policies/compiler.py") else sig) for p, sig in data["deps"]]
        assert deps != list(data["deps"])
        data["deps"] = tuple(deps)
        st = entry.stat()
        entry.write_bytes(pickle.dumps(data))
        os.chown(entry, st.st_uid, st.st_gid)
    _stale_after(runner, env, token, code_changed)
    assert _run(runner, token, env, argv=("/bin/hostname",)) == token
