"""`pysandbox run`: compile the profile with the command line's overrides, store the plan in the
plan cache (the next identical `run` takes the fast path: sandbox/cli/__init__.py) and launch it
(sandbox/cli/runner.py)."""
from __future__ import annotations

import click

from .options import cache_files, compile_for, overrides_options
from .runner import launch


@click.command(context_settings={"allow_interspersed_args": False})
@overrides_options
@click.option("--name", metavar="NAME", help="Name of the sandbox.")
@click.option("--audit-log", "audit_log", metavar="FILE", help="Append audit events (JSON lines) to FILE.")
@click.option("-d", "--detach", is_flag=True, help="Run in the background; see ps/logs/exec/stop/rm.")
@click.option("--rm", "auto_remove", is_flag=True, help="Remove the detached sandbox's state when it ends.")
@click.option("-t", "--tty", is_flag=True, help="A pseudo-terminal inside the sandbox (controlling terminal).")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open (foreground runs always pass stdin).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(ctx, command, name, audit_log, detach, auto_remove, tty, interactive, **kw):
    """Run COMMAND in a sandbox:  pysandbox run [OPTIONS] -- COMMAND [ARGS...]"""
    if name is not None:            # a name becomes a state directory, a host name, an audit label
        from ..store.state import StateError, check_name
        try:
            check_name(name)
        except StateError as e:
            raise click.BadParameter(str(e), param_hint="'--name'")
    compiled = compile_for(kw, command)
    plan = compiled.plan
    bpf = None
    if plan.seccomp.enabled:
        from .. import seccomp
        bpf = seccomp.build_bpf(plan.seccomp)
    runopts = {"name": name, "audit_log": audit_log}
    if detach or tty:
        runopts.update(detach=detach, rm=auto_remove, tty=tty, interactive=interactive)
    # the options before `--` as typed (main puts them in the context: the plan cache's key)
    raw_options = (ctx.obj or {}).get("raw_run_options")
    from .options import image_sets_argv
    if raw_options is not None and not any(m.type == "volume" for m in plan.filesystem.mounts) \
            and not image_sets_argv():     # (an image's Entrypoint/Cmd: argv is the compiler's)
        from .. import plancache
        # the cached plan carries no argv of its own: the command after `--` is supplied per run
        from dataclasses import replace
        cached = replace(plan, process=replace(plan.process, argv=tuple(compile_default_argv(compiled))))
        from ..server.client import plan_key     # the key the launch server keeps it under (clirun.py):
        plancache.store(plancache.key_for(raw_options), cached, bpf,
                        dict(runopts, server_key=plan_key(cached, bpf)),   # a hit computes no digest
                        cache_files(compiled, kw))
    return launch(plan, bpf, None, runopts)


def compile_default_argv(compiled):
    return compiled.document.data.get("process", {}).get("argv", ["/bin/sh"])


COMMANDS = [run]
