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


MS_SHARED = 1 << 20


def _in_child(fn):
    """fn() -> a JSON value, in a forked child (whose namespaces the test may change)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.write(w, json.dumps(fn()).encode())
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
    return json.loads(data)


@root_only
def test_leaked_mount_is_reported(tmp_path):
    """A real propagation leak, and a host mount that is not one. In a private mount namespace of
    a child (the "host"): `base` is a shared tmpfs; a grandchild (the "sandbox") unshares its mount
    namespace (no user namespace: its `base` stays a peer of the host's), is snapshotted, mounts a
    tmpfs on base/leak — which propagates to the host — and exits. Meanwhile the host mounts a
    tmpfs on `other` itself. The check reports the leak and not the host's own mount (it is in no
    peer group of the sandbox's namespace, read through sandbox/nsmounts.py after its last process
    is gone); without that reader both are reported (as the check did before)."""
    from sandbox import nsmounts
    base, other = tmp_path / "base", tmp_path / "other"
    base.mkdir()
    other.mkdir()

    def host():
        _sys.unshare(_sys.CLONE_NEWNS)
        _sys.mount(None, "/", None, _sys.MS_REC | _sys.MS_PRIVATE)
        _sys.mount("tmpfs", str(base), "tmpfs", 0, "size=1m")
        _sys.mount(None, str(base), None, MS_SHARED)
        (base / "leak").mkdir()
        r_go, w_go = os.pipe()
        r_ok, w_ok = os.pipe()
        pid = os.fork()
        if pid == 0:                                      # the "sandbox"
            code = 1
            try:
                _sys.unshare(_sys.CLONE_NEWNS)
                os.write(w_ok, b"k")
                if os.read(r_go, 1) == b"G":
                    _sys.mount("tmpfs", str(base / "leak"), "tmpfs", 0, "size=1m")
                    code = 0
            finally:
                os._exit(code)
        assert os.read(r_ok, 1) == b"k"
        snaps = [integrity.Snapshot.take(pid, mount_prefixes=[str(tmp_path)]) for _ in range(3)]
        clean = [f for f in integrity.check(snaps[0], sandbox_mounts=nsmounts.mountinfo)   # (it runs:
                 if f["detail"]["check"] == "mount"]                                       # no mount yet)
        os.write(w_go, b"G")
        assert os.waitpid(pid, 0)[1] == 0
        _sys.mount("tmpfs", str(other), "tmpfs", 0, "size=1m")   # the host's own, meanwhile
        return {"clean": clean, "ns": sorted(snaps[1].sandbox_ns),
                "attributed": integrity.check(snaps[1], sandbox_mounts=nsmounts.mountinfo),
                "unattributed": integrity.check(snaps[2])}

    res = _in_child(host)
    assert res.get("clean") == [] and res["ns"] == ["mnt"], res
    assert [f["path"] for f in res["attributed"]] == [str(base / "leak")], res
    leak = res["attributed"][0]
    assert leak["detail"]["fstype"] == "tmpfs" and leak["detail"]["peer_groups"], leak
    assert leak["message"].startswith("mount leaked into the host mount namespace")
    assert sorted(f["path"] for f in res["unattributed"]) == sorted([str(base / "leak"), str(other)]), res
    assert not os.path.ismount(base) and not os.path.ismount(other)   # the real host never saw them


@root_only
def test_mount_table_of_a_namespace_without_processes():
    """sandbox/nsmounts.py: the table of a mount namespace whose last process is gone (held by
    descriptor), with and without a user namespace of its own: the namespace's tmpfs is in it."""
    from sandbox import nsmounts

    def case(user: bool):
        def body():
            _sys.unshare(_sys.CLONE_NEWNS | (_sys.CLONE_NEWUSER if user else 0))
            _sys.mount(None, "/", None, _sys.MS_REC | _sys.MS_PRIVATE)
            _sys.mount("pysbx-nsview", "/mnt", "tmpfs", 0, "size=1m")
        a = _child(lambda w: body())
        try:
            snap = integrity.Snapshot.take(a)
        finally:
            _reap(a)
        try:
            text = nsmounts.mountinfo(snap.ns_fds)
        finally:
            snap.close()
        return sorted(snap.sandbox_ns), text
    for user in (False, True):
        ns, text = case(user)
        assert "mnt" in ns and ("user" in ns) == user, ns
        assert text is not None and " /mnt " in text and "pysbx-nsview" in text, text
    assert nsmounts.mountinfo({}) is None


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
