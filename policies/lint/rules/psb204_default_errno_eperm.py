"""PSB204 default-errno-eperm: Unknown system calls fail with EPERM; ENOSYS lets libc fall back
(clone3, openat2, ...).
"""
from __future__ import annotations

from ... import syscalls as _sc
from ...seccomp_verdict import decide
from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB204",
    name="default-errno-eperm",
    severity="warning",
    summary="Unknown system calls fail with EPERM; ENOSYS lets libc fall back (clone3, openat2, ...).",
    severity_varies=True,
    rationale="""\
A program calls a system call the filter does not know (new syscalls such as `clone3`,
`openat2`, `faccessat2`, `close_range`). With ENOSYS, libc and runtimes assume an old kernel and fall
back to the older call; with EPERM they report a permission error and fail. This is the
`clone3` breakage that hit Docker users when glibc 2.34 started using it. Keep EPERM for the
system calls you deny on purpose (`deny_errno`), answer the unknown ones with ENOSYS. Reported as
info only when the profile already answers `clone3` with ENOSYS explicitly (Docker's approach).
""",
    bad="""\
version: 1
extends: ../base.yaml
seccomp:
  default_errno: EPERM   # expect: PSB204
  deny: []
""",
    good="""\
version: 1
extends: ../base.yaml
seccomp:
  default_errno: ENOSYS
""",
    fix="""\
Use `default_errno: ENOSYS` and keep EPERM for the listed denies (`deny_errno`).
""",
)


def check(ctx: Ctx) -> None:
    s = ctx.plan.seccomp
    if not s.enabled or s.default_action != "errno" or s.default_errno != 1:
        return
    clone3 = decide(s, "clone3") if _sc.is_known("clone3") else ("errno", 38)
    handled = clone3 == ("errno", 38)
    sev = "info" if handled else "warning"
    extra = " (clone3 is answered ENOSYS explicitly)" if handled else \
        " - glibc then fails clone3/openat2/faccessat2 instead of falling back"
    ctx.report(RULE, f"unknown system calls fail with EPERM{extra}",
               "use `default_errno: ENOSYS` and keep EPERM for the listed denies (deny_errno)",
               ctx.sec_path("default_errno"), severity=sev)
