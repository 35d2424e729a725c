"""Sandbox networking: none, host, private named networks, user-mode networking.

| module | job |
|---|---|
| `endpoint` | what the launcher calls: `prepare` -> `NetHandle` (`attach`, `release`, counters) |
| `loopback` | `lo` up in the sandbox's namespace (PID 1, every launch with a network namespace) |
| `bridge` | private networks: bridge, veth pairs, addresses; `network create/ls/inspect/rm`; crash clean-up |
| `nft` | nftables rulesets: egress allow-list, port allow-lists (anti-spoofing), DNAT of published ports |
| `usermode` | pasta / slirp4netns (rootless) |
| `proxy` | the userspace proxy of published ports on 127.0.0.1 |
| `hosts` | a private network's /etc/hosts files |
| `store` | network state on disk (under the one state directory), its lock |
| `common` | `NetworkError`, name rules |
| `doctor` | `pysandbox doctor`'s rows |

This package's `__init__` imports nothing: PID 1 imports `loopback` alone, and a launch without a
network of its own imports nothing else of it.
"""
