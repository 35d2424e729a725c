"""Issue 18 item 8: a cached plan must not outlive how its profile *name* resolves.

`pysandbox run --profile strict` is cached; an administrator then installs an override of `strict`
in a directory of the search path that precedes the shipped one. The very next run must use the
override - no stale hit. Also: a profile in the search path re-pointed (a symlink swapped for
another, `ln -sfn`), which the files' own signatures cannot see (the old target is unchanged); and
the legitimate fast path still hits when nothing changed.

Simulated part: the administrator's directory. /etc/pysandbox/profiles is shared with every run on
this machine (other developers' tests run `strict` concurrently), so the override is put in a
directory with the same place in the search path relative to the shipped profiles - the user
profile directory ($XDG_CONFIG_HOME/pysandbox/profiles, looked at before /etc and the shipped
directory) and PYSANDBOX_PROFILE_PATH; the code path (policies.loader.profile_dirs, every directory
of which the cache entry records) is the same for /etc. As root and as the unprivileged user.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest


def _setup(runner, shared_tmp):
    cfg = shared_tmp / "xdg-config"
    prof = cfg / "pysandbox" / "profiles"
    prof.mkdir(parents=True)
    env = {"XDG_CONFIG_HOME": str(cfg)}
    if runner.rootless:
        cache = shared_tmp / "xdg-cache"
        cache.mkdir()
        env["XDG_CACHE_HOME"] = str(cache)
        for d in (cfg, cfg / "pysandbox", prof, cache):
            os.chown(d, runner.uid, runner.gid)
    for d in (shared_tmp, cfg, cfg / "pysandbox", prof):
        os.chmod(d, 0o755)
    return prof, env


def _cache_dir(runner, env) -> Path:
    return Path(env["XDG_CACHE_HOME"]) / "pysandbox" / "plans" if runner.rootless \
        else Path("/var/cache/pysandbox/plans")


def _hostname_run(runner, env, token, *argv, profile="strict"):
    r = runner("run", "--profile", profile, "--hostname", token, "--", *(argv or ("/bin/pwd",)), env=env)
    assert r.returncode == 0, r
    return r.stdout.strip()


def _poison_marker(runner, env, token):
    """Mark the cached entry (its cwd set to /proc) so that a hit is visible: a run that prints
    /proc came from the cache."""
    import dataclasses
    hits = [p for p in _cache_dir(runner, env).glob("*.pickle") if token.encode() in p.read_bytes()]
    assert len(hits) == 1, hits
    entry = hits[0]
    st = entry.stat()
    data = pickle.loads(entry.read_bytes())
    data["plan"] = dataclasses.replace(data["plan"], process=dataclasses.replace(data["plan"].process,
                                                                                 cwd="/proc"))
    tmp = entry.with_name(".marker-tmp")
    tmp.write_bytes(pickle.dumps(data))
    os.chown(tmp, st.st_uid, st.st_gid)
    os.chmod(tmp, 0o600)
    os.replace(tmp, entry)


def test_admin_override_takes_effect_on_the_very_next_run(runner, shared_tmp):
    prof, env = _setup(runner, shared_tmp)
    token = f"pcres-{os.urandom(4).hex()}"
    assert _hostname_run(runner, env, token) == "/"              # shipped strict, compiled and cached
    _poison_marker(runner, env, token)
    assert _hostname_run(runner, env, token) == "/proc"          # legitimate: the fast path hits
    # the override appears (extends the shipped one by path, changes the working directory)
    shipped = Path(__file__).resolve().parents[2] / "profiles" / "strict.yaml"
    (prof / "strict.yaml").write_text(f"version: 1\nextends: {shipped}\nprocess: {{cwd: /tmp}}\n")
    os.chmod(prof / "strict.yaml", 0o644)
    assert _hostname_run(runner, env, token) == "/tmp"           # the very next run: no stale hit
    # and removing the override goes back to the shipped profile at once
    (prof / "strict.yaml").unlink()
    assert _hostname_run(runner, env, token) == "/"


def test_repointed_symlink_in_the_search_path_invalidates(runner, shared_tmp):
    prof, env = _setup(runner, shared_tmp)
    store = shared_tmp / "store"
    store.mkdir()
    os.chmod(store, 0o755)
    for n, cwd in (("a", "/"), ("b", "/tmp")):
        (store / f"{n}.yaml").write_text(f"version: 1\nextends: strict\nprocess: {{cwd: {cwd}}}\n")
        os.chmod(store / f"{n}.yaml", 0o644)
    name = f"pcres{os.urandom(3).hex()}"
    link = prof / f"{name}.yaml"
    link.symlink_to(store / "a.yaml")
    token = f"pcres-{os.urandom(4).hex()}"
    assert _hostname_run(runner, env, token, profile=name) == "/"
    _poison_marker(runner, env, token)
    assert _hostname_run(runner, env, token, profile=name) == "/proc"        # hit
    tmp = prof / ".newlink"
    tmp.symlink_to(store / "b.yaml")
    os.replace(tmp, link)                    # ln -sfn: a.yaml itself is untouched
    assert _hostname_run(runner, env, token, profile=name) == "/tmp"
