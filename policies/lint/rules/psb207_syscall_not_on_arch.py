"""PSB207 syscall-not-on-arch: A named system call does not exist on the target architecture and is skipped."""
from __future__ import annotations

from ... import syscalls as _sc
from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB207",
    name="syscall-not-on-arch",
    severity="warning",
    summary="A named system call does not exist on the target architecture and is skipped.",
    severity_varies=True,
    rationale="""\
Filters are compiled for the native architecture. A system call that does not exist there
(`chown32`, `_llseek` on x86_64) or that this libseccomp does not know is skipped - the rule silently
does nothing. A name no architecture has is a typo and the profile does not compile (error).
""",
    bad="""\
version: 1
extends: ../base.yaml
seccomp:
  allow: !extend
    - chown32   # expect: PSB207
""",
    good="""\
version: 1
extends: ../base.yaml
seccomp:
  allow: !extend
    - fchown
""",
    fix="""\
Remove the name or replace it with the target architecture's equivalent; check the spelling
(`pysandbox explain` lists the compiled system calls).
""",
)


def check_document(ctx: Ctx) -> None:
    arch = _sc.machine()
    for which in ("allow", "deny"):
        for i, base, names, args in ctx.seccomp_items(which):
            for n, p, via_group in names:
                if via_group:
                    continue
                kind = _sc.classify(n)
                if kind == "foreign":
                    ctx.report(RULE, f"system call {n!r} does not exist on {arch} (or this libseccomp) "
                               "and is skipped", f"remove {n} or replace it with the {arch} equivalent", p)
                elif kind == "unknown":
                    ctx.report(RULE, f"unknown system call {n!r}: no architecture has it",
                               "check the spelling (see `pysandbox explain` for the compiled list)",
                               p, severity="error")
