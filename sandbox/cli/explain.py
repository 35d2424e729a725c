"""`pysandbox explain`: the compiled plan of a profile, as text (sandbox/explain.py) or JSON."""
from __future__ import annotations

import json

import click

from .options import compile_for, overrides_options


@click.command()
@overrides_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable plan.")
def explain(as_json, **kw):
    """Show the compiled plan of a profile (with the same overrides as run)."""
    compiled = compile_for(kw)
    from ..explain import render
    if as_json:
        click.echo(json.dumps(compiled.plan.to_dict(), indent=2, sort_keys=False))
    else:
        click.echo(render(compiled.plan))
    return 0


COMMANDS = [explain]
