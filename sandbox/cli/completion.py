"""Dynamic shell completion of names: profiles, sandboxes, images, kept containers, networks, volumes.

Used as click `shell_complete=` callbacks; the shell scripts themselves are click's
(`pysandbox completion bash|zsh|fish`, the command at the end of this module, or
`_PYSANDBOX_COMPLETE=bash_source pysandbox`).

A completer runs on every TAB: it only reads (never creates the state directory, takes no lock,
reclaims nothing), reads only the caller's own state directory (audit/paths.py), bounds what it
reads, and never raises (a broken store completes nothing).
"""
from __future__ import annotations

import json
import os

import click

from audit import paths as _paths

MAX_ITEMS = 500            # names offered at most per TAB
MAX_INDEX_BYTES = 16 << 20  # images.json read at most


def _items(names, incomplete: str):
    from click.shell_completion import CompletionItem
    out = []
    for n in sorted(set(names)):
        if isinstance(n, str) and n.startswith(incomplete):
            out.append(CompletionItem(n))
            if len(out) >= MAX_ITEMS:
                break
    return out


def _listdir(d: str) -> list[str]:
    try:
        with os.scandir(d) as it:
            return [e.name for _, e in zip(range(10 * MAX_ITEMS), it)
                    if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _safe(fn):
    def complete(ctx, param, incomplete):
        try:
            return fn(incomplete or "")
        except Exception:                 # noqa: BLE001 - completion must never show a traceback
            return []
    complete.__name__ = fn.__name__
    return complete


@_safe
def profiles(incomplete: str):
    """Shipped and user profile names; a path when the word looks like one."""
    if "/" in incomplete or incomplete.startswith("."):
        from click.shell_completion import CompletionItem
        return [CompletionItem(incomplete, type="file")]
    from policies.loader import SHIPPED_DIR, user_profile_dirs
    names = []
    for d in [*user_profile_dirs(), SHIPPED_DIR]:
        try:
            with os.scandir(d) as it:
                names += [e.name.rsplit(".", 1)[0] for _, e in zip(range(10 * MAX_ITEMS), it)
                          if e.name.endswith((".yaml", ".yml")) and not e.name.startswith(".")]
        except OSError:
            continue
    return _items(names, incomplete)


@_safe
def sandboxes(incomplete: str):
    """Names of the caller's named/detached sandboxes."""
    from ..store.state import NAME_RE
    names = [n for n in _listdir(os.path.join(_paths.state_dir(), "sandboxes")) if NAME_RE.match(n)]
    return _items(names, incomplete)


def _index_images() -> list[str]:
    p = os.path.join(_paths.state_dir(), "images.json")
    fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not os.path.isfile(p) or os.fstat(f.fileno()).st_size > MAX_INDEX_BYTES:
            return []
        data = json.loads(f.read(MAX_INDEX_BYTES))
    imgs = data.get("images") if isinstance(data, dict) else None
    return [n for n in imgs if isinstance(n, str)] if isinstance(imgs, dict) else []


@_safe
def images(incomplete: str):
    """Image names (name:tag) of the caller's store."""
    return _items(_index_images(), incomplete)


@_safe
def containers(incomplete: str):
    """Kept containers (`run --keep`): their sandbox's --name and their ids."""
    root = os.path.join(_paths.state_dir(), "containers")
    names = []
    for cid in _listdir(root)[:MAX_ITEMS]:
        names.append(cid)
        try:
            with open(os.path.join(root, cid, "container.json"), "rb") as f:
                n = json.loads(f.read(1 << 20)).get("name")
            if isinstance(n, str):
                names.append(n)
        except (OSError, ValueError, AttributeError):
            continue
    return _items(names, incomplete)


@_safe
def networks(incomplete: str):
    """none, host, pasta (rootless) and the private networks of the state directory."""
    root = os.path.join(_paths.state_dir(), "networks")
    names = [n for n in _listdir(root) if os.path.isfile(os.path.join(root, n, "network.json"))]
    return _items(["none", "host", "pasta", *names], incomplete)


@_safe
def volumes(incomplete: str):
    """Named volumes of the caller's store."""
    root = os.path.join(_paths.state_dir(), "volumes")
    return _items([n for n in _listdir(root) if not n.endswith(".creating")], incomplete)


SHELLS = ("bash", "zsh", "fish")


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx, shell):
    """Print the shell completion script for SHELL (bash, zsh, fish).

    \b
    bash:  pysandbox completion bash > ~/.local/share/bash-completion/completions/pysandbox
    zsh:   pysandbox completion zsh > "${fpath[1]}/_pysandbox"
    fish:  pysandbox completion fish > ~/.config/fish/completions/pysandbox.fish
    """
    from click.shell_completion import get_completion_class
    cls = get_completion_class(shell)
    comp = cls(ctx.find_root().command, {}, "pysandbox", "_PYSANDBOX_COMPLETE")
    click.echo(comp.source())
    return 0


COMMANDS = [completion]
