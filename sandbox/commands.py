"""click definitions of the core commands: run, explain, doctor, profiles.
Other areas add theirs through `sandbox.cli._COMMAND_MODULES`."""
from __future__ import annotations

import importlib
import json
import sys

import click

from policies.compiler import Overrides, compile_profile

from . import cli as _cli
from . import completion as _complete
from .doctor import kernel_version as _kernel_version


def _version() -> str:
    """The installed distribution's version (wheel or editable), read only when asked for."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("pysandbox")
    except PackageNotFoundError:        # the work tree on sys.path without an install
        return "0.1.0+source"


class _Version(click.Option):
    def __init__(self):
        super().__init__(["--version"], is_flag=True, expose_value=False, is_eager=True,
                         help="Show the version and exit.", callback=self._show)

    @staticmethod
    def _show(ctx, param, value):
        if value and not ctx.resilient_parsing:
            click.echo(f"pysandbox, version {_version()}")
            ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, params=[_Version()])
def cli():
    """pysandbox: run programs confined by a policy profile."""


def _overrides_options(f):
    opts = [
        click.option("--profile", "profile", default="strict", show_default=True,
                     shell_complete=_complete.profiles, help="Shipped/user profile name or a YAML file path."),
        click.option("--profile-path", "profile_path", multiple=True, metavar="DIR",
                     help="Also allow the profile's extends:/seccomp.import paths to resolve into DIR."),
        click.option("--cap-add", multiple=True, metavar="CAP", help="Add a capability."),
        click.option("--cap-drop", multiple=True, metavar="CAP", help="Drop a capability."),
        click.option("-v", "--volume", "volumes", multiple=True, metavar="SRC:DST[:ro]", help="Bind mount or named volume."),
        click.option("--tmpfs", multiple=True, metavar="DST[:size=,mode=]", help="Mount a tmpfs."),
        click.option("--read-only/--read-write", "read_only", default=None, help="Read-only root (default per profile)."),
        click.option("-e", "--env", multiple=True, metavar="K=V|K", help="Set or pass an environment variable."),
        click.option("-w", "--workdir", metavar="DIR", help="Working directory inside."),
        click.option("--hostname", metavar="NAME"),
        click.option("-u", "--user", metavar="NAME|UID[:GROUP|GID]",
                     help="User inside the sandbox (names from the root's /etc/passwd; default: the image's User)."),
        click.option("--group-add", "group_add", multiple=True, metavar="GROUP|GID",
                     help="Supplementary group inside the sandbox."),
        click.option("--network", "--net", "network", metavar="none|host|NAME", shell_complete=_complete.networks),
        click.option("-p", "--publish", "ports", multiple=True, metavar="[IP:]HOSTPORT:PORT[/proto]"),
        click.option("--timeout", type=float, metavar="SECONDS", help="Kill the whole sandbox after this time."),
        click.option("-m", "--memory", metavar="SIZE"),
        click.option("--memory-swap", metavar="SIZE"),
        click.option("--memory-reservation", metavar="SIZE"),
        click.option("--cpus", metavar="N"),
        click.option("--cpu-shares", type=int, metavar="N"),
        click.option("--cpuset-cpus", metavar="LIST"),
        click.option("--pids-limit", type=int, metavar="N"),
        click.option("--blkio-weight", type=int, metavar="N"),
        click.option("--device-read-bps", multiple=True, metavar="DEV:RATE"),
        click.option("--device-write-bps", multiple=True, metavar="DEV:RATE"),
        click.option("--device-read-iops", multiple=True, metavar="DEV:RATE"),
        click.option("--device-write-iops", multiple=True, metavar="DEV:RATE"),
        click.option("--ulimit", "ulimits", multiple=True, metavar="NAME=SOFT[:HARD]"),
        click.option("--security-opt", multiple=True, metavar="OPT", help="seccomp=FILE|unconfined, no-new-privileges"),
        click.option("--image", metavar="NAME", shell_complete=_complete.images, help="Root filesystem from an image."),
        click.option("--keep", is_flag=True, help="Keep the writable layer after the run."),
        click.option("--storage-opt", "storage_opt", multiple=True, metavar="size=SIZE",
                     help="Size limit of an image's writable layer (default 2G; docs/images.md)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def overrides_from(kw: dict, argv=()) -> Overrides:
    return Overrides(
        argv=tuple(argv), cap_add=kw["cap_add"], cap_drop=kw["cap_drop"], volumes=kw["volumes"],
        tmpfs=kw["tmpfs"], read_only=kw["read_only"], env=kw["env"], workdir=kw["workdir"],
        hostname=kw["hostname"], network=kw["network"], ports=kw["ports"], timeout=kw["timeout"],
        memory=kw["memory"], memory_swap=kw["memory_swap"], memory_reservation=kw["memory_reservation"],
        cpus=kw["cpus"], cpu_shares=kw["cpu_shares"], cpuset_cpus=kw["cpuset_cpus"],
        pids_limit=kw["pids_limit"], blkio_weight=kw["blkio_weight"],
        device_read_bps=kw["device_read_bps"], device_write_bps=kw["device_write_bps"],
        device_read_iops=kw["device_read_iops"], device_write_iops=kw["device_write_iops"],
        ulimits=kw["ulimits"], security_opt=kw["security_opt"], image=kw["image"], keep=kw["keep"],
        storage_opt=kw.get("storage_opt", ()), user=kw["user"], group_add=kw["group_add"], user_db=_user_db,
        profile_path=kw["profile_path"])


_USER_DBS: list = []            # the ones this compile read (their files: the plan cache's deps)


def _user_db(fs):
    from .userdb import user_db
    db = user_db(fs)
    _USER_DBS.append(db)
    return db


def compile_for(kw: dict, argv=()):
    return compile_profile(kw["profile"], overrides_from(kw, argv), kernel=_kernel_version())


def cache_files(compiled, kw=None) -> list:
    """Every file the plan was compiled from (the extends chain, seccomp imports, a
    `--security-opt seccomp=FILE`) and every file whose appearance would change it (the search
    path's candidates a profile name was looked up in before the one found), and the directories
    of the search path themselves (a few stats per cached run)."""
    import os
    from policies.loader import profile_dirs
    files = list(compiled.document.files) + list(compiled.document.probed)
    # every directory of the profile search path (its mtime changes when an entry is added, removed,
    # renamed or a symlink in it is swapped: `ln -sfn`, which the target file's signature cannot see)
    files += [str(d) for d in profile_dirs()]
    sec = compiled.document.data.get("seccomp") or {}
    if isinstance(sec.get("import"), str):
        files.append(sec["import"])
    for opt in (kw or {}).get("security_opt") or ():
        k, _, v = opt.partition("=")
        if k == "seccomp" and v and v != "unconfined":
            files.append(os.path.abspath(v))
    for db in _USER_DBS:                # --user NAME, --group-add, an image's User
        files += db.files
    from . import idmap
    if idmap.uses_helpers(compiled.plan, os.geteuid() != 0):
        files.extend(("/etc/subuid", "/etc/subgid"))    # `subordinate` resolved from them
    return files


@cli.command(context_settings={"allow_interspersed_args": False})
@_overrides_options
@click.option("--name", metavar="NAME", help="Name of the sandbox.")
@click.option("--audit-log", "audit_log", metavar="FILE", help="Append audit events (JSON lines) to FILE.")
@click.option("-d", "--detach", is_flag=True, help="Run in the background; see ps/logs/exec/stop/rm.")
@click.option("--rm", "auto_remove", is_flag=True, help="Remove the detached sandbox's state when it ends.")
@click.option("-t", "--tty", is_flag=True, help="A pseudo-terminal inside the sandbox (controlling terminal).")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open (foreground runs always pass stdin).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(command, name, audit_log, detach, auto_remove, tty, interactive, **kw):
    """Run COMMAND in a sandbox:  pysandbox run [OPTIONS] -- COMMAND [ARGS...]"""
    if name is not None:            # a name becomes a state directory, a host name, an audit label
        from .store.state import StateError, check_name
        try:
            check_name(name)
        except StateError as e:
            raise click.BadParameter(str(e), param_hint="'--name'")
    compiled = compile_for(kw, command)
    plan = compiled.plan
    bpf = None
    if plan.seccomp.enabled:
        from . import seccomp
        bpf = seccomp.build_bpf(plan.seccomp)
    runopts = {"name": name, "audit_log": audit_log}
    if detach or tty:
        runopts.update(detach=detach, rm=auto_remove, tty=tty, interactive=interactive)
    if _cli._RAW_RUN_OPTIONS is not None and not any(m.type == "volume" for m in plan.filesystem.mounts):
        from . import plancache
        # the cached plan carries no argv of its own: the command after `--` is supplied per run
        from dataclasses import replace
        cached = replace(plan, process=replace(plan.process, argv=tuple(compile_default_argv(compiled))))
        plancache.store(plancache.key_for(_cli._RAW_RUN_OPTIONS), cached, bpf, runopts, cache_files(compiled, kw))
    return _cli._launch(plan, bpf, None, runopts)


def compile_default_argv(compiled):
    return compiled.document.data.get("process", {}).get("argv", ["/bin/sh"])


@cli.command()
@_overrides_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable plan.")
def explain(as_json, **kw):
    """Show the compiled plan of a profile (with the same overrides as run)."""
    compiled = compile_for(kw)
    from .explain import render
    if as_json:
        click.echo(json.dumps(compiled.plan.to_dict(), indent=2, sort_keys=False))
    else:
        click.echo(render(compiled.plan))
    return 0


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def doctor(as_json):
    """What this kernel and this user can enforce, and what not."""
    from .doctor import checks
    rows = checks()
    if as_json:
        click.echo(json.dumps([{"control": c, "ok": ok, "detail": d} for c, ok, d in rows], indent=2))
    else:
        width = max(len(c) for c, _, _ in rows)
        for c, ok, d in rows:
            click.echo(f"{'ok ' if ok else 'NO '} {c:<{width}}  {d}")
    return 0


@cli.command()
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


SHELLS = ("bash", "zsh", "fish")


@cli.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell):
    """Print the shell completion script for SHELL (bash, zsh, fish).

    \b
    bash:  pysandbox completion bash > ~/.local/share/bash-completion/completions/pysandbox
    zsh:   pysandbox completion zsh > "${fpath[1]}/_pysandbox"
    fish:  pysandbox completion fish > ~/.config/fish/completions/pysandbox.fish
    """
    from click.shell_completion import get_completion_class
    cls = get_completion_class(shell)
    comp = cls(cli, {}, "pysandbox", "_PYSANDBOX_COMPLETE")
    click.echo(comp.source())
    return 0


for _mod in _cli._COMMAND_MODULES:
    try:
        _m = importlib.import_module(_mod)
    except ImportError as _e:          # a missing optional area must not break the core commands
        sys.stderr.write(f"pysandbox: warning: commands of {_mod} unavailable: {_e}\n")
        continue
    for _c in getattr(_m, "COMMANDS", ()):
        cli.add_command(_c)
