"""PSB501 network-host: `network: host` shares the host's network stack (its interfaces, ports and abstract sockets)."""
from __future__ import annotations

from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB501",
    name="network-host",
    severity="error",
    summary="`network: host` shares the host's network stack (its interfaces, ports and abstract sockets).",
    rationale="""\
`network: host` shares the host's network namespace: every interface, every listening port on
the host's loopback, abstract unix sockets (e.g. X11, D-Bus, containerd shims) and the ability to
bind host ports. Use `network: none` or a named network with published ports and egress rules.
""",
    bad="""\
version: 1
extends: ../base.yaml
network: host   # expect: PSB501
""",
    good="""\
version: 1
extends: ../base.yaml
network: none
""",
    fix="""\
Use `network: none`, or a named network with published ports and egress rules.
""",
)


def check(ctx: Ctx) -> None:
    if ctx.plan.network.mode != "host":
        return
    ctx.report(RULE, "network host: the sandbox shares the host's interfaces, ports and abstract unix sockets",
               "use `network: none`, or a named network with published ports and egress rules",
               ("network", "mode"), ("network",))
