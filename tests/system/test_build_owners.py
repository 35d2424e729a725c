"""Ownership in built layers, as root and as the unprivileged test user with its subordinate ids
(a rootless `auto` map): `RUN chown`, `COPY --chown`, `USER 1000` + the files its RUN creates end
up in the layer with the ids inside (the layer tar's owners) and a later run sees them; files only
their owner may read (mode 0600/0000 owned by a subordinate uid) are packed too."""
from __future__ import annotations

import json
import os
import tarfile

import imagebuild as ib
from buildhelpers import build, run_img
from buildhelpers import ctx_dir as _ctx
from conftest import single_id

DF = """FROM busybox:test
RUN touch /f && chown 1000:1000 /f && mkdir /d && touch /d/secret && chown 1001:1002 /d/secret && chmod 600 /d/secret
RUN touch /locked && chown 1000:1000 /locked && chmod 000 /locked
COPY --chown=1000 c.txt /c.txt
RUN mkdir /srv && chown 1002:1002 /srv
COPY --chown=1000 c.txt /srv/c.txt
RUN mkdir -p /home/u && chown 1000:1000 /home/u
USER 1000
RUN touch /home/u/mine && echo data > /home/u/mine
"""
WANT = {"/f": "1000:1000", "/d/secret": "1001:1002", "/locked": "1000:1000", "/c.txt": "1000:1000",
        "/home/u": "1000:1000", "/home/u/mine": "1000:1000", "/d": "0:0",
        "/srv": "1002:1002", "/srv/c.txt": "1000:1000"}   # /srv: a COPY's parent keeps its owner inside


def test_owners_in_layers_and_at_run_time(img):
    runner = img[0]
    if single_id(runner):
        return      # one id mapped: nothing but root exists inside (docs/profile-format.md)
    ctx = _ctx(img, {"Dockerfile": DF, "c.txt": "c\n"}, "own")
    r = build(img, ctx, tag="owners:1")
    assert r.returncode == 0, r
    paths = sorted(WANT)
    r = run_img(img, "owners:1", "/bin/stat", "-c", "%n=%u:%g", *paths, opts=("--user", "0"))
    assert r.returncode == 0, r
    got = dict(line.split("=") for line in r.stdout.split())
    assert got == WANT, r
    r = run_img(img, "owners:1", "/bin/cat", "/home/u/mine")       # USER 1000 reads its own file
    assert r.returncode == 0 and r.stdout == "data\n", r
    r = run_img(img, "owners:1", "/bin/cat", "/d/secret")           # 1000 may not read 1001's 0600
    assert r.returncode != 0 and "Permission denied" in r.stderr, r
    rec = json.loads(ib.cli(img, "image", "inspect", "owners:1").stdout)[0]
    digests = [la["digest"] for la in rec["layers"]]
    owners = {}
    if runner.rootless:
        # the caller's store keeps its own files; the layer tar's owners are recorded with the
        # layer (owners.json, store/extract.py), read by the uid-shifted copies of later runs.
        for d in digests:
            with open(os.path.join(img[1], "layers", d.split(":")[1], "owners.json")) as f:
                for path, (u, g) in json.load(f).items():
                    owners["/" + path] = f"{u}:{g}"
    else:                           # the saved layers carry the ids inside (docker-archive)
        out = os.path.join(img[2], "owners.tar")
        r = ib.cli(img, "image", "save", "owners:1", "-o", out)
        assert r.returncode == 0, r
        with tarfile.open(out) as outer:
            manifest = json.load(outer.extractfile("manifest.json"))
            for layer in manifest[0]["Layers"]:
                with tarfile.open(fileobj=outer.extractfile(layer)) as lt:
                    for ti in lt:
                        owners["/" + ti.name.rstrip("/")] = f"{ti.uid}:{ti.gid}"
    for p, want in WANT.items():
        if p != "/d":
            assert owners.get(p) == want, (p, owners.get(p))
