"""Image references, auth-file lookups and WWW-Authenticate challenges (no network, no root)."""
from __future__ import annotations

import base64
import json

import pytest

from sandbox.registry import auth
from sandbox.registry.errors import RegistryError
from sandbox.registry.reference import parse

D = "sha256:" + "a" * 64


@pytest.mark.parametrize("ref, host, path, tag, digest, local", [
    ("busybox", "docker.io", "library/busybox", "latest", None, "busybox:latest"),
    ("user/app:1.2", "docker.io", "user/app", "1.2", None, "user/app:1.2"),
    ("quay.io/org/app:v1", "quay.io", "org/app", "v1", None, "quay.io/org/app:v1"),
    ("127.0.0.1:5000/bb:1", "127.0.0.1:5000", "bb", "1", None, "bb:1"),
    ("localhost/bb", "localhost", "bb", "latest", None, "localhost/bb:latest"),
    (f"reg.example:443/a/b@{D}", "reg.example:443", "a/b", None, D, "a/b:aaaaaaaaaaaa"),
    (f"reg.example/a:t@{D}", "reg.example", "a", "t", D, "reg.example/a:t"),
])
def test_parse(ref, host, path, tag, digest, local):
    r = parse(ref)
    assert (r.host, r.path, r.tag, r.digest, r.local_name()) == (host, path, tag, digest, local)
    assert r.reference == (digest or tag)


@pytest.mark.parametrize("ref", ["", "UPPER/case", "a b", "bb@sha256:123", "host:5000/", "x/../y", "bb:" + "t" * 200,
                                 "a//b", "-x"])
def test_parse_refuses(ref):
    with pytest.raises(RegistryError) as e:
        parse(ref)
    assert e.value.code == 2


def _af(tmp_path, auths, name="auth.json"):
    p = tmp_path / name
    p.write_text(json.dumps({"auths": auths}))
    return str(p)


def _b(s):
    return base64.b64encode(s.encode()).decode()


def test_credentials_longest_prefix_and_docker_hub(tmp_path):
    f = _af(tmp_path, {"reg.example": {"auth": _b("a:1")}, "reg.example/team": {"auth": _b("b:2")},
                       "https://index.docker.io/v1/": {"auth": _b("hub:3")},
                       "other.example": {"username": "c", "password": "4"}, "bad.example": {"auth": "!!"}})
    assert auth.credentials("reg.example", "team/app", f) == ("b", "2")
    assert auth.credentials("reg.example", "teamx/app", f) == ("a", "1")
    assert auth.credentials("docker.io", "library/bb", f) == ("hub", "3")
    assert auth.credentials("other.example", "x", f) == ("c", "4")
    assert auth.credentials("bad.example", "x", f) is None
    assert auth.credentials("nowhere.example", "x", f) is None


def test_auth_file_order_and_bounds(tmp_path, monkeypatch):
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    (tmp_path / ".docker").mkdir()
    _af(tmp_path / ".docker", {"r.example": {"auth": _b("docker:1")}}, "config.json")
    assert auth.credentials("r.example", "x") == ("docker", "1")
    (tmp_path / "run" / "containers").mkdir(parents=True)
    _af(tmp_path / "run" / "containers", {"r.example": {"auth": _b("podman:2")}})
    assert auth.credentials("r.example", "x") == ("podman", "2")
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (auth.MAX_AUTH_FILE + 1))
    with pytest.raises(RegistryError, match="larger than"):
        auth.credentials("r.example", "x", str(big))
    with pytest.raises(RegistryError, match="cannot read"):
        auth.credentials("r.example", "x", str(tmp_path / "missing.json"))


def test_parse_challenge():
    assert auth.parse_challenge('Bearer realm="https://auth.example/token",service="reg",'
                                'scope="repository:a/b:pull,push"') == \
        ("bearer", {"realm": "https://auth.example/token", "service": "reg", "scope": "repository:a/b:pull,push"})
    assert auth.parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})
    assert auth.parse_challenge("") == ("", {})
    s, p = auth.parse_challenge("Bearer " + "a=b," * 5000)
    assert s == "bearer" and len(p) == 1
