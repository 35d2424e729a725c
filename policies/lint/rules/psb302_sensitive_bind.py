"""PSB302 sensitive-bind: A host-sensitive path (/, /proc, /sys, /dev, /etc, a container-runtime socket) is bound in."""
from __future__ import annotations

import os

from ..context import Ctx
from ..hazards import RUNTIME_SOCKETS, SENSITIVE_PATHS, SENSITIVE_PREFIXES, covered
from ..model import Rule

RULE = Rule(
    code="PSB302",
    name="sensitive-bind",
    severity="error",
    summary="A host-sensitive path (/, /proc, /sys, /dev, /etc, a container-runtime socket) is bound in.",
    severity_varies=True,
    rationale="""\
Binding host-sensitive paths hands the host to the sandbox: a writable `/`, `/etc`, `/proc`,
`/sys`, `/dev` or `/boot` lets it change the host directly (cron, passwd, kernel tunables, devices).
A container-runtime socket (`/var/run/docker.sock`, `/run/containerd`, podman, CRI-O, buildkit) is
host root even read-only: `connect()` on a unix socket ignores the read-only mount flag. Read-only
binds of the other sensitive paths are warnings (they leak host secrets and topology).
""",
    bad="""\
version: 1
extends: ../base.yaml
filesystem:
  mounts: !extend
    - type: bind
      source: /var/run/docker.sock   # expect: PSB302
      target: /var/run/docker.sock
      read_only: true
""",
    good="""\
version: 1
extends: ../base.yaml
filesystem:
  mounts: !extend
    - type: bind
      source: /srv/app-data
      target: /data
      read_only: true
""",
    fix="""\
Bind only the files the program needs, read-only (`read_only: true`); never bind a container-runtime
socket or its directory.
""",
)


def check(ctx: Ctx) -> None:
    fs_d = ctx.doc.data.get("filesystem")
    mounts = fs_d.get("mounts") if isinstance(fs_d, dict) else None
    if not isinstance(mounts, list):
        return
    for i, m in enumerate(mounts):
        if not isinstance(m, dict) or m.get("type") != "bind" or not isinstance(m.get("source"), str):
            continue
        src = os.path.normpath(m["source"]) if m["source"] != "/" else "/"
        ro = m.get("read_only", True)
        path = ("filesystem", "mounts", i, "source")
        sockets = [s for s in RUNTIME_SOCKETS if covered(s, [src])]
        if sockets:
            ctx.report(RULE, f"bind of {src} exposes the container runtime socket {sockets[0]} "
                       "(control of it is root on the host, read-only or not)",
                       "never bind a container-runtime socket or its directory into a sandbox", path)
            continue
        if src in SENSITIVE_PATHS or src.startswith(SENSITIVE_PREFIXES):
            if ro:
                ctx.report(RULE, f"read-only bind of host-sensitive path {src}",
                           "bind only the files the program needs", path, severity="warning")
            else:
                ctx.report(RULE, f"writable bind of host-sensitive path {src}",
                           "bind it read-only (`read_only: true`) or, better, only the files the program needs",
                           ("filesystem", "mounts", i, "read_only"), path)
