"""Bring up `lo` in the sandbox's own network namespace — the only piece of networking PID 1
needs on every launch: one ioctl, the standard library only (this package's `__init__` imports
nothing, so PID 1 loads this module alone)."""
from __future__ import annotations

import fcntl
import socket
import struct

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def bring_up_loopback() -> None:
    """Set `lo` up in the current network namespace (needs CAP_NET_ADMIN there)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 0)
    try:
        ifr = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, ifr))[1]
        if not flags & _IFF_UP:
            fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))
    except OSError as e:
        raise OSError(e.errno, f"network: cannot bring up lo: {e.strerror}") from None
    finally:
        s.close()
