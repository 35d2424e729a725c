"""A registry cannot make a pull hold or write more than its bounds: a manifest (or config) larger
than `--limit json` (4 MiB) is refused — announced or not in Content-Length — more than 500 layers
are refused, layers larger than the store's free space (PYSANDBOX_MAX_IMPORT_BYTES caps it here)
are refused before a byte is downloaded, and a hostile layer tar meets the same checks as `image
import`. Exit 5 (2 for what the store's import refuses), one line, the store unchanged. The
registry is simulated (tests/registryserver.FakeRegistry)."""
from __future__ import annotations

import json
import os

import pytest

import imagebuild as ib
import registryserver as rs
from imagebuild import cli

MT = "application/vnd.oci.image.manifest.v1+json"


def _pull(img, fake, *extra, env=None):
    before = rs.store_state(img[1])
    r = img[0]("image", "pull", "--tls-verify=false", *extra, f"{fake.host}/evil/bb:1", "evil:1",
               env={"PYSANDBOX_STATE_DIR": img[1], **(env or {})})
    assert rs.store_state(img[1]) == before, "the store changed"
    assert len(r.stderr.strip().splitlines()) == 1, r
    return r


@pytest.mark.parametrize("announced", [True, False])
def test_manifest_too_big_refused(img, announced):
    tars = ib.layers()[:1]
    man, blobs = rs.image_for_fake(tars, ib.config_for(tars))
    doc = json.loads(man)
    doc["annotations"] = {"pad": "x" * (5 << 20)}
    fake = rs.FakeRegistry("evil/bb", {"1": (json.dumps(doc).encode(), MT)}, blobs, no_length=not announced)
    try:
        r = _pull(img, fake)
        assert r.returncode == 5 and "4194304 bytes allowed" in r.stderr, r
        # raised on request, the same manifest is accepted
        r = img[0]("image", "pull", "--tls-verify=false", "--limit", "json=8M", f"{fake.host}/evil/bb:1", "big:1",
                   env={"PYSANDBOX_STATE_DIR": img[1]})
        assert r.returncode == 0, r
    finally:
        fake.stop()


def test_too_many_layers_refused(img):
    tars = ib.layers()[:1]
    man, blobs = rs.image_for_fake(tars, ib.config_for(tars))
    doc = json.loads(man)
    doc["layers"] = doc["layers"] * 501
    fake = rs.FakeRegistry("evil/bb", {"1": (json.dumps(doc).encode(), MT)}, blobs)
    try:
        r = _pull(img, fake)
        assert r.returncode == 5 and "501 layers, more than the 500" in r.stderr, r
        assert not any("/blobs/" in p for _, p, _ in fake.requests if "sha256" in p and p.count("/") > 3
                       and not p.endswith(json.loads(man)["config"]["digest"]))
    finally:
        fake.stop()


def test_layers_beyond_free_space_refused_before_download(img):
    tars = [ib.make_tar([("big", "file", os.urandom(300_000))])]      # not in the store yet
    man, blobs = rs.image_for_fake(tars, ib.config_for(tars))
    layer_digests = [l["digest"] for l in json.loads(man)["layers"]]
    fake = rs.FakeRegistry("evil/bb", {"1": (man, MT)}, blobs)
    try:
        r = _pull(img, fake, env={"PYSANDBOX_MAX_IMPORT_BYTES": "100000"})
        assert r.returncode == 5 and "free in the image store" in r.stderr, r
        assert not [p for _, p, _ in fake.requests if any(d in p for d in layer_digests)], "layers were downloaded"
    finally:
        fake.stop()


def test_hostile_layer_tar_refused_by_the_import_checks(img):
    tars = [ib.evil_traversal()]
    man, blobs = rs.image_for_fake(tars, ib.config_for(tars))
    fake = rs.FakeRegistry("evil/bb", {"1": (man, MT)}, blobs)
    try:
        r = _pull(img, fake)
        assert r.returncode == 2 and "path traversal" in r.stderr, r
    finally:
        fake.stop()
