"""Secrets the sandbox may use but never read (docs/network.md, "Secrets").

At launch the supervisor mints one random placeholder per secret (`pysandbox-secret:NAME:<hex>`)
and gives the program that placeholder as its environment variable NAME (`SecretSet.env`); after
PID 1 was cloned (so no copy of the supervisor's memory in the sandbox holds it) it reads each
value (`SecretSet.load`: the invoking process's environment or a file the caller can read; bounded;
a missing or malformed one stops the launch). The values stay in this object, in the memory of the
process that runs the egress proxy; the interception (intercept.py) swaps a placeholder for its
value in the secret's header, for the secret's hosts only. Nothing here writes a value anywhere:
not to the plan (which holds the reference `from:` only), the state directory, logs or audit
(`repr` shows names only).
"""
from __future__ import annotations

import os
import secrets as _random
import stat

PREFIX = "pysandbox-secret:"
MAX_VALUE = 16 * 1024              # bytes of one secret's value
TOKEN_BYTES = 16                   # random bytes of a placeholder (32 hex digits)


# `env:` sources moved out of this process's environment (take_env_sources), for this launch and
# the later ones of the same process (a launch server runs many)
_TAKEN: dict = {}


class SecretError(Exception):
    """A secret the plan names cannot be read (missing, too large, not one header value)."""


def host_matches(pattern: str, host: str) -> bool:
    """`host` (a name from SNI/Host, any case, maybe with a trailing dot) against a rule's host:
    the same name, or for `*.suffix` any name below suffix (not suffix itself)."""
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


class Minted:
    """One secret of one sandbox: the plan's reference, its placeholder and (once loaded) its value."""
    __slots__ = ("secret", "placeholder", "token", "value")

    def __init__(self, secret):
        self.secret = secret
        self.token = _random.token_hex(TOKEN_BYTES)
        self.placeholder = f"{PREFIX}{secret.name}:{self.token}"
        self.value: bytes | None = None

    @property
    def name(self) -> str:
        return self.secret.name

    def for_host(self, host: str) -> bool:
        return any(host_matches(p, host) for p in self.secret.hosts)

    def header_value(self, sent: bytes) -> bytes:
        """What the secret's header carries upstream for the program's `sent`: the placeholder
        alone -> the profile's format with the value; else each placeholder in it -> the value."""
        ph = self.placeholder.encode()
        if sent.strip() == ph:
            before, _, after = self.secret.format.partition("{}")
            return before.encode() + self.value + after.encode()
        return sent.replace(ph, self.value)

    def __repr__(self) -> str:                 # never the value, nor the placeholder's token
        return f"<secret {self.secret.name}>"


class SecretSet:
    """The secrets of one sandbox (plan.network.secrets)."""

    def __init__(self, secrets=()):
        self.minted = tuple(Minted(s) for s in secrets)

    def __bool__(self) -> bool:
        return bool(self.minted)

    def __repr__(self) -> str:
        return f"<secrets {', '.join(m.name for m in self.minted) or '-'}>"

    def env(self) -> dict:
        """NAME -> placeholder, for the program's environment."""
        return {m.name: m.placeholder for m in self.minted}

    def load(self, environ=None) -> None:
        """Read every value (fail closed: SecretError, one line, names the secret, never a value).
        environ: by default this process's environment and what take_env_sources moved out of it."""
        environ = {**_TAKEN, **os.environ} if environ is None else environ
        for m in self.minted:
            m.value = _read(m.secret, environ)

    def clear(self) -> None:
        for m in self.minted:
            m.value = None

    def for_host(self, host: str) -> list:
        return [m for m in self.minted if m.for_host(host)]

    def found_in(self, data: bytes) -> list:
        """The secrets whose placeholder is in `data`: as sent, or its random part alone (which
        also catches a percent-encoded or otherwise re-quoted name and colons)."""
        return [m for m in self.minted if m.token.encode() in data or m.token.upper().encode() in data]

    def tokens(self) -> list:
        return [m.token.encode() for m in self.minted]


def env_sources(secrets) -> list:
    """The caller's variables that hold values (`from: env:VAR`): kept out of the program's
    environment whatever env.allow / -e pass through."""
    return [s.source[4:] for s in secrets if s.source.startswith("env:")]


def take_env_sources(secrets) -> None:
    """Move every `env:` source variable out of this process's environment into this module's
    memory, before the launch spawns any helper (pasta, slirp4netns, newuidmap, nft...): a helper
    inherits the environment, and its /proc/PID/environ is readable by the caller's other
    processes. (The supervisor's own initial environment, where the caller put the value, stays.)"""
    for var in env_sources(secrets):
        if var in os.environ:
            _TAKEN[var] = os.environ.pop(var)


def check_not_exposed(secret_set: SecretSet, plan) -> None:
    """A `file:` secret the sandbox could read itself (below its root directory, a system
    directory or /etc entry of a `root: host` sandbox, or a bind source; symlinks resolved) stops
    the launch: the value would be in the sandbox after all."""
    fs = plan.filesystem
    seen = []
    if fs.image is None:
        seen += list(fs.system_dirs) + [f"/etc/{e}" for e in fs.etc] if fs.root == "host" else [fs.root]
    seen += [m.source for m in fs.mounts if m.type == "bind" and m.source]
    for m in secret_set.minted:
        kind, _, path = m.secret.source.partition(":")
        if kind != "file":
            continue
        real = os.path.realpath(path)
        for v in seen:
            rv = os.path.realpath(v)
            if real == rv or real.startswith(rv.rstrip("/") + "/"):
                raise SecretError(f"secret {m.name} ({m.secret.source}): the sandbox can read that file itself "
                                  f"(through {v}); keep the file outside what the sandbox sees")


def _read(secret, environ) -> bytes:
    kind, _, ref = secret.source.partition(":")
    what = f"secret {secret.name} ({kind}:{ref})"
    if kind == "env":
        raw = environ.get(ref)
        if raw is None:
            raise SecretError(f"{what}: the variable is not set")
        value = raw.encode() if isinstance(raw, str) else bytes(raw)
        if len(value) > MAX_VALUE:
            raise SecretError(f"{what}: longer than {MAX_VALUE} bytes")
    elif kind == "file":
        value = _read_file(ref, what)
    else:
        raise SecretError(f"{what}: unknown source (env: or file:)")
    if value.endswith(b"\r\n"):
        value = value[:-2]
    elif value.endswith(b"\n"):
        value = value[:-1]
    if not value:
        raise SecretError(f"{what}: empty")
    if any(b < 0x20 and b != 0x09 or b == 0x7f for b in value):
        raise SecretError(f"{what}: holds control characters (a header value cannot)")
    return value


def _read_file(path: str, what: str) -> bytes:
    """A regular file the supervisor (the caller) can open, at most MAX_VALUE bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        raise SecretError(f"{what}: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SecretError(f"{what}: not a regular file")
        data = b""
        while len(data) <= MAX_VALUE:
            chunk = os.read(fd, MAX_VALUE + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > MAX_VALUE:
            raise SecretError(f"{what}: larger than {MAX_VALUE} bytes")
        return data
    finally:
        os.close(fd)
