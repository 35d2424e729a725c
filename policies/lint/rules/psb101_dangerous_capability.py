"""PSB101 dangerous-capability: A capability that allows escaping or attacking the kernel is granted."""
from __future__ import annotations

from ..context import Ctx
from ..hazards import DANGEROUS_CAPS, dangerous_caps, norm_cap
from ..model import Rule

RULE = Rule(
    code="PSB101",
    name="dangerous-capability",
    severity="error",
    summary="A capability that allows escaping or attacking the kernel is granted.",
    rationale="""\
Some capabilities are sandbox escapes or kernel attack surface in themselves: `SYS_ADMIN`
(mount, namespaces, most admin interfaces), `SYS_PTRACE`, `SYS_MODULE`, `DAC_READ_SEARCH`
(`open_by_handle_at`, the "shocker" escape), `NET_ADMIN`, `SYS_RAWIO`, `BPF`, `PERFMON`, `SYS_BOOT`,
`MAC_ADMIN`/`MAC_OVERRIDE`, `SYS_TIME`, `SYSLOG`, `CHECKPOINT_RESTORE`, `AUDIT_CONTROL`,
`LINUX_IMMUTABLE`. Inside a user namespace several of them are limited to the sandbox's own
namespaces, but they still open kernel code paths an unprivileged program never reaches. A
`capabilities:` section without `drop: [ALL]` keeps every capability and is reported too.
""",
    bad="""\
version: 1
extends: ../base.yaml
capabilities:
  add: [NET_BIND_SERVICE, SYS_ADMIN]   # expect: PSB101
""",
    good="""\
version: 1
extends: ../base.yaml
capabilities:
  add: [NET_BIND_SERVICE]
""",
    fix="""\
Remove the capability from `capabilities.add` and grant the narrow capability the program needs;
start from `drop: [ALL]`.
""",
)


def check(ctx: Ctx) -> None:
    plan = ctx.plan
    bad = set(dangerous_caps(plan))
    if not bad:
        return
    caps_d = ctx.doc.data.get("capabilities")
    reported = set()
    if isinstance(caps_d, dict):
        for i, c in enumerate(caps_d.get("add") or []):
            n = norm_cap(c)
            grants = bad if n == "ALL" else ({n} & bad)
            grants -= reported
            if not grants:
                continue
            reported |= grants
            names = ", ".join(sorted(grants))
            why = "; ".join(f"{g}: {DANGEROUS_CAPS[g]}" for g in sorted(grants))
            ctx.report(RULE, f"capabilit{'ies' if len(grants) > 1 else 'y'} {names} granted ({why})",
                       "remove it from capabilities.add and grant the narrow capability the program needs",
                       ("capabilities", "add", i))
    rest = bad - reported
    if rest:
        names = ", ".join(sorted(rest))
        drop = caps_d.get("drop") if isinstance(caps_d, dict) else None
        why = "capabilities.drop does not drop ALL" if isinstance(caps_d, dict) else "kept by the profile"
        ctx.report(RULE, f"capabilities {names} kept ({why})",
                   "start from `drop: [ALL]` and add back only what the program needs",
                   ("capabilities", "drop") if drop is not None else ("capabilities",))
