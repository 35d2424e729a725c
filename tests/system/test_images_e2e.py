"""End to end through `pysandbox run --image ...` in the `strict` profile, as root and rootless.

Root launches map the sandbox's root to an unprivileged host range (strict's `auto` map), so the
image layers are used through uid-shifted copies; rootless launches use the caller's own store.
Every test has its own store (PYSANDBOX_STATE_DIR) in a temporary directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time

import pytest

import imagebuild as ib
from imagebuild import cli, sh
from conftest import PYSANDBOX




def layers_digest(state: str) -> dict:
    out = {}
    base = os.path.join(state, "layers")
    for h in os.listdir(base):
        d = os.path.join(base, h, "diff")
        for dp, dns, fns in os.walk(d):
            for n in dns + fns:
                p = os.path.join(dp, n)
                st = os.lstat(p)
                data = None
                if os.path.isfile(p) and not os.path.islink(p):
                    data = hashlib.sha256(open(p, "rb").read()).hexdigest()
                out[os.path.relpath(p, base)] = (st.st_mode, st.st_uid, st.st_mtime_ns, data)
    return out


def kept_id(r) -> str:
    m = re.search(r"kept the writable layer of (\S+)", r.stderr)
    assert m, r
    return m.group(1)


def test_run_image_root_and_whiteout(img):
    r = sh(img, "cat /etc/motd; ls /etc; test -e /etc/remove-me && echo PRESENT || echo absent; ls /usr/share/data; id -u")
    assert r.returncode == 0, r
    out = r.stdout.split()
    assert r.stdout.startswith(ib.MOTD.decode()), r
    assert "layer3" in out and "remove-me" not in out and "absent" in out and out[-2:] == ["c", "0"], r


def test_two_sandboxes_copy_on_write_diff_commit(img):
    runner, state, work = img
    before = layers_digest(state)
    a = sh(img, "echo changed-by-A > /etc/motd && cat /etc/motd", "--read-write", "--keep")
    assert a.returncode == 0 and a.stdout == "changed-by-A\n", a
    cid = kept_id(a)
    b = sh(img, "cat /etc/motd", "--read-write")
    assert b.returncode == 0 and b.stdout.encode() == ib.MOTD, b
    after = layers_digest(state)
    assert {k: v for k, v in after.items() if k in before} == before      # layers byte-identical
    d = cli(img, "diff", cid)
    assert d.returncode == 0 and "C /etc/motd" in d.stdout.splitlines(), d
    c = cli(img, "commit", cid, "motd:v2")
    assert c.returncode == 0, c
    r = cli(img, "run", "--profile", "strict", "--image", "motd:v2", "--", "/bin/cat", "/etc/motd")
    assert r.stdout == "changed-by-A\n", r
    h = cli(img, "image", "history", "motd:v2")
    assert f"pysandbox commit {cid}" in h.stdout
    # without --keep nothing is left behind
    assert os.listdir(os.path.join(state, "containers")) == [cid]


def test_read_only_root_tmpfs_and_volume_writable(img):
    r = sh(img, "for p in /etc/motd /newfile /usr/x /bin/busybox; do echo x > $p && echo WROTE $p; done; "
                "echo t > /tmp/t && cat /tmp/t; echo v > /data/v && cat /data/v",
           "--read-only", "-v", "rovol:/data")
    assert r.returncode == 0, r
    assert "WROTE" not in r.stdout and r.stdout.split() == ["t", "v"], r
    assert r.stderr.count("Read-only file system") == 4, r


def test_named_volume_across_runs_and_concurrently(img):
    runner, state, work = img
    r = sh(img, "echo from-run-1 > /data/db", "-v", "mongo_data:/data")
    assert r.returncode == 0, r
    r = sh(img, "cat /data/db", "-v", "mongo_data:/data")
    assert r.stdout == "from-run-1\n", r
    # two sandboxes at once: A waits (bounded) for B's file in the shared volume
    env = runner.env({"PYSANDBOX_STATE_DIR": state})
    kw = dict(user=runner.uid, group=runner.gid, extra_groups=[]) if runner.rootless else {}
    a = subprocess.Popen([PYSANDBOX, "run", "--profile", "strict", "--image", "busybox:test", "-v", "mongo_data:/data",
                          "--", "/bin/sh", "-c",
                          "echo a > /data/a; i=0; while [ ! -e /data/b ] && [ $i -lt 200 ]; do sleep 0.05; "
                          "i=$((i+1)); done; cat /data/b"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd="/tmp", **kw)
    try:
        deadline = time.monotonic() + 20
        vol = os.path.join(state, "volumes", "mongo_data", "_data")
        while not os.path.exists(os.path.join(vol, "a")) and time.monotonic() < deadline:
            time.sleep(0.05)
        r = sh(img, "cat /data/a; echo b > /data/b", "-v", "mongo_data:/data")
        assert r.stdout == "a\n", r
        out, err = a.communicate(timeout=30)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    assert a.returncode == 0 and out == "b\n", (out, err)
    v = json.loads(cli(img, "volume", "inspect", "mongo_data").stdout)[0]
    assert v["Name"] == "mongo_data"


def test_bind_destination_symlink_out_of_root_is_refused(img, shared_tmp):
    runner, state, work = img
    src = os.path.join(work, "src")
    os.mkdir(src)
    os.chown(src, runner.uid, runner.gid)
    name = f"pysbx-bind-escape-{os.getpid()}"
    # /hostroot -> / in the image: the target must not resolve to the host's /tmp
    r = sh(img, "true", "-v", f"{src}:/hostroot/tmp/{name}")
    assert r.returncode == 125 and "symbolic link" in r.stderr and r.stderr.count("\n") == 1, r
    assert not os.path.exists(f"/tmp/{name}")


def test_bad_image_names(img):
    r = sh(img, "true", "--read-only")
    assert r.returncode == 0
    r = cli(img, "run", "--profile", "strict", "--image", "nosuch", "--", "/bin/true")
    assert r.returncode == 125 and "no such image: nosuch" in r.stderr and r.stderr.count("\n") == 1, r


def test_profile_root_image_and_missing_mountpoints(img, tmp_profile):
    runner, state, work = img
    prof = tmp_profile('extends: strict\nfilesystem:\n  root: {image: "busybox:test"}\n  read_only: false\n')
    r = cli(img, "run", "--profile", prof, "--", "/bin/sh", "-c", "echo y > /etc/motd && cat /etc/motd")
    assert r.returncode == 0 and r.stdout == "y\n", r
    # an image without /sys and /tmp, read-only: the mount points come from the per-sandbox top layer
    d = os.path.join(work, "mini")
    ib.write_rootfs_dir(d)
    for dp, dns, fns in os.walk(d):
        for n in dns + fns:
            os.lchown(os.path.join(dp, n), runner.uid, runner.gid)
    assert cli(img, "image", "import", d, "mini").returncode == 0
    r = cli(img, "run", "--profile", "strict", "--image", "mini", "--read-only", "--", "/bin/sh", "-c",
            "ls /; echo t > /tmp/t && cat /tmp/t; echo x > /etc/motd")
    # (/run: the container interface's directory, /run/.containerenv, also from the top layer)
    assert r.returncode == 1 and r.stdout.split() == ["bin", "dev", "etc", "proc", "run", "sys", "tmp", "t"], r
    assert "Read-only file system" in r.stderr


def test_store_is_private_and_still_usable_by_the_mapped_root(img, user_runner):
    """As root the store is 0700 (layers keep the images' setuid binaries): the sandbox's root, an
    unprivileged host uid under strict, gets layers, writable layer and volumes as detached mount
    trees from the supervisor; a local user reaches nothing."""
    runner, state, work = img
    if runner.rootless:
        pytest.skip("rootless: the store belongs to the caller")
    os.chmod(os.path.dirname(state), 0o755)
    os.chmod(state, 0o755)               # even with a world-searchable state dir ...
    r = cli(img, "volume", "create", "made-by-root")
    assert r.returncode == 0
    r = sh(img, "cat /etc/motd >/dev/null && echo w > /data/w && cat /data/w", "-v", "made-by-root:/data")
    assert r.returncode == 0 and r.stdout == "w\n", r
    for d in ("layers", "containers", "volumes", "tmp"):     # ... its parts stay private
        assert os.stat(os.path.join(state, d)).st_mode & 0o777 == 0o700, d
    probe = subprocess.run(["/bin/ls", os.path.join(state, "layers")], capture_output=True, text=True,
                           user=user_runner.uid, group=user_runner.gid, extra_groups=[])
    assert probe.returncode != 0 and "Permission denied" in probe.stderr


@pytest.mark.parametrize("idmap", ["1", "0"])
def test_root_with_mapped_range_idmapped_or_shifted_copy(img, idmap):
    """strict as root maps the sandbox's root to host uid 1000000000+: the layers are used through
    idmapped mounts (default; no copy) or, with PYSANDBOX_IDMAP=0, through uid-shifted copies."""
    runner, state, work = img
    if runner.rootless:
        pytest.skip("rootless: no uid shift")
    before = layers_digest(state)
    r = runner("run", "--profile", "strict", "--image", "busybox:test", "--read-write", "--keep", "--",
               "/bin/sh", "-c", "stat -c %u:%g /etc/passwd; echo new > /etc/motd; cat /etc/motd",
               env={"PYSANDBOX_STATE_DIR": state, "PYSANDBOX_IDMAP": idmap})
    assert r.returncode == 0 and r.stdout.split() == ["0:0", "new"], r
    cid = kept_id(r)
    upper_motd = os.path.join(state, "containers", cid, "upper", "etc", "motd")
    assert os.stat(upper_motd).st_uid == 1000000000                     # written by the mapped root
    shifted = [h for h in os.listdir(os.path.join(state, "layers"))
               if any(n.startswith("shift-") for n in os.listdir(os.path.join(state, "layers", h)))]
    assert bool(shifted) == (idmap == "0"), shifted
    assert {k: v for k, v in layers_digest(state).items() if k in before} == before
    assert cli(img, "diff", cid).stdout.splitlines() == ["C /etc", "C /etc/motd"]
    assert cli(img, "commit", cid, f"shifted{idmap}").returncode == 0
    rec = {i["name"]: i for i in json.loads(cli(img, "image", "ls", "--json").stdout)}[f"shifted{idmap}:latest"]
    top = os.path.join(state, "layers", rec["layers"][-1][7:], "diff", "etc", "motd")
    assert os.stat(top).st_uid == 0 and open(top).read() == "new\n"     # committed with the inside uid


def test_read_only_root_mount_points_keep_the_image_attributes(img):
    """Mount points missing from a read-only image are made in a per-sandbox top layer; the image's
    directories on the way (/, /etc) keep their mode and owner as seen inside."""
    runner, state, work = img
    src = os.path.join(work, "conf")
    os.mkdir(src)
    open(os.path.join(src, "c"), "w").write("conf\n")
    os.chown(src, runner.uid, runner.gid)
    r = sh(img, "stat -c '%u %a' / /etc; cat /etc/conf.d/x/c; ls /etc/conf.d",
           "--read-only", "-v", f"{src}:/etc/conf.d/x:ro")
    assert r.returncode == 0, r
    assert r.stdout.splitlines() == ["0 755", "0 755", "conf", "x"], r
