"""The hole: a build's RUN steps had no W^X at all (the build root, /tmp and /dev/shm included, was
writable and executable), while strict's Landlock rules never let a written path execute. Now a
binary a step drops in /tmp, /var/tmp or /dev/shm does not run (Landlock: EACCES, exit 126), and
the same bytes copied where programs live do (docs/images.md, "W^X in builds"); root and rootless."""
from __future__ import annotations

from buildhelpers import build
from buildhelpers import ctx_dir as _ctx


def test_build_scratch_dirs_not_executable(img):
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        df = (f"FROM busybox:test\nRUN mkdir -p {d} && cp /bin/busybox {d}/true && chmod 755 {d}/true "
              f"&& {d}/true true\n")
        ctx = _ctx(img, {"Dockerfile": df}, "wxd")
        r = build(img, ctx, "--no-cache", tag="wxd:1")
        assert r.returncode == 1, (d, r)
        assert "Permission denied" in r.stderr and "the command exited with 126" in r.stderr, (d, r.stderr)
        # the other side: the same file written there is readable and copied elsewhere runs
        df = (f"FROM busybox:test\nRUN mkdir -p {d} && cp /bin/busybox {d}/true && mkdir -p /bin/x && cp {d}/true /bin/x/true "
              f"&& /bin/x/true true\n")
        ctx = _ctx(img, {"Dockerfile": df}, "wxd")
        r = build(img, ctx, "--no-cache", tag="wxd:2")
        assert r.returncode == 0, (d, r)
