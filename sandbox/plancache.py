"""Cache of compiled plans and seccomp programs, keyed by the `run` options.

A hit skips YAML parsing, schema validation, compilation and libseccomp entirely. An entry
records the files it was built from (profiles, imported seccomp JSON, the policy code and data)
with their (mtime, size, inode); any change invalidates it. Entries are trusted only when the
cache file and its directory belong to the caller and are not writable by anyone else — a
writable cache would be a way around the policy.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sys
import tempfile
from pathlib import Path

FORMAT = 3
_POLICY_DIR = Path(__file__).resolve().parent.parent / "policies"
_SELF_DEPS = ("compiler.py", "loader.py", "plan.py", "seccomp.py", "syscalls.py", "docker_seccomp.py",
              "units.py", "schema/profile.schema.json")


def cache_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/cache/pysandbox/plans")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pysandbox" / "plans"


def key_for(options: list[str]) -> str:
    h = hashlib.sha256()
    h.update(repr((FORMAT, sys.version_info[:2], os.geteuid(), os.getegid(), os.getcwd(),
                   os.uname().release, options)).encode())
    return h.hexdigest()[:40]


def _sig(path: str):
    try:
        st = os.stat(path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        return None


def deps_for(files) -> tuple:
    paths = list(files) + [str(_POLICY_DIR / f) for f in _SELF_DEPS]
    return tuple((p, _sig(p)) for p in paths)


def _trusted(st) -> bool:
    return st.st_uid == os.geteuid() and not (st.st_mode & 0o022)


def load(key: str):
    """-> (plan, bpf, runopts) or None."""
    d = cache_dir()
    path = d / (key + ".pickle")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not (_trusted(os.fstat(fd)) and _trusted(os.stat(d))):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            entry = pickle.load(f)
    except Exception:
        return None
    finally:
        os.close(fd)
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        return None
    for p, sig in entry["deps"]:
        if _sig(p) != sig:
            return None
    return entry["plan"], entry["bpf"], entry["runopts"]


def store(key: str, plan, bpf, runopts: dict, files) -> None:
    d = cache_dir()
    try:
        d.mkdir(parents=True, mode=0o700, exist_ok=True)
        if not _trusted(os.stat(d)):
            return
        entry = {"format": FORMAT, "deps": deps_for(files), "plan": plan, "bpf": bpf, "runopts": runopts}
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(entry, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, d / (key + ".pickle"))
    except OSError:
        pass        # a cache that cannot be written costs speed, never correctness
