"""`pysandbox cgroups ls|reclaim|delegate|undelegate`: the sandboxes' cgroups (see docs/limits.md).

Errors print one line on stderr and exit 1 (usage errors: click's exit 2).
"""
from __future__ import annotations

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
def ls() -> None:
    from sandbox import cgroups as C
    try:
        found = C.list_sandboxes()
    except OSError as e:
        _fail(f"cgroups: {e.strerror or e}")
    for sid, paths in sorted(found.items()):
        click.echo(f"{sid}\t{' '.join(paths)}")


@cgroups.command("reclaim", help="Remove sandbox cgroups whose supervisor is gone and that are empty.")
def reclaim() -> None:
    from sandbox import cgroups as C
    for p in C.reclaim_stale(min_age=0):
        click.echo(f"removed {p}")


@cgroups.command("delegate", help="(root) Give USER its own cgroup v1 parents, so rootless runs can enforce limits.")
@click.argument("user")
def delegate(user: str) -> None:
    from sandbox import cgroups as C
    uid, gid = _user(user)
    try:
        for p in C.delegate(uid, gid):
            click.echo(p)
    except C.CgroupError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"cgroups: {e.strerror or e}")


@cgroups.command("undelegate", help="(root) Remove USER's delegated cgroup v1 parents.")
@click.argument("user")
def undelegate(user: str) -> None:
    from sandbox import cgroups as C
    uid, _gid = _user(user)
    try:
        for p in C.undelegate(uid):
            click.echo(f"removed {p}")
    except C.CgroupError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"cgroups: {e.strerror or e}")


COMMANDS = [cgroups]
