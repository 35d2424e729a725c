"""PSB201 seccomp-disabled: seccomp is disabled: every system call of the kernel is reachable."""
from __future__ import annotations

from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB201",
    name="seccomp-disabled",
    severity="error",
    summary="seccomp is disabled: every system call of the kernel is reachable.",
    rationale="""\
seccomp is the layer that keeps kernel attack surface (rarely used, often vulnerable system calls)
out of reach. With it disabled every system call is available to the program, including the
namespace, keyring, BPF and mount interfaces.
""",
    bad="""\
version: 1
extends: ../base.yaml
seccomp:
  enabled: false   # expect: PSB201
""",
    good="""\
version: 1
extends: ../base.yaml
seccomp:
  enabled: true
""",
    fix="""\
Remove `enabled: false` (or `--security-opt seccomp=unconfined`) and allow-list what the program
needs.
""",
)


def check(ctx: Ctx) -> None:
    if ctx.plan.seccomp.enabled:
        return
    ctx.report(RULE, "seccomp is disabled: the whole kernel system-call surface is reachable",
               "remove `enabled: false` (or --security-opt seccomp=unconfined) and allow-list what the program needs",
               ("seccomp", "enabled"), ("seccomp",))
