"""Hole 4: paths inside a root the launcher did not make were resolved on the host.

An image whose `etc` was a symlink to a host directory, run on a private network, made the set-up
create `hosts` in that host directory before pivot_root (rootfs.prepare: makedirs/open/mount on
"new_root/etc/hosts" by name). Now every such path is resolved inside the root by descriptor
(sandbox/inroot.py: openat2 RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS, or a component walk refusing
symlinks) and mounted on as that descriptor (move_mount MOVE_MOUNT_T_EMPTY_PATH).

What is decided per case (docs/images.md, "Paths inside the root"):
* mount points the launcher makes (/proc, /sys, /dev) and the profile's or caller's mount targets
  (tmpfs, bind, volume destinations): a symlink anywhere on the way is refused, exit 125, one line
  naming the path;
* /etc/hosts of a private network: followed *inside the root* (where the program will read it);
  a link that dangles there is refused;
* /etc/resolv.conf of an image: the image's own, never touched.

Every link points at a fresh decoy directory in /var/tmp (never a real system directory), absolute
or through `../../..`; the decoy is compared before and after every run, and is world-writable so
that the hole, were it back, would show for the unprivileged user too. Why not /tmp: before
pivot_root the launcher mounts the new root *on* /tmp (rootfs.BASE, in the sandbox's own mount
namespace), so a link to /tmp/x leads into the new root and would prove nothing. Both sides are shown: the
symlinked image is refused (or confined) and the same image with ordinary directories works.
Root and rootless (`runner`) where images run rootless; private networks need root (`root_runner`
in a network namespace of the test's own, `testns`).
"""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

import imagebuild as ib


def _entries(over: dict) -> list:
    """A busybox root; `over` replaces (or, None, drops) entries by name, with everything below."""
    with open(ib.BUSYBOX, "rb") as f:
        bb = f.read()
    base = [("bin", "dir"), ("bin/busybox", "file", bb, 0o755)]
    base += [(f"bin/{a}", "sym", "busybox") for a in ib.APPLETS]
    base += [("etc", "dir"), ("etc/passwd", "file", b"root:x:0:0:root:/root:/bin/sh\n"),
             ("etc/hosts", "file", b"# the image's hosts\n"),
             ("etc/resolv.conf", "file", b"nameserver 192.0.2.53\n"),
             ("tmp", "dir", b"", 0o1777), ("proc", "dir"), ("dev", "dir"), ("sys", "dir"), ("run", "dir"),
             ("data", "dir"), ("srv", "dir"), ("root", "dir", b"", 0o700)]
    out = []
    for e in base:
        top = next((k for k in over if e[0] == k or e[0].startswith(k + "/")), None)
        if top is None:
            out.append(e)
    for k, v in over.items():
        if v is not None:
            out.extend(v if isinstance(v, list) else [v])
    return out


def _rel(decoy: str) -> str:
    return "../" * 12 + decoy.lstrip("/")


def images(decoy: str) -> dict:
    """tag -> layer entries. `decoy` is the absolute path of the host decoy directory."""
    d = decoy.lstrip("/")
    imgs = {"ok": {}}
    for name in ("proc", "dev", "sys", "tmp"):
        imgs[f"{name}-abs"] = {name: (name, "sym", decoy)}
        imgs[f"{name}-rel"] = {name: (name, "sym", _rel(decoy))}
    imgs["dests"] = {"data": ("data", "sym", decoy), "srv": ("srv", "sym", _rel(decoy))}
    imgs["paths"] = {"etc/secret": ("etc/secret", "sym", "../srv/secret"),
                     "srv": [("srv", "dir"), ("srv/secret", "file", b"SECRET\n")],
                     "etc/ro": ("etc/ro", "sym", "/srv"), "etc/magic": ("etc/magic", "sym", "/proc/self/fd/1")}
    imgs["etc-abs"] = {"etc": ("etc", "sym", decoy)}
    imgs["etc-rel"] = {"etc": ("etc", "sym", _rel(decoy))}
    imgs["hosts-abs"] = {"etc/hosts": ("etc/hosts", "sym", decoy + "/hosts")}
    imgs["resolv-abs"] = {"etc/resolv.conf": ("etc/resolv.conf", "sym", decoy + "/resolv.conf")}
    # the decoy's path exists *in the image* too: resolved inside the root, /etc is that directory
    imgs["etc-inside"] = {"etc": ("etc", "sym", decoy), "var": [("var", "dir"), ("var/tmp", "dir", b"", 0o1777), (d, "dir"),
        (f"{d}/passwd", "file", b"root:x:0:0:root:/root:/bin/sh\n"), (f"{d}/hosts", "file", b"# the image's hosts\n")]}
    return imgs


