"""What every module of sandbox.network shares: its error, the rules for names, the bound on every
helper process and wait."""
from __future__ import annotations

import hashlib
import ipaddress
import re


class NetworkError(Exception):
    """A network control cannot be set up (the launcher maps it to exit 125)."""


BUILTIN_MODES = ("none", "host", "pasta", "slirp4netns")
RESERVED_NAMES = frozenset(BUILTIN_MODES) | {"bridge", "default", "container", "private"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")          # a sandbox's --name
NET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")      # a private network's name
STEP_TIMEOUT = 10.0                                      # seconds: any helper process / wait


def short(s: str, n: int = 10) -> str:
    """A short stable hash of `s` (interface and set names have little room)."""
    return hashlib.sha256(s.encode()).hexdigest()[:n]


def as_net(s: str):
    """`s` as an IP network (an egress rule's CIDR), None when it is a sandbox name."""
    try:
        return ipaddress.ip_network(s, strict=False)
    except ValueError:
        return None
