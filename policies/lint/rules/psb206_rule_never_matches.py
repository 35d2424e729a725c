"""PSB206 rule-never-matches: A seccomp rule's argument conditions can never all hold, so it never matches."""
from __future__ import annotations

from typing import Optional

from ...plan import ArgCond
from ...seccomp import conditions_by_index, parse_int
from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB206",
    name="rule-never-matches",
    severity="warning",
    summary="A seccomp rule's argument conditions can never all hold, so it never matches.",
    rationale="""\
A rule whose argument conditions contradict each other (two different `eq` values for one
argument, `lt 0`, a `masked_eq` value with bits outside its mask) matches no call at all. Usually
it was meant to allow something and the program will fail at run time.
""",
    bad="""\
version: 1
extends: ../base.yaml
seccomp:
  allow: !extend
    - names: [personality]
      args:   # expect: PSB206
        - {index: 0, op: eq, value: 0}
        - {index: 0, op: eq, value: 8}
""",
    good="""\
version: 1
extends: ../base.yaml
seccomp:
  allow: !extend
    - names: [personality]
      args:
        - {index: 0, op: eq, value: 0}
""",
    fix="""\
Fix the conditions: a `masked_eq` value must lie inside its mask; two conditions on one argument
must overlap.
""",
)


def _conds(args) -> Optional[list[ArgCond]]:
    out = []
    try:
        for a in args or []:
            op = a["op"]
            mask = parse_int(a["mask"], "mask") if op == "masked_eq" else 0
            out.append(ArgCond(int(a["index"]), op, parse_int(a["value"], "value"), mask))
    except (KeyError, TypeError, ValueError):
        return None
    return out


def check(ctx: Ctx) -> None:
    if not ctx.plan.seccomp.enabled:
        return
    for which in ("allow", "deny"):
        for i, base, names, args in ctx.seccomp_items(which):
            if not args:
                continue
            conds = _conds(args)
            if conds is None or conditions_by_index(conds) is not None:   # None: they cannot all hold
                continue
            shown = ", ".join(sorted({n for n, _, _ in names})[:6])
            ctx.report(RULE, f"seccomp.{which}[{i}] ({shown}) can never match: its argument "
                       "conditions contradict each other", "fix the conditions (a masked_eq value must lie "
                       "inside its mask; two conditions on one argument must overlap)", base + ("args",), base)
