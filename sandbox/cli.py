"""The `pysandbox` command.

`run` has a fast path: when the options before `--` have been seen before and none of the
files they were compiled from changed, the cached plan and seccomp program are used and
neither click, YAML, jsonschema nor libseccomp is imported.

Exit codes: the program's own; 2 usage or profile error; 124 timeout; 125 the sandbox could not
be set up; 126 the command cannot be executed; 127 command not found.
"""
from __future__ import annotations

import os
import sys

EXIT_USAGE = 2

# Modules contributing subcommands: each exposes COMMANDS = [click.Command, ...].
_COMMAND_MODULES = ("sandbox.cmd_export", "sandbox.cmd_image", "sandbox.cmd_audit", "sandbox.cmd_network",
                    "sandbox.cmd_cgroups", "sandbox.cmd_lint", "sandbox.cmd_lifecycle")

_RAW_RUN_OPTIONS = None     # the options of `run` before `--`, for the plan cache key


def _err(msg: str) -> None:
    sys.stderr.write(msg.rstrip("\n") + "\n")
    sys.stderr.flush()


def _finish_run(result) -> int:
    if result.message:
        _err(result.message)
    return result.exit_code


def _launch(plan, bpf, argv, runopts) -> int:
    if runopts.get("detach") or runopts.get("tty"):     # run -d / run -t (sandbox/lifecycle.py)
        from .lifecycle import run_special
        return run_special(plan, bpf, argv, runopts)
    from .launcher import LaunchError, launch
    from audit.session import open_session   # audit log + stderr summary + syslog
    try:
        sess = open_session(os.urandom(6).hex(), runopts.get("name"), plan.name,
                            log_path=runopts.get("audit_log"))
    except OSError as e:
        _err(f"pysandbox: {e.strerror if not str(e).startswith('audit') else e}")
        return 125
    try:
        result = launch(plan, argv, bpf=bpf, name=runopts.get("name"), sandbox_id=sess.sandbox_id,
                        on_event=sess.emit)
    except LaunchError as e:
        _err(f"pysandbox: {e}")
        sess.close()
        return e.code
    code = _finish_run(result)
    sess.close()
    return code


def _fast_run(args: list[str]):
    """`run OPTIONS -- CMD` with a valid cache entry -> exit code; else None."""
    i = args.index("--")
    options, cmd = args[1:i], args[i + 1:]
    from . import plancache
    hit = plancache.load(plancache.key_for(options))
    if hit is None:
        return None
    plan, bpf, runopts = hit
    return _launch(plan, bpf, cmd or None, runopts)


def main(argv=None) -> int:
    global _RAW_RUN_OPTIONS
    args = sys.argv[1:] if argv is None else list(argv)
    # what SIGKILLed supervisors left (cgroups, network endpoints, overlay dirs, state entries):
    # removed at the start of every command — a directory listing when nothing is dead
    from .store.reclaim import reclaim_quietly
    reclaim_quietly()
    try:
        if args and args[0] == "run" and "--" in args:
            _RAW_RUN_OPTIONS = args[1:args.index("--")]
            code = _fast_run(args)
            if code is not None:
                return _exit(code)
        return _exit(_click_main(args))
    except KeyboardInterrupt:
        return _exit(130)


def _exit(code: int) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _click_main(args) -> int:
    from .commands import cli
    try:
        rv = cli.main(args=args, prog_name="pysandbox", standalone_mode=False)
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


if __name__ == "__main__":
    main()
