"""`pysandbox cgroups ls|reclaim|delegate|undelegate`: the sandboxes' cgroups (see docs/limits.md).

Errors print one line on stderr and exit 1 (usage errors: click's exit 2).
"""
from __future__ import annotations

import json
import sys

import click


def _fail(msg: str) -> None:
    click.echo(f"pysandbox: {msg}", err=True)
    sys.exit(1)


def _user(name: str) -> tuple[int, int]:
    import pwd
    try:
        pw = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, ValueError):
        if name.isdigit():
            return int(name), int(name)
        _fail(f"unknown user {name!r}")
    return pw.pw_uid, pw.pw_gid


@click.group("cgroups", help="Inspect, reclaim and delegate pysandbox's cgroups.")
def cgroups() -> None:
    pass


@cgroups.command("ls", help="List sandbox cgroups under pysandbox's own parents.")
@click.option("--json", "as_json", is_flag=True, help="{sandbox id: [cgroup paths]}")
def ls(as_json: bool) -> None:
    from sandbox.cgroups.leftover import list_sandboxes
    try:
        found = list_sandboxes()
    except OSError as e:
        _fail(f"cgroups: {e.strerror or e}")
    if as_json:
        click.echo(json.dumps({sid: list(p) for sid, p in sorted(found.items())}, indent=2))
        return
    for sid, paths in sorted(found.items()):
        click.echo(f"{sid}\t{' '.join(paths)}")


@cgroups.command("reclaim", help="Remove sandbox cgroups whose supervisor is gone and that are empty.")
def reclaim() -> None:
    from sandbox.cgroups.leftover import reclaim_stale
    for p in reclaim_stale(min_age=0):
        click.echo(f"removed {p}")


def _opt(parse, value, flag):
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as e:
        click.echo(f"pysandbox: cgroups delegate: {flag}: {e}", err=True)
        sys.exit(2)


@cgroups.command("delegate", help="(root) Give USER a cgroup v1 subtree of its own, below a root-owned parent with "
                                  "finite limits the user cannot raise, so rootless runs can enforce limits. "
                                  "Defaults: half the machine's memory, as much swap again, 4096 tasks, "
                                  "cpu-shares 1024. Run again to change them.")
@click.argument("user")
@click.option("--memory", help="memory of all USER's sandboxes together (e.g. 8g)")
@click.option("--memory-swap", help="memory plus swap of all USER's sandboxes (default: twice --memory)")
@click.option("--pids", help="tasks (processes + threads) of all USER's sandboxes together")
@click.option("--cpu-shares", help="CPU weight of USER's sandboxes together against the rest (2..262144)")
def delegate(user: str, memory, memory_swap, pids, cpu_shares) -> None:
    from policies import units
    from sandbox.cgroups import delegate as D
    from sandbox.cgroups.files import CgroupError
    kw = {"memory": _opt(units.parse_bytes, memory, "--memory"),
          "memory_swap": _opt(units.parse_bytes, memory_swap, "--memory-swap"),
          "pids": _opt(units.parse_pids_limit, pids, "--pids"),
          "cpu_shares": _opt(units.parse_cpu_shares, cpu_shares, "--cpu-shares")}
    for k in ("memory", "memory_swap", "pids"):
        if kw[k] is not None and kw[k] < 1:
            click.echo(f"pysandbox: cgroups delegate: --{k.replace('_', '-')}: must be finite", err=True)
            sys.exit(2)
    uid, gid = _user(user)
    try:
        for p in D.delegate(uid, gid, **kw):
            click.echo(p)
    except CgroupError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"cgroups: {e.strerror or e}")


@cgroups.command("undelegate", help="(root) Remove USER's delegated cgroup v1 subtrees and their parents.")
@click.argument("user")
def undelegate(user: str) -> None:
    from sandbox.cgroups import delegate as D
    from sandbox.cgroups.files import CgroupError
    uid, _gid = _user(user)
    try:
        for p in D.undelegate(uid):
            click.echo(f"removed {p}")
    except CgroupError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"cgroups: {e.strerror or e}")


COMMANDS = [cgroups]
