"""CLI: ps, inspect, logs, top, stats, pause, unpause, stop, kill, rm, exec (named/detached sandboxes).

Exit codes: 0 ok; 1 no such sandbox / not running / clean-up problem / `rm` of a running or
starting sandbox without -f; 2 usage; exec: the command's own status (125 cannot join the sandbox,
126/127 cannot execute / not found). `kill`/`stop` of a starting sandbox queue the signal (see
sandbox/lifecycle.py); `prune` removes leftovers of dead supervisors and every detached sandbox
that is not running.
"""
from __future__ import annotations

import json
import signal as _signal
import sys
import time

import click

from . import completion as _complete
from . import lifecycle
from .store import state
from .store.state import StateError


def _fail(e: StateError):
    raise click.exceptions.Exit(_report(e))


def _report(e: StateError) -> int:
    sys.stderr.write(f"pysandbox: {e}\n")
    return e.code


def _fmt_status(row) -> str:
    s = row["status"]
    if s == "exited":
        return f"exited ({row.get('exit_code')})"
    return s


@click.command("ps")
@click.option("-a", "--all", "all_", is_flag=True, help="Also stopped and dead sandboxes.")
@click.option("--json", "as_json", is_flag=True)
@click.option("-q", "--quiet", is_flag=True, help="Names only.")
def ps_cmd(all_, as_json, quiet):
    """List named/detached sandboxes."""
    try:
        rows = lifecycle.listing(all_)
    except StateError as e:
        return _report(e)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return 0
    if quiet:
        for r in rows:
            click.echo(r["name"])
        return 0
    click.echo(f"{'NAME':<20} {'ID':<13} {'PROFILE':<10} {'STATUS':<12} {'PID':>8}  {'CREATED':<20} COMMAND")
    for r in rows:
        cmd = " ".join(r.get("command") or [])
        click.echo(f"{r['name']:<20} {r['id'] or '':<13} {r['profile'] or '':<10} {_fmt_status(r):<12} "
                   f"{r['pid'] or '':>8}  {r['created'] or '':<20} {cmd[:60]}")
    return 0


@click.command("inspect")
@click.argument("names", nargs=-1, required=True, shell_complete=_complete.sandboxes)
@click.option("--json", "as_json", is_flag=True, help="(always JSON; accepted for symmetry)")
def inspect_cmd(names, as_json):
    """Everything known about sandboxes, as JSON: profile, compiled plan, pids, namespace inodes,
    cgroups, mounts, limits, network, log and audit paths."""
    out = []
    code = 0
    for n in names:
        try:
            out.append(lifecycle.inspect(n))
        except StateError as e:
            code = _report(e)
    click.echo(lifecycle.to_json(out))
    return code


@click.command("logs")
@click.argument("name", shell_complete=_complete.sandboxes)
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the sandbox ends.")
def logs_cmd(name, follow):
    """The stdout (to stdout) and stderr (to stderr) of a detached sandbox."""
    try:
        n = state.resolve(name)
        lifecycle.follow_logs(n, follow)
    except StateError as e:
        return _report(e)
    except KeyboardInterrupt:
        return 0
    return 0


@click.command("top")
@click.argument("name", shell_complete=_complete.sandboxes)
@click.option("--json", "as_json", is_flag=True)
def top_cmd(name, as_json):
    """The processes of a running sandbox (host pid, pid inside, state, RSS, CPU time, command)."""
    try:
        _n, st, status = lifecycle.load(name)
    except StateError as e:
        return _report(e)
    if status not in ("running", "paused"):
        return _report(StateError(f"{name} is not running ({status})"))
    rows = lifecycle.processes(st)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return 0
    click.echo(f"{'PID':>8} {'NSPID':>6} {'PPID':>8} {'S':<2} {'UID':>10} {'RSS(KiB)':>9} {'CPU(s)':>7}  COMMAND")
    for r in rows:
        click.echo(f"{r['pid']:>8} {r['nspid'] or '':>6} {r['ppid']:>8} {r['state']:<2} {r['uid']:>10} "
                   f"{r['rss_kib']:>9} {r['cpu_s']:>7}  {r['command'][:80]}")
    return 0


def _h(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f}{unit}" if unit != "B" else f"{n}B"
        n /= 1024
    return str(n)


