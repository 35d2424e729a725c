"""`pysandbox image pull` / `image push` against a real registry (Debian's docker-registry, started
here on a free port of 127.0.0.1 with a storage of its own) and podman (a storage of its own), as
root and rootless: podman pushes, pysandbox pulls and runs; pysandbox pushes, podman pulls and runs;
basic auth from an auth file; TLS with a self-signed certificate. The multi-arch index and the
bearer-token flow use the simulated registry of tests/registryserver.py (said where).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest

import imagebuild as ib
import registryserver as rs
from imagebuild import cli
from registryserver import podman  # noqa: F401  (a fixture)

pytestmark = pytest.mark.skipif(not os.path.exists(rs.REGISTRY_BIN) or not shutil.which("podman"),
                                reason="docker-registry and podman are in the Makefile's DEB_PKGS")


@pytest.fixture(scope="module")
def registry():
    d = tempfile.mkdtemp(prefix="pysbx-registry-")
    reg = rs.RealRegistry(d)
    yield reg
    reg.stop()
    shutil.rmtree(d, ignore_errors=True)


def _who(env) -> str:
    return "user" if env[0].rootless else "root"


def _store_state(state: str) -> tuple:
    idx = os.path.join(state, "images.json")
    images = json.load(open(idx))["images"] if os.path.exists(idx) else {}
    layers = sorted(os.listdir(os.path.join(state, "layers"))) if os.path.isdir(os.path.join(state, "layers")) else []
    return sorted(images), layers


def test_podman_pushes_pysandbox_pulls_and_runs(img, registry, podman):
    who = _who(img)
    rootfs = ib.write_rootfs_tar(os.path.join(podman.dir, "rootfs.tar.gz"))
    podman("import", "--change", 'CMD ["/bin/cat", "/etc/motd"]', "--change", "ENV FROM_PODMAN=yes",
           "--change", "WORKDIR /etc", rootfs, "pod/bb:1")
    digest_file = os.path.join(podman.dir, "digest")
    podman("push", "--tls-verify=false", "--digestfile", digest_file, "pod/bb:1", f"{registry.host}/pod/bb:{who}")
    r = cli(img, "image", "pull", "--tls-verify=false", f"{registry.host}/pod/bb:{who}")
    assert r.returncode == 0, r
    assert f"pulled pod/bb:{who}" in r.stdout
    r = cli(img, "run", "--profile", "strict", "--image", f"pod/bb:{who}", "--", "/bin/cat", "/etc/motd")
    assert r.returncode == 0 and r.stdout == ib.MOTD.decode(), r
    rec = json.loads(cli(img, "image", "inspect", f"pod/bb:{who}").stdout)[0]
    assert rec["source"] == f"{registry.host}/pod/bb:{who}"
    assert rec["config"]["Cmd"] == ["/bin/cat", "/etc/motd"] and rec["config"]["WorkingDir"] == "/etc"
    assert "FROM_PODMAN=yes" in rec["config"]["Env"]
    # by digest, as a second name: the layers are already in the store (nothing downloaded twice)
    # Docker v2 schema 2 media types
    podman("push", "--tls-verify=false", "--format", "v2s2", "pod/bb:1", f"{registry.host}/pod/bb:{who}-v2s2")
    r = cli(img, "image", "pull", "--tls-verify=false", f"{registry.host}/pod/bb:{who}-v2s2", "v2s2:1")
    assert r.returncode == 0, r
    r = cli(img, "run", "--profile", "strict", "--image", "v2s2:1", "--", "/bin/cat", "/etc/motd")
    assert r.returncode == 0 and r.stdout == ib.MOTD.decode(), r
    digest = open(digest_file).read().strip()
    r = cli(img, "image", "pull", "--tls-verify=false", f"{registry.host}/pod/bb@{digest}", "bydigest:1")
    assert r.returncode == 0, r
    assert json.loads(cli(img, "image", "inspect", "bydigest:1").stdout)[0]["id"] == rec["id"]


def test_pysandbox_pushes_podman_pulls_and_runs(img, registry, podman):
    who = _who(img)
    dest = f"{registry.host}/ps/bb:{who}"
    r = cli(img, "image", "push", "--tls-verify=false", "busybox:test", dest)
    assert r.returncode == 0, r
    assert "uploaded" in r.stderr and r.stdout.startswith(f"pushed {dest} sha256:")
    # again: the registry has every blob (HEAD), nothing is uploaded
    r = cli(img, "image", "push", "--tls-verify=false", "busybox:test", dest)
    assert r.returncode == 0 and "uploaded" not in r.stderr and r.stderr.count("already there") == 4, r
    podman("pull", "--tls-verify=false", dest)
    p = podman.run(dest, "/bin/sh", "-c", "cat /etc/layer3 /usr/share/data/c; ls /usr/share/data; "
                                          "test -e /etc/remove-me || echo gone; echo $PATH")
    assert p.stdout.split() == ["layer", "3", "c", "c", "gone", "/bin"], p.stdout
    # chunked upload (PATCH) to a new repository: podman pulls that one too
    dest2 = f"{registry.host}/ps/chunked-{who}:1"
    r = cli(img, "image", "push", "--tls-verify=false", "--chunk-size", "100k", "busybox:test", dest2)
    assert r.returncode == 0 and r.stderr.count("uploaded") == 4, r
    podman("pull", "--tls-verify=false", dest2)
    assert podman.run(dest2, "/bin/cat", "/etc/motd").stdout == ib.MOTD.decode()


def test_not_found_and_plain_http_without_asking(img, registry):
    before = _store_state(img[1])
    r = cli(img, "image", "pull", "--tls-verify=false", f"{registry.host}/no/such:1")
    assert r.returncode == 4 and "not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r
    # https is the default, also for 127.0.0.1: a plain-HTTP registry is refused unless asked
    r = cli(img, "image", "pull", f"{registry.host}/no/such:1")
    assert r.returncode == 6 and "--tls-verify=false" in r.stderr, r
    r = cli(img, "image", "push", "busybox:test", f"{registry.host}/ps/https:1")
    assert r.returncode == 6 and "TLS failed" in r.stderr, r
    r = cli(img, "image", "pull", "not a ref")
    assert r.returncode == 2 and "invalid image reference" in r.stderr, r
    assert _store_state(img[1]) == before


def test_basic_auth_from_an_auth_file(img, podman):
    d = tempfile.mkdtemp(prefix="pysbx-registry-auth-")
    os.chmod(d, 0o755)
    reg = rs.RealRegistry(d, users={"alice": "s3cret"})
    try:
        good = rs.auth_file(os.path.join(d, "auth.json"), reg.host, "alice", "s3cret")
        bad = rs.auth_file(os.path.join(d, "bad.json"), reg.host, "alice", "wrong")
        none = rs.auth_file(os.path.join(d, "none.json"), "elsewhere.example", "alice", "s3cret")
        dest = f"{reg.host}/sec/bb:1"
        for f in (none, bad):
            r = cli(img, "image", "push", "--tls-verify=false", "--authfile", f, "busybox:test", dest)
            assert r.returncode == 3 and "unauthorized" in r.stderr, r
        r = cli(img, "image", "push", "--tls-verify=false", "--authfile", good, "busybox:test", dest)
        assert r.returncode == 0, r
        # $REGISTRY_AUTH_FILE, as podman reads it; podman logs in with the same file
        r = img[0]("image", "pull", "--tls-verify=false", dest, "authed:1",
                   env={"PYSANDBOX_STATE_DIR": img[1], "REGISTRY_AUTH_FILE": good})
        assert r.returncode == 0, r
        r = cli(img, "run", "--profile", "strict", "--image", "authed:1", "--", "/bin/cat", "/etc/layer2")
        assert r.returncode == 0 and r.stdout == "layer 2\n", r
        r = cli(img, "image", "pull", "--tls-verify=false", "--authfile", bad, dest, "nope:1")
        assert r.returncode == 3, r
        podman("pull", "--tls-verify=false", "--authfile", good, dest)
    finally:
        reg.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_tls_self_signed(img):
    d = tempfile.mkdtemp(prefix="pysbx-registry-tls-")
    os.chmod(d, 0o755)
    reg = rs.RealRegistry(d, tls=True)
    try:
        dest = f"{reg.host}/tls/bb:1"
        r = cli(img, "image", "push", "busybox:test", dest)
        assert r.returncode == 6 and "certificate verification failed" in r.stderr, r
        r = cli(img, "image", "push", "--ca-file", reg.cert, "busybox:test", dest)
        assert r.returncode == 0, r
        r = cli(img, "image", "pull", dest, "tls:1")
        assert r.returncode == 6 and "certificate verification failed" in r.stderr, r
        r = cli(img, "image", "pull", "--tls-verify=false", dest, "tls:1")
        assert r.returncode == 0, r
        r = cli(img, "image", "pull", "--ca-file", reg.cert, dest, "tls:2")
        assert r.returncode == 0, r
    finally:
        reg.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("index_type", ["application/vnd.oci.image.index.v1+json",
                                        "application/vnd.docker.distribution.manifest.list.v2+json"])
def test_multi_arch_index_and_bearer_token(img, shared_tmp, index_type):
    """Simulated registries (tests/registryserver.FakeRegistry): an index (OCI, or a Docker manifest
    list) with an s390x and the machine's own entry, behind the bearer-token flow (WWW-Authenticate
    -> token service with the auth file's basic credentials -> Bearer); its blobs redirected to a
    second host (a blob store), which must get no Authorization header."""
    tars = ib.layers()[:1]
    cfg = ib.config_for(tars)
    man, blobs = rs.image_for_fake(tars, cfg)
    arch = "amd64" if os.uname().machine == "x86_64" else "arm64"
    other = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
             "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": rs.sha(b"x"), "size": 1},
             "layers": []}
    other_b = json.dumps(other).encode()
    index = {"schemaVersion": 2, "mediaType": index_type, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": rs.sha(other_b), "size": len(other_b),
         "platform": {"os": "linux", "architecture": "s390x"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": rs.sha(man), "size": len(man),
         "platform": {"os": "linux", "architecture": arch}}]}
    index_b = json.dumps(index).encode()
    mt = "application/vnd.oci.image.manifest.v1+json"
    store = rs.FakeRegistry("multi/bb", {}, blobs)
    fake = rs.FakeRegistry("multi/bb", {"1": (index_b, index["mediaType"]), rs.sha(man): (man, mt),
                                        rs.sha(other_b): (other_b, mt)}, {}, token="tok123",
                           redirect_blobs=f"http://{store.host}")
    try:
        af = rs.auth_file(str(shared_tmp / "auth.json"), fake.host, "u", "p")
        r = cli(img, "image", "pull", "--tls-verify=false", f"{fake.host}/multi/bb:1", "multi:1")
        assert r.returncode == 3 and "unauthorized" in r.stderr, r
        r = cli(img, "image", "pull", "--tls-verify=false", "--authfile", af, f"{fake.host}/multi/bb:1", "multi:1")
        assert r.returncode == 0, r
        assert any(p.startswith("/token") and a.startswith("Basic ") for _, p, a in fake.requests)
        assert any(a == "Bearer tok123" for _, p, a in fake.requests if "/blobs/" in p)
        assert not any(rs.sha(other_b)[7:] in p for _, p, _ in fake.requests)
        assert store.requests and not [a for _, _, a in store.requests if a], store.requests
        r = cli(img, "run", "--profile", "strict", "--image", "multi:1", "--", "/bin/cat", "/etc/motd")
        assert r.returncode == 0 and r.stdout == ib.MOTD.decode(), r
    finally:
        fake.stop()
        store.stop()


def test_download_staging_of_a_dead_pull_is_removed(img, registry):
    """A pull that died (its staging directory's flock free) leaves downloads/ to the next pull,
    which removes it; a running pull's (flock held) is left alone."""
    import fcntl
    r = cli(img, "image", "push", "--tls-verify=false", "busybox:test", f"{registry.host}/stage/bb:1")
    assert r.returncode == 0, r
    downloads = os.path.join(img[1], "downloads")
    os.makedirs(downloads, 0o700, exist_ok=True)
    dirs = {}
    for n in ("pull.dead", "pull.running"):
        d = os.path.join(downloads, n)
        os.mkdir(d)
        open(os.path.join(d, ".lock"), "w").close()
        open(os.path.join(d, "blob.part"), "w").write("x")
        dirs[n] = d
    for p in [downloads, *dirs.values()] + [os.path.join(d, f) for d in dirs.values() for f in (".lock", "blob.part")]:
        os.chown(p, img[0].uid, img[0].gid)
    held = os.open(os.path.join(dirs["pull.running"], ".lock"), os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        r = cli(img, "image", "pull", "--tls-verify=false", f"{registry.host}/stage/bb:1", "staged:1")
        assert r.returncode == 0, r
        assert os.listdir(downloads) == ["pull.running"]
    finally:
        os.close(held)


def test_build_from_a_registry_and_from_a_podman_save(img, registry, podman):
    """Issue 22: `FROM registry/name:tag` pulls when the image is not local (builder.resolve_base
    → sandbox.registry.pull: digests verified, the store's import checks), with build's own
    --tls-verify; a bare name that is not local is refused, not fetched from Docker Hub; and an
    image saved by podman (`podman save`) builds FROM here after `image import`."""
    who = _who(img)
    _, state, work = img
    rootfs = ib.write_rootfs_tar(os.path.join(podman.dir, "rootfs.tar.gz"))
    podman("import", "--change", "ENV FROM_PODMAN=yes", rootfs, "pod/base:1")
    podman("push", "--tls-verify=false", "pod/base:1", f"{registry.host}/pod/base:{who}")
    ctx = os.path.join(work, "ctx-reg")
    os.mkdir(ctx)
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write(f"FROM {registry.host}/pod/base:{who}\nRUN echo built > /built\nCMD [\"/bin/cat\", \"/built\"]\n")
    os.chown(ctx, img[0].uid, img[0].gid)
    r = cli(img, "build", "-q", "-t", "fromreg:1", ctx)
    assert r.returncode == 6 and "--tls-verify=false" in r.stderr, r       # https unless asked
    r = cli(img, "build", "-q", "--tls-verify=false", "-t", "fromreg:1", ctx)
    assert r.returncode == 0, r
    r = cli(img, "run", "--profile", "strict", "--image", "fromreg:1")
    assert r.returncode == 0 and r.stdout == "built\n", r
    r = cli(img, "run", "--profile", "strict", "--image", "fromreg:1", "--", "/bin/sh", "-c", "echo $FROM_PODMAN")
    assert r.stdout == "yes\n", r
    # a bare name that is not local: refused with the hint, nothing fetched
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write("FROM no-such-local-image:1\nRUN true\n")
    r = cli(img, "build", "-q", "-t", "bare:1", ctx)
    assert r.returncode == 2 and "is not local" in r.stderr, r
    # podman save -> image import -> FROM here
    saved = os.path.join(podman.dir, "saved.tar")
    podman("save", "-o", saved, "pod/base:1")
    os.chmod(podman.dir, 0o755)
    os.chmod(saved, 0o644)
    assert cli(img, "image", "import", saved, "podsaved:1").returncode == 0
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write("FROM podsaved:1\nRUN echo again > /again\n")
    r = cli(img, "build", "-q", "-t", "frompodman:1", ctx)
    assert r.returncode == 0, r
    r = cli(img, "run", "--profile", "strict", "--image", "frompodman:1", "--", "/bin/cat", "/again")
    assert r.returncode == 0 and r.stdout == "again\n", r
