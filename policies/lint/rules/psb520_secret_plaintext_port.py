"""PSB520 secret-plaintext-port: A secret's host is allowed on plaintext ports only: the secret
would have to cross the network readable, so the egress proxy never substitutes it there.
"""
from __future__ import annotations

from ..context import Ctx
from ..model import Rule

PLAINTEXT_PORTS = frozenset((80, 8080))
HOST_RULE_PORTS = (80, 443)            # an egress `host:` rule without ports: both (docs/network.md)

RULE = Rule(
    code="PSB520",
    name="secret-plaintext-port",
    severity="warning",
    summary="A secret's host is allowed on plaintext ports only: the secret would cross the network readable.",
    rationale="""\
`network.secrets` hands the program a placeholder; the host-side egress proxy puts the real value
into the named header of requests to the secret's hosts, which needs TLS interception
(docs/network.md, "Secrets"). Over plaintext HTTP the value would travel the network readable by
anyone on the path, so the proxy refuses such a request (403, `egress.http.denied`). When the
egress allow-list lets the program reach a secret's host on plaintext ports only (80, 8080) - a
host rule `{host: NAME, ports: [80]}` - the secret can never work, and the profile most likely
meant HTTPS (port 443).
""",
    bad="""\
version: 1
extends: ../base.yaml
network:
  mode: privnet
  egress:
    allow:
      - {host: api.example.com, ports: [80]}
  secrets:
    API_TOKEN: {from: "env:API_TOKEN", hosts: [api.example.com], header: Authorization}   # expect: PSB520
""",
    good="""\
version: 1
extends: ../base.yaml
network:
  mode: privnet
  egress:
    allow:
      - {host: api.example.com, ports: [443]}
  secrets:
    API_TOKEN: {from: "env:API_TOKEN", hosts: [api.example.com], header: Authorization}
""",
    fix="""\
Allow the secret's host on its HTTPS port (443) and have the program use `https://`; a secret is
never sent over plaintext HTTP.
""",
)


def _matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return pattern == host


def _ports_for(host: str, allow: list):
    """The ports the allow-list's `host:` rules open to `host` (None: no rule names it). Address
    rules do not count: their traffic bypasses the egress proxy, which alone substitutes secrets."""
    ports, named = set(), False
    for r in allow:
        if isinstance(r, dict) and isinstance(r.get("host"), str) and _matches(r["host"], host):
            named = True
            ports.update(r.get("ports") or HOST_RULE_PORTS)
    return ports if named else None


def check_document(ctx: Ctx) -> None:
    """PSB520, on the document: the egress `host:` rules (the egress proxy's)."""
    net = ctx.doc.data.get("network")
    if not isinstance(net, dict) or not isinstance(net.get("secrets"), dict):
        return
    eg = net.get("egress") if isinstance(net.get("egress"), dict) else {}
    allow = eg.get("allow") if isinstance(eg.get("allow"), list) else []
    for name, sp in net["secrets"].items():
        hosts = sp.get("hosts") if isinstance(sp, dict) else None
        for h in hosts if isinstance(hosts, list) else ():
            if not isinstance(h, str):
                continue
            ports = _ports_for(h, allow)
            if isinstance(ports, set) and ports and ports <= PLAINTEXT_PORTS:
                ctx.report(RULE, f"secret {name}: its host {h} is allowed on plaintext port(s) "
                           f"{', '.join(map(str, sorted(ports)))} only (the proxy never puts a secret on plaintext HTTP)",
                           "allow the host on 443 and use https://", ("network", "secrets", name))
                break
