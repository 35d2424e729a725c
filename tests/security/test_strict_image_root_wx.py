"""strict's Landlock W^X under image and `root:` directory roots (issue 24's review).

strict derives Landlock rules from its mounts (policies/landlock.py, derive_from_mounts): writable
paths are never executable. For a root that is not the host's (an image, a `root:` directory) the
rules granted read + execute on `/` as a whole; Landlock rights add up down a path, so the writable
tmpfs on /tmp under such a root was write + execute: busybox copied there ran (exit 0). The same
for a writable mount inside any read + execute path (a tmpfs inside a read-only bind, host root).
Now execute is carved around the writable paths at launch (carve_execute, sandbox/landlock.py).
Both sides, on this kernel, as root and rootless: the root's own binaries (/bin) still run, a copy
in a writable mount cannot be executed (busybox sh: "Permission denied", exit 126 = EACCES).
"""
from __future__ import annotations

import os

import pytest

import imagebuild as ib
from sandbox import _sys

pytestmark = pytest.mark.skipif(_sys.landlock_abi() < 1, reason="needs Landlock")

# for each DIR: copy the root's busybox to DIR/busybox (chmod 755) and run it; then the original
PROBE = ('for d in {dirs}; do /bin/busybox cp /bin/busybox $d/busybox && /bin/busybox chmod 755 $d/busybox '
         '&& echo "copy $d ok" || echo "copy $d fail"; $d/busybox true; echo "exec $d $?"; done; '
         '/bin/busybox true; echo "exec /bin $?"')


def results(r) -> dict:
    assert r.returncode == 0, r
    return {" ".join(line.split()[:2]): line.split()[2] for line in r.stdout.splitlines()
            if line.startswith(("copy ", "exec "))}


def denied(*dirs) -> dict:
    return {**{f"copy {d}": "ok" for d in dirs}, **{f"exec {d}": "126" for d in dirs}, "exec /bin": "0"}


def test_image_root_tmp_not_executable(img):
    """--image under strict (read-only root): /tmp and /dev/shm are writable, not executable; the
    image's /bin/busybox and its applets run; the copy's EACCES is Landlock's (the tmpfs is not
    noexec: the same copy runs under a profile without Landlock rules)."""
    assert results(ib.sh(img, PROBE.format(dirs="/tmp /dev/shm"))) == denied("/tmp", "/dev/shm")
    r = ib.sh(img, "ls /bin/busybox && cat /etc/motd && /opt/app/run.sh")
    assert r.returncode == 0 and r.stdout.endswith("app\n"), r
    # the other side: without Landlock the same copy runs (the denial above is Landlock's)
    r = ib.cli(img, "run", "--profile", "default", "--image", "busybox:test", "--", "/bin/sh", "-c",
               PROBE.format(dirs="/tmp"))
    assert results(r) == {"copy /tmp": "ok", "exec /tmp": "0", "exec /bin": "0"}


def test_image_root_read_write_tmp_not_executable(img):
    """--read-write: the writable mounts (/tmp, /dev/shm) stay not executable. (The image's own
    tree is then writable and executable: a path rule cannot tell a written file from the image's
    binaries beside it - the documented limit of a writable root, docs/security.md.)"""
    got = results(ib.sh(img, PROBE.format(dirs="/tmp /dev/shm"), "--read-write"))
    assert got == denied("/tmp", "/dev/shm"), got


def test_directory_root_tmp_not_executable(runner, shared_tmp, tmp_profile):
    """`root: {path: DIR}` (read-only) under strict: the same."""
    os.chown(shared_tmp, runner.uid, runner.gid)
    root = ib.write_rootfs_dir(str(shared_tmp / "root"))
    prof = tmp_profile(f"extends: strict\nfilesystem:\n  root: {{path: {root}}}\n")
    r = runner("run", "--profile", prof, "--", "/bin/sh", "-c", PROBE.format(dirs="/tmp /dev/shm"))
    assert results(r) == denied("/tmp", "/dev/shm")


def test_writable_mount_inside_executable_bind(runner, shared_tmp, tmp_profile):
    """Host root: a tmpfs mounted inside a read-only bind (read + execute) is not executable; the
    bind's own files run."""
    d = shared_tmp / "app"
    (d / "scratch").mkdir(parents=True)
    (d / "bin").mkdir()
    os.symlink("/usr/bin/true", d / "bin" / "link")
    with open("/usr/bin/true", "rb") as f, open(d / "bin" / "true", "wb") as o:
        o.write(f.read())
    os.chmod(d / "bin" / "true", 0o755)
    os.chmod(shared_tmp, 0o755)
    prof = tmp_profile(f"""extends: strict
filesystem:
  mounts: !extend
    - {{type: bind, source: {d}, target: /app, read_only: true}}
    - {{type: tmpfs, target: /app/scratch, size: 8m}}
""")
    script = ("cp /usr/bin/true /app/scratch/t && chmod 755 /app/scratch/t && echo copied; "
              "/app/scratch/t; echo scratch $?; /app/bin/true; echo bin $?; /app/bin/link; echo link $?")
    r = runner("run", "--profile", prof, "--", "/bin/sh", "-c", script)
    assert r.returncode == 0, r
    assert r.stdout.split("\n") == ["copied", "scratch 126", "bin 0", "link 0", ""], r


def test_too_many_entries_to_carve_refused(runner, shared_tmp, tmp_profile):
    """A root with more top-level entries than carve_execute may list (a hostile image's): the
    launch is refused (exit 125, one line) rather than run with /tmp executable."""
    from policies.landlock import MAX_CARVE_ENTRIES
    os.chown(shared_tmp, runner.uid, runner.gid)
    root = ib.write_rootfs_dir(str(shared_tmp / "root"))
    for i in range(MAX_CARVE_ENTRIES + 1):
        open(os.path.join(root, f"f{i}"), "w").close()
    prof = tmp_profile(f"extends: strict\nfilesystem:\n  root: {{path: {root}}}\n")
    r = runner("run", "--profile", prof, "--", "/bin/busybox", "true")
    assert r.returncode == 125, r
    assert "landlock: more than" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r


def test_exec_into_image_sandbox_same_carving(img):
    """`pysandbox exec` into a running strict --image sandbox: its command's rules are carved the
    same way (built after joining the sandbox's mount namespace): /tmp copy EACCES, /bin runs."""
    r = ib.cli(img, "run", "-d", "--name", "wx-exec", "--profile", "strict", "--image", "busybox:test", "--",
               "/bin/sleep", "60")
    assert r.returncode == 0, r
    try:
        r = ib.cli(img, "exec", "wx-exec", "/bin/sh", "-c", PROBE.format(dirs="/tmp"))
        assert results(r) == denied("/tmp"), r
    finally:
        ib.cli(img, "rm", "-f", "wx-exec")


def test_explain_names_the_carved_rule(img):
    r = ib.cli(img, "explain", "--profile", "strict", "--image", "busybox:test")
    assert r.returncode == 0, r
    assert "execute beneath /: granted at launch per entry, never on the writable paths in it (W^X)" in r.stdout, r
