"""Image references: `[host[:port]/]path[:tag][@sha256:hex]`, as Docker and podman read them."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .errors import RegistryError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}\Z")
_HOST = re.compile(r"^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?\Z")


@dataclass(frozen=True)
class Reference:
    host: str                      # as written (docker.io for Docker Hub)
    path: str                      # repository path (library/busybox)
    tag: Optional[str] = None
    digest: Optional[str] = None

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.host == DOCKER_HUB else self.host

    @property
    def reference(self) -> str:
        """What /v2/<path>/manifests/<reference> takes: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        s = f"{self.host}/{self.path}"
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s

    def local_name(self) -> str:
        """The store's name for a pulled image: host/path:tag; the host is dropped for Docker Hub,
        and where the store's names cannot hold it (a port)."""
        tag = self.tag or ("latest" if not self.digest else self.digest[7:19])
        path = self.path[len("library/"):] if self.host == DOCKER_HUB and self.path.startswith("library/") \
            else self.path
        if self.host != DOCKER_HUB and ":" not in self.host and not self.host.startswith("["):
            return f"{self.host.lower()}/{path}:{tag}"
        return f"{path}:{tag}"


def parse(ref: str) -> Reference:
    """Parse an image reference; RegistryError (exit 2) when it is not one."""
    if not isinstance(ref, str) or not ref or len(ref) > 512 or any(c.isspace() for c in ref):
        raise RegistryError(f"invalid image reference {ref!r}", 2)
    rest, digest = ref, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            raise RegistryError(f"invalid image reference {ref!r}: digest must be sha256:<64 hex>", 2)
    host = DOCKER_HUB
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        host, rest = first, remainder
    tag = None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
        if not _TAG.match(tag):
            raise RegistryError(f"invalid image reference {ref!r}: bad tag {tag!r}", 2)
    if not _HOST.match(host) or not _PATH.match(rest):
        raise RegistryError(f"invalid image reference {ref!r} (expected [HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST], "
                            f"lowercase path)", 2)
    if host == DOCKER_HUB and "/" not in rest:
        rest = "library/" + rest
    if tag is None and digest is None:
        tag = "latest"
    return Reference(host, rest, tag, digest)
