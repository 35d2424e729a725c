"""Image layer digest integrity on the real code path (`pysandbox image import`, `pysandbox run
--image`), as root and rootless: a layer whose bytes do not match its digest -- in an imported
archive (OCI blob digest, manifest/config digests, the config's diff_id; docker save's diff_id)
or in the store after import (content, metadata, a replaced file, layer.json) -- is refused with
one clear line and never run; the untouched image imports and runs.

Store tampering is done by the test (as root) on the store's files: the seal recorded at import
(inode and change time of every entry of the extracted layer) no longer matches, and the launch
stops before the sandbox exists (exit 125).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os

import pytest

import imagebuild as ib

MARK = "pysbx-images-digest-ran"


def sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


@pytest.fixture
def env(runner, shared_tmp):
    os.chown(shared_tmp, runner.uid, runner.gid)
    work = shared_tmp / "work"
    work.mkdir()
    os.chown(work, runner.uid, runner.gid)
    return runner, str(shared_tmp / "state"), str(work)


def cli(env_, *args):
    runner, state, _ = env_
    return runner(*args, env={"PYSANDBOX_STATE_DIR": state})


def give(env_, path):
    runner = env_[0]
    for dp, dns, fns in os.walk(path):
        for n in dns + fns:
            os.lchown(os.path.join(dp, n), runner.uid, runner.gid)
    os.lchown(path, runner.uid, runner.gid)


def store_empty(state: str) -> bool:
    return not os.path.exists(os.path.join(state, "images.json")) and \
        not os.listdir(os.path.join(state, "layers")) and not os.listdir(os.path.join(state, "tmp"))


def run_image(env_, image="busybox:test"):
    return cli(env_, "run", "--profile", "strict", "--image", image, "--", "/bin/sh", "-c", f"echo {MARK}; cat /etc/motd")


def oci_blob_paths(oci: str):
    blobs = os.path.join(oci, "blobs", "sha256")
    idx = json.load(open(os.path.join(oci, "index.json")))
    mdig = idx["manifests"][0]["digest"]
    man = json.load(open(os.path.join(blobs, mdig[7:])))
    return blobs, idx, mdig, man


# --------------------------------------------------------------------------- in the archive

def test_oci_layer_blob_not_matching_its_digest(env):
    """Layer 2's blob replaced by another *valid* gzip tar: it extracts, then its digest is wrong."""
    _, state, work = env
    oci = ib.write_oci_layout(os.path.join(work, "oci"))
    blobs, _, _, man = oci_blob_paths(oci)
    other = gzip.compress(ib.make_tar([("etc", "dir"), ("etc/evil", "file", b"planted\n")]), mtime=0)
    with open(os.path.join(blobs, man["layers"][1]["digest"][7:]), "wb") as f:
        f.write(other)
    give(env, oci)
    r = cli(env, "image", "import", oci, "tampered")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r
    assert "layer 2/3: blob does not match its digest" in r.stderr, r
    assert store_empty(state)


def test_oci_diff_id_not_matching_the_layer(env):
    """A consistent layout (blob digests right) whose config claims another diff_id for layer 3."""
    _, state, work = env
    tars = ib.layers()
    oci = ib.write_oci_layout(os.path.join(work, "oci"), tars=tars)
    blobs, idx, mdig, man = oci_blob_paths(oci)
    cfg = json.load(open(os.path.join(blobs, man["config"]["digest"][7:])))
    cfg["rootfs"]["diff_ids"][2] = sha(b"something else")

    def put(data: bytes) -> str:
        d = sha(data)
        with open(os.path.join(blobs, d[7:]), "wb") as f:
            f.write(data)
        return d
    cbytes = json.dumps(cfg).encode()
    man["config"]["digest"], man["config"]["size"] = put(cbytes), len(cbytes)
    mbytes = json.dumps(man).encode()
    idx["manifests"][0]["digest"], idx["manifests"][0]["size"] = put(mbytes), len(mbytes)
    with open(os.path.join(oci, "index.json"), "w") as f:
        json.dump(idx, f)
    give(env, oci)
    r = cli(env, "image", "import", oci, "tampered")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r
    assert "layer 3/3: content does not match the config's diff_id" in r.stderr, r
    assert store_empty(state)


