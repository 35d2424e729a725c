"""PSB301 writable-root: The root filesystem is writable."""
from __future__ import annotations

from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB301",
    name="writable-root",
    severity="warning",
    summary="The root filesystem is writable.",
    severity_varies=True,
    rationale="""\
A writable root lets the program replace its own binaries and libraries, plant files for later
runs and fill the disk. With `root: {path: DIR}` the writes go straight to the host directory
(error). Keep the root read-only and give the program tmpfs or volume mounts where it must write.
""",
    bad="""\
version: 1
extends: ../base.yaml
filesystem:
  read_only: false   # expect: PSB301
""",
    good="""\
version: 1
extends: ../base.yaml
filesystem:
  read_only: true
""",
    fix="""\
Set `filesystem: {read_only: true}` and give the program tmpfs or volume mounts where it writes.
""",
)


def check(ctx: Ctx) -> None:
    fs = ctx.plan.filesystem
    if fs.read_only:
        return
    host_dir = fs.root != "host" and not fs.image
    ctx.report(RULE, "the root filesystem is writable" + (f": writes go to the host directory {fs.root}"
                                                             if host_dir else ""),
               "set `filesystem: {read_only: true}` and give the program tmpfs or volume mounts where it writes",
               ("filesystem", "read_only"), ("filesystem",), severity="error" if host_dir else None)
