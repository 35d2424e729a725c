"""PSB304 readonly-path-removed: An OCI default read-only path (/proc/sys, /proc/sysrq-trigger, ...) is
not read-only.
"""
from __future__ import annotations

from ..context import Ctx
from ..hazards import OCI_READONLY, missing_paths
from ..model import Rule

RULE = Rule(
    code="PSB304",
    name="readonly-path-removed",
    severity="warning",
    summary="An OCI default read-only path (/proc/sys, /proc/sysrq-trigger, ...) is not read-only.",
    rationale="""\
The OCI runtime default makes `/proc/sys`, `/proc/sysrq-trigger`, `/proc/irq`, `/proc/bus` and
`/proc/fs` read-only: writes there change the (host) kernel's behaviour. Keep them read-only.
""",
    bad="""\
version: 1
extends: ../base.yaml
filesystem:
  readonly_paths: [/proc/bus]   # expect: PSB304
""",
    good="""\
version: 1
extends: ../base.yaml
filesystem:
  readonly_paths: !extend [/proc/driver]
""",
    fix="""\
Keep the OCI defaults in `filesystem.readonly_paths`.
""",
)


def check(ctx: Ctx) -> None:
    fs = ctx.plan.filesystem
    miss = missing_paths(OCI_READONLY, list(fs.readonly_paths) + list(fs.masked_paths), fs)
    if miss:
        ctx.report(RULE, f"OCI default read-only path{'s' if len(miss) > 1 else ''} not read-only: "
                   f"{', '.join(miss)}",
                   "keep the OCI defaults in filesystem.readonly_paths",
                   ("filesystem", "readonly_paths"), ("filesystem",))
