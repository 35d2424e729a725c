"""PSB303 masked-path-removed: An OCI default masked path (/proc/kcore, /proc/keys, /sys/firmware, ...)
is not masked.
"""
from __future__ import annotations

from ..context import Ctx
from ..hazards import OCI_MASKED, missing_paths
from ..model import Rule

RULE = Rule(
    code="PSB303",
    name="masked-path-removed",
    severity="warning",
    summary="An OCI default masked path (/proc/kcore, /proc/keys, /sys/firmware, ...) is not masked.",
    rationale="""\
The OCI runtime default masks files in `/proc` and `/sys` that leak kernel memory or host
information or expose dangerous interfaces: `/proc/kcore`, `/proc/keys`, `/proc/timer_list`,
`/proc/sched_debug`, `/sys/firmware`, ... Removing them (e.g. with `!remove`) re-opens those paths.
""",
    bad="""\
version: 1
extends: ../base.yaml
filesystem:
  masked_paths: !remove [/proc/kcore]   # expect: PSB303
""",
    good="""\
version: 1
extends: ../base.yaml
filesystem:
  masked_paths: !extend [/proc/interrupts]
""",
    fix="""\
Keep the OCI defaults in `filesystem.masked_paths` (append with `!extend`, never `!remove` them).
""",
)


def check(ctx: Ctx) -> None:
    fs = ctx.plan.filesystem
    miss = missing_paths(OCI_MASKED, fs.masked_paths, fs)
    if miss:
        ctx.report(RULE, f"OCI default masked path{'s' if len(miss) > 1 else ''} not masked: {', '.join(miss)}",
                   "keep the OCI defaults in filesystem.masked_paths (append with `!extend`, never `!remove` them)",
                   ("filesystem", "masked_paths"), ("filesystem",))
