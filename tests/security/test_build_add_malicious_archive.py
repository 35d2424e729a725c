"""A hostile archive ADDed from the build context: path traversal ('..'), a symlink then a member
written through it, a hard link to a file outside the archive, a device node, an overlay whiteout
name, a bzip2 bomb beyond the decompression ratio, a corrupt stream. Each: exit 2 with one line
naming the step, no layer added, no image, nothing written outside the layer (the host file the
archive aims at is untouched). Root and the unprivileged test user."""
from __future__ import annotations

import bz2
import os
import tarfile

import imagebuild as ib
from buildhelpers import build
from buildhelpers import ctx_dir as _ctx

import sys
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "system"))
from test_build_add import write_tar  # noqa: E402


def _layers(state):
    try:
        return set(os.listdir(os.path.join(state, "layers")))
    except FileNotFoundError:
        return set()


CASES = {
    "traversal": [({"name": "../../../../../../tmp/pysbx-add-escape"}, b"x")],
    "through-symlink": [({"name": "d", "type": tarfile.SYMTYPE, "linkname": "/tmp"}, None),
                        ({"name": "d/pysbx-add-escape"}, b"x")],
    "hardlink-out": [({"name": "h", "type": tarfile.LNKTYPE, "linkname": "../../etc/shadow"}, None)],
    "hardlink-missing": [({"name": "h", "type": tarfile.LNKTYPE, "linkname": "etc/shadow"}, None)],
    "device": [({"name": "mem", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 1}, None)],
    "whiteout": [({"name": "etc/.wh.passwd"}, b"")],
}


def test_malicious_archives_refused(img):
    runner, state, work = img
    for case, members in CASES.items():
        ctx = _ctx(img, {"Dockerfile": "FROM busybox:test\nADD evil.tar /opt/\n"}, "evil-" + case)
        write_tar(os.path.join(ctx, "evil.tar"), members)
        os.chown(os.path.join(ctx, "evil.tar"), runner.uid, runner.gid)
        before = _layers(state)
        r = build(img, ctx, tag="evil:1")
        assert r.returncode == 2, (case, r)
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("pysandbox: build: Dockerfile:2:5: ADD"), (case, r.stderr)
        assert "Traceback" not in r.stderr
        assert _layers(state) == before, case
        assert not os.path.lexists("/tmp/pysbx-add-escape"), case
    assert "evil:1" not in ib.cli(img, "image", "ls").stdout


def test_compression_bomb_and_corrupt_stream_refused(img):
    runner, state, _ = img
    ctx = _ctx(img, {"Dockerfile": "FROM busybox:test\nADD bomb.tar.bz2 /opt/\nADD bad.tgz /opt/\n"}, "bomb")
    # a tar of one 64 MiB file of zeros: bzip2 packs it far beyond the ratio limit (2000:1)
    import io
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        ti = tarfile.TarInfo("zeros")
        ti.size = 64 << 20
        tf.addfile(ti, io.BytesIO(bytes(ti.size)))
    with open(os.path.join(ctx, "bomb.tar.bz2"), "wb") as f:
        f.write(bz2.compress(raw.getvalue(), 9))
    with open(os.path.join(ctx, "bad.tgz"), "wb") as f:
        f.write(b"\x1f\x8b\x08\x00" + os.urandom(200))
    for n in ("bomb.tar.bz2", "bad.tgz"):
        os.chown(os.path.join(ctx, n), runner.uid, runner.gid)
    before = _layers(state)
    r = build(img, ctx, tag="bomb:1")
    assert r.returncode == 2 and "compression bomb" in r.stderr, r
    assert _layers(state) == before
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write("FROM busybox:test\nADD bad.tgz /opt/\n")
    r = build(img, ctx, tag="bomb:1")
    assert r.returncode == 2 and "Dockerfile:2:5: ADD bad.tgz" in r.stderr, r
    assert _layers(state) == before
