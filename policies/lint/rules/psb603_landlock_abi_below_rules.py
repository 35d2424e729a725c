"""PSB603 landlock-abi-below-rules: The profile's Landlock `abi` is below what its rules need."""
from __future__ import annotations

from ...landlock import rights_needing
from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB603",
    name="landlock-abi-below-rules",
    severity="warning",
    summary="The profile's Landlock `abi` is below what its rules need.",
    rationale="""\
`abi` is the oldest Landlock a profile accepts. Network rules need ABI 4 and `scope` ABI 6: those
the launch requires anyway (exit 125 below them), so a lower `abi` only misleads the reader. The
file system rights are best effort: `refer` needs ABI 2, `truncate` 3, `ioctl_dev` 5 (all part of
`write`); on an older kernel they are not handled, so a program may truncate or ioctl files the
profile did not make writable. Say the ABI the rules need, and the kernel that cannot honour them
is refused instead. (Without an `abi` key only the network and scope requirements are checked:
the profile then asks for best effort, as `strict` does.)
""",
    bad="""\
version: 1
extends: ../base.yaml
landlock:
  abi: 1   # expect: PSB603
  filesystem:
    read: [/usr, /lib]
  network:
    connect: [443]
""",
    good="""\
version: 1
extends: ../base.yaml
landlock:
  abi: 4
  filesystem:
    read: [/usr, /lib]
  network:
    connect: [443]
""",
    fix="""\
Set `abi` to the value in the message (network: 4, scope: 6; `write` rules fully enforced: 5).
""",
)


def check(ctx: Ctx) -> None:
    ll = ctx.plan.landlock
    sec = ctx.doc.data.get("landlock")
    if ll is None or not isinstance(sec, dict):
        return
    # the best-effort file system rights count only where the profile states an abi
    need = max([ll.needs_abi] + ([rights_needing(p.access) for p in ll.paths] if "abi" in sec else []))
    if ll.abi < need:
        why = "its network rules" if ll.needs_abi >= 4 and ll.needs_abi == need and not ll.scope else \
            "its scope" if ll.needs_abi == need and ll.scope else "the full set of its write rights"
        ctx.report(RULE, f"landlock: abi {ll.abi} is below {need}, needed by {why}",
                   f"set `abi: {need}`", ("landlock", "abi") if "abi" in sec else ("landlock",))
