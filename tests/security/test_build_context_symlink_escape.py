"""A hostile build context: symlinks in the context never lead a COPY out of it, and a destination
through an image symlink (busybox:test's /hostroot -> /) stays inside the image, as root and rootless.
(The context belongs to the caller; the symlinks are what a downloaded source tree may hold.)"""
from __future__ import annotations

import os
import uuid

import imagebuild as ib
from buildhelpers import build, ctx_dir, run_img


def test_symlinks_in_the_context_are_not_followed_out_of_it(img):
    d = ctx_dir(img, {"Dockerfile": "FROM busybox:test\nCOPY . /ctx/\n", "sub/real.txt": "inside\n"})
    os.symlink("/etc/shadow", os.path.join(d, "abs_file"))
    os.symlink("/etc", os.path.join(d, "abs_dir"))
    os.symlink("../../../../../../../etc/passwd", os.path.join(d, "dotdot"))
    os.symlink("sub/real.txt", os.path.join(d, "ok"))
    for n in ("abs_file", "abs_dir", "dotdot", "ok"):
        os.lchown(os.path.join(d, n), img[0].uid, img[0].gid)
    r = build(img, d, tag="ctx:1")
    assert r.returncode == 0, r
    # copied as links, pointing wherever they point *inside the image*
    r = run_img(img, "ctx:1", "/bin/sh", "-c", "for l in abs_file abs_dir dotdot ok; do readlink /ctx/$l; done;"
                                              "cat /ctx/abs_file 2>&1; cat /ctx/ok")
    assert r.stdout.splitlines()[:4] == ["/etc/shadow", "/etc", "../../../../../../../etc/passwd", "sub/real.txt"], r
    assert "root:" not in r.stdout.split("No such file")[0].split("\n", 4)[-1]   # not the host's shadow
    assert r.stdout.strip().endswith("inside")
    # a source that is such a link: resolved inside the context (-> <ctx>/etc/shadow: absent)
    for src in ("abs_file", "abs_dir/passwd", "dotdot"):
        with open(os.path.join(d, "Dockerfile"), "w") as f:
            f.write(f"FROM busybox:test\nCOPY {src} /x\n")
        r = build(img, d, tag="ctx:2")
        assert r.returncode == 2 and "Dockerfile:2:" in r.stderr and "no such file" in r.stderr, (src, r)
    with open(os.path.join(d, "Dockerfile"), "w") as f:
        f.write("FROM busybox:test\nCOPY ok /x\n")                      # a link within the context: followed
    assert build(img, d, tag="ctx:3").returncode == 0
    assert run_img(img, "ctx:3", "/bin/cat", "/x").stdout == "inside\n"


def test_destination_through_an_image_symlink_stays_in_the_image(img):
    name = f"pysbx-build-dest-{uuid.uuid4().hex[:8]}"
    d = ctx_dir(img, {"Dockerfile": f"FROM busybox:test\nCOPY f /hostroot/opt/{name}\nCOPY f /var/run/\n",
                      "f": "data\n"})
    r = build(img, d, tag="dest:1")
    assert r.returncode == 0, r
    assert not os.path.exists(f"/opt/{name}")
    r = run_img(img, "dest:1", "/bin/sh", "-c", f"cat /opt/{name} /run/f")    # /var/run -> ../run in the image
    assert r.stdout == "data\ndata\n", r
