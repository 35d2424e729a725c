"""`image save` of a rootless store turned a user's setuid program into a setuid-root one (issue 22).

The rootless store holds every file as the caller's (it cannot chown); the archive's owners are
recorded next to the layer (owners.json). `image save` ignored them and wrote every entry as 0:0:
a `4755` program owned by 1000:1000 in the imported image came out of `image save` (and `image
push`, same packing code) as a setuid-*root* program, and a setgid program of group 1002 as
setgid root: whoever loads the saved image runs them as root. The saved layer must carry the
owners and modes of the archive: setuid 1000 stays setuid 1000; root's own setuid stays root's.
As root and rootless (the `img` fixture's runner).
"""
from __future__ import annotations

import io
import json
import os
import tarfile

import imagebuild as ib
from imagebuild import cli

ENTRIES = [  # name, mode, uid, gid
    ("usr", 0o755, 0, 0),
    ("usr/local", 0o755, 0, 0),
    ("usr/local/user-suid", 0o4755, 1000, 1000),
    ("usr/local/group-sgid", 0o2755, 0, 1002),
    ("usr/local/root-suid", 0o4755, 0, 0),
]


def _layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, mode, uid, gid in ENTRIES:
            kind = "dir" if name in ("usr", "usr/local") else "file"
            data = b"" if kind == "dir" else b"#!/bin/sh\nid\n"
            tf.addfile(ib._ti(name, kind, mode, len(data), uid=uid, gid=gid), io.BytesIO(data))
    return buf.getvalue()


def test_save_keeps_setuid_owner(img):
    path = os.path.join(img[2], "suid.tar")
    ib.write_docker_save(path, tars=ib.layers() + [_layer()], tag="suid:1")
    os.chown(path, img[0].uid, img[0].gid)
    r = cli(img, "image", "import", path)
    assert r.returncode == 0, r
    out = os.path.join(img[2], "suid-out.tar")
    r = cli(img, "image", "save", "suid:1", "-o", out)
    assert r.returncode == 0, r
    with tarfile.open(out) as t:
        last = json.load(t.extractfile("manifest.json"))[0]["Layers"][-1]
        with tarfile.open(fileobj=io.BytesIO(t.extractfile(last).read())) as lt:
            got = {m.name: (m.mode, m.uid, m.gid) for m in lt.getmembers()}
    # denied: no setuid/setgid bit on an entry the archive did not give to root
    assert got == {n: (m, u, g) for n, m, u, g in ENTRIES}, got
    assert not [n for n, (m, u, g) in got.items() if (m & 0o4000 and u == 0 and n != "usr/local/root-suid")
                or (m & 0o2000 and g == 0)], got
