"""`pysandbox pause|unpause|stop|kill|rm|exec|prune`: act on detached sandboxes.

Exit codes: 0 ok; 1 no such sandbox / not running / clean-up problem / `rm` of a running or
starting sandbox without -f; 2 usage; exec: the command's own status (125 cannot join the sandbox,
126/127 cannot execute / not found). `kill`/`stop` of a starting sandbox queue the signal (see
sandbox/detached.py); `prune` removes leftovers of dead supervisors and every detached sandbox
that is not running.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

import click

from .. import procid
from ..store import state
from ..detached import deliver, wait_gone
from ..recorded import load
from ..store.state import StateError
from . import completion as _complete
from .status import report


# --- what the commands do -------------------------------------------------------------------

def _set_frozen(ref: str, frozen: bool) -> str:
    from ..cgroups import freezer
    from ..cgroups.files import CgroupError
    name, st, status = load(ref)
    want, verb = ("running", "pause") if frozen else ("paused", "unpause")
    if status != want:
        raise StateError(f"{name} is {'not running' if frozen else 'not paused'} ({status}): cannot {verb} it")
    try:
        freezer.set_frozen(st.get("cgroups"), st.get("id") or "", frozen)
    except CgroupError as e:
        raise StateError(f"{name}: {e}") from None
    return name


def pause(ref: str) -> str:
    """Freeze every process of a running sandbox (Docker's `pause`)."""
    return _set_frozen(ref, True)


def unpause(ref: str) -> str:
    return _set_frozen(ref, False)


def _thaw(st: dict) -> None:
    from ..cgroups import freezer
    from ..cgroups.files import CgroupError
    with contextlib.suppress(CgroupError):
        freezer.set_frozen(st.get("cgroups"), st.get("id") or "", False)


def stop(ref: str, grace: float = 10.0) -> str:
    name, st, status = load(ref)
    if status not in ("running", "starting", "paused"):
        return name
    if status == "paused":                        # as Docker: thaw, then stop
        _thaw(st)
    deliver(name, st, signal.SIGTERM)
    if not wait_gone(name, grace):
        deliver(name, state.read(name), signal.SIGKILL)
        if not wait_gone(name, 10.0):
            raise StateError(f"{name}: still running after SIGKILL")
    return name


def kill(ref: str, sig: int = signal.SIGKILL) -> str:
    name, st, status = load(ref)
    if status not in ("running", "starting", "paused"):
        raise StateError(f"{name} is not running ({status})")
    if not deliver(name, st, sig):
        if not state.is_alive(name):
            raise StateError(f"{name} is not running (it ended meanwhile)")
        raise StateError(f"{name}: cannot signal its PID 1 (gone?)")
    if status == "paused" and sig == signal.SIGKILL:
        _thaw(st)      # v1 frozen tasks die only once thawed; the pending SIGKILL runs no user code
    return name       # (other signals stay queued until unpause, as with Docker)


def rm(ref: str, force: bool = False) -> tuple[str, list[str]]:
    """Remove a stopped (or dead) sandbox: kill what is left, its cgroups, its state.
    Returns (name, problems)."""
    name, st, status = load(ref)
    if status in ("running", "starting", "paused"):
        if not force:
            raise StateError(f"{name} is {status}: stop it first or use rm -f")
        deliver(name, st, signal.SIGKILL)         # while starting: queued, the launch is aborted
        if status == "paused":
            _thaw(st)
        if not wait_gone(name, 10.0):
            with contextlib.suppress(StateError):
                st = state.read(name)
            sup = st.get("supervisor_pid")
            if procid.same_process(sup, st.get("supervisor_start")):
                os.kill(sup, signal.SIGKILL)
            if not wait_gone(name, 5.0):
                raise StateError(f"{name}: still running after SIGKILL; not removed")
        with contextlib.suppress(StateError):
            st = state.read(name)                 # the supervisor's last word (cgroups, ...)
    problems = []
    # leftovers of a supervisor that died: its sandbox (PDEATHSIG) and cgroups
    for cg in reversed(st.get("cgroups") or []):
        problems += _remove_cgroup(cg, st.get("id") or "")
    if (st.get("plan") or {}).get("network", {}).get("mode") not in (None, "none", "host"):
        try:
            from ..network import bridge
            bridge.reclaim_stale(rootless=os.geteuid() != 0)
        except Exception as e:                    # noqa: BLE001
            problems.append(f"network clean-up: {e}")
    sid = st.get("id") or ""
    if sid:                                       # what its dead supervisor registered (overlay dir, ...)
        from ..store import reclaim
        try:
            reclaim.reclaim(only=sid)
        except OSError as e:
            problems.append(f"clean-up: {e}")
    state.remove(name)
    return name, problems


def _remove_cgroup(path: str, sid: str) -> list[str]:
    if not sid or os.path.basename(path) != sid or not os.path.isdir(path):
        return []
    deadline = time.monotonic() + 5
    while True:
        try:
            for root, _dirs, _f in sorted(os.walk(path), key=lambda t: -t[0].count("/")):
                os.rmdir(root)
            return []
        except FileNotFoundError:
            return []
        except OSError as e:
            if time.monotonic() > deadline:
                return [f"cgroup {path}: {e.strerror}"]
            try:
                with open(os.path.join(path, "cgroup.procs")) as f:
                    for p in f.read().split():
                        try:
                            os.kill(int(p), signal.SIGKILL)
                        except (ProcessLookupError, PermissionError, ValueError):
                            pass
            except OSError:
                pass
            time.sleep(0.05)


# --- the commands ---------------------------------------------------------------------------

def _each(names, action) -> int:
    """Apply action to each sandbox, printing what it returns; one line per failure, exit 1 if any."""
    code = 0
    for n in names:
        try:
            click.echo(action(n))
        except StateError as e:
            code = report(e)
    return code


@click.command("pause")
@click.argument("names", nargs=-1, required=True, shell_complete=_complete.sandboxes)
def pause_cmd(names):
    """Freeze every process of running sandboxes (the cgroup freezer: v1 freezer.state or cgroup2
    cgroup.freeze). While paused: exec is refused, kill -s KILL and rm -f end the sandbox, other
    signals wait until unpause, stop thaws first."""
    return _each(names, pause)


@click.command("unpause")
@click.argument("names", nargs=-1, required=True, shell_complete=_complete.sandboxes)
def unpause_cmd(names):
    """Thaw paused sandboxes."""
    return _each(names, unpause)


@click.command("stop")
@click.argument("names", nargs=-1, required=True, shell_complete=_complete.sandboxes)
@click.option("-t", "--time", "grace", type=float, default=10.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL.")
def stop_cmd(names, grace):
    """Stop sandboxes: SIGTERM (forwarded to the program), then SIGKILL after the grace period."""
    return _each(names, lambda n: stop(n, grace))


def _parse_signal(s: str) -> int:
    s = s.upper()
    if s.isdigit():
        return int(s)
    if not s.startswith("SIG"):
        s = "SIG" + s
    try:
        return int(getattr(signal, s))
    except AttributeError:
        raise click.BadParameter(f"unknown signal {s}") from None


@click.command("kill")
@click.argument("names", nargs=-1, required=True, shell_complete=_complete.sandboxes)
@click.option("-s", "--signal", "sig", default="KILL", show_default=True, help="Signal name or number.")
def kill_cmd(names, sig):
    """Send a signal to sandboxes (to PID 1, which forwards it to the program; KILL ends the sandbox)."""
    signum = _parse_signal(sig)
    return _each(names, lambda n: kill(n, signum))


@click.command("rm")
@click.argument("names", nargs=-1, required=True, shell_complete=_complete.sandboxes)
@click.option("-f", "--force", is_flag=True, help="Kill running sandboxes first.")
def rm_cmd(names, force):
    """Remove stopped or dead sandboxes: leftover processes, cgroups and state."""
    code = 0
    for n in names:
        try:
            name, problems = rm(n, force)
            for p in problems:
                sys.stderr.write(f"pysandbox: {name}: {p}\n")
                code = 1
            click.echo(name)
        except StateError as e:
            code = report(e)
    return code


@click.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("-t", "--tty", is_flag=True, help="A pseudo-terminal inside the sandbox.")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open (always the case; Docker compatibility).")
@click.option("-e", "--env", multiple=True, metavar="K=V|K", help="Set or pass an environment variable.")
@click.option("-w", "--workdir", metavar="DIR", help="Working directory inside.")
@click.argument("name", shell_complete=_complete.sandboxes)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(tty, interactive, env, workdir, name, command):
    """Run COMMAND inside a running sandbox:  pysandbox exec NAME -- COMMAND [ARGS...]

    The command joins the sandbox's namespaces and cgroups and gets exactly its user,
    capabilities, no_new_privs, rlimits and seccomp filter."""
    from .. import execin
    command = list(command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise click.UsageError("missing COMMAND (pysandbox exec NAME -- COMMAND [ARGS...])")
    try:
        return execin.exec_in(name, list(command), tty=tty, env=env, workdir=workdir)
    except StateError as e:
        return report(e)


@click.command("prune")
def prune_cmd():
    """Remove what dead supervisors left (processes, cgroups, network endpoints, overlay dirs) and
    every detached sandbox that is not running (exited or dead): its state and logs."""
    from ..store import reclaim
    try:
        removed = reclaim.prune()
    except StateError as e:
        return report(e)
    for n in removed:
        click.echo(n)
    return 0


COMMANDS = [pause_cmd, unpause_cmd, stop_cmd, kill_cmd, rm_cmd, exec_cmd, prune_cmd]
