"""PSB503 egress-dns-name: An egress `to:` is a DNS name: taken as a peer name it never matches; a name
belongs in `host:`.
"""
from __future__ import annotations

from ...compiler import DNS_EGRESS_HINT, egress_dns_name as is_dns
from ..context import Ctx
from ..model import Rule

RULE = Rule(
    code="PSB503",
    name="egress-dns-name",
    severity="error",
    summary="An egress `to:` is a DNS name: taken as a peer name it never matches; a name belongs in `host:`.",
    rationale="""\
`network.egress.allow[].to` takes an IP address, a CIDR or the name of a **sandbox peer** on the
same private network. A DNS name such as `example.com` used to be taken for a peer name: no sandbox
is ever called that, so the rule allowed nothing and the run went on silently without the access the
author meant to grant (or, read the other way, the author believed a host was allowed that was not).
Names are allowed with **`host:` rules** (`{host: example.com, ports: [443]}`: TCP through the
egress proxy, which checks the TLS server name or HTTP Host and the addresses the name resolves
to; docs/network.md, "Egress by domain name"). A `to:` that is not an IP/CIDR and looks like a DNS
name - it has a dot and every label is host-name syntax, or it is `localhost` - is refused by the
compiler (`run`, `explain`: exit 2, `file:line:col`, pointing at `host:`) and reported by this
rule. Sandbox peer names used in `to:` therefore contain no dot.
""",
    bad="""\
version: 1
extends: ../base.yaml
network:
  mode: none
  egress:
    allow:
      - {to: example.com, ports: [443]}   # expect: PSB503
""",
    good="""\
version: 1
extends: ../base.yaml
network:
  mode: none
  egress:
    allow:
      - {to: 93.184.215.14, ports: [443]}
      - {to: db, ports: [5432]}
""",
    fix="""\
Write the name as a host rule, `{host: example.com, ports: [443]}` (network mode pasta,
slirp4netns or a private network); keep `to:` for sandbox peers and IP addresses / CIDRs.
""",
    suppression='This rule cannot be suppressed away in effect: the compiler refuses the profile whatever lint says.',
)


def check_document(ctx: Ctx) -> None:
    """PSB503: reported on the document (the compiler refuses such a profile, so there is no plan)."""
    net = ctx.doc.data.get("network")
    eg = net.get("egress") if isinstance(net, dict) else None
    allow = eg.get("allow") if isinstance(eg, dict) else None
    if not isinstance(allow, list):
        return
    for i, r in enumerate(allow):
        if isinstance(r, dict) and is_dns(r.get("to")):
            ctx.report(RULE, f"egress to {r['to']!r}: a DNS name, not a sandbox peer or an IP/CIDR "
                       "(as a peer name it would never match; the profile is refused): use host:", DNS_EGRESS_HINT,
                       ("network", "egress", "allow", i, "to"))
