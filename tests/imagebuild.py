"""Build small test images from Debian's busybox-static, in every import format, with tarfile.

Three layers:
  1. busybox: /bin/busybox + applet symlinks, /etc (motd, passwd, group, remove-me), /tmp, /root,
     /usr/share/data/{a,b}
  2. /etc/layer2, /opt/app/run.sh, /usr/share/data/b changed
  3. deletes /etc/remove-me (whiteout .wh.remove-me), makes /usr/share/data opaque (only c),
     adds /etc/layer3
Malicious archives for the safety tests are built here too.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile

BUSYBOX = "/bin/busybox"
MOTD = b"Welcome to the pysandbox test image\n"
APPLETS = ("sh", "ls", "cat", "echo", "id", "rm", "touch", "mkdir", "stat", "test", "[", "true", "false",
           "grep", "wc", "sleep", "ps", "mount", "readlink", "head", "printf", "env", "dd", "sync", "chmod",
           "ln", "mv", "cp", "hostname", "tr", "cut", "sed", "find")


def _ti(name, kind="file", mode=0o644, size=0, linkname="", uid=0, gid=0, mtime=1700000000):
    ti = tarfile.TarInfo(name)
    ti.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
               "link": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
               "fifo": tarfile.FIFOTYPE}[kind]
    ti.mode, ti.size, ti.linkname, ti.uid, ti.gid, ti.mtime = mode, size, linkname, uid, gid, mtime
    return ti


def make_tar(entries, compress: bool = False) -> bytes:
    """entries: (name, kind, data_or_target, mode) tuples -> tar bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            name, kind = e[0], e[1]
            data = e[2] if len(e) > 2 else b""
            mode = e[3] if len(e) > 3 else (0o755 if kind == "dir" else 0o644)
            if kind == "file":
                tf.addfile(_ti(name, "file", mode, len(data)), io.BytesIO(data))
            elif kind in ("sym", "link"):
                tf.addfile(_ti(name, kind, 0o777, 0, data))
            elif kind in ("chr", "blk"):
                ti = _ti(name, kind, mode)
                ti.devmajor, ti.devminor = data
                tf.addfile(ti)
            else:
                tf.addfile(_ti(name, kind, mode))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw


def layers() -> list[bytes]:
    with open(BUSYBOX, "rb") as f:
        bb = f.read()
    l1 = [("bin", "dir"), ("bin/busybox", "file", bb, 0o755)]
    l1 += [(f"bin/{a}", "sym", "busybox") for a in APPLETS]
    l1 += [("etc", "dir"), ("etc/motd", "file", MOTD),
           ("etc/passwd", "file", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"),
           ("etc/group", "file", b"root:x:0:\nnogroup:x:65534:\n"),
           ("etc/remove-me", "file", b"deleted in layer 3\n"),
           ("tmp", "dir", b"", 0o1777), ("root", "dir", b"", 0o700), ("proc", "dir"), ("dev", "dir"),
           ("sys", "dir"), ("usr", "dir"), ("usr/share", "dir"), ("usr/share/data", "dir"),
           ("usr/share/data/a", "file", b"a\n"), ("usr/share/data/b", "file", b"b1\n"),
           ("var", "dir"), ("var/run", "sym", "../run"), ("run", "dir"), ("hostroot", "sym", "/")]
    l2 = [("etc", "dir"), ("etc/layer2", "file", b"layer 2\n"), ("opt", "dir"), ("opt/app", "dir"),
          ("opt/app/run.sh", "file", b"#!/bin/sh\necho app\n", 0o755),
          ("usr/share/data/b", "file", b"b2\n")]
    l3 = [("etc", "dir"), ("etc/.wh.remove-me", "file", b""), ("etc/layer3", "file", b"layer 3\n"),
          ("usr/share/data/.wh..wh..opq", "file", b""), ("usr/share/data/c", "file", b"c\n")]
    return [make_tar(l1), make_tar(l2), make_tar(l3)]


HISTORY = ["ADD busybox-static rootfs", "RUN echo layer 2 > /etc/layer2", "RUN rm /etc/remove-me"]


def sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def config_for(tars: list[bytes]) -> bytes:
    cfg = {"architecture": "amd64" if os.uname().machine == "x86_64" else "arm64", "os": "linux",
           "created": "2026-01-01T00:00:00Z",
           "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
           "rootfs": {"type": "layers", "diff_ids": [sha(t) for t in tars]},
           "history": [{"created": "2026-01-01T00:00:00Z", "created_by": h} for h in HISTORY[:len(tars)]]}
    return json.dumps(cfg, sort_keys=True).encode()


def write_oci_layout(path: str, tars=None, ref: str = "test", gzip_layers: bool = True) -> str:
    tars = tars or layers()
    os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)

    def blob(data: bytes) -> dict:
        d = sha(data)
        with open(os.path.join(path, "blobs", "sha256", d[7:]), "wb") as f:
            f.write(data)
        return {"digest": d, "size": len(data)}

    cfg = config_for(tars)
    ldescs = []
    for t in tars:
        data = gzip.compress(t, mtime=0) if gzip_layers else t
        mt = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzip_layers else "")
        ldescs.append(dict(blob(data), mediaType=mt))
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": dict(blob(cfg), mediaType="application/vnd.oci.image.config.v1+json"),
                "layers": ldescs}
    mdesc = dict(blob(json.dumps(manifest).encode()), mediaType="application/vnd.oci.image.manifest.v1+json",
                 annotations={"org.opencontainers.image.ref.name": ref})
    with open(os.path.join(path, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [mdesc]}, f)
    return path


