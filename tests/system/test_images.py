"""Image store, safe import, overlay copy-on-write roots, diff/commit, volumes -- real, as root and rootless.

Overlay mounts happen inside a private mount namespace (`unshare -m` as root, `unshare -Urm` as the
unprivileged test user) through tests/imagebuild.py's `run-root` helper, which mounts the root with
sandbox.store.overlay.mount_root, chroots into it and runs a script with the image's busybox. Nothing is
mounted in the host's namespace. Each test uses its own state directory (PYSANDBOX_STATE_DIR).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

import imagebuild as ib
from conftest import REPO

PY = sys.executable
HELPER = str(REPO / "tests" / "imagebuild.py")


@pytest.fixture
def env(runner, shared_tmp):
    """(runner, state dir, work dir): a fresh store owned by the runner's user, plus test images."""
    state = shared_tmp / "state"
    work = shared_tmp / "work"
    work.mkdir()
    os.chown(shared_tmp, runner.uid, runner.gid)
    os.chown(work, runner.uid, runner.gid)
    ib.write_oci_layout(str(work / "oci"), ref="test")
    ib.write_docker_save(str(work / "save.tar"))
    ib.write_rootfs_tar(str(work / "rootfs.tar.gz"))
    ib.write_rootfs_dir(str(work / "rootfsdir"))
    for dp, dns, fns in os.walk(work):
        for n in dns + fns:
            os.lchown(os.path.join(dp, n), runner.uid, runner.gid)
    return runner, str(state), str(work)


def cli(env_, *args, **kw):
    runner, state, _ = env_
    return runner(*args, env={"PYSANDBOX_STATE_DIR": state}, **kw)


def py_as(env_, code: str, extra_env=None) -> subprocess.CompletedProcess:
    """Run Python code as the runner's user with the store's environment (rootless: the user's own store)."""
    runner, state, _ = env_
    kw = dict(user=runner.uid, group=runner.gid, extra_groups=[]) if runner.rootless else {}
    pre = f"import sys, pickle; sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'tests')!r})\n"
    p = subprocess.run([PY, "-c", pre + code], capture_output=True, text=True, timeout=120, cwd="/tmp",
                       env=runner.env({"PYSANDBOX_STATE_DIR": state, **(extra_env or {})}), **kw)
    assert p.returncode == 0, p.stderr
    return p


def prepare(env_, cid: str, image: str = "busybox:test", read_only: bool = False, mounts: str = "()",
            uid_map: str = "()", extra_env=None) -> str:
    runner, state, work = env_
    out = os.path.join(work, f"{cid}.pkl")
    py_as(env_, f"""
from sandbox.store import overlay
from policies.plan import Filesystem, Mount, IdMapEntry
# keep=True: this short-lived process is not the supervisor; without it the next prepare_root would
# reclaim the layer as one of a dead supervisor (finish_root(keep=False) still deletes it)
spec = overlay.prepare_root(Filesystem(image={image!r}, read_only={read_only}, mounts={mounts}, keep=True), {cid!r},
                            rootless={runner.rootless}, uid_map={uid_map}, gid_map={uid_map})
pickle.dump(spec, open({out!r}, "wb"))
""", extra_env)
    return out


def finish(env_, spec_path: str, keep: bool) -> None:
    py_as(env_, f"""
from sandbox.store import overlay
overlay.finish_root(pickle.load(open({spec_path!r}, "rb")), keep={keep})
""")


def in_root(env_, spec_path: str, script: str, binds: str = "") -> subprocess.CompletedProcess:
    """Mount the overlay root in a private mount namespace and run `script` chrooted in it."""
    runner, state, work = env_
    target = os.path.join(work, "mnt-" + os.path.basename(spec_path)[:-4])
    os.makedirs(target, exist_ok=True)
    os.chown(target, runner.uid, runner.gid)
    extra = {"PYSANDBOX_STATE_DIR": state, "BINDS": binds}
    if runner.rootless:
        cmd = ["unshare", "-Urm", PY, HELPER, "run-root", spec_path, target, script]
        extra["ROOTLESS"] = "1"
        kw = dict(user=runner.uid, group=runner.gid, extra_groups=[])
    else:
        cmd = ["unshare", "-m", PY, HELPER, "run-root", spec_path, target, script]
        kw = {}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/tmp", env=runner.env(extra), **kw)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def tree_digest(path: str) -> dict:
    """path -> (mode, uid, size, sha256) of every entry below path (to prove layers are untouched)."""
    out = {}
    for dp, dns, fns in os.walk(path):
        for n in dns + fns:
            p = os.path.join(dp, n)
            st = os.lstat(p)
            h = None
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    h = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(p, path)] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, h)
    return out


