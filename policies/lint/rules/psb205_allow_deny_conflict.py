"""PSB205 allow-deny-conflict: The same system call is both allowed and denied; the deny wins and the allow is dead."""
from __future__ import annotations

from ... import syscalls as _sc
from ...seccomp_verdict import decide
from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB205",
    name="allow-deny-conflict",
    severity="warning",
    summary="The same system call is both allowed and denied; the deny wins and the allow is dead.",
    rationale="""\
A system call named in `seccomp.allow` and denied by `seccomp.deny` (by name or through a
`@group`) is denied: at equal specificity a deny beats an allow. The allow entry is dead and
misleads the reader. To carve one call out of a denied group, allow it with an argument condition
(the more specific rule wins) or remove it from the deny list.
""",
    bad="""\
version: 1
extends: ../base.yaml
seccomp:
  allow: !extend
    - getpid
    - kcmp   # expect: PSB205
  deny: [kcmp]
""",
    good="""\
version: 1
extends: ../base.yaml
seccomp:
  allow: !extend [getpid]
  deny: [kcmp]
""",
    fix="""\
Remove the system call from one of the lists; to carve it out of a denied group, allow it with an
argument condition.
""",
)


def check(ctx: Ctx) -> None:
    s = ctx.plan.seccomp
    if not s.enabled:
        return
    deny_src: dict[str, tuple] = {}
    for _, base, names, args in ctx.seccomp_items("deny"):
        if args:
            continue
        for n, p, _g in names:
            deny_src.setdefault(n, p)
    for _, base, names, args in ctx.seccomp_items("allow"):
        if args:
            continue
        for n, p, via_group in names:
            if via_group or n not in deny_src or not _sc.is_known(n):
                continue
            action, err = decide(s, n)
            if action == "allow":
                continue
            dl = ctx.loc(deny_src[n])
            ctx.report(RULE, f"{n} is allowed here but also denied at {dl.file}:{dl.line}:{dl.col}; "
                       f"the deny wins ({action}{'(' + _sc.errno_name(err) + ')' if err is not None else ''})",
                       f"remove {n} from one of the lists (to carve it out of a denied group, allow it "
                       "with an argument condition)", p)
