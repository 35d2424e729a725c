"""Egress by domain name (docs/network.md, "Egress by domain name"): a host-side proxy and resolver
per sandbox that let TCP through only to names a `host:` rule allows, at addresses those names
resolve to.

* `service`  start/stop one sandbox's proxy and resolver (a thread of its supervisor; sockets made
             in the sandbox's network namespace)
* `proxy`    the connections: name from SNI / Host / CONNECT, rule, address check, splice; the
             interception hook of the secrets part (`intercept`, theirs, imported lazily)
* `dns`      the resolver (dnslib): allowed names only, others NXDOMAIN
* `names`    what names resolve to for the sandbox (network.hosts, the host's resolver, SSRF ranges)
* `tls`, `http`  bounded parsers of the ClientHello's SNI and the request head (h11)

The steering rules (redirect of the sandbox's TCP and DNS to the sockets) are nft's
(`sandbox.network.nft.egress_ruleset(..., steer=True)`), installed by `endpoint.NetHandle.attach`.
"""