def store_snapshot(state: str) -> tuple:
    idx = os.path.join(state, "images.json")
    index = open(idx, "rb").read() if os.path.exists(idx) else None
    layers = sorted(os.listdir(os.path.join(state, "layers"))) if os.path.isdir(os.path.join(state, "layers")) else []
    tmp = sorted(os.listdir(os.path.join(state, "tmp"))) if os.path.isdir(os.path.join(state, "tmp")) else []
    return index, layers, tmp


# --------------------------------------------------------------------------- import

def test_import_every_format(env):
    runner, state, work = env
    r = cli(env, "image", "import", f"{work}/oci", "bb-oci")
    assert r.returncode == 0 and "imported bb-oci:latest" in r.stdout and "3 layers" in r.stdout, r
    r = cli(env, "image", "import", f"{work}/save.tar")          # name from RepoTags
    assert r.returncode == 0 and "busybox:test" in r.stdout, r
    r = cli(env, "image", "import", f"{work}/rootfs.tar.gz", "flat")
    assert r.returncode == 0 and "1 layers" in r.stdout, r
    r = cli(env, "image", "import", f"{work}/rootfsdir", "fromdir")
    assert r.returncode == 0, r
    subprocess.run(["tar", "-C", f"{work}/oci", "-cf", f"{work}/oci.tar", "."], check=True)
    os.chown(f"{work}/oci.tar", runner.uid, runner.gid)
    r = cli(env, "image", "import", f"{work}/oci.tar", "ocitar")       # an OCI layout as a tarball
    assert r.returncode == 0 and "3 layers" in r.stdout, r
    r = cli(env, "image", "ls")
    assert r.returncode == 0
    for n in ("bb-oci:latest", "busybox:test", "flat:latest", "fromdir:latest", "ocitar:latest"):
        assert n in r.stdout, r
    imgs = {i["name"]: i for i in json.loads(cli(env, "image", "ls", "--json").stdout)}
    # OCI layout and docker save of the same image: same config -> same image id, layers stored once
    assert imgs["bb-oci:latest"]["id"] == imgs["busybox:test"]["id"]
    assert imgs["busybox:test"]["layers"] == [ib.sha(t) for t in ib.layers()]
    assert len(os.listdir(os.path.join(state, "layers"))) == 5
    assert os.listdir(os.path.join(state, "tmp")) == []
    # the store belongs to whoever imported (rootless: the unprivileged user)
    st = os.stat(os.path.join(state, "layers", imgs["busybox:test"]["layers"][0][7:], "diff", "bin", "busybox"))
    assert st.st_uid == runner.uid and st.st_mode & 0o777 == 0o755


def test_history_and_rm(env):
    runner, state, work = env
    assert cli(env, "image", "import", f"{work}/save.tar").returncode == 0
    r = cli(env, "image", "history", "busybox:test")
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["LAYER", "CREATED", "CREATED"]
    # newest first, with created-by and sizes
    assert "RUN rm /etc/remove-me" in lines[1] and "ADD busybox-static rootfs" in lines[3]
    assert lines[3].split()[-1].endswith("MB")
    r = cli(env, "image", "history", "nosuch")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no such image: nosuch" in r.stderr, r
    r = cli(env, "image", "rm", "busybox:test")
    assert r.returncode == 0 and "untagged busybox:test" in r.stdout and r.stdout.count("deleted layer") == 3, r
    assert os.listdir(os.path.join(state, "layers")) == []


@pytest.mark.parametrize("case,expect", [
    ("traversal", "path traversal"),
    ("absolute", "absolute path"),
    ("symlink_write_through", "is a symlink"),
    ("symlink_dotdot", "is a symlink"),
    ("hardlink_outside", "path traversal"),
    ("device", "device node 8:0 not allowed"),
    ("huge", "claims 1.1TB"),
    ("corrupt_gzip", "corrupt"),
    ("truncated_gzip", "corrupt or truncated"),
    ("garbage", "not a tar archive"),
])
def test_malicious_archives_leave_the_store_unchanged(env, case, expect):
    runner, state, work = env
    assert cli(env, "image", "import", f"{work}/save.tar").returncode == 0
    before = store_snapshot(state)
    outside = os.path.join(work, "outside")
    os.mkdir(outside)
    os.chown(outside, runner.uid, runner.gid)
    data = {"traversal": ib.evil_traversal, "absolute": ib.evil_absolute,
            "symlink_write_through": lambda: ib.evil_symlink_write_through(outside),
            "symlink_dotdot": ib.evil_symlink_parent_dotdot, "hardlink_outside": ib.evil_hardlink_outside,
            "device": ib.evil_device, "huge": ib.evil_huge_claim, "corrupt_gzip": ib.corrupt_gzip,
            "truncated_gzip": ib.truncated_gzip, "garbage": lambda: b"this is not an archive\n" * 40}[case]()
    path = os.path.join(work, f"evil-{case}.tar")
    with open(path, "wb") as f:
        f.write(data)
    r = cli(env, "image", "import", path, "evil")
    assert r.returncode == 2, r
    assert r.stderr.count("\n") == 1 and expect in r.stderr, r
    assert store_snapshot(state) == before
    assert os.listdir(outside) == []
    assert not os.path.exists("/tmp/escaped-abs") and not os.path.exists(os.path.join(work, "escaped-file"))
    assert "evil" not in cli(env, "image", "ls", "-q").stdout