def snapshot(decoy: str):
    st = os.stat(decoy)
    return sorted(os.listdir(decoy)), st.st_mtime_ns, st.st_nlink


@pytest.fixture(scope="module")
def decoy():
    d = tempfile.mkdtemp(prefix="pysbx-rfs-decoy-", dir="/var/tmp")
    os.chmod(d, 0o777)                     # the hole, were it back, would show rootless too
    with open(os.path.join(d, "keep"), "w") as f:
        f.write("decoy\n")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def store(runner, decoy):
    """(runner, state dir, work dir) with every test image imported by the runner's user."""
    top = tempfile.mkdtemp(prefix="pysbx-rfs-", dir="/tmp")
    os.chmod(top, 0o755)
    os.chown(top, runner.uid, runner.gid)
    state, work = os.path.join(top, "state"), os.path.join(top, "work")
    os.mkdir(work)
    os.chown(work, runner.uid, runner.gid)
    for tag, over in images(decoy).items():
        path = os.path.join(work, f"{tag}.tar")
        ib.write_docker_save(path, tars=[ib.make_tar(_entries(over))], tag=f"rfs-{tag}:test")
        os.chown(path, runner.uid, runner.gid)
        r = runner("image", "import", path, env={"PYSANDBOX_STATE_DIR": state})
        assert r.returncode == 0, r
    yield runner, state, work
    shutil.rmtree(top, ignore_errors=True)


def run(store, tag, script, *opts, profile="strict"):
    runner, state, _ = store
    return runner("run", "--profile", profile, "--image", f"rfs-{tag}:test", *opts, "--", "/bin/sh", "-c", script,
                  env={"PYSANDBOX_STATE_DIR": state})


def refused(r, *words):
    """Exit 125 with exactly one line naming the path (no audit line after it: a failed set-up
    reports its error only, tests/system/test_integrity_failed_setup.py)."""
    lines = r.stderr.splitlines()
    assert r.returncode == 125 and len(lines) == 1, r
    for w in words:
        assert w in lines[0], (w, r)


def test_inroot_resolve_stays_inside_the_root(decoy, shared_tmp):
    """The helper itself, on a plain directory (no mount, no namespace): links to the decoy,
    absolute and through ../../.., are resolved inside the root or refused; what is created lands
    inside the root; the decoy (which exists on the host) is never touched."""
    from sandbox import inroot
    root = shared_tmp / "r"
    (root / "etc").mkdir(parents=True)
    (root / "in" / d_rel(decoy)).mkdir(parents=True)         # the decoy's path, inside the root
    os.symlink(decoy, root / "abs")
    os.symlink(_rel(decoy), root / "rel")
    os.symlink(decoy + "/missing", root / "etc" / "dangling")
    os.symlink("/proc/self/root", root / "magic")
    before = snapshot(decoy)
    rfd = inroot.open_root(str(root))
    try:
        # follow=True: the links resolve inside the root; the decoy's path does not exist there
        for p in ("/abs/hosts", "/rel/hosts", "/etc/dangling"):
            with pytest.raises(inroot.InRootError, match="dangling symbolic link"):
                os.close(inroot.resolve(rfd, p, follow=True, create="file"))
        # ... and where the root has that path, the file is made there
        os.symlink("/in" + decoy, root / "inner")
        fd = inroot.resolve(rfd, "/inner/hosts", follow=True, create="file")
        os.close(fd)
        assert (root / "in" / d_rel(decoy) / "hosts").is_file()
        # follow=False: any link on the way is refused, named
        for p, bad in (("/abs/x", "/abs"), ("/rel", "/rel"), ("/etc/dangling/x", "/etc/dangling")):
            with pytest.raises(inroot.InRootError, match=f"{bad} is a symbolic link"):
                os.close(inroot.resolve(rfd, p, follow=False, create="dir"))
        # /proc/self/root named by an absolute link is the *root's* /proc (absent here), not the
        # host's (the e2e test below shows a real magic link refused inside a sandbox)
        with pytest.raises(FileNotFoundError):
            inroot.resolve(rfd, "/magic/etc", follow=True)
        # legitimate: nested directories made inside the root, an existing one found
        os.close(inroot.resolve(rfd, "/new/a/b", follow=False, create="dir"))
        assert (root / "new" / "a" / "b").is_dir()
        with pytest.raises(FileNotFoundError):
            inroot.resolve(rfd, "/nothing/here", follow=True)
    finally:
        os.close(rfd)
    assert snapshot(decoy) == before


