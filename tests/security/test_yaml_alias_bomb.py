"""Issue 18 item 1: the profile loader runs outside every sandbox limit, so hostile YAML must not
take the host's memory or time. Demonstrated: a ~600-byte "billion laughs" profile took the CLI to
17.7 GB before it was killed; plain profiles loaded in super-linear time (0.5 MB: 17 s, 5 MB: >100 s);
a child profile extending a parent, both large, merged in quadratic time (the provenance table was
scanned once per key: > 60 s for two 0.75 MB files).

Now: aliases are expanded against a node budget (MAX_NODES), nesting is bounded, files are at most
1 MiB, the YAML is parsed by libyaml (linear) and the `extends:` merge walks each subtree once.
Each case runs through `run`, `lint`, `explain` and the Python API, as root and as the unprivileged
user, with its peak RSS measured (wait4) under an address-space limit, and a wall-clock bound; and
a legitimate profile (extends strict) still runs.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PYSANDBOX, VENV_BIN

MAX_RSS_MB = 400          # the bounded loader stays near 100 MB; the old one grew without bound
AS_LIMIT = 2 << 30        # an address-space cap so a regression fails here instead of hurting the host
WALL_LIMIT = 60           # seconds, generous for a loaded 2-core machine (the quadratic merge: > 60 s)


def _bomb() -> str:
    """Classic billion laughs: 9 levels of 9 aliases (9**9 = 387 million strings), ~600 bytes."""
    lines = ['name: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    keys = ["description", "version", "namespaces", "user", "capabilities", "seccomp", "filesystem", "process"]
    prev = "a"
    for i, k in enumerate(keys):
        cur = chr(ord("b") + i)
        lines.append(f"{k}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = cur
    return "\n".join(lines) + "\n"


def _write(d: Path, name: str, text: str) -> str:
    p = d / name
    p.write_text(text)
    os.chmod(p, 0o644)
    return str(p)


def _measure(runner, argv, timeout=WALL_LIMIT + 30):
    """Run argv as the runner's user -> (returncode, stdout+stderr, peak RSS in MB, seconds)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    kw = {}
    if runner.rootless:
        kw = dict(user=runner.uid, group=runner.gid, extra_groups=[])
    import tempfile
    with tempfile.TemporaryFile() as out:
        t = time.monotonic()
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=runner.env(), cwd="/tmp",
                             preexec_fn=limit, **kw)
        _, status, ru = os.wait4(p.pid, 0)
        secs = time.monotonic() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err = out.read().decode(errors="replace")
    return p.returncode, err, ru.ru_maxrss / 1024, secs


API = ("import sys\nfrom sandbox.api import Sandbox\n"
       "try:\n    Sandbox(profile=sys.argv[1])\nexcept Exception as e:\n"
       "    print(type(e).__name__, e, file=sys.stderr); sys.exit(3)\n")


def _entry_points(path: str):
    yield "run", [PYSANDBOX, "run", "--profile", path, "--", "/bin/true"], 2
    yield "explain", [PYSANDBOX, "explain", "--profile", path], 2
    yield "lint", [PYSANDBOX, "lint", path], 1
    yield "api", [str(VENV_BIN / "python"), "-c", API, path], 3


@pytest.mark.parametrize("kind", ["bomb", "bomb-in-list", "deep"])
def test_hostile_yaml_is_bounded_in_memory_and_time(runner, shared_tmp, kind):
    text = {"bomb": _bomb(),
            "bomb-in-list": "version: 1\nfilesystem:\n  masked_paths:\n" + "".join(
                f"    - &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else 'x, x, x, x, x, x, x, x, x'}]\n"
                for i in range(10)),
            "deep": "version: 1\nname: " + "[" * 20000 + "]" * 20000 + "\n"}[kind]
    assert len(text.encode()) < 600 or kind == "deep"
    path = _write(shared_tmp, f"{kind}.yaml", text)
    for what, argv, code in _entry_points(path):
        rc, err, rss, secs = _measure(runner, argv)
        assert "Traceback" not in err and "MemoryError" not in err, (what, err[-2000:])
        assert rc == code, (what, rc, err[-2000:])
        assert rss < MAX_RSS_MB, (what, f"peak RSS {rss:.0f} MB")
        assert secs < WALL_LIMIT, (what, f"{secs:.1f} s")
        want = "nested too deeply" if kind == "deep" else "more than 200000 YAML nodes"
        assert want in err, (what, err)
        if what != "lint":
            assert len(err.strip().splitlines()) == 1, (what, err)


def _env_block(n: int, prefix: str) -> str:
    return "".join(f"      {prefix}{i}: v{i}\n" for i in range(n))


def test_large_profiles_load_in_linear_time(runner, shared_tmp):
    """A 0.75 MB parent and a 0.75 MB child extending it (30 000 env keys and 10 000 list items
    each; `!extend` merging): loaded, validated and compiled within the wall limit; the old merge
    scanned the whole location table once per key and did not finish in 60 s."""
    _write(shared_tmp, "par.yaml", "version: 1\nprocess:\n  env:\n    set:\n" + _env_block(30000, "P")
           + "filesystem:\n  masked_paths:\n" + "".join(f"    - /p/{i}\n" for i in range(10000)))
    child = _write(shared_tmp, "chi.yaml", "version: 1\nextends: ./par.yaml\nprocess:\n  env:\n    set:\n"
                   + _env_block(30000, "C") + "filesystem:\n  masked_paths: !extend\n"
                   + "".join(f"    - /c/{i}\n" for i in range(10000)))
    assert os.path.getsize(child) > 700_000
    rc, err, rss, secs = _measure(runner, [PYSANDBOX, "explain", "--profile", child, "--json"])
    assert rc == 0, err
    assert secs < WALL_LIMIT and rss < MAX_RSS_MB, (secs, rss)


def test_loader_api_linear_and_locations_after_merge(shared_tmp):
    """In process: time grows linearly (a 4x larger profile takes well under 16x the time) and the
    merged provenance still points into the right file."""
    from policies.loader import load_profile

    def make(n, tag):
        _write(shared_tmp, f"par{tag}.yaml", "version: 1\nfilesystem:\n  masked_paths:\n"
               + "".join(f"    - /p/{i}\n" for i in range(n)))
        return _write(shared_tmp, f"chi{tag}.yaml", f"version: 1\nextends: ./par{tag}.yaml\n"
                      "filesystem:\n  masked_paths: !extend\n" + "".join(f"    - /c/{i}\n" for i in range(n)))

    def best(path):
        out = []
        for _ in range(2):
            t = time.perf_counter()
            doc = load_profile(path)
            out.append(time.perf_counter() - t)
        return min(out), doc

    small, _ = best(make(5000, "s"))
    large, doc = best(make(20000, "l"))
    assert large < 16 * small + 0.5, (small, large)      # quadratic would be ~16x
    n = len(doc.data["filesystem"]["masked_paths"])
    assert n == 40000
    last = doc.locate(("filesystem", "masked_paths", n - 1))
    first = doc.locate(("filesystem", "masked_paths", 0))
    assert last.file.endswith("chil.yaml") and last.line == 4 + 20000, last
    assert first.file.endswith("parl.yaml") and first.line == 4, first


def test_legitimate_profile_still_runs(runner, tmp_profile):
    p = tmp_profile("version: 1\nextends: strict\nname: &n ok-alias\ndescription: *n\n")
    r = runner("run", "--profile", p, "--", "/bin/sh", "-c", "echo fine")
    assert r.returncode == 0 and r.stdout.strip() == "fine", r
