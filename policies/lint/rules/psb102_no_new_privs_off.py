"""PSB102 no-new-privs-off: `no_new_privs: false` lets setuid/setcap binaries raise privileges inside the sandbox."""
from __future__ import annotations

from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB102",
    name="no-new-privs-off",
    severity="error",
    summary="`no_new_privs: false` lets setuid/setcap binaries raise privileges inside the sandbox.",
    rationale="""\
Without `no_new_privs` a setuid-root or file-capability binary inside the sandbox (e.g. `su`,
`ping` on older systems, or one the program writes itself on a writable mount) raises its
privileges on exec. With it, exec never grants more than the caller had, and seccomp filters can be
loaded without `CAP_SYS_ADMIN`.
""",
    bad="""\
version: 1
extends: ../base.yaml
no_new_privs: false   # expect: PSB102
""",
    good="""\
version: 1
extends: ../base.yaml
no_new_privs: true
""",
    fix="""\
Set `no_new_privs: true`.
""",
)


def check(ctx: Ctx) -> None:
    if ctx.plan.no_new_privs:
        return
    ctx.report(RULE, "no_new_privs is off: setuid and file-capability binaries can gain privileges",
               "set `no_new_privs: true`", ("no_new_privs",))
