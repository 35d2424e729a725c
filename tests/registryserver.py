"""Registries for the registry tests: Debian's real `docker-registry` started on a free port of
127.0.0.1 (plain HTTP, htpasswd basic auth, TLS with a self-signed certificate made here), a
hostile registry (a small http.server: a *simulated* registry, it serves whatever manifest and
blobs a test gives it, corrupted on purpose, and can demand the bearer-token flow), and podman
with a storage of its own (--root/--runroot in a temporary directory; the host's podman state is
never touched).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

REGISTRY_BIN = "/usr/bin/docker-registry"
PODMAN_RUN = ("--runtime", "/usr/bin/runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
              "--network", "none")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RealRegistry:
    """docker-registry serving from `workdir`; `users` {name: password} turns on htpasswd basic
    auth, `tls` serves HTTPS with a self-signed certificate for 127.0.0.1 (`self.cert`)."""

    def __init__(self, workdir: str, users: dict | None = None, tls: bool = False):
        self.dir, self.port = workdir, free_port()
        self.host = f"127.0.0.1:{self.port}"
        os.makedirs(os.path.join(workdir, "storage"), exist_ok=True)
        cfg = ["version: 0.1", "log:", "  level: warn", "storage:", "  filesystem:",
                f"    rootdirectory: {workdir}/storage", "  delete:", "    enabled: true",
                "http:", f"  addr: 127.0.0.1:{self.port}"]
        self.cert = None
        if tls:
            self.cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                            "-keyout", key, "-out", self.cert], check=True, capture_output=True)
            os.chmod(self.cert, 0o644)
            cfg += ["  tls:", f"    certificate: {self.cert}", f"    key: {key}"]
        if users:
            pw = os.path.join(workdir, "htpasswd")
            for i, (u, p) in enumerate(users.items()):
                subprocess.run(["htpasswd", "-B", "-b"] + (["-c"] if i == 0 else []) + [pw, u, p], check=True,
                               capture_output=True)
            cfg += ["auth:", "  htpasswd:", "    realm: test-realm", f"    path: {pw}"]
        self.config = os.path.join(workdir, "config.yml")
        with open(self.config, "w") as f:
            f.write("\n".join(cfg) + "\n")
        self.log = open(os.path.join(workdir, "registry.log"), "wb")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", self.config], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"docker-registry did not start: {open(self.log.name).read()[-2000:]}")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def auth_file(path: str, host: str, user: str, password: str) -> str:
    import base64
    with open(path, "w") as f:
        json.dump({"auths": {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}, f)
    os.chmod(path, 0o644)
    return path


class Podman:
    """podman with a storage of its own below `workdir` (vfs: no mounts left behind)."""

    def __init__(self, workdir: str):
        self.dir = workdir
        self.base = ["podman", "--root", os.path.join(workdir, "root"), "--runroot", os.path.join(workdir, "runroot"),
                     "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]

    def __call__(self, *args, timeout=180, check=True) -> subprocess.CompletedProcess:
        p = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=timeout)
        if check:
            assert p.returncode == 0, (args, p.stdout[-2000:], p.stderr[-2000:])
        return p

    def run(self, image: str, *cmd, **kw) -> subprocess.CompletedProcess:
        return self("run", "--rm", *PODMAN_RUN, image, *cmd, **kw)

    def cleanup(self) -> None:
        # not `podman system reset`: it also touches host-wide network configurations
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def podman():
    """A Podman with a storage of its own, removed afterwards (import it into a test module)."""
    p = Podman(tempfile.mkdtemp(prefix="pysbx-podman-"))
    yield p
    p.cleanup()


def sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


class FakeRegistry:
    """A simulated registry (http.server on 127.0.0.1, plain HTTP) serving one repository `repo`:
    `manifests` {reference: (bytes, media type)}, `blobs` {digest: bytes}; what it serves may be
    corrupt on purpose. `token`: demand a bearer token (the WWW-Authenticate flow, its token
    service on /token checking basic credentials `user`:`password`). Requests are recorded."""

    def __init__(self, repo: str, manifests: dict, blobs: dict, token: str | None = None,
                 user: str = "u", password: str = "p", no_length: bool = False, redirect_blobs: str = ""):
        self.repo, self.manifests, self.blobs, self.token = repo, manifests, blobs, token
        self.redirect_blobs = redirect_blobs    # "http://HOST": blob GETs answered 307 to HOST (a blob store)
        self.no_length = no_length      # bodies without Content-Length, ended by closing the connection
        self.requests: list[tuple[str, str, str]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body=b"", headers=None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if not outer.no_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    try:
                        self.wfile.write(body)
                    except OSError:          # the client stopped reading (a refused body)
                        pass

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                import base64
                outer.requests.append((self.command, self.path, self.headers.get("Authorization", "")))
                if self.path.startswith("/token"):
                    want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
                    if self.headers.get("Authorization") != want:
                        return self._send(401)
                    return self._send(200, json.dumps({"token": outer.token}).encode())
                if outer.token and self.headers.get("Authorization") != f"Bearer {outer.token}":
                    realm = f"http://127.0.0.1:{outer.port}/token"
                    return self._send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}', {
                        "WWW-Authenticate": f'Bearer realm="{realm}",service="fake",scope="repository:{outer.repo}:pull"'})
                if self.path == "/v2/":
                    return self._send(200, b"{}")
                pre = f"/v2/{outer.repo}/"
                if self.path.startswith(pre + "manifests/"):
                    ref = self.path[len(pre + "manifests/"):]
                    if ref in outer.manifests:
                        data, mt, *extra = outer.manifests[ref]       # (bytes, media type[, headers])
                        return self._send(200, data, {"Content-Type": mt, **(extra[0] if extra else {})})
                if self.path.startswith(pre + "blobs/"):
                    d = self.path[len(pre + "blobs/"):]
                    if outer.redirect_blobs:
                        return self._send(307, b"", {"Location": f"{outer.redirect_blobs}{self.path}"})
                    if d in outer.blobs:
                        return self._send(200, outer.blobs[d], {"Content-Type": "application/octet-stream"})
                self._send(404, b'{"errors":[{"code":"NOT_FOUND","message":"unknown"}]}')

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def image_for_fake(tars: list[bytes], config: bytes) -> tuple[bytes, dict]:
    """(manifest bytes, blobs) of an OCI image of uncompressed layer `tars` and `config`."""
    import gzip
    blobs = {sha(config): config}
    layers = []
    for t in tars:
        g = gzip.compress(t, mtime=0)
        blobs[sha(g)] = g
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(g), "size": len(g)})
    man = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config),
                      "size": len(config)}, "layers": layers}
    return json.dumps(man).encode(), blobs


def store_state(state: str) -> tuple:
    """What a refused pull must leave as it was: the image index, the layers, an empty tmp/ and
    downloads/."""
    idx = os.path.join(state, "images.json")
    images = json.load(open(idx))["images"] if os.path.exists(idx) else {}
    ls = (lambda d: sorted(os.listdir(d)) if os.path.isdir(d) else [])
    return (sorted(images), ls(os.path.join(state, "layers")), ls(os.path.join(state, "tmp")),
            ls(os.path.join(state, "downloads")))
