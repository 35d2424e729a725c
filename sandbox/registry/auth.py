"""Credentials from the files podman and Docker write, and the registry's WWW-Authenticate challenge.

Files, first match wins (as podman): `--authfile` / `$REGISTRY_AUTH_FILE`,
`$XDG_RUNTIME_DIR/containers/auth.json`, `~/.config/containers/auth.json`, `~/.docker/config.json`.
Each is `{"auths": {"HOST[/PATH]": {"auth": base64("user:password")}}}` (also `username`/`password`,
and `identitytoken` as a refresh token). Credential helpers (`credHelpers`, `credsStore`) are not run.
A file is read bounded (1 MiB) and must be a regular file.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
from typing import Optional

from .errors import BAD_INPUT, RegistryError

MAX_AUTH_FILE = 1 << 20
_DOCKER_HUB_KEYS = ("docker.io", "registry-1.docker.io", "index.docker.io", "https://index.docker.io/v1/")


def auth_files(authfile: Optional[str] = None) -> list[str]:
    if authfile:
        return [authfile]
    if os.environ.get("REGISTRY_AUTH_FILE"):
        return [os.environ["REGISTRY_AUTH_FILE"]]
    out = []
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        out.append(os.path.join(xdg, "containers", "auth.json"))
    home = os.path.expanduser("~")
    out.append(os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"),
                            "containers", "auth.json"))
    out.append(os.path.join(os.environ.get("DOCKER_CONFIG") or os.path.join(home, ".docker"), "config.json"))
    return out


def _read(path: str, explicit: bool) -> Optional[dict]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if explicit:
            raise RegistryError(f"{path}: cannot read the auth file ({e.strerror})", BAD_INPUT) from None
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise RegistryError(f"{path}: the auth file is not a regular file", BAD_INPUT)
        data = f.read(MAX_AUTH_FILE + 1)
    if len(data) > MAX_AUTH_FILE:
        raise RegistryError(f"{path}: the auth file is larger than {MAX_AUTH_FILE} bytes", BAD_INPUT)
    try:
        doc = json.loads(data or b"{}")
    except RecursionError:
        raise RegistryError(f"{path}: the auth file is nested too deeply", BAD_INPUT) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise RegistryError(f"{path}: the auth file is not valid JSON ({e})", BAD_INPUT) from None
    return doc if isinstance(doc, dict) else None


def _entry_creds(entry) -> Optional[tuple[str, str]]:
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        try:
            user, sep, pw = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        return (user, pw) if sep else None
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return entry["username"], entry["password"]
    return None


def _key_host_path(key: str) -> tuple[str, str]:
    k = re.sub(r"^https?://", "", key).rstrip("/")
    if k in ("index.docker.io/v1", "index.docker.io"):
        return "docker.io", ""
    host, _, path = k.partition("/")
    if host in _DOCKER_HUB_KEYS:
        host = "docker.io"
    return host, ("" if path in ("v1", "v2") else path)


def credentials(host: str, path: str = "", authfile: Optional[str] = None) -> Optional[tuple[str, str]]:
    """(user, password) for `host` (as in the reference: docker.io for Docker Hub) and repository
    `path`: the entry of the longest matching HOST/PATH prefix in the first file that has one."""
    host = "docker.io" if host in _DOCKER_HUB_KEYS else host
    for f in auth_files(authfile):
        doc = _read(f, explicit=bool(authfile or os.environ.get("REGISTRY_AUTH_FILE")))
        auths = (doc or {}).get("auths")
        if not isinstance(auths, dict):
            continue
        best, best_len = None, -1
        for key, entry in auths.items():
            if not isinstance(key, str):
                continue
            khost, kpath = _key_host_path(key)
            if khost != host:
                continue
            if kpath and not (path == kpath or path.startswith(kpath + "/")):
                continue
            creds = _entry_creds(entry)
            if creds and len(kpath) > best_len:
                best, best_len = creds, len(kpath)
        if best:
            return best
    return None


_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')


def parse_challenge(header: str) -> tuple[str, dict]:
    """'Bearer realm="https://auth",service="reg",scope="repository:x:pull"' -> ("bearer", {...})."""
    header = (header or "")[:4096]
    scheme, _, rest = header.strip().partition(" ")
    params = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if not m or m.end() == pos:
            break
        v = m.group(2)
        if v.startswith('"'):
            v = re.sub(r"\\(.)", r"\1", v[1:-1])
        params[m.group(1).lower()] = v
        pos = m.end()
    return scheme.lower(), params


def basic_header(creds: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