@pytest.mark.parametrize("what", ["manifest", "config"])
def test_oci_manifest_or_config_not_matching_its_digest(env, what):
    _, state, work = env
    oci = ib.write_oci_layout(os.path.join(work, "oci"))
    blobs, _, mdig, man = oci_blob_paths(oci)
    p = os.path.join(blobs, (mdig if what == "manifest" else man["config"]["digest"])[7:])
    data = open(p, "rb").read()
    with open(p, "wb") as f:
        f.write(data.replace(b"/bin/sh", b"/bin/xx") if what == "config" else data.replace(b"+gzip", b"+gzip "))
    give(env, oci)
    r = cli(env, "image", "import", oci, "tampered")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not match its digest" in r.stderr, r
    assert store_empty(state)


def test_docker_save_layer_not_matching_its_diff_id(env):
    _, state, work = env
    tars = ib.layers()
    good = os.path.join(work, "good.tar")
    ib.write_docker_save(good, tars=tars)
    # same manifest and config (diff_ids of the real layers), layer 2 swapped for another tar
    bad_tars = [tars[0], ib.make_tar([("etc", "dir"), ("etc/evil", "file", b"planted\n")]), tars[2]]
    cfg = ib.config_for(tars)
    import tarfile, io
    out = io.BytesIO()
    with tarfile.open(good) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isreg() else None
            if m.name.endswith("/layer.tar"):
                i = [hashlib.sha256(f"layer{k}".encode()).hexdigest() for k in range(3)].index(m.name.split("/")[0])
                data = bad_tars[i]
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    bad = os.path.join(work, "bad.tar")
    with open(bad, "wb") as f:
        f.write(out.getvalue())
    assert cfg in out.getvalue()
    give(env, work)
    r = cli(env, "image", "import", bad, "tampered")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r
    assert "layer 2/3: content does not match the config's diff_id" in r.stderr, r
    assert store_empty(state)
    r = cli(env, "image", "import", good)                     # the untouched archive imports and runs
    assert r.returncode == 0, r
    r = run_image(env)
    assert r.returncode == 0 and r.stdout == f"{MARK}\n" + ib.MOTD.decode(), r


# --------------------------------------------------------------------------- in the store, after import

def _layer_of(state: str, rel: str) -> str:
    """Path of `rel` in the lowest layer of busybox:test that has it."""
    rec = json.load(open(os.path.join(state, "images.json")))["images"]["busybox:test"]
    for d in rec["layers"]:
        p = os.path.join(state, "layers", d[7:], "diff", rel)
        if os.path.lexists(p):
            return p
    raise AssertionError(rel)


def _tamper_append(p):
    with open(p, "ab") as f:
        f.write(b"tampered\n")


