"""PSB203 escape-syscall-allowed: An escape-class system call (mount, unshare, bpf, keyctl, ...) is allowed."""
from __future__ import annotations

from ..context import Ctx
from ..hazards import ESCAPE_SYSCALLS, allowed_escape, clone_creates_namespaces
from ..model import Rule

RULE = Rule(
    code="PSB203",
    name="escape-syscall-allowed",
    severity="error",
    summary="An escape-class system call (mount, unshare, bpf, keyctl, ...) is allowed.",
    severity_varies=True,
    rationale="""\
These system calls have been the entry point of container escapes or kernel exploits:
`mount`/`umount2`/`pivot_root` and the new mount API (`fsopen`, `fsmount`, `move_mount`, ...),
`unshare`/`setns`/namespace-creating `clone` and `clone3` (a new user namespace hands the program a
full capability set and all the kernel code behind it), `bpf`, `userfaultfd`, the keyring
(`keyctl`, `add_key`, `request_key` - not namespaced), `open_by_handle_at` ("shocker"), module and
kexec loading, `perf_event_open`, `iopl`/`ioperm`. Lesser ones are warnings: `ptrace`,
`process_vm_readv/writev`, `kcmp`, `pidfd_getfd`, `name_to_handle_at`, `open_tree`, `io_uring_setup`.
A system call allowed only for some arguments is reported one severity lower. The finding points at
the allow item (or the `@group`, or the imported file) that lets it through.
""",
    bad="""\
version: 1
extends: ../base.yaml
seccomp:
  allow: !extend [mount]   # expect: PSB203
""",
    good="""\
version: 1
extends: ../base.yaml
seccomp:
  allow: !extend [getpid]
""",
    fix="""\
Remove the system call from `seccomp.allow` or add it to `seccomp.deny` (for a `@group` or an
imported file that brings it in: deny it). Allow `clone` only without namespace flags (`{names:
[clone], args: [{index: 0, op: masked_eq, mask: 0x7e020000, value: 0}]}`) and deny `clone3` with
ENOSYS.
""",
)


def check(ctx: Ctx) -> None:
    s = ctx.plan.seccomp
    if not s.enabled:
        return                      # PSB201 says it all
    if s.default_action in ("allow", "log"):
        hits = allowed_escape(s)
        if hits:
            names = ", ".join(n for n, _, _ in hits)
            ctx.report(RULE, f"escape-class system calls reachable through the default action: {names}",
                       "deny them (seccomp.deny: ['@mount', '@module', '@namespace', ...]) or switch to an allow list",
                       ctx.sec_path("default_action"))
        return
    groups: dict[tuple, list] = {}
    for name, sev, conditional in allowed_escape(s):
        if conditional:
            sev = "warning" if sev == "error" else "info"
        path = ctx.allow_source(name)
        groups.setdefault((path, sev, conditional), []).append(name)
    if clone_creates_namespaces(s):
        groups.setdefault((ctx.allow_source("clone"), "error", False), []).append("clone(CLONE_NEW*)")
    for (path, sev, conditional), names in groups.items():
        first = names[0]
        why = ESCAPE_SYSCALLS[first][1] if first in ESCAPE_SYSCALLS else \
            "creates namespaces: a new user namespace grants a full capability set"
        cond = " for some arguments" if conditional else ""
        more = f" (+{len(names) - 1} more)" if len(names) > 1 else ""
        listed = ", ".join(names)
        node = ctx.doc.data
        try:
            for k in path:
                node = node[k]
        except (KeyError, IndexError, TypeError):
            node = None
        if isinstance(node, str) and node.startswith("@"):
            hint = f"{node} brings {listed} in: add {'them' if len(names) > 1 else 'it'} to seccomp.deny"
        elif path[-1] == "import":
            hint = f"the imported file allows {listed}: add {'them' if len(names) > 1 else 'it'} to seccomp.deny"
        else:
            hint = f"remove {listed} from seccomp.allow (or deny {'them' if len(names) > 1 else 'it'})"
        if "clone(CLONE_NEW*)" in names:
            hint += ("; allow clone only without namespace flags: {names: [clone], args: [{index: 0, op: "
                     "masked_eq, mask: 0x7e020000, value: 0}]} and deny clone3 with ENOSYS")
        ctx.report(RULE, f"escape-class system call{'s' if len(names) > 1 else ''} allowed{cond}: {listed} "
                   f"- {first}: {why}{more}", hint, path, severity=sev)