def d_rel(decoy: str) -> str:
    return decoy.lstrip("/")


@pytest.mark.parametrize("name", ["proc", "dev", "sys", "tmp"])
@pytest.mark.parametrize("kind", ["abs", "rel"])
def test_mount_point_symlinks_are_refused(store, decoy, name, kind):
    before = snapshot(decoy)
    r = run(store, f"{name}-{kind}", "echo ran")
    assert snapshot(decoy) == before
    # /tmp is strict's tmpfs (a profile mount target), the others the launcher's own mount points;
    # (before: /proc, /dev, /sys were mounted on the host's decoy, in the sandbox's mount namespace,
    # and the program ran without them)
    refused(r, f"/{name}", "symbolic link (refused)")
    assert "ran" not in r.stdout
    # the legitimate side: the same mounts on an image with ordinary directories
    r = run(store, "ok", "test -r /proc/self/status && test -c /dev/null && test -d /sys/kernel && "
                         ": > /tmp/x && echo ok")
    assert r.returncode == 0 and r.stdout == "ok\n", r


def test_volume_and_bind_destinations_through_symlinks_are_refused(store, decoy, shared_tmp):
    runner, state, work = store
    src = shared_tmp / "src"
    src.mkdir()
    (src / "hello").write_text("hi\n")
    os.chown(src, runner.uid, runner.gid)
    before = snapshot(decoy)
    vol = f"rfsvol{os.getpid()}"
    # /data -> decoy (absolute), /srv -> ../../../decoy (relative): final and middle components
    for opts, path in ((("-v", f"{vol}:/data"), "/data"), (("-v", f"{src}:/data"), "/data"),
                       (("-v", f"{src}:/srv/x"), "/srv"), (("-v", f"{vol}:/srv/x/y"), "/srv"),
                       (("--tmpfs", "/srv/t"), "/srv")):
        r = run(store, "dests", "echo ran > /data/pwned; echo ran", *opts)
        assert snapshot(decoy) == before, opts
        refused(r, f"{path} is a symbolic link (refused)")
        assert "ran" not in r.stdout
    # legitimate: ordinary directories take the same volume and bind
    r = run(store, "ok", "cat /srv/x/hello && echo written > /data/f && echo ok", "-v", f"{vol}:/data",
            "-v", f"{src}:/srv/x")
    assert r.returncode == 0 and r.stdout == "hi\nok\n", r
    r = runner("volume", "inspect", vol, env={"PYSANDBOX_STATE_DIR": state})
    assert r.returncode == 0, r
    import json
    data = json.loads(r.stdout)[0]["Mountpoint"]
    assert open(os.path.join(data, "f")).read() == "written\n"


def test_masked_and_read_only_paths_follow_links_inside_the_root_never_magic_ones(store, tmp_profile):
    """What the program would open by that name is masked / made read-only: `etc/secret ->
    ../srv/secret` masks /srv/secret; `etc/ro -> /srv` makes the image's /srv read-only. A /proc
    magic link (`etc/magic -> /proc/self/fd/1`: a descriptor of the launcher's, outside the root)
    is refused instead of being mounted over."""
    base = "extends: strict\nfilesystem:\n  read_only: false\n  masked_paths: [/etc/secret]\n"
    prof = tmp_profile(base + "  readonly_paths: [/etc/ro]\n")
    r = run(store, "paths", "cat /etc/secret /srv/secret; echo x > /srv/new || echo ro; echo x > /root/w && echo rw",
            profile=prof)
    assert r.returncode == 0 and r.stdout.split() == ["ro", "rw"] and "SECRET" not in r.stdout, r
    for key in ("masked_paths", "readonly_paths"):
        prof = tmp_profile(f"extends: strict\nfilesystem:\n  {key}: [/etc/magic]\n", name=f"{key}.yaml")
        r = run(store, "paths", "echo ran", profile=prof)
        refused(r, "/etc/magic", "magic link")


