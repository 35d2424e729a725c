"""audit/integrity.py: post-exit integrity checks, on real namespaces and mounts.

The namespace and mount cases are produced for real in throw-away namespaces created by the
test (a mount made in a private mount namespace of a forked child, never in the host's);
nothing on the host is changed except files in the test's own temporary directory.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import PYSANDBOX, Run

from audit import integrity, reader
from sandbox import _sys

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")


def _child(fn):
    """Fork; the child runs fn(w) and sleeps until killed. Returns (pid, read end)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            fn(w)
            os.write(w, b"ok\n")
            while True:
                time.sleep(60)
        except BaseException as e:  # noqa: BLE001
            os.write(w, f"error {e}\n".encode())
        os._exit(1)
    os.close(w)
    line = b""
    while not line.endswith(b"\n"):
        c = os.read(r, 1)
        if not c:
            break
        line += c
    os.close(r)
    assert line == b"ok\n", line
    return pid


def _reap(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


@root_only
def test_process_left_in_the_sandbox_namespace_is_reported():
    a = _child(lambda w: _sys.unshare(_sys.CLONE_NEWNET | _sys.CLONE_NEWUTS))   # the "sandbox"
    b = None
    try:
        snap = integrity.Snapshot.take(a)
        assert set(snap.sandbox_ns) == {"net", "uts"}

        def join(w):
            fd = os.open(f"/proc/{a}/ns/net", os.O_RDONLY)
            _sys.setns(fd, _sys.CLONE_NEWNET)
        b = _child(join)                                  # a process that stays in its network namespace
        _reap(a)
        found = integrity.check(snap)
        assert len(found) == 1, found
        f = found[0]
        assert f["pid"] == b and f["detail"]["namespace"] == "net"
        assert "still alive in the sandbox's net namespace" in f["message"]
        _reap(b)
        b = None
        assert integrity.check(snap) == []
    finally:
        _reap(a)
        if b:
            _reap(b)


@root_only
def test_leaked_mount_is_reported(tmp_path):
    """In a private mount namespace of a child: snapshot, mount a tmpfs under the watched
    prefix (as a leak would appear), check."""
    target = tmp_path / "base"
    target.mkdir()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            _sys.unshare(_sys.CLONE_NEWNS)
            _sys.mount(None, "/", None, _sys.MS_REC | _sys.MS_PRIVATE)
            snap = integrity.Snapshot.take(os.getpid(), mount_prefixes=[str(tmp_path)])
            clean = integrity.check(snap)
            same = integrity._mount_table() is snap.mounts      # nothing mounted: not parsed again
            _sys.mount("tmpfs", str(target), "tmpfs", 0, "size=1m")
            leaked = integrity.check(snap)
            os.write(w, json.dumps({"clean": clean, "leaked": leaked, "same": same}).encode())
            os._exit(0)
        except BaseException as e:  # noqa: BLE001
            os.write(w, json.dumps({"error": repr(e)}).encode())
            os._exit(1)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    res = json.loads(data)
    assert res.get("clean") == [], res
    assert res["same"] is True
    assert len(res["leaked"]) == 1
    leak = res["leaked"][0]
    assert leak["path"] == str(target) and leak["detail"]["fstype"] == "tmpfs"
    assert leak["message"].startswith("mount leaked into the host mount namespace")
    assert not os.path.ismount(target)       # the host's namespace never saw it


def test_cgroup_left_behind_and_read_only_source_changed(tmp_path):
    src = tmp_path / "ro"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_text("a")
    (src / "sub" / "b").write_text("b")
    snap = integrity.Snapshot.take(os.getpid(), ro_paths=[str(src)])
    assert integrity.check(snap) == []
    assert integrity.check(snap, cgroup_paths=[str(tmp_path)])[0]["message"] == f"cgroup left behind: {tmp_path}"
    time.sleep(0.01)
    (src / "sub" / "b").write_text("changed")
    (src / "new").write_text("n")
    found = integrity.check(snap)
    assert len(found) == 1 and found[0]["path"] == str(src)
    assert str(src / "sub" / "b") in found[0]["detail"]["paths"] and str(src / "new") in found[0]["detail"]["paths"]
    assert "1 added" in found[0]["message"]


def test_clean_runs_report_nothing_and_a_changed_read_only_bind_is_reported(root_runner, shared_tmp):
    """Through `pysandbox run -v SRC:/data:ro`: a clean run has no integrity_violation; when the
    bind source changes while the sandbox runs (here: from the host), the run reports it."""
    src = shared_tmp / "data"
    src.mkdir()
    (src / "f").write_text("1")
    log = shared_tmp / "audit.jsonl"
    r = root_runner("run", "--profile", "strict", "--audit-log", str(log), "-v", f"{src}:/data:ro", "--",
                    "/bin/sh", "-c", "cat /data/f; echo x > /data/f; echo rc=$?")
    assert r.stdout.startswith("1") and "rc=0" not in r.stdout, r
    assert [e for e in reader.read_events(log) if e["type"] == "integrity_violation"] == []

    # the source changes while the program runs: after its first line, before its stdin closes
    p = subprocess.Popen([PYSANDBOX, "run", "--profile", "strict", "--audit-log", str(log), "-v",
                          f"{src}:/data:ro", "--", "/bin/sh", "-c", "echo ready; read x"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=root_runner.env(), cwd="/tmp")
    try:
        assert p.stdout.readline() == "ready\n"
        (src / "f").write_text("2")
        _, err = p.communicate("", timeout=60)
    finally:
        p.kill()
    r = Run(p.returncode, "", err)
    iv = [e for e in reader.read_events(log) if e["type"] == "integrity_violation"]
    assert len(iv) == 1, iv
    assert iv[0]["path"] == str(src) and "read-only source changed" in iv[0]["message"]
    assert iv[0]["severity"] == "critical"
    assert "integrity violation" in r.stderr