def write_docker_save(path: str, tars=None, tag: str = "busybox:test") -> str:
    tars = tars or layers()
    cfg = config_for(tars)
    cname = hashlib.sha256(cfg).hexdigest() + ".json"
    entries = [(cname, "file", cfg)]
    lnames = []
    for i, t in enumerate(tars):
        d = hashlib.sha256(f"layer{i}".encode()).hexdigest()
        entries += [(d, "dir"), (f"{d}/layer.tar", "file", t), (f"{d}/VERSION", "file", b"1.0")]
        lnames.append(f"{d}/layer.tar")
    man = [{"Config": cname, "RepoTags": [tag], "Layers": lnames}]
    entries.append(("manifest.json", "file", json.dumps(man).encode()))
    entries.append(("repositories", "file", json.dumps({tag.split(":")[0]: {tag.split(":")[1]: "x"}}).encode()))
    with open(path, "wb") as f:
        f.write(make_tar(entries))
    return path


def write_rootfs_tar(path: str, compress: bool = True) -> str:
    """The three layers flattened into one plain rootfs tarball."""
    with open(BUSYBOX, "rb") as f:
        bb = f.read()
    ent = [("bin", "dir"), ("bin/busybox", "file", bb, 0o755)]
    ent += [(f"bin/{a}", "sym", "busybox") for a in APPLETS]
    ent += [("etc", "dir"), ("etc/motd", "file", MOTD), ("tmp", "dir", b"", 0o1777), ("proc", "dir"),
            ("dev", "dir")]
    with open(path, "wb") as f:
        f.write(make_tar(ent, compress=compress))
    return path


def write_rootfs_dir(path: str) -> str:
    os.makedirs(os.path.join(path, "bin"))
    os.makedirs(os.path.join(path, "etc"))
    with open(BUSYBOX, "rb") as f, open(os.path.join(path, "bin", "busybox"), "wb") as o:
        o.write(f.read())
    os.chmod(os.path.join(path, "bin", "busybox"), 0o755)
    for a in ("sh", "cat", "ls"):
        os.symlink("busybox", os.path.join(path, "bin", a))
    with open(os.path.join(path, "etc", "motd"), "wb") as f:
        f.write(MOTD)
    return path


# --------------------------------------------------------------------------- malicious archives

def evil_traversal() -> bytes:
    return make_tar([("etc", "dir"), ("../../escaped-file", "file", b"pwned\n")])


def evil_absolute() -> bytes:
    return make_tar([("/tmp/escaped-abs", "file", b"pwned\n")])


def evil_symlink_write_through(target_dir: str) -> bytes:
    """An absolute symlink, then a file written 'through' it."""
    return make_tar([("etc", "dir"), ("etc/evil", "sym", target_dir), ("etc/evil/pwned", "file", b"pwned\n")])


def evil_symlink_parent_dotdot() -> bytes:
    return make_tar([("up", "sym", "../../../../"), ("up/tmp/pwned", "file", b"pwned\n")])


