"""OCI distribution API: `image pull` / `image push` (pull.pull, push.push), a small bounded HTTP
client (client), references (reference), credentials from podman's and Docker's files (auth).

For `FROM registry/name:tag` in a build: ``sandbox.registry.pull(ref, name=None, store=None,
tls_verify=True, ca_file=None, authfile=None, progress=None, limits=None) -> (name, record)``.
"""
from __future__ import annotations

from .errors import RegistryError


def pull(ref: str, **kw):
    from .pull import pull as _pull
    return _pull(ref, **kw)


def push(name: str, dest=None, **kw):
    from .push import push as _push
    return _push(name, dest, **kw)


__all__ = ["RegistryError", "pull", "push"]
