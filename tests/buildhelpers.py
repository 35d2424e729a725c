"""Helpers of the `pysandbox build` tests (tests/system/test_build*.py, tests/security/test_build_*.py),
on conftest's `img` fixture: (runner, state dir, work dir) with busybox:test in the store."""
from __future__ import annotations

import os
import re

import imagebuild as ib


def ctx_dir(env, files: dict, name="ctx") -> str:
    """A build context below the runner's work directory, owned by the runner's user; files:
    {relative path: text}. Returns its path (written again: files are replaced)."""
    runner, _, work = env
    d = os.path.join(work, name)
    for rel, data in files.items():
        p = os.path.join(d, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(data)
    for root, dirs, fs in os.walk(d):
        for n in [root] + [os.path.join(root, x) for x in dirs + fs]:
            os.lchown(n, runner.uid, runner.gid)
    return d


def build(env, ctx, *opts, tag="app:1", timeout=180):
    return ib.cli(env, "build", "-t", tag, "--progress", "plain", *opts, ctx, timeout=timeout)


def run_img(env, tag, *cmd, opts=()):
    return ib.cli(env, "run", "--profile", "strict", "--image", tag, *opts, *(("--",) + cmd if cmd else ()))


def steps(stderr: str) -> dict:
    """{step number: 'cached' | 'ran'} from the plain progress output."""
    out, cur = {}, None
    for line in stderr.splitlines():
        m = re.match(r"STEP (\d+)/\d+: ", line)
        if m:
            cur = int(m.group(1))
        elif line.startswith("--> Using cache"):
            out[cur] = "cached"
        elif line.startswith("--> "):
            out[cur] = "ran"
    return out