def test_root_directory_mount_points_through_symlinks_are_refused(runner, decoy, shared_tmp, tmp_profile):
    """`filesystem.root: {path: DIR}`: the directory's contents are as untrusted as an image's."""
    os.chown(shared_tmp, runner.uid, runner.gid)
    root = str(shared_tmp / "root")
    ib.write_rootfs_dir(root)
    for d in ("proc", "sys", "tmp"):
        os.mkdir(os.path.join(root, d))
    os.symlink(_rel(decoy), os.path.join(root, "dev"))
    before = snapshot(decoy)
    prof = tmp_profile(f"extends: strict\nfilesystem:\n  root: {{path: {root}}}\n")
    r = runner("run", "--profile", prof, "--", "/bin/cat", "/etc/motd")
    assert snapshot(decoy) == before
    refused(r, "/dev", "symbolic link (refused)")
    os.unlink(os.path.join(root, "dev"))
    os.mkdir(os.path.join(root, "dev"))
    r = runner("run", "--profile", prof, "--", "/bin/cat", "/etc/motd")
    assert r.returncode == 0 and r.stdout == ib.MOTD.decode(), r


# --------------------------------------------------------------------------- private network (root)

@pytest.fixture(scope="module")
def netstore(testns, root_runner, decoy):  # noqa: F811
    """As root in this module's network namespace: the test images and a private network."""
    top = tempfile.mkdtemp(prefix="pysbx-rfs-net-", dir="/tmp")
    state = testns                         # (0711: PID 1, the mapped root, opens its hosts file there)
    for tag, over in images(decoy).items():
        if tag.startswith(("etc", "hosts", "resolv", "ok")):
            path = os.path.join(top, f"{tag}.tar")
            ib.write_docker_save(path, tars=[ib.make_tar(_entries(over))], tag=f"rfs-{tag}:test")
            r = root_runner("image", "import", path, env={"PYSANDBOX_STATE_DIR": state})
            assert r.returncode == 0, r
    r = root_runner("network", "create", "rfsnet", env={"PYSANDBOX_STATE_DIR": state})
    assert r.returncode == 0, r
    yield root_runner, state, top
    root_runner("network", "rm", "rfsnet", env={"PYSANDBOX_STATE_DIR": state})
    shutil.rmtree(top, ignore_errors=True)


@pytest.mark.parametrize("tag,path", [("etc-abs", "/etc"), ("etc-rel", "/etc"), ("hosts-abs", "/etc/hosts")])
def test_private_network_hosts_through_dangling_symlinks_is_refused(netstore, decoy, tag, path):
    """The reviewer's demonstration: `etc` (or `etc/hosts`) a link to a host directory. Inside the
    root the link dangles: refused, and nothing appears in the host directory."""
    before = snapshot(decoy)
    r = run(netstore, tag, "echo ran", "--network", "rfsnet", "--name", f"rfs-{tag}")
    assert snapshot(decoy) == before and not os.path.exists(decoy + "/hosts"), r    # (before: DECOY/hosts made)
    refused(r, "/etc/hosts", path, "dangling symbolic link")


def test_private_network_hosts_followed_inside_the_root(netstore, decoy):
    """`etc -> DECOY` where the image has a directory at DECOY's path: /etc/hosts is the image's
    DECOY/hosts (inside the root), bound over with the network's hosts file; the host's DECOY is
    untouched."""
    before = snapshot(decoy)
    r = run(netstore, "etc-inside", "cat /etc/hosts; readlink /etc", "--network", "rfsnet", "--name", "rfs-inside")
    assert r.returncode == 0, r
    assert "the image's hosts" not in r.stdout and "localhost" in r.stdout and "rfs-inside" in r.stdout, r
    assert r.stdout.splitlines()[-1] == decoy, r
    assert snapshot(decoy) == before


def test_private_network_image_resolv_conf_link_is_left_alone(netstore, decoy):
    before = snapshot(decoy)
    r = run(netstore, "resolv-abs", "cat /etc/hosts; readlink /etc/resolv.conf", "--network", "rfsnet",
            "--name", "rfs-resolv")
    assert r.returncode == 0 and "rfs-resolv" in r.stdout and r.stdout.splitlines()[-1] == decoy + "/resolv.conf", r
    assert snapshot(decoy) == before
    # and an ordinary image resolves its peers by name
    r = run(netstore, "ok", "cat /etc/hosts", "--network", "rfsnet", "--name", "rfs-ok")
    assert r.returncode == 0 and "rfs-ok" in r.stdout and "the image's hosts" not in r.stdout, r
