"""Issue 20 item 2, finished: rootless `strict` gets 65536 ids and a root that is not the caller.

How it failed: rootless `auto` mapped only the caller (root inside was the caller itself), and an
image root (`--image`) or a named volume with subordinate ids was refused rootless ("subordinate
ids rootless work with the host root only"): the rootless stores hold the caller's own files, so a
subordinate root could not own or write its root.

Now, as the unprivileged test user (pysbx-test; its range from useradd, or the `subids` fixture of
test_rootless_ranges.py): rootless `auto` maps the caller's subordinate ids when /etc/subuid and
/etc/subgid give it 65536 each (`id`, /proc/self/uid_map, a file written to a bind mount owned by
the subordinate id on the host, `explain` says which map and why); an image imported rootless
appears with its archive's owners (files root's inside, a 1000-owned directory 1000's; on disk,
uid-shifted copies owned by the subordinate ids, sealed: a copy changed on disk is rebuilt, never
used), chown works, the writable layer works; a named volume is written by the subordinate root
and removed by `volume rm`; a caller without subordinate ids keeps the single-id `auto` (explain
says why) and `subordinate` stays refused (test_rootless_ranges.py::test_no_subordinate_ids_is_refused).
Nothing is simulated.
"""
from __future__ import annotations

import glob
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import PYSANDBOX, state_env
from test_rootless_ranges import SUBFILES, _Backup, _without_test_user_ranges, nosub_user, subids  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import imagebuild as ib  # noqa: E402

WRITABLE = "version: 1\nextends: default\n"          # auto maps; CAP_CHOWN kept (default profile)


def _owners_layer() -> bytes:
    """A layer with owners other than root: /home/app (1000:1000, 0750) and its 0600 file,
    /var/www (33:33), /etc/shadow (0:42, 0640)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, uid, gid, mode, data in (
                ("home", "dir", 0, 0, 0o755, b""), ("home/app", "dir", 1000, 1000, 0o750, b""),
                ("home/app/secret", "file", 1000, 1000, 0o600, b"app's\n"), ("var/www", "dir", 33, 33, 0o755, b""),
                ("etc/shadow", "file", 0, 42, 0o640, b"root:*:1::::::\n")):
            tf.addfile(ib._ti(name, kind, mode, len(data), uid=uid, gid=gid), io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def store(user_runner, subids, shared_tmp):
    """(run, state dir): busybox:test plus the owners layer, imported by pysbx-test into a store of
    its own; run(*args) runs pysandbox against it as pysbx-test."""
    os.chown(shared_tmp, user_runner.uid, user_runner.gid)
    state, work = shared_tmp / "state", shared_tmp / "work"
    work.mkdir()
    ib.write_docker_save(str(work / "save.tar"), tars=ib.layers() + [_owners_layer()])
    for p in (work, work / "save.tar"):
        os.chown(p, user_runner.uid, user_runner.gid)

    def run(*args, **kw):
        return user_runner(*args, env={"PYSANDBOX_STATE_DIR": str(state)}, **kw)
    r = run("image", "import", str(work / "save.tar"))
    assert r.returncode == 0, r
    return run, state


def test_strict_rootless_auto_is_the_subordinate_range(user_runner, subids, shared_tmp):
    su, sg = subids
    d = shared_tmp / "w"
    d.mkdir()
    os.chmod(d, 0o1777)
    r = user_runner("run", "--profile", "strict", "-v", f"{d}:/w", "--", "/bin/sh", "-c",
                    "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map; touch /w/made")
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert lines[:2] == ["0", "0"], r
    assert lines[2].split() == ["0", str(su), "65536"] and lines[3].split() == ["0", str(sg), "65536"], r
    st = os.stat(d / "made")
    assert (st.st_uid, st.st_gid) == (su, sg) and st.st_uid != user_runner.uid
    r = user_runner("explain", "--profile", "strict")
    assert "uid_map 0-65535->%d-%d" % (su, su + 65535) in r.stdout, r
    assert "auto: user pysbx-test's subordinate ids" in r.stdout and "root inside is not the caller" in r.stdout, r


def test_image_root_rootless_with_subordinate_ids(user_runner, subids, store, tmp_profile):
    run, state = store
    su, sg = subids
    show = ("id -u; stat -c '%u %g %a' /bin/busybox /etc/motd /home/app /home/app/secret /var/www /etc/shadow; "
            "cat /home/app/secret; cat /proc/self/uid_map")
    r = run("run", "--profile", tmp_profile(WRITABLE, "w.yaml"), "--read-write", "--image", "busybox:test", "--",
            "/bin/sh", "-c", show + "; echo new > /home/app/new && chown 33:33 /home/app/new && "
            "stat -c '%u %g' /home/app/new; touch /etc/x && echo layer-ok")
    assert r.returncode == 0, r
    out = r.stdout.splitlines()
    assert out[0] == "0", r
    assert out[1:7] == ["0 0 755", "0 0 644", "1000 1000 750", "1000 1000 600", "33 33 755", "0 42 640"], r
    assert out[7] == "app's", r                                   # root inside (CAP_DAC_OVERRIDE there)
    assert out[8].split() == ["0", str(su), "65536"], r
    assert out[9:] == ["33 33", "layer-ok"], r                      # chown, the writable layer
    # on disk: copies owned by the subordinate ids, in <store>/userns (the caller's layers unchanged)
    copies = sorted(glob.glob(f"{state}/userns/l-*"))
    secret = [c for c in copies if os.path.isfile(f"{c}/home/app/secret")]
    assert len(secret) == 1, copies
    st = os.lstat(f"{secret[0]}/home/app/secret")
    assert (st.st_uid, st.st_gid) == (su + 1000, sg + 1000)
    assert os.stat(f"{state}/userns").st_uid == su
    layer = glob.glob(f"{state}/layers/*/diff/home/app/secret")[0]
    assert os.lstat(layer).st_uid == user_runner.uid
    assert not glob.glob(f"{state}/userns/c-*") and not os.listdir(f"{state}/containers")   # cleaned up
    # strict (read-only root, no capabilities): root inside, but not the caller nor the app's uid
    r = run("run", "--profile", "strict", "--image", "busybox:test", "--", "/bin/sh", "-c",
            "id -u; cat /home/app/secret; touch /etc/y; echo done")
    assert r.stdout.split() == ["0", "done"], r
    assert "Permission denied" in r.stderr and "Read-only file system" in r.stderr, r


def test_shifted_copy_changed_on_disk_is_not_used(user_runner, subids, store):
    """A uid-shifted copy is sealed as a layer is: one changed on disk (here by host root) is
    rebuilt from the caller's layer before the next run, never used."""
    run, state = store
    r = run("run", "--profile", "strict", "--image", "busybox:test", "--", "/bin/cat", "/etc/motd")
    assert r.returncode == 0 and r.stdout == ib.MOTD.decode(), r
    motd = [p for p in glob.glob(f"{state}/userns/l-*/etc/motd")]
    assert len(motd) == 1, motd
    Path(motd[0]).write_text("changed on disk\n")
    r = run("run", "--profile", "strict", "--image", "busybox:test", "--", "/bin/cat", "/etc/motd")
    assert r.returncode == 0 and r.stdout == ib.MOTD.decode(), r
    assert Path(motd[0]).read_bytes() == ib.MOTD


