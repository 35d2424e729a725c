"""PSB103 real-root: The program runs as uid 0 without a user namespace: real root when root launches it."""
from __future__ import annotations

from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB103",
    name="real-root",
    severity="error",
    summary="The program runs as uid 0 without a user namespace: real root when root launches it.",
    rationale="""\
Without a user namespace the sandbox's uid 0 is the host's uid 0. When root starts it (as CI
runners and services usually do), every file the sandbox can reach is owned by "itself", and any
kernel or mount bug becomes a host-root compromise. With `namespaces.user: true` uid 0 inside maps
to an unprivileged host range (`auto`: 1000000000+ for a root caller, the caller itself when
rootless).
""",
    bad="""\
version: 1
extends: ../base.yaml
namespaces:
  user: false   # expect: PSB103
""",
    good="""\
version: 1
extends: ../base.yaml
namespaces:
  user: true
""",
    fix="""\
Set `namespaces: {user: true}` (uid 0 inside then maps to an unprivileged host range) or run as a
non-zero `user.uid`.
""",
)


def check(ctx: Ctx) -> None:
    plan = ctx.plan
    if plan.namespaces.user or plan.user.uid != 0:
        return
    ctx.report(RULE, "runs as uid 0 without a user namespace: real host root when root starts it",
               "set `namespaces: {user: true}` (uid 0 inside maps to an unprivileged host range) "
               "or run as a non-zero user.uid", ("namespaces", "user"), ("user", "uid"), ("namespaces",))
