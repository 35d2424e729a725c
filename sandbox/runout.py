"""What `pysandbox run` says and records of a run besides the program's own output, wherever the
run is launched — in the CLI's process (sandbox/cli/runner.py) or by the caller's launch server on
its behalf (sandbox/server/clirun.py): one-line errors on stderr, the run's audit session (log,
syslog, the stderr summary), the launcher's outcome lines. `out`: the stream for stderr (None:
this process's)."""
from __future__ import annotations

import os
import sys


def err(msg: str, out=None) -> None:
    out = out or sys.stderr
    out.write(msg.rstrip("\n") + "\n")
    out.flush()


def session(plan, runopts, out=None, cwd: "str | None" = None):
    """The run's audit session, or None (said on `out`) when it cannot be opened. cwd: the caller's
    working directory, against which a relative --audit-log is resolved (None: ours)."""
    from audit.session import open_session
    from .launcher import needs_state
    if needs_state(plan):                 # the launch will need it: its error alone, before the audit's
        from audit.paths import StateDirError, ensure_state_dir
        try:
            ensure_state_dir()
        except StateDirError as e:
            err(f"pysandbox: state: cannot record the sandbox's resources for their clean-up: {e}", out)
            return None
    log_path = runopts.get("audit_log")
    if log_path and cwd is not None:
        log_path = os.path.join(cwd, log_path)
    try:
        return open_session(os.urandom(6).hex(), runopts.get("name"), plan.name, log_path=log_path,
                            stream=out)
    except OSError as e:
        err(f"pysandbox: {e.strerror if not str(e).startswith('audit') else e}", out)
        return None


def report(plan, message, out=None) -> None:
    """The launcher's own outcome line(s), if any, on stderr."""
    if message:
        err(no_namespaces(plan) if message.startswith("pysandbox: namespaces: cannot create") else message, out)


def no_namespaces(plan) -> str:
    """The namespaces backend could not start: say what is missing and what lighter isolation the
    user could accept (sandbox/launch/nsfree.py), when user namespaces are what failed."""
    from .launch import nsfree
    backend, why = nsfree.choose(plan)
    return f"pysandbox: {why}" if backend is None else "pysandbox: namespaces: cannot create them"