def test_devices_can_be_skipped(env):
    runner, state, work = env
    path = os.path.join(work, "dev.tar")
    with open(path, "wb") as f:
        f.write(ib.make_tar([("dev", "dir"), ("dev/sda", "blk", (8, 0)), ("etc", "dir"),
                             ("etc/motd", "file", b"hi\n")]))
    r = cli(env, "image", "import", "--devices", "skip", path, "nodev")
    assert r.returncode == 0 and "skipped 1 device node" in r.stderr, r
    rec = json.loads(cli(env, "image", "ls", "--json").stdout)[0]
    diff = os.path.join(state, "layers", rec["layers"][0][7:], "diff")
    assert os.listdir(os.path.join(diff, "dev")) == [] and os.path.isfile(os.path.join(diff, "etc", "motd"))


def test_corrupt_oci_blob_is_refused(env):
    runner, state, work = env
    oci = os.path.join(work, "oci")
    blobs = os.path.join(oci, "blobs", "sha256")
    idx = json.load(open(os.path.join(oci, "index.json")))
    man = json.load(open(os.path.join(blobs, idx["manifests"][0]["digest"][7:])))
    layer = os.path.join(blobs, man["layers"][1]["digest"][7:])
    with open(layer, "r+b") as f:      # flip bytes in the gzip stream of layer 2
        f.seek(30)
        f.write(b"\x00\x01\x02\x03")
    r = cli(env, "image", "import", oci, "broken")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r
    assert "layer 2/3" in r.stderr, r
    assert store_snapshot(state)[1] == []


# --------------------------------------------------------------------------- overlay roots

def test_copy_on_write_two_sandboxes_diff_and_commit(env):
    runner, state, work = env
    assert cli(env, "image", "import", f"{work}/save.tar").returncode == 0
    layers_before = tree_digest(os.path.join(state, "layers"))
    a, b = prepare(env, "sbxA"), prepare(env, "sbxB")
    p = in_root(env, a, "echo changed-by-A > /etc/motd && cat /etc/motd && id -u")
    assert p.returncode == 0 and p.stdout.splitlines() == ["changed-by-A", "0"], p
    p = in_root(env, b, "cat /etc/motd")
    assert p.returncode == 0 and p.stdout.encode() == ib.MOTD, p
    assert tree_digest(os.path.join(state, "layers")) == layers_before      # layers byte-identical
    finish(env, a, keep=True)
    finish(env, b, keep=False)
    assert not os.path.exists(os.path.join(state, "containers", "sbxB"))
    r = cli(env, "diff", "sbxA")
    assert r.returncode == 0 and r.stdout.splitlines() == ["C /etc", "C /etc/motd"], r
    r = cli(env, "commit", "sbxA", "motd:changed", "-m", "new motd")
    assert r.returncode == 0 and r.stdout.startswith("motd:changed "), r
    r = cli(env, "image", "history", "motd:changed")
    assert "pysandbox commit sbxA" in r.stdout.splitlines()[1] and "new motd" in r.stdout, r
    # a sandbox from the committed image sees A's change; the base image still the original
    c = prepare(env, "sbxC", image="motd:changed")
    assert in_root(env, c, "cat /etc/motd").stdout == "changed-by-A\n"
    finish(env, c, keep=False)
    d = prepare(env, "sbxD")
    assert in_root(env, d, "cat /etc/motd").stdout.encode() == ib.MOTD
    finish(env, d, keep=False)
    r = cli(env, "diff", "nosuch")
    assert r.returncode == 2 and "no such container" in r.stderr