@click.command("stats")
@click.argument("names", nargs=-1, required=True, shell_complete=_complete.sandboxes)
@click.option("--no-stream", is_flag=True, help="Print once and exit.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per sandbox and sample.")
@click.option("--interval", type=float, default=1.0, show_default=True)
def stats_cmd(names, no_stream, as_json, interval):
    """Live cgroup figures: CPU %, memory usage/limit, pids. CPU % is the CPU time used over the
    last interval (100 % = one CPU); --no-stream samples once over --interval, as Docker does."""
    if interval <= 0 or interval > 3600:
        raise click.BadParameter("must be > 0 and at most 3600", param_hint="--interval")
    prev: dict = {}

    def sample() -> list:
        rows = []
        for n in names:
            name, st, status = lifecycle.load(n)
            live = status in ("running", "paused")
            s = lifecycle.cgroup_stats(st) if live else {}
            procs = lifecycle.processes(st) if live else []
            if s.get("cpu_usage_ns") is None and procs:   # no cpu accounting cgroup: the processes' times
                s["cpu_usage_ns"] = int(sum(p["cpu_s"] for p in procs) * 1e9)
            now = time.monotonic()
            cpu = None
            if s.get("cpu_usage_ns") is not None and name in prev:
                t0, u0 = prev[name]
                if now > t0 and u0 is not None:
                    cpu = round(max(0.0, 100.0 * (s["cpu_usage_ns"] - u0) / 1e9 / (now - t0)), 2)
            prev[name] = (now, s.get("cpu_usage_ns"))
            rows.append({"name": name, "status": status, "cpu_percent": cpu, **s, "processes": len(procs)})
        return rows

    try:
        if no_stream:                 # a first sample, then the figures over one interval
            try:
                first = sample()
            except StateError as e:
                return _report(e)
            if any(r["status"] in ("running", "paused") for r in first):
                time.sleep(interval)
        while True:
            try:
                rows = sample()
            except StateError as e:
                return _report(e)
            if as_json:
                for r in rows:
                    click.echo(json.dumps(r))
            else:
                click.echo(f"{'NAME':<20} {'STATUS':<9} {'CPU %':>7} {'MEM USAGE / LIMIT':>24} {'PIDS':>6} "
                           f"{'PIDS LIMIT':>10}")
                for r in rows:
                    mem = f"{_h(r.get('memory_usage'))} / {_h(r.get('memory_limit'))}"
                    click.echo(f"{r['name']:<20} {r['status']:<9} "
                               f"{r['cpu_percent'] if r['cpu_percent'] is not None else '-':>7} {mem:>24} "
                               f"{r.get('pids') if r.get('pids') is not None else '-':>6} "
                               f"{r.get('pids_limit') if r.get('pids_limit') is not None else '-':>10}")
            sys.stdout.flush()
            if no_stream:
                return 0
            if all(r["status"] not in ("running", "paused") for r in rows):
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def _each(names, action) -> int:
    """Apply action to each sandbox, printing what it returns; one line per failure, exit 1 if any."""
    code = 0
    for n in names:
        try:
            click.echo(action(n))
        except StateError as e:
            code = _report(e)
    return code


@click.command("pause")
@click.argument("names", nargs=-1, required=True, shell_complete=_complete.sandboxes)
def pause_cmd(names):
    """Freeze every process of running sandboxes (the cgroup freezer: v1 freezer.state or cgroup2
    cgroup.freeze). While paused: exec is refused, kill -s KILL and rm -f end the sandbox, other
    signals wait until unpause, stop thaws first."""
    return _each(names, lifecycle.pause)


@click.command("unpause")
@click.argument("names", nargs=-1, required=True, shell_complete=_complete.sandboxes)
def unpause_cmd(names):
    """Thaw paused sandboxes."""
    return _each(names, lifecycle.unpause)


@click.command("stop")
@click.argument("names", nargs=-1, required=True, shell_complete=_complete.sandboxes)
@click.option("-t", "--time", "grace", type=float, default=10.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL.")
def stop_cmd(names, grace):
    """Stop sandboxes: SIGTERM (forwarded to the program), then SIGKILL after the grace period."""
    return _each(names, lambda n: lifecycle.stop(n, grace))


def _parse_signal(s: str) -> int:
    s = s.upper()
    if s.isdigit():
        return int(s)
    if not s.startswith("SIG"):
        s = "SIG" + s
    try:
        return int(getattr(_signal, s))
    except AttributeError:
        raise click.BadParameter(f"unknown signal {s}") from None


@click.command("kill")
@click.argument("names", nargs=-1, required=True, shell_complete=_complete.sandboxes)
@click.option("-s", "--signal", "sig", default="KILL", show_default=True, help="Signal name or number.")
def kill_cmd(names, sig):
    """Send a signal to sandboxes (to PID 1, which forwards it to the program; KILL ends the sandbox)."""
    signum = _parse_signal(sig)
    return _each(names, lambda n: lifecycle.kill(n, signum))


@click.command("rm")
@click.argument("names", nargs=-1, required=True, shell_complete=_complete.sandboxes)
@click.option("-f", "--force", is_flag=True, help="Kill running sandboxes first.")
def rm_cmd(names, force):
    """Remove stopped or dead sandboxes: leftover processes, cgroups and state."""
    code = 0
    for n in names:
        try:
            name, problems = lifecycle.rm(n, force)
            for p in problems:
                sys.stderr.write(f"pysandbox: {name}: {p}\n")
                code = 1
            click.echo(name)
        except StateError as e:
            code = _report(e)
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
    from . import execin
    command = list(command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise click.UsageError("missing COMMAND (pysandbox exec NAME -- COMMAND [ARGS...])")
    try:
        return execin.exec_in(name, list(command), tty=tty, env=env, workdir=workdir)
    except StateError as e:
        return _report(e)


@click.command("prune")
def prune_cmd():
    """Remove what dead supervisors left (processes, cgroups, network endpoints, overlay dirs) and
    every detached sandbox that is not running (exited or dead): its state and logs."""
    from .store import reclaim
    try:
        removed = reclaim.prune()
    except StateError as e:
        return _report(e)
    for n in removed:
        click.echo(n)
    return 0


COMMANDS = [ps_cmd, inspect_cmd, logs_cmd, top_cmd, stats_cmd, pause_cmd, unpause_cmd, stop_cmd, kill_cmd, rm_cmd,
            exec_cmd, prune_cmd]
