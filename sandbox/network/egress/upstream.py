"""The egress proxy's upstream connection: the name's addresses in order, the next one when one
fails, bounded — the one copy, for the spliced connections (proxy.py) and the intercepted ones
(intercept.py).

A hostile resolver can answer with many addresses (names.py keeps up to MAX_ADDRS = 64) that all
black-hole the SYN: without a bound on both the count and the total, one connection of the
sandbox would hold the proxy for addresses x timeout. So: at most MAX_ATTEMPTS addresses, each
within ATTEMPT_TIMEOUT (or the caller's `attempt`), all of them within CONNECT_TIMEOUT; what was
not tried for lack of time is named in the failures (the caller audits the give-up with them).
Constants documented in docs/network.md ("Upstream connections").
"""
from __future__ import annotations

import asyncio
import os
import socket

CONNECT_TIMEOUT = 10.0       # an upstream connection, all its addresses' attempts together
ATTEMPT_TIMEOUT = 3.0        # one address of a name, before the next one
MAX_ATTEMPTS = 8             # addresses tried per connection


def why(e: BaseException) -> str:
    """An upstream failure in a few words (asyncio's connect errors carry a long strerror)."""
    errno = getattr(e, "errno", None)
    return os.strerror(errno) if errno else (getattr(e, "strerror", None) or "timeout")


async def connect(addrs, port: int, attempt: float = ATTEMPT_TIMEOUT) -> tuple[socket.socket | None, str | None, list]:
    """A connected non-blocking socket to the first of `addrs` that takes the connection (each
    attempt bounded by `attempt` seconds, all of them by CONNECT_TIMEOUT, at most MAX_ATTEMPTS
    addresses): (socket, its address, [(address, why), ...] that failed before) or (None, None,
    the failures). A family the kernel lacks (no IPv6) is a failed attempt like a refusal."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_TIMEOUT
    failed: list[tuple[str, str]] = []
    for a in list(addrs)[:MAX_ATTEMPTS]:
        left = deadline - loop.time()
        if left <= 0:
            failed.append((a, "no time left"))
            break
        up = None
        try:
            up = socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM)
            up.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(up, (a, port)), min(attempt, left))
            return up, a, failed
        except (OSError, asyncio.TimeoutError) as e:
            if up is not None:
                up.close()
            failed.append((a, why(e)))
    return None, None, failed


def gave_up(addrs, failed: list) -> str:
    """The give-up in one line: how many of how many addresses were tried, and why each failed."""
    n = len(list(addrs))
    tried = sum(1 for _, w in failed if w != "no time left")
    head = f"gave up after {tried} of {n} address{'es' if n != 1 else ''}"
    if n > MAX_ATTEMPTS:
        head += f" (at most {MAX_ATTEMPTS} tried)"
    if any(w in ("timeout", "no time left") for _, w in failed):
        head += f" (at most {CONNECT_TIMEOUT:g} s in all)"
    return head + (": " + "; ".join(f"{a}: {w}" for a, w in failed) if failed else "")
