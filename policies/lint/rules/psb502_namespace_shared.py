"""PSB502 namespace-shared: A namespace (pid, ipc, uts, cgroup) is shared with the host."""
from __future__ import annotations

from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB502",
    name="namespace-shared",
    severity="warning",
    summary="A namespace (pid, ipc, uts, cgroup) is shared with the host.",
    severity_varies=True,
    rationale="""\
Sharing the pid namespace makes host processes visible and signalable (error); sharing ipc exposes
System V IPC and POSIX message queues; uts lets the sandbox change the host's hostname; cgroup shows
the host's cgroup tree.
""",
    bad="""\
version: 1
extends: ../base.yaml
namespaces:
  ipc: false   # expect: PSB502
""",
    good="""\
version: 1
extends: ../base.yaml
namespaces:
  ipc: true
""",
    fix="""\
Set `namespaces: {NAME: true}` for the shared namespace.
""",
)


def check(ctx: Ctx) -> None:
    ns = ctx.plan.namespaces
    for name, why, sev in (("pid", "host processes are visible and signalable", "error"),
                           ("ipc", "host System V IPC and POSIX message queues are shared", None),
                           ("uts", "the sandbox can change the host's hostname", None),
                           ("cgroup", "the host's cgroup tree is visible", None)):
        if not getattr(ns, name):
            ctx.report(RULE, f"namespaces.{name} is off: {why}", f"set `namespaces: {{{name}: true}}`",
                       ("namespaces", name), ("namespaces",), severity=sev)
