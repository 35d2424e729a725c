"""`pysandbox doctor`: prints the checks of sandbox/doctor.py (what this kernel and this caller
can enforce), as a table or JSON."""
from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True)
def doctor(as_json):
    """What this kernel and this user can enforce, and what not."""
    from ..doctor import checks
    rows = checks()
    if as_json:
        click.echo(json.dumps([{"control": c, "ok": ok, "detail": d} for c, ok, d in rows], indent=2))
    else:
        width = max(len(c) for c, _, _ in rows)
        for c, ok, d in rows:
            click.echo(f"{'ok ' if ok else 'NO '} {c:<{width}}  {d}")
    return 0


COMMANDS = [doctor]
