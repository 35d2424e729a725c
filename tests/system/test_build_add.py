"""ADD of local archives (docs/images.md, "The Dockerfile"): a tar, tar.gz, tar.bz2 or tar.xz in
the build context is extracted into the destination (detected by content, as Docker does), with
its directories, symlinks, hard links, modes and owners; a file that is not an archive is copied;
ADD of a URL is refused (exit 2). Root and the unprivileged test user."""
from __future__ import annotations

import io
import os
import tarfile

from buildhelpers import build, run_img
from buildhelpers import ctx_dir as _ctx
from conftest import single_id


def write_tar(path: str, members: list, mode: str = "w") -> None:
    """members: (TarInfo kwargs, data or None)."""
    with tarfile.open(path, mode) as tf:
        for kw, data in members:
            kw = dict(kw)
            ti = tarfile.TarInfo(kw.pop("name"))
            for k, v in kw.items():
                setattr(ti, k, v)
            if data is not None:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)


def _members():
    return [({"name": "app", "type": tarfile.DIRTYPE, "mode": 0o755}, None),
            ({"name": "app/run.sh", "mode": 0o755, "uid": 1000, "gid": 1000}, b"#!/bin/sh\necho archived\n"),
            ({"name": "app/data/conf", "mode": 0o640}, b"k=v\n"),
            ({"name": "app/link", "type": tarfile.SYMTYPE, "linkname": "run.sh"}, None),
            ({"name": "app/hard", "type": tarfile.LNKTYPE, "linkname": "app/run.sh"}, None)]


def test_add_extracts_local_archives(img):
    ctx = _ctx(img, {"Dockerfile": "FROM busybox:test\n"
                                   "ADD plain.tar /opt/t/\nADD a.tgz /opt/gz\nADD b.tar.bz2 /opt/bz/\n"
                                   "ADD c.txz /opt/xz\nADD notes.txt /opt/notes.txt\n"
                                   "WORKDIR /w\nADD plain.tar .\n",
                       "notes.txt": "not an archive\n"}, "add")
    for name, mode in (("plain.tar", "w"), ("a.tgz", "w:gz"), ("b.tar.bz2", "w:bz2"), ("c.txz", "w:xz")):
        write_tar(os.path.join(ctx, name), _members(), mode)
        os.chown(os.path.join(ctx, name), img[0].uid, img[0].gid)
    r = build(img, ctx, tag="add:1")
    assert r.returncode == 0, r
    script = ("for d in /opt/t /opt/gz /opt/bz /opt/xz /w; do sh $d/app/link; cat $d/app/data/conf; "
              "stat -c '%a %u:%g %h' $d/app/run.sh $d/app/data/conf; done; cat /opt/notes.txt")
    r = run_img(img, "add:1", "/bin/sh", "-c", script)
    assert r.returncode == 0, r
    own = "0:0" if single_id(img[0]) else "1000:1000"
    want = ["archived", "k=v", f"755 {own} 2", "640 0:0 1"] * 5 + ["not an archive"]
    assert r.stdout.splitlines() == want, r
    # cached: the same archives give the same steps; a changed archive reruns its step only
    r = build(img, ctx, tag="add:1")
    assert r.returncode == 0 and "--> Using cache" in r.stderr, r


def test_add_url_refused(img):
    ctx = _ctx(img, {"Dockerfile": "FROM busybox:test\nADD https://example.com/a.tar.gz /opt/\n"}, "addurl")
    r = build(img, ctx, tag="addurl:1")
    assert r.returncode == 2, r
    assert "Dockerfile:2:" in r.stderr and "only local files are supported (no URLs)" in r.stderr, r
