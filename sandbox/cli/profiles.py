"""`pysandbox profiles`: the shipped and user profiles (name, kind, path, description)."""
from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable: [{name, kind, path, description}].")
def profiles(as_json):
    """List shipped and user profiles."""
    from policies.loader import SHIPPED_DIR, user_profile_dirs
    seen = set()
    rows = []
    for kind, d in [("user", p) for p in user_profile_dirs()] + [("shipped", SHIPPED_DIR)]:
        if not d.is_dir():
            continue
        for p in sorted(list(d.glob("*.yaml")) + list(d.glob("*.yml"))):
            if p.stem in seen:
                continue
            seen.add(p.stem)
            desc = ""
            try:
                import yaml
                from policies.loader import read_bounded    # regular files, bounded: never a FIFO
                data = yaml.safe_load(read_bounded(p)) or {}
                desc = " ".join(str(data.get("description", "")).split())
            except Exception:
                desc = "(unreadable)"
            rows.append({"name": p.stem, "kind": kind, "path": str(p), "description": desc})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        click.echo(f"{r['name']:<16} {r['kind']:<8} {r['description'][:90]}")
    return 0



COMMANDS = [profiles]
