"""A registry that serves bytes not matching the digests of a verified manifest — a layer blob,
the config, a manifest pulled by digest, a blob longer than its descriptor — is refused while
streaming (exit 5, one line) and the store is left exactly as it was. The registry is simulated
(tests/registryserver.FakeRegistry): it serves what the test gives it, corrupted on purpose."""
from __future__ import annotations

import json
import os

import pytest

import imagebuild as ib
import registryserver as rs
from imagebuild import cli

MT = "application/vnd.oci.image.manifest.v1+json"


def _image():
    """busybox (already in the store) and a layer of fresh content (not: it must be downloaded)."""
    fresh = ib.make_tar([("etc", "dir"), ("etc/fresh", "file", os.urandom(16).hex().encode())])
    tars = [ib.layers()[0], fresh]
    cfg = ib.config_for(tars)
    man, blobs = rs.image_for_fake(tars, cfg)
    return tars, cfg, man, blobs


def _pull(img, fake, ref="1", name="evil:1"):
    before = rs.store_state(img[1])
    r = cli(img, "image", "pull", "--tls-verify=false", f"{fake.host}/evil/bb{'@' if ref.startswith('sha256:') else ':'}{ref}",
            name)
    assert rs.store_state(img[1]) == before, "the store changed"
    assert len(r.stderr.strip().splitlines()) == 1, r
    return r


@pytest.mark.parametrize("which", ["layer", "config"])
def test_blob_with_wrong_digest_refused(img, which):
    tars, cfg, man, blobs = _image()
    doc = json.loads(man)
    d = doc["layers"][1]["digest"] if which == "layer" else doc["config"]["digest"]
    data = bytearray(blobs[d])
    data[len(data) // 2] ^= 0xFF                       # same size, other bytes
    blobs[d] = bytes(data)
    fake = rs.FakeRegistry("evil/bb", {"1": (man, MT)}, blobs)
    try:
        r = _pull(img, fake)
        assert r.returncode == 5 and "does not match its digest" in r.stderr, r
        assert "evil:1" not in cli(img, "image", "ls", "-q").stdout
    finally:
        fake.stop()


def test_blob_longer_than_its_descriptor_refused(img):
    tars, cfg, man, blobs = _image()
    d = json.loads(man)["layers"][1]["digest"]
    blobs[d] = blobs[d] + b"\0" * (4 << 20)
    fake = rs.FakeRegistry("evil/bb", {"1": (man, MT)}, blobs, no_length=True)
    try:
        r = _pull(img, fake)
        assert r.returncode == 5 and "more bytes than its descriptor" in r.stderr, r
    finally:
        fake.stop()


def test_manifest_not_matching_the_digest_asked_for_refused(img):
    tars, cfg, man, blobs = _image()
    other = json.dumps(dict(json.loads(man), annotations={"x": "y"})).encode()
    fake = rs.FakeRegistry("evil/bb", {rs.sha(man): (other, MT)}, blobs)
    try:
        r = _pull(img, fake, ref=rs.sha(man))
        assert r.returncode == 5 and "does not match its digest" in r.stderr, r
    finally:
        fake.stop()


def test_honest_fake_registry_is_pulled(img):
    """The other side: the same simulated registry, nothing corrupted: pulled and runs."""
    tars, cfg, man, blobs = _image()
    fake = rs.FakeRegistry("evil/bb", {"1": (man, MT)}, blobs)
    try:
        r = cli(img, "image", "pull", "--tls-verify=false", f"{fake.host}/evil/bb:1", "fine:1")
        assert r.returncode == 0, r
        r = cli(img, "run", "--profile", "strict", "--image", "fine:1", "--", "/bin/cat", "/etc/fresh")
        assert r.returncode == 0 and len(r.stdout) == 32 and r.stdout.encode() in tars[1], r
    finally:
        fake.stop()


def test_docker_content_digest_header_disagreeing_refused(img):
    tars, cfg, man, blobs = _image()
    fake = rs.FakeRegistry("evil/bb", {"1": (man, MT, {"Docker-Content-Digest": rs.sha(b"other")})}, blobs)
    try:
        r = _pull(img, fake)
        assert r.returncode == 5 and "Docker-Content-Digest" in r.stderr, r
    finally:
        fake.stop()
