"""PSB504 egress-wildcard-everything: An egress host rule's wildcard matches every name, or every name
under a public suffix (`*`, `*.com`, `*.co.uk`).
"""
from __future__ import annotations

from ..context import Ctx
from ..model import Rule

# Public suffixes of more than one label that people write wildcards under (a short list, not the
# Public Suffix List: any one-label suffix counts as public anyway).
MULTI_LABEL_SUFFIXES = frozenset({
    "co.uk", "org.uk", "ac.uk", "gov.uk", "com.au", "net.au", "org.au", "co.jp", "ne.jp", "co.nz",
    "com.br", "com.cn", "com.tw", "co.in", "co.za", "com.mx", "com.tr",
    "github.io", "gitlab.io", "herokuapp.com", "appspot.com", "cloudfront.net", "amazonaws.com",
    "azurewebsites.net", "blob.core.windows.net", "web.app", "firebaseapp.com", "pages.dev",
    "workers.dev", "vercel.app", "netlify.app", "ngrok.io", "ngrok-free.app",
})

RULE = Rule(
    code="PSB504",
    name="egress-wildcard-everything",
    severity="error",
    severity_varies=True,
    summary="An egress host rule's wildcard matches every name, or every name under a public suffix (`*`, `*.com`).",
    rationale="""\
A `host:` rule allows TCP to the names it matches (docs/network.md, "Egress by domain name").
`host: "*"` matches every name: the allow-list then only stops programs that use no name at all -
it is an allow-everything with extra steps (error). `*.com`, `*.co.uk` or `*.github.io` match every
name under a public suffix - names anyone can register, or sites anyone can publish - so any
attacker can receive what the sandbox sends (warning). The check knows one-label suffixes and a
short list of common multi-label public suffixes and hosting domains, not the whole Public Suffix
List.
""",
    bad="""\
version: 1
extends: ../base.yaml
network:
  mode: pasta
  egress:
    allow:
      - {host: "*.com", ports: [443]}   # expect: PSB504
""",
    good="""\
version: 1
extends: ../base.yaml
network:
  mode: pasta
  egress:
    allow:
      - {host: "*.pythonhosted.org", ports: [443]}
      - {host: pypi.org, ports: [443]}
""",
    fix="""\
Name the services: `{host: api.example.com}`, or a wildcard under a domain you trust
(`*.example.com`).
""",
)


def check(ctx: Ctx) -> None:
    for r in ctx.plan.network.egress_hosts:
        where = ("network", "egress", "allow", r.index, "host")
        if r.host == "*":
            ctx.report(RULE, f"egress allow[{r.index}]: host \"*\" matches every name (an allow-everything)",
                       "name the services the program needs", where)
        elif r.host.startswith("*."):
            suffix = r.host[2:]
            if "." not in suffix or suffix in MULTI_LABEL_SUFFIXES:
                ctx.report(RULE, f"egress allow[{r.index}]: host {r.host!r} matches every name under the public "
                           f"suffix {suffix!r} (anyone can register one)",
                           "use a wildcard under a domain you trust, or name the services", where,
                           severity="warning")



