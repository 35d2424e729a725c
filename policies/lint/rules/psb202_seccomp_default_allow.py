"""PSB202 seccomp-default-allow: The seccomp default action allows (or only logs) system calls no rule names."""
from __future__ import annotations

from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB202",
    name="seccomp-default-allow",
    severity="error",
    summary="The seccomp default action allows (or only logs) system calls no rule names.",
    severity_varies=True,
    rationale="""\
A default `allow` (a deny list) lets through every system call nobody thought of, including those
added by future kernels. A default `log` only records them. Use a default-deny allow list:
`default_action: errno`, `default_errno: ENOSYS`. Such a default lets the escape-class system calls
no deny names through too: the bad example is also PSB203.
""",
    also=("PSB203",),
    bad="""\
version: 1
extends: ../base.yaml
seccomp:
  default_action: allow   # expect: PSB202
  allow: []
  deny: ["@mount", "@module", "@namespace", "@keyring", "@debug", "@raw-io", "@reboot", "@swap"]
""",
    good="""\
version: 1
extends: ../base.yaml
seccomp:
  default_action: errno
""",
    fix="""\
Use `default_action: errno` with `default_errno: ENOSYS` and an allow list.
""",
)


def check(ctx: Ctx) -> None:
    s = ctx.plan.seccomp
    if not s.enabled or s.default_action not in ("allow", "log"):
        return
    sev = "error" if s.default_action == "allow" else "warning"
    ctx.report(RULE, f"seccomp default_action is {s.default_action}: every system call no rule names is "
               f"{'allowed' if s.default_action == 'allow' else 'allowed (only logged)'}",
               "use `default_action: errno` with `default_errno: ENOSYS` and an allow list",
               ctx.sec_path("default_action"), severity=sev)
