"""PSB104 maps-host-root: The user namespace maps host uid/gid 0 into the sandbox."""
from __future__ import annotations

from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB104",
    name="maps-host-root",
    severity="warning",
    summary="The user namespace maps host uid/gid 0 into the sandbox.",
    rationale="""\
An explicit `uid_map`/`gid_map` entry whose host range contains 0 makes a sandbox uid the real host
root for everything outside the user namespace (files on binds, signals, ...). A map that names
host id 0 names an explicit host id, so it is PSB105 as well.
""",
    also=("PSB105",),
    bad="""\
version: 1
extends: ../base.yaml
user:
  uid_map:
    - {inside: 0, outside: 0, count: 1}   # expect: PSB104
""",
    good="""\
version: 1
extends: ../base.yaml
user:
  uid_map:
    - {inside: 0, outside: caller, count: 1}
""",
    fix="""\
Map an unprivileged host range (`auto`, `subordinate`, `outside: caller` or `outside: 100000+`).
""",
)


def check(ctx: Ctx) -> None:
    for key, what, i, out, cnt in ctx.id_map_entries():
        if isinstance(out, int) and isinstance(cnt, int) and out <= 0 < out + cnt:
            ctx.report(RULE, f"user.{key} maps host {what} 0 (root) into the sandbox",
                       "map an unprivileged host range (e.g. `auto`, or outside: 100000+)",
                       ("user", key, i, "outside"), ("user", key, i))
