"""Cache of compiled plans and seccomp programs, keyed by the `run` options.

A hit skips YAML parsing, schema validation, compilation and libseccomp entirely. An entry
records the files it was built from (profiles, imported seccomp JSON, the policy code and data)
with their (mtime, size, inode), the search-path candidates looked at before the profile found,
and every directory of the profile search path (an entry added, removed or re-pointed there
changes the directory's mtime); any change invalidates it. The installation (its policy
directory) and the search-path environment are part of the key. Entries are trusted only when the
cache file and its directory belong to the caller and are not writable by anyone else — a
writable cache would be a way around the policy.
"""
from __future__ import annotations

import os
import pickle
import sys
import zlib

FORMAT = 6                  # 6: runopts carry the launch server's key of the plan (server_key)
_POLICY_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "policies")
# the policy code, and the BPF emitter (sandbox/seccomp.py) whose program the entry holds
_SELF_DEPS = ("compiler.py", "loader.py", "plan.py", "seccomp.py", "seccomp_verdict.py", "syscalls.py",
              "docker_seccomp.py", "units.py", "schema/profile.schema.json",
              os.path.join(os.pardir, "sandbox", "seccomp.py"),
              # the launch server's key of the plan (runopts["server_key"]) is a digest of its wire encoding
              os.path.join(os.pardir, "sandbox", "wire.py"))


def cache_dir() -> str:
    if os.geteuid() == 0:
        return "/var/cache/pysandbox/plans"
    from audit.paths import xdg_dir        # (never below the current directory: a relative HOME)
    return os.path.join(xdg_dir("XDG_CACHE_HOME", ".cache"), "pysandbox", "plans")


def key_for(options: list[str], cwd: "str | None" = None) -> str:
    """The key material is stored in the entry and compared in full on load, so the short
    file name (a CRC) can collide without ever handing out another option set's plan. The
    installation (its policy directory) is part of the key: two installs never share a plan.
    cwd: the caller's working directory (the launch server looks up a client's plan; None: ours)."""
    env = os.environ
    return repr((FORMAT, sys.version_info[:2], os.geteuid(), os.getegid(), cwd or os.getcwd(),
                 os.uname().release, _POLICY_DIR, options,
                 # what a profile name resolves through (policies.loader.user_profile_dirs)
                 env.get("PYSANDBOX_PROFILE_PATH"), env.get("XDG_CONFIG_HOME"), env.get("HOME"),
                 # a rootless `auto` maps subordinate ids only without no_new_privs (policies/subids.py)
                 _no_new_privs()))


def _no_new_privs() -> bool:
    from policies.subids import no_new_privs
    return os.geteuid() != 0 and no_new_privs()


def _file_for(key: str) -> str:
    return os.path.join(cache_dir(), "%08x-%d.pickle" % (zlib.crc32(key.encode()), len(key)))


def _sig(path: str):
    try:
        st = os.stat(path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        return None


def deps_for(files) -> tuple:
    paths = list(files) + [os.path.join(_POLICY_DIR, f) for f in _SELF_DEPS]
    return tuple((p, _sig(p)) for p in paths)


def _trusted(st) -> bool:
    return st.st_uid == os.geteuid() and not (st.st_mode & 0o022)


def load(key: str):
    """-> (plan, bpf, runopts) or None."""
    d = cache_dir()
    path = _file_for(key)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        # the directory itself, not what a symlink in its place points at
        if not (_trusted(os.fstat(fd)) and _trusted(os.lstat(d))):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            entry = pickle.load(f)
    except Exception:
        return None
    finally:
        os.close(fd)
    if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("key") != key:
        return None
    for p, sig in entry["deps"]:
        if _sig(p) != sig:
            return None
    return entry["plan"], entry["bpf"], entry["runopts"]


def store(key: str, plan, bpf, runopts: dict, files) -> None:
    from . import fsutil          # a cache miss only: the cached path does not import it
    d = cache_dir()
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        if not _trusted(os.lstat(d)):
            return
        entry = {"format": FORMAT, "key": key, "deps": deps_for(files), "plan": plan, "bpf": bpf,
                 "runopts": runopts}
        fsutil.atomic_write(_file_for(key), pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL), fsync=False)
    except OSError:
        pass        # a cache that cannot be written costs speed, never correctness
