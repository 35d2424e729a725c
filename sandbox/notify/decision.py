"""How a notified call is answered: the plan's verdict (policies/seccomp_verdict.py, the one
decision) turned into an answer the supervisor can give — an errno, or a kill; never "run"."""
from __future__ import annotations

import errno as _errno

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Optional

from policies.plan import dataclass            # shared methods, none compiled by exec at import


@dataclass(frozen=True)
class Decision:
    """What the supervisor does with one notified syscall."""
    action: str                 # errno | kill
    errno: Optional[int]
    rule: str                   # syscall name of the rule, or "default"
    policy_action: str          # what the plan says (errno, kill, notify, trap, log, allow, ...)


def decide(seccomp_plan, name: Optional[str], args) -> Decision:
    """How the supervisor answers a notified call: the plan's verdict (policies.seccomp_verdict.rule_for,
    the one decision) turned into an answer. The filter only notifies calls the plan denies, so
    an `allow`/`log` verdict here means plan and filter disagree: the call is still denied
    (EPERM). A `trap` rule cannot be emulated: answered ENOSYS."""
    if seccomp_plan is None:
        return Decision("errno", _errno.EPERM, "default", "unknown")
    from policies.seccomp_verdict import rule_for
    r = rule_for(seccomp_plan, name, args) if name is not None else None
    if r is None:
        act, err, rule = seccomp_plan.default_action, seccomp_plan.default_errno, "default"
    else:
        act, err, rule = r.action, r.errno, r.name
    if act == "kill":
        return Decision("kill", None, rule, act)
    if act in ("errno", "notify"):
        return Decision("errno", err if err else _errno.EPERM, rule, act)
    if act == "trap":
        return Decision("errno", _errno.ENOSYS, rule, act)
    return Decision("errno", _errno.EPERM, rule, act)


def errno_without_args(seccomp_plan, name: Optional[str]) -> int:
    """The errno a denial of `name` was answered when its arguments are unknown (a kernel audit
    record logs the action without its data): the first errno rule for the name, else the
    default's."""
    for r in getattr(seccomp_plan, "rules", ()) or ():
        if r.name == name and r.action in ("errno", "notify"):
            return r.errno or _errno.EPERM
    if seccomp_plan is not None and getattr(seccomp_plan, "default_action", None) == "errno":
        return seccomp_plan.default_errno or _errno.EPERM
    return _errno.EPERM