def test_named_volume_rootless_with_subordinate_ids(user_runner, subids, store):
    run, state = store
    su, sg = subids
    r = run("run", "--profile", "strict", "-v", "pysbx-subvol:/data", "--", "/bin/sh", "-c",
            "stat -c '%u %g' /data; echo kept > /data/f; mkdir /data/d; echo ok")
    assert r.returncode == 0 and r.stdout.split() == ["0", "0", "ok"], r
    data = state / "volumes" / "pysbx-subvol" / "_data"
    for p in (data, data / "f", data / "d"):
        assert (os.lstat(p).st_uid, os.lstat(p).st_gid) == (su, sg), p
    assert oct(os.stat(state / "volumes").st_mode & 0o7) == "0o0"           # others: still nothing
    r = run("run", "--profile", "strict", "--image", "busybox:test", "-v", "pysbx-subvol:/data", "--",
            "/bin/cat", "/data/f")
    assert r.returncode == 0 and r.stdout == "kept\n", r
    r = run("volume", "rm", "pysbx-subvol")
    assert r.returncode == 0, r
    assert not (state / "volumes" / "pysbx-subvol").exists()


def test_no_subordinate_ids_auto_keeps_the_callers_id(nosub_user, shared_tmp, tmp_profile):
    """A caller without subordinate ids: `auto` maps its own uid (root inside is the caller, as
    before), and explain says so and why; `subordinate` is refused
    (test_rootless_ranges.py::test_no_subordinate_ids_is_refused)."""
    pw = nosub_user
    p = tmp_profile("version: 1\n", "nolimits.yaml")     # (strict's limits need a delegated cgroup)
    os.chmod(shared_tmp, 0o777)
    kw = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], cwd="/tmp", capture_output=True, text=True,
              timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(shared_tmp), "LANG": "C.UTF-8",
                               "PYSANDBOX_STATE_DIR": str(shared_tmp / "state")})
    r = subprocess.run([PYSANDBOX, "run", "--profile", p, "--", "/bin/cat", "/proc/self/uid_map"], **kw)
    assert r.returncode == 0 and r.stdout.split() == ["0", str(pw.pw_uid), "1"], r
    r = subprocess.run([PYSANDBOX, "explain", "--profile", p], **kw)
    assert r.returncode == 0, r
    assert (f"auto: the caller's own ids only (user {pw.pw_name} has 0 subordinate uids and 0 gids in /etc/subuid, "
            f"/etc/subgid;") in r.stdout and "usermod --add-subuids/--add-subgids" in r.stdout, r


def test_auto_follows_the_ranges_past_the_plan_cache(user_runner, subids):
    """The CLI's cached plan of a rootless `auto` depends on /etc/subuid and /etc/subgid: ranges
    withdrawn -> the next run maps the caller's own id; back -> the subordinate range again."""
    su, _ = subids
    show = ("run", "--profile", "strict", "--", "/bin/cat", "/proc/self/uid_map")
    assert user_runner(*show).stdout.split() == ["0", str(su), "65536"]
    assert user_runner(*show).stdout.split() == ["0", str(su), "65536"]          # (cached)
    backup = _Backup()
    try:
        _without_test_user_ranges()
        r = user_runner(*show)
    finally:
        backup.restore()
    assert r.returncode == 0 and r.stdout.split() == ["0", str(user_runner.uid), "1"], r
    assert user_runner(*show).stdout.split() == ["0", str(su), "65536"]