def test_whiteouts_and_opaque_dirs(env):
    runner, state, work = env
    assert cli(env, "image", "import", f"{work}/oci", "bb").returncode == 0
    s = prepare(env, "wh", image="bb")
    p = in_root(env, s, "ls /etc; echo --; ls /usr/share/data; echo --; cat /usr/share/data/c; "
                        "test -e /etc/remove-me && echo PRESENT || echo absent")
    assert p.returncode == 0, p
    etc = p.stdout.split("--\n")[0].split()
    assert "remove-me" not in etc and {"motd", "layer2", "layer3", "passwd"} <= set(etc), p.stdout
    assert p.stdout.split("--\n")[1].split() == ["c"]                     # opaque: a, b of lower layers gone
    assert p.stdout.strip().endswith("absent")
    # deleting a lower file and adding files shows up in diff (D / A)
    p = in_root(env, s, "rm /etc/layer2 && mkdir /newdir && echo x > /newdir/f")
    assert p.returncode == 0, p
    finish(env, s, keep=True)
    r = cli(env, "diff", "wh")
    assert r.stdout.splitlines() == ["C /etc", "D /etc/layer2", "A /newdir", "A /newdir/f"], r
    r = cli(env, "commit", "wh", "deleted", "--rm")
    assert r.returncode == 0, r
    s2 = prepare(env, "wh2", image="deleted")
    p = in_root(env, s2, "test -e /etc/layer2 && echo PRESENT || echo absent; cat /newdir/f")
    assert p.stdout.split() == ["absent", "x"], p
    finish(env, s2, keep=False)


def test_read_only_root_no_upper(env):
    runner, state, work = env
    assert cli(env, "image", "import", f"{work}/save.tar").returncode == 0
    vol = os.path.join(work, "vol")
    os.mkdir(vol)
    os.chown(vol, runner.uid, runner.gid)
    s = prepare(env, "ro", read_only=True, mounts="(Mount(type='bind', source=%r, target='/data'),)" % vol)
    assert not os.path.exists(os.path.join(state, "containers", "ro", "upper"))
    p = in_root(env, s, "echo x > /etc/motd; echo rc=$?; touch /newfile; echo rc=$?; mkdir /d; echo rc=$?; "
                        "rm /etc/passwd; echo rc=$?; echo ok > /data/f && cat /data/f",
                binds=f"{vol}=/data")
    assert p.returncode == 0, p
    assert p.stdout.split() == ["rc=1", "rc=1", "rc=1", "rc=1", "ok"], p
    assert p.stderr.count("Read-only file system") == 4, p.stderr
    assert open(os.path.join(vol, "f")).read() == "ok\n"       # the bind mount (volume) is writable
    finish(env, s, keep=True)                                    # read-only: nothing to keep
    assert not os.path.exists(os.path.join(state, "containers", "ro"))


# --------------------------------------------------------------------------- bind targets

def test_safe_target_stays_inside_the_root(env, shared_tmp):
    runner, state, work = env
    root = os.path.join(work, "fakeroot")
    os.makedirs(os.path.join(root, "etc"))
    os.symlink("/", os.path.join(root, "abs"))
    os.symlink("../../../../../../tmp", os.path.join(root, "rel"))
    os.symlink("/etc", os.path.join(root, "etclink"))
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            os.lchown(os.path.join(dp, n), runner.uid, runner.gid)
    os.chown(root, runner.uid, runner.gid)
    name = f"pysbx-safe-target-{os.getpid()}"
    p = py_as(env, f"""
import os
from sandbox.store import overlay
from sandbox.store.images import ImageError
for dst in ("/abs/tmp/{name}", "/rel/{name}", "/etclink/{name}"):
    t = overlay.safe_target({root!r}, dst, create="dir")
    print(os.readlink(t))
try:
    overlay.safe_target({root!r}, "/missing/x")
except ImageError as e:
    print("ERR", e)
""")
    out = p.stdout.splitlines()
    assert out[:3] == [f"{root}/tmp/{name}", f"{root}/tmp/{name}", f"{root}/etc/{name}"], out
    assert out[3].startswith("ERR mount target /missing/x does not exist")
    assert not os.path.exists(f"/tmp/{name}") and not os.path.exists(f"/etc/{name}")


def test_bind_through_image_symlink_is_confined(env):
    """/var/run -> ../run in the image: a bind on /var/run/x lands on /run/x inside the root."""
    runner, state, work = env
    assert cli(env, "image", "import", f"{work}/save.tar").returncode == 0
    src = os.path.join(work, "bindsrc")
    os.mkdir(src)
    open(os.path.join(src, "hello"), "w").write("hi\n")
    os.chown(src, runner.uid, runner.gid)
    s = prepare(env, "bind")
    p = in_root(env, s, "cat /run/x/hello", binds=f"{src}=/var/run/x")
    assert p.returncode == 0 and p.stdout == "hi\n", p
    finish(env, s, keep=False)


