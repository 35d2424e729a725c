"""`pysandbox image save` -> `podman load` -> `podman run` (docker-archive, oci-archive, OCI layout
directory), `podman save` -> `pysandbox image import` -> run, the round trip save -> import, and
save's atomic output, as root and rootless (podman with a storage of its own, as root).
"""
from __future__ import annotations

import json
import os
import shutil

import pytest

import imagebuild as ib
import registryserver as rs
from imagebuild import cli
from registryserver import podman  # noqa: F401  (a fixture)

pytestmark = pytest.mark.skipif(not shutil.which("podman"), reason="podman is in the Makefile's DEB_PKGS")

CHECK = "cat /etc/layer3 /usr/share/data/c; ls /usr/share/data; test -e /etc/remove-me || echo gone"
EXPECTED = ["layer", "3", "c", "c", "gone"]
OWNERS = "stat -c '%u:%g %a %n' /etc/motd /bin/busybox /tmp"
EXPECTED_OWNERS = ["0:0 644 /etc/motd", "0:0 755 /bin/busybox", "0:0 1777 /tmp"]


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive", "oci-dir"])
def test_save_loads_in_podman_and_runs(img, podman, fmt):
    out = os.path.join(img[2], "out" + ("" if fmt == "oci-dir" else ".tar"))
    r = cli(img, "image", "save", "busybox:test", "-o", out, "--format", fmt)
    assert r.returncode == 0, r
    assert not [n for n in os.listdir(img[2]) if n.startswith(".")], "temporary files left"
    if fmt == "oci-dir":
        assert sorted(os.listdir(out)) == ["blobs", "index.json", "oci-layout"]
        p = podman("load", "-i", out)
    else:
        p = podman("load", "-i", out)
    iid = p.stdout.strip().splitlines()[-1].split()[-1]
    p = podman.run(iid, "/bin/sh", "-c", CHECK)
    assert p.stdout.split() == EXPECTED, p.stdout
    # a rootless store's files (owned by the caller) are the image's root's
    assert podman.run(iid, "/bin/sh", "-c", OWNERS).stdout.splitlines() == EXPECTED_OWNERS
    cfg = json.loads(podman("image", "inspect", iid).stdout)[0]
    assert cfg["Config"]["Env"] == ["PATH=/bin"] and cfg["Config"]["Cmd"] == ["/bin/sh"]
    assert [h.get("created_by") for h in cfg["History"]] == ib.HISTORY
    # and back: the archive imports into the store and runs
    r = cli(img, "image", "import", out, "back:1")
    assert r.returncode == 0, r
    r = cli(img, "run", "--profile", "strict", "--image", "back:1", "--", "/bin/sh", "-c", CHECK)
    assert r.returncode == 0 and r.stdout.split() == EXPECTED, r


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_podman_save_imports_and_runs(img, podman, fmt):
    rootfs = ib.write_rootfs_tar(os.path.join(podman.dir, "rootfs.tar"), compress=False)
    podman("import", "--change", "ENV A=1", rootfs, "pod/saved:1")
    out = os.path.join(img[2], f"podman-{fmt}.tar")
    podman("save", "--format", fmt, "-o", out, "pod/saved:1")
    os.chown(out, img[0].uid, img[0].gid)
    r = cli(img, "image", "import", out, "fromPodman:1".lower())
    assert r.returncode == 0, r
    r = cli(img, "run", "--profile", "strict", "--image", "frompodman:1", "--", "/bin/cat", "/etc/motd")
    assert r.returncode == 0 and r.stdout == ib.MOTD.decode(), r
    assert "A=1" in json.loads(cli(img, "image", "inspect", "frompodman:1").stdout)[0]["config"]["Env"]


def test_save_is_atomic(img):
    out = os.path.join(img[2], "keep.tar")
    with open(out, "w") as f:
        f.write("previous content\n")
    os.chown(out, img[0].uid, img[0].gid)
    r = cli(img, "image", "save", "no-such:1", "-o", out)
    assert r.returncode == 2 and "no such image" in r.stderr, r
    r = cli(img, "image", "save", "busybox:test", "-o", os.path.join(img[2], "missing", "x.tar"))
    assert r.returncode == 2 and "does not exist" in r.stderr, r
    # a layer modified after import: refused while packing, the previous file is untouched
    rec = json.loads(cli(img, "image", "inspect", "busybox:test").stdout)[0]
    victim = os.path.join(rec["layers"][1]["path"], "etc", "layer2")
    with open(victim, "a") as f:
        f.write("tampered\n")
    r = cli(img, "image", "save", "busybox:test", "-o", out)
    assert r.returncode == 2 and "modified after it was imported" in r.stderr, r
    assert open(out).read() == "previous content\n"
    assert sorted(os.listdir(img[2])) == ["keep.tar", "save.tar"], "temporary files left"