def _tamper_replace(p):                 # same bytes, a new file renamed over it
    data = open(p, "rb").read()
    st = os.lstat(p)
    with open(p + ".new", "wb") as f:
        f.write(data)
    os.chown(p + ".new", st.st_uid, st.st_gid)
    os.chmod(p + ".new", st.st_mode & 0o7777)
    os.utime(p + ".new", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(p + ".new", p)


def _tamper_chmod(p):
    os.chmod(p, 0o4755)


def _tamper_add(p):
    with open(os.path.join(os.path.dirname(p), "planted"), "wb") as f:
        f.write(b"planted\n")


def _tamper_same_bytes(p):             # rewritten with identical content: the change time still moves
    data = open(p, "rb").read()
    with open(p, "r+b") as f:
        f.write(data)


@pytest.mark.parametrize("how", ["append", "replace", "chmod", "add", "same_bytes", "layer_json", "missing"])
def test_layer_changed_in_the_store_is_never_run(env, how):
    runner, state, work = env
    ib.write_docker_save(os.path.join(work, "save.tar"))
    give(env, work)
    assert cli(env, "image", "import", os.path.join(work, "save.tar")).returncode == 0
    r = run_image(env)                                         # untouched: runs
    assert r.returncode == 0 and r.stdout == f"{MARK}\n" + ib.MOTD.decode(), r
    motd = _layer_of(state, "etc/motd")
    ldir = os.path.dirname(os.path.dirname(os.path.dirname(motd)))
    if how == "layer_json":
        info = json.load(open(os.path.join(ldir, "layer.json")))
        info["digest"] = sha(b"another layer")
        with open(os.path.join(ldir, "layer.json"), "w") as f:
            json.dump(info, f)
        expect = "records the digest"
    elif how == "missing":
        os.rename(ldir, ldir + ".gone")
        expect = "is missing from the store"
    else:
        {"append": _tamper_append, "replace": _tamper_replace, "chmod": _tamper_chmod, "add": _tamper_add,
         "same_bytes": _tamper_same_bytes}[how](motd)
        expect = "was modified after it was imported"
    r = run_image(env)
    assert r.returncode == 125 and MARK not in r.stdout, r
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and expect in lines[0] and ldir.rsplit("/", 1)[-1][:12] in lines[0], r
    assert not os.listdir(os.path.join(state, "containers"))   # no writable layer left behind
    if how == "missing":
        os.rename(ldir + ".gone", ldir)
    # the way out: remove the image and import it again
    assert cli(env, "image", "rm", "busybox:test").returncode == 0
    assert cli(env, "image", "import", os.path.join(work, "save.tar")).returncode == 0
    r = run_image(env)
    assert r.returncode == 0 and r.stdout == f"{MARK}\n" + ib.MOTD.decode(), r


def test_layer_stored_before_seals_is_sealed_on_first_use(env):
    """Layers imported by a version without seals (no "seal" in layer.json) are sealed at their
    first use, then held to it (documented: trust on first use)."""
    runner, state, work = env
    ib.write_docker_save(os.path.join(work, "save.tar"))
    give(env, work)
    assert cli(env, "image", "import", os.path.join(work, "save.tar")).returncode == 0
    motd = _layer_of(state, "etc/motd")
    lj = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(motd))), "layer.json")
    info = json.load(open(lj))
    del info["seal"]
    with open(lj, "w") as f:
        json.dump(info, f)
    assert run_image(env).returncode == 0
    assert "seal" in json.load(open(lj))
    _tamper_append(motd)
    r = run_image(env)
    assert r.returncode == 125 and "was modified after it was imported" in r.stderr, r


def test_uid_shifted_copy_changed_is_rebuilt(root_runner, shared_tmp):
    """Root with a mapped range where idmapped mounts are not used (PYSANDBOX_IDMAP=0): the layers
    are mounted through uid-shifted copies (layers/<hex>/shift-<maps>), a cache of the checked
    layer. A copy changed after it was made is not used: it is rebuilt from the layer."""
    env_ = (root_runner, str(shared_tmp / "state"), str(shared_tmp))
    ib.write_docker_save(str(shared_tmp / "save.tar"))
    assert cli(env_, "image", "import", str(shared_tmp / "save.tar")).returncode == 0

    def run():
        return root_runner("run", "--profile", "strict", "--image", "busybox:test", "--", "/bin/cat", "/etc/motd",
                           env={"PYSANDBOX_STATE_DIR": env_[1], "PYSANDBOX_IDMAP": "0"})
    r = run()
    assert r.returncode == 0 and r.stdout == ib.MOTD.decode(), r
    motd = _layer_of(env_[1], "etc/motd")
    ldir = os.path.dirname(os.path.dirname(os.path.dirname(motd)))
    shifted = [n for n in os.listdir(ldir) if n.startswith("shift-") and not n.endswith(".seal")]
    assert len(shifted) == 1, os.listdir(ldir)
    copy = os.path.join(ldir, shifted[0], "etc", "motd")
    with open(copy, "ab") as f:
        f.write(b"tampered copy\n")
    r = run()
    assert r.returncode == 0 and r.stdout == ib.MOTD.decode(), r        # rebuilt, not the changed copy
    assert open(copy, "rb").read() == ib.MOTD


def test_changed_layer_is_not_reused_by_a_later_import(env):
    """An import whose layer is already stored reuses it: only while its seal holds."""
    runner, state, work = env
    ib.write_docker_save(os.path.join(work, "save.tar"))
    ib.write_oci_layout(os.path.join(work, "oci"))
    give(env, work)
    assert cli(env, "image", "import", os.path.join(work, "save.tar")).returncode == 0
    _tamper_append(_layer_of(state, "etc/motd"))
    r = cli(env, "image", "import", os.path.join(work, "oci"), "again")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "was modified after it was imported" in r.stderr, r
    assert "again" not in cli(env, "image", "ls", "-q").stdout
