"""PSB505 egress-net-admin-raw: An egress allow-list together with NET_ADMIN or NET_RAW."""
from __future__ import annotations

from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB505",
    name="egress-net-admin-raw",
    severity="error",
    severity_varies=True,
    summary="An egress allow-list together with NET_ADMIN or NET_RAW.",
    rationale="""\
An egress allow-list (`network.egress.allow`, addresses or `host:` names) is enforced by nftables
rules in the sandbox's own network namespace, installed before the program runs; `host:` rules
also steer every TCP connection and DNS query to the egress proxy there. `NET_ADMIN` over that
namespace lets the program delete those rules (the compiler refuses it: error). `NET_RAW` lets it
send raw IP and link-layer packets - forged sources, protocols the allow-list does not expect,
packets that never pass the proxy's name checks (warning).
""",
    bad="""\
version: 1
extends: ../base.yaml
capabilities:
  drop: [ALL]
  add: [NET_RAW]   # expect: PSB505
network:
  mode: pasta
  egress:
    allow:
      - {host: api.example.com, ports: [443]}
""",
    good="""\
version: 1
extends: ../base.yaml
capabilities:
  drop: [ALL]
network:
  mode: pasta
  egress:
    allow:
      - {host: api.example.com, ports: [443]}
""",
    fix="""\
Remove `NET_ADMIN` / `NET_RAW` from `capabilities.add` (ping works without NET_RAW through
unprivileged ICMP sockets).
""",
)


def _has_allow_list(data: dict) -> bool:
    net = data.get("network")
    eg = net.get("egress") if isinstance(net, dict) else None
    return isinstance(eg, dict) and bool(eg.get("allow")) and eg.get("default") != "allow"


def check_document(ctx: Ctx) -> None:
    """On the document: with NET_ADMIN the compiler refuses the profile (there is no plan)."""
    data = ctx.doc.data
    if not _has_allow_list(data):
        return
    caps = data.get("capabilities")
    add = caps.get("add") if isinstance(caps, dict) else None
    for i, c in enumerate(add if isinstance(add, list) else ()):
        n = str(c).upper().removeprefix("CAP_")
        if n in ("NET_ADMIN", "ALL"):
            ctx.report(RULE, f"capability {n} with an egress allow-list: the program could delete the rules "
                       "(the profile is refused)", "remove it from capabilities.add", ("capabilities", "add", i))
        elif n == "NET_RAW":
            ctx.report(RULE, "capability NET_RAW with an egress allow-list: raw packets the allow-list and the "
                       "egress proxy do not expect", "remove it from capabilities.add", ("capabilities", "add", i),
                       severity="warning")
