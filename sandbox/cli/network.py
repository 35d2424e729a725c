"""`pysandbox network create|ls|inspect|rm`: private networks (see docs/network.md).

Errors print one line on stderr and exit 1 (usage errors: click's exit 2).
"""
from __future__ import annotations

import json
import sys

import click

from . import completion as _complete


def _fail(msg: str) -> None:
    click.echo(f"pysandbox: {msg}", err=True)
    sys.exit(1)


@click.group("network", help="Manage private networks (bridge + veth; sandboxes reach each other by --name).")
def network() -> None:
    pass


@network.command("create", help="Create a private network NAME (needs root).")
@click.argument("name")
@click.option("--subnet", metavar="CIDR", help="IPv4 subnet (default: a free /24 from 10.89.0.0/16).")
@click.option("--ipv6", is_flag=True, help="Dual stack: also an IPv6 unique local /64 (fdXX:…, derived from NAME).")
def create(name: str, subnet: str | None, ipv6: bool) -> None:
    from sandbox.network import bridge
    from sandbox.network.common import NetworkError
    try:
        nd = bridge.create_network(name, subnet, ipv6=ipv6)
    except NetworkError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"network create: {e.strerror or e}")
    click.echo(nd["name"])


@network.command("ls", help="List networks.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls(as_json: bool) -> None:
    from sandbox.network import bridge
    from sandbox.network.common import NetworkError
    try:
        nets = bridge.list_networks()
    except NetworkError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"network ls: {e.strerror or e}")
    if as_json:
        click.echo(json.dumps(nets, indent=2, sort_keys=True))
        return
    rows = [("NAME", "SUBNET", "GATEWAY", "BRIDGE", "SANDBOXES")]
    rows += [(n["name"], n["subnet"], n["gateway"], n["bridge"], str(n["endpoints"])) for n in nets]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


@network.command("inspect", help="Show a network and its attached sandboxes as JSON.")
@click.argument("name", shell_complete=_complete.networks)
@click.option("--json", "as_json", is_flag=True, help="(always JSON; accepted for symmetry)")
def inspect(name: str, as_json: bool) -> None:
    from sandbox.network import bridge
    from sandbox.network.common import NetworkError
    try:
        info = bridge.inspect_network(name)
    except NetworkError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"network inspect: {e.strerror or e}")
    click.echo(json.dumps(info, indent=2, sort_keys=True))


@network.command("rm", help="Remove networks (refused while sandboxes are attached).")
@click.argument("names", nargs=-1, required=True, shell_complete=_complete.networks)
def rm(names: tuple[str, ...]) -> None:
    from sandbox.network import bridge
    from sandbox.network.common import NetworkError
    failed = False
    for name in names:
        try:
            bridge.remove_network(name)
            click.echo(name)
        except NetworkError as e:
            click.echo(f"pysandbox: {e}", err=True)
            failed = True
        except OSError as e:
            click.echo(f"pysandbox: network rm {name}: {e.strerror or e}", err=True)
            failed = True
    if failed:
        sys.exit(1)


COMMANDS = [network]
