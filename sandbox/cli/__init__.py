"""The `pysandbox` command: `main` (the console entry point) and the list of command modules.

One module per command or command group (sandbox/cli/*.py), each exposing
COMMANDS = [click.Command, ...]; this module knows them, they never import it.

`run` has a fast path: when the options before `--` have been seen before and none of the
files they were compiled from changed, the cached plan and seccomp program are used and
neither click, YAML, jsonschema nor libseccomp is imported (sandbox/cli/runner.py). That is
why every import here is inside a function: this module is on that path.

Exit codes: the program's own; 2 usage or profile error; 124 timeout; 125 the sandbox could not
be set up; 126 the command cannot be executed; 127 command not found.
"""
from __future__ import annotations

import os
import sys

from .. import stdio

EXIT_USAGE = 2

# the command modules of sandbox/cli/, in no particular order (click lists commands sorted)
COMMAND_MODULES = ("run", "explain", "doctor", "profiles", "completion", "export", "image", "audit",
                   "network", "cgroups", "lint", "status", "lifecycle", "build_image", "server")


def main(argv=None) -> int:
    stdio.ensure_open()
    args = sys.argv[1:] if argv is None else list(argv)
    # what SIGKILLed supervisors left (cgroups, network endpoints, overlay dirs, state entries):
    # removed at the start of every command — a directory listing when nothing is dead
    if _owner_records():
        from ..store.reclaim import reclaim_quietly
        reclaim_quietly()
    try:
        raw_run_options = None
        if args and args[0] == "run" and "--" in args:
            i = args.index("--")
            raw_run_options = args[1:i]     # the options of `run` before `--`: the plan cache key
            from ..server import lean       # the caller's launch server, when one runs (opt-in)
            code = lean.run(raw_run_options, args[i + 1:])
            if code is not None:
                return _exit(code)
            from .runner import fast_run
            code = fast_run(raw_run_options, args[i + 1:])
            if code is not None:
                return _exit(code)
        from .runner import gc_on
        gc_on()
        return _exit(_click_main(args, raw_run_options))
    except KeyboardInterrupt:
        return _exit(130)


def _owner_records() -> bool:
    """Whether sandbox.store.reclaim has anything to look at: a record in <state dir>/owners
    (names not starting with a dot: `.lock` is the reclaimer's). The common case — none — costs one
    listing, without importing the reclaimer (~1-3 ms of a cached run)."""
    from audit.paths import state_dir            # (audit is imported by every launch anyway)
    try:
        return any(not n.startswith(".") for n in os.listdir(os.path.join(state_dir(), "owners")))
    except OSError:                              # none yet, or unreadable: reclaim() would do nothing
        return False


def _exit(code: int) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def build():                     # click is imported here only: off the fast path
    """The click group with every command of COMMAND_MODULES."""
    import importlib

    import click

    def show_version(ctx, param, value):
        if value and not ctx.resilient_parsing:
            click.echo(f"pysandbox, version {_version()}")
            ctx.exit()

    @click.group(context_settings={"help_option_names": ["-h", "--help"]},
                 params=[click.Option(["--version"], is_flag=True, expose_value=False, is_eager=True,
                                      help="Show the version and exit.", callback=show_version)])
    def cli():
        """pysandbox: run programs confined by a policy profile."""

    for mod in COMMAND_MODULES:
        try:
            m = importlib.import_module(f"{__name__}.{mod}")
        except ImportError as e:          # a missing optional area must not break the core commands
            sys.stderr.write(f"pysandbox: warning: commands of sandbox.cli.{mod} unavailable: {e}\n")
            continue
        for c in getattr(m, "COMMANDS", ()):
            cli.add_command(c)
    return cli


def _version() -> str:
    """The installed distribution's version (wheel or editable), read only when asked for."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("pysandbox")
    except PackageNotFoundError:        # the work tree on sys.path without an install
        return "0.1.0+source"


def _click_main(args, raw_run_options=None) -> int:
    from .runner import err as _err
    cli = build()
    try:
        # the raw options reach `run` (sandbox/cli/run.py) as the context's obj: the cache key
        rv = cli.main(args=args, prog_name="pysandbox", standalone_mode=False,
                      obj={"raw_run_options": raw_run_options})
    except SystemExit as e:              # pragma: no cover
        return e.code if isinstance(e.code, int) else 1
    except Exception as e:
        import click
        from policies.errors import ProfileError
        if isinstance(e, click.exceptions.Exit):
            return e.exit_code
        if isinstance(e, click.Abort):
            _err("pysandbox: aborted")
            return 130
        if isinstance(e, click.ClickException):
            msg = e.format_message()
            ctx = getattr(e, "ctx", None)
            cmd = f" {ctx.command_path.split(' ', 1)[1]}" if ctx and " " in ctx.command_path else ""
            _err(f"pysandbox{cmd}: {msg}")
            return e.exit_code
        if isinstance(e, ProfileError):
            from policies.errors import error_lines
            for line in error_lines(e):         # every error found, one per line
                _err(f"pysandbox: {line}")
            return EXIT_USAGE
        _err(f"pysandbox: internal error: {type(e).__name__}: {e}")
        return 125
    return rv if isinstance(rv, int) else 0