# --------------------------------------------------------------------------- volumes

def test_named_volume_persists_across_runs(env):
    runner, state, work = env
    assert cli(env, "image", "import", f"{work}/save.tar").returncode == 0
    r = cli(env, "volume", "create", "mongo_data", "--label", "app=db")
    assert r.returncode == 0 and r.stdout.strip() == "mongo_data", r
    info = json.loads(cli(env, "volume", "inspect", "mongo_data").stdout)[0]
    assert info["Labels"] == {"app": "db"} and info["Mountpoint"].startswith(state)
    path = py_as(env, "from sandbox.store.volumes import resolve_volume\n"
                      f"print(resolve_volume('mongo_data', rootless={runner.rootless}, create=False))").stdout.strip()
    assert path == info["Mountpoint"]
    s1 = prepare(env, "v1", read_only=True, mounts="(Mount(type='volume', source='mongo_data', target='/data'),)")
    p = in_root(env, s1, "echo written-by-run-1 > /data/db.txt", binds=f"{path}=/data")
    assert p.returncode == 0, p
    finish(env, s1, keep=False)
    s2 = prepare(env, "v2")
    p = in_root(env, s2, "cat /data/db.txt", binds=f"{path}=/data")
    assert p.returncode == 0 and p.stdout == "written-by-run-1\n", p
    finish(env, s2, keep=False)
    assert "mongo_data" in cli(env, "volume", "ls").stdout
    r = cli(env, "volume", "create", "mongo_data")
    assert r.returncode == 2 and "already exists" in r.stderr
    r = cli(env, "volume", "create", "../x")
    assert r.returncode == 2 and "invalid volume name" in r.stderr
    assert cli(env, "volume", "rm", "mongo_data").returncode == 0
    assert not os.path.exists(path)
    r = py_as(env, "from sandbox.store.volumes import resolve_volume\nfrom sandbox.store.images import ImageError\n"
                   f"try:\n    resolve_volume('gone', rootless={runner.rootless}, create=False)\n"
                   "except ImageError as e:\n    print(e)")
    assert "no such volume: gone" in r.stdout


def test_progress_bar_only_on_a_terminal():
    import io
    from sandbox.store.extract import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True
    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        p = Progress("importing x", 1000, stream=stream)
        p.start -= 1                      # pretend the import has been running for a second
        p.update(500)
        p.close()
    assert "importing x [###############" in tty.getvalue() and " 50%" in tty.getvalue()
    assert tty.getvalue().endswith("\r\033[K") and pipe.getvalue() == ""


def test_stale_writable_layers_of_dead_supervisors_are_reclaimed(env):
    runner, state, work = env
    assert cli(env, "image", "import", f"{work}/save.tar").returncode == 0
    s = prepare(env, "dead1")
    meta_path = os.path.join(state, "containers", "dead1", "container.json")
    meta = json.load(open(meta_path))
    meta["pid"] = 2 ** 22 + 12345          # no such process: the supervisor was SIGKILLed
    meta["keep"] = False
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    prepare(env, "next")
    assert sorted(os.listdir(os.path.join(state, "containers"))) == ["next"]
    # a kept one (or one whose supervisor lives) is left alone
    meta = json.load(open(os.path.join(state, "containers", "next", "container.json")))
    meta["pid"] = 2 ** 22 + 12345
    with open(os.path.join(state, "containers", "next", "container.json"), "w") as f:
        json.dump(meta, f)
    prepare(env, "third")
    assert sorted(os.listdir(os.path.join(state, "containers"))) == ["next", "third"]
    assert s


def test_image_inspect(env):
    runner, state, work = env
    assert cli(env, "image", "import", f"{work}/oci", "bb").returncode == 0
    r = cli(env, "image", "inspect", "bb")
    assert r.returncode == 0, r
    rec = json.loads(r.stdout)[0]
    assert rec["name"] == "bb:latest" and rec["format"] == "oci" and len(rec["layers"]) == 3
    assert rec["config"]["Cmd"] == ["/bin/sh"] and rec["size"] == sum(l["size"] for l in rec["layers"])
    assert all(os.path.isdir(l["path"]) for l in rec["layers"])
    assert cli(env, "image", "inspect", "nope").returncode == 2
