"""The Landlock fallback's prediction (sandbox/notify/landlock_fallback.py, Predictor) and its one
decision point (landlock.denial_source), without a sandbox: the "caller" is this test process
(its /proc/PID/root, cwd and memory), the rules a plan.Landlock over a temporary tree. Simulated:
no seccomp notification is involved, the arguments are built here as the kernel would pass them.
Only necessary conditions are predicted: what is uncertain continues (None)."""
from __future__ import annotations

import ctypes
import os

import pytest

from policies import plan as P
from sandbox import landlock
from sandbox.notify.landlock_fallback import AT_FDCWD, Predictor, read_memory

FDCWD = AT_FDCWD & 0xFFFFFFFFFFFFFFFF


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "rw").mkdir()
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "f").write_text("x")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool").write_text("#!/bin/sh\n")
    (tmp_path / "rw" / "tool").write_text("#!/bin/sh\n")
    (tmp_path / "rw" / "out").symlink_to(tmp_path / "ro" / "new")        # planted: points outside
    (tmp_path / "rw" / "in").symlink_to("sub")                             # relative, stays inside
    (tmp_path / "rw" / "sub").mkdir()
    ll = P.Landlock(filesystem=True, paths=(
        P.LandlockPath(str(tmp_path / "rw"), P.LANDLOCK_WRITE),
        P.LandlockPath(str(tmp_path / "ro"), P.LANDLOCK_READ),
        P.LandlockPath(str(tmp_path / "bin"), P.LANDLOCK_READ + P.LANDLOCK_EXECUTE)))
    return tmp_path, Predictor(ll, abi=6)


def _ask(pred, name, *args, paths=()):
    """args: ints, or str (a path placed in this process's memory, its address passed)."""
    keep = []
    regs = []
    for a in args:
        if isinstance(a, str):
            buf = ctypes.create_string_buffer(a.encode())
            keep.append(buf)
            regs.append(ctypes.addressof(buf))
        else:
            regs.append(a & 0xFFFFFFFFFFFFFFFF)
    regs += [0] * (6 - len(regs))
    read, read_u64, close, read_bytes = read_memory(os.getpid())
    try:
        return pred.predict(os.getpid(), name, regs, read, read_u64, read_bytes)
    finally:
        close()


def test_writes_and_creations(tree):
    root, pred = tree
    W = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    assert _ask(pred, "openat", FDCWD, f"{root}/rw/new", W) is None
    assert _ask(pred, "openat", FDCWD, f"{root}/ro/new", W) == (f"{root}/ro/new", "make_reg")
    assert _ask(pred, "openat", FDCWD, f"{root}/ro/f", os.O_WRONLY) == (f"{root}/ro/f", "write_file")
    assert _ask(pred, "openat", FDCWD, f"{root}/ro/f", os.O_RDONLY) is None
    assert _ask(pred, "mkdir", f"{root}/ro/d", 0o755) == (f"{root}/ro/d", "make_dir")
    assert _ask(pred, "mkdir", f"{root}/rw/d", 0o755) is None
    assert _ask(pred, "unlink", f"{root}/ro/f") == (f"{root}/ro/f", "remove_file")
    assert _ask(pred, "truncate", f"{root}/ro/f", 0) == (f"{root}/ro/f", "truncate")


def test_links_are_judged_by_their_target(tree):
    root, pred = tree
    W = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    assert _ask(pred, "openat", FDCWD, f"{root}/rw/out", W) == (f"{root}/rw/out", "make_reg")
    assert _ask(pred, "openat", FDCWD, f"{root}/rw/in/x", W) is None
    assert _ask(pred, "unlink", f"{root}/rw/out") is None            # the link itself is removed: allowed
    assert _ask(pred, "openat", FDCWD, f"{root}/rw/out", W | os.O_NOFOLLOW) is None   # ELOOP: the kernel's


def test_exec(tree):
    root, pred = tree
    assert _ask(pred, "execve", f"{root}/bin/tool", 0, 0) is None
    assert _ask(pred, "execve", f"{root}/rw/tool", 0, 0) == (f"{root}/rw/tool", "execute")
    assert _ask(pred, "execve", f"{root}/rw/none", 0, 0) is None      # ENOENT: the kernel's


def test_relative_paths_and_uncertain_ones_continue(tree, monkeypatch):
    root, pred = tree
    W = os.O_WRONLY | os.O_CREAT
    monkeypatch.chdir(root / "ro")
    assert _ask(pred, "openat", FDCWD, "new", W) == ("new", "make_reg")
    assert _ask(pred, "openat", FDCWD, "../ro/new", W) is None        # ".." above the cwd: not predicted
    fd = os.open(root / "ro", os.O_PATH)
    try:
        assert _ask(pred, "openat", fd, "new", W) == ("new", "make_reg")
    finally:
        os.close(fd)
    assert _ask(pred, "openat", FDCWD, "/proc/self/fd/1", os.O_WRONLY) is None   # a magic link


def test_the_decision_point(monkeypatch):
    from dataclasses import replace
    from policies.compiler import compile_profile
    strict = compile_profile("strict", None).plan
    monkeypatch.setattr(landlock, "audit_enabled", lambda: False)
    assert landlock.denial_source(strict, kernel_watch=True) == landlock.NOTIFY
    monkeypatch.setattr(landlock, "audit_enabled", lambda: True)
    monkeypatch.setattr(landlock._sys, "landlock_abi", lambda: 7)
    assert landlock.denial_source(strict, kernel_watch=True) == landlock.KERNEL
    assert landlock.denial_source(strict, kernel_watch=False) == landlock.NOTIFY     # API, run -d
    assert landlock.denial_source(replace(strict, landlock=None), kernel_watch=False) is None
