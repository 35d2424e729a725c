"""PSB208 rule-no-effect: A seccomp rule restates the default action or repeats another rule."""
from __future__ import annotations

from ... import syscalls as _sc
from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB208",
    name="rule-no-effect",
    severity="info",
    summary="A seccomp rule restates the default action or repeats another rule.",
    rationale="""\
A rule that restates the default action (a deny answering the same errno as the default, an allow
under a default allow) or repeats a name already listed changes nothing. Remove it to keep the
policy readable.
""",
    bad="""\
version: 1
extends: ../base.yaml
seccomp:
  # a plain list replaces the parent's (`!extend` would drop the repetition itself)
  allow: [read, write, close, exit, exit_group, brk, mmap, munmap, mprotect, rt_sigreturn,
          rt_sigaction, rt_sigprocmask, execve, arch_prctl, fstat, newfstatat, openat, futex,
          getpid, getpid]   # expect: PSB208
""",
    good="""\
version: 1
extends: ../base.yaml
seccomp:
  allow: [read, write, close, exit, exit_group, brk, mmap, munmap, mprotect, rt_sigreturn,
          rt_sigaction, rt_sigprocmask, execve, arch_prctl, fstat, newfstatat, openat, futex,
          getpid]
""",
    fix="""\
Remove the rule or the repetition (or give a deny another errno or action).
""",
)


def check(ctx: Ctx) -> None:
    s = ctx.plan.seccomp
    if not s.enabled:
        return
    if s.default_action == "allow":
        for i, base, names, args in ctx.seccomp_items("allow"):
            ctx.report(RULE, f"seccomp.allow[{i}] has no effect: the default action already allows",
                       "remove it, or make the default deny", base)
    sec = ctx.sec or {}
    if s.default_action == "errno" and "import" not in sec:   # a deny may override an imported allow
        deny_action = sec.get("deny_action", "errno")
        try:
            deny_errno = _sc.errno_number(sec.get("deny_errno", "EPERM"))
        except ValueError:
            deny_errno = None
        for i, base, names, args in ctx.seccomp_items("deny"):
            item = sec["deny"][i]
            action = item.get("action", deny_action) if isinstance(item, dict) else deny_action
            try:
                err = _sc.errno_number(item["errno"]) if isinstance(item, dict) and "errno" in item else deny_errno
            except ValueError:
                continue
            if action == "errno" and err == s.default_errno and not args and not ctx.plan.seccomp.notify_denials:
                # only when nothing else lets these names through: then the rule restates the default
                explicit = [n for n, _, g in names if not g]
                if explicit and not any(n2 == n for n in explicit for _, _, nm, _ in ctx.seccomp_items("allow")
                                        for n2, _, _ in nm):
                    ctx.report(RULE, f"seccomp.deny[{i}] ({', '.join(explicit[:6])}) restates the default "
                               f"action errno({_sc.errno_name(err)})", "remove it (or give it another errno/action)",
                               base, severity="info")
    for which in ("allow", "deny"):
        seen: dict[str, tuple] = {}
        for i, base, names, args in ctx.seccomp_items(which):
            if args:
                continue
            for n, p, via_group in names:
                if via_group:
                    continue
                if n in seen:
                    first = ctx.loc(seen[n])
                    ctx.report(RULE, f"{n} is listed twice in seccomp.{which} (first at {first.line}:{first.col})",
                               "remove the repetition", p)
                else:
                    seen[n] = p