def evil_hardlink_outside() -> bytes:
    return make_tar([("etc", "dir"), ("etc/shadow-link", "link", "../../../etc/shadow")])


def evil_device() -> bytes:
    return make_tar([("dev", "dir"), ("dev/sda", "blk", (8, 0), 0o660)])


def evil_huge_claim() -> bytes:
    """A member whose (PAX) header claims 1 TiB, followed by a few bytes of data."""
    small = _ti("small", "file", 0o644, 3).tobuf(format=tarfile.PAX_FORMAT) + b"ok\n".ljust(512, b"\0")
    big = _ti("big", "file", 0o644, 1 << 40).tobuf(format=tarfile.PAX_FORMAT) + b"x" * 512
    return small + big + b"\0" * 1024


def corrupt_gzip() -> bytes:
    good = make_tar([("etc", "dir"), ("etc/motd", "file", MOTD * 100)], compress=True)
    b = bytearray(good)
    mid = len(b) // 2
    b[mid:mid + 16] = b"\xff" * 16
    return bytes(b)


def truncated_gzip() -> bytes:
    good = make_tar([("etc", "dir"), ("etc/motd", "file", os.urandom(200000))], compress=True)
    return good[: len(good) // 2]


# --------------------------------------------------------------------------- overlay helper
# `python tests/imagebuild.py run-root SPEC.pickle TARGET SCRIPT` -- run under `unshare -m` (root) or
# `unshare -Urm` (rootless): mounts the overlay root of SPEC at TARGET (sandbox.store.overlay.mount_root),
# runs SCRIPT with the image's /bin/sh chrooted into it, unmounts, exits with the script's status.

def _run_root(spec_path: str, target: str, script: str) -> int:
    import pickle
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from sandbox import _sys
    from sandbox.store import overlay
    with open(spec_path, "rb") as f:
        spec = pickle.load(f)
    _sys.mount(None, "/", None, _sys.MS_REC | _sys.MS_PRIVATE)     # nothing propagates to the host
    rootless = os.environ.get("ROOTLESS") == "1"
    if not spec.read_only:
        # this process plays the supervisor for the writable layer (a tmpfs, gone with this mount
        # namespace): PID 1's socketpair, and the copy-out of a kept layer when the script ended
        import dataclasses
        import socket
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        spec = dataclasses.replace(spec, layer_sock=(a.detach(), b.detach()))
    try:
        overlay.mount_root(spec, target, rootless=rootless)
    except Exception as e:
        print(f"mount_root: {e}", file=sys.stderr)
        return 99
    try:
        for binding in filter(None, os.environ.get("BINDS", "").split(";")):
            src, dst = binding.split("=", 1)
            t = overlay.safe_target(target, dst, create="dir")
            _sys.mount(src, t, None, _sys.MS_BIND | _sys.MS_REC)
        overlay.release_targets()
        pid = os.fork()
        if pid == 0:
            try:
                os.chroot(target)
                os.chdir("/")
                os.execve("/bin/sh", ["sh", "-c", script], {"PATH": "/bin"})
            finally:
                os._exit(127)
        _, status = os.waitpid(pid, 0)
        if not spec.read_only and spec.keep:
            layer = overlay.receive_layer(spec)
            if layer >= 0:
                overlay.keep_upper(spec, layer)
                os.close(layer)
        return os.waitstatus_to_exitcode(status)
    finally:
        _sys.umount2(target, _sys.MNT_DETACH)


if __name__ == "__main__":
    import sys
    if len(sys.argv) == 5 and sys.argv[1] == "run-root":
        sys.exit(_run_root(*sys.argv[2:]))
    sys.exit("usage: imagebuild.py run-root SPEC.pickle TARGET SCRIPT")


def cli(env, *args, **kw):
    """A pysandbox command against the store of conftest's `img` fixture: env = (runner, state, work)."""
    runner, state, _ = env
    return runner(*args, env={"PYSANDBOX_STATE_DIR": state}, **kw)


def sh(env, script, *opts, **kw):
    """`/bin/sh -c script` in busybox:test under strict (opts before `--`)."""
    return cli(env, "run", "--profile", "strict", "--image", "busybox:test", *opts, "--", "/bin/sh", "-c", script,
               **kw)
