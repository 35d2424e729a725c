"""`pysandbox audit show|tail|summary`: read the audit log.

    pysandbox audit show [--sandbox ID|NAME] [--type TYPE] [--since 10m|RFC3339] [--syscall NAME] [--json]
    pysandbox audit tail [-n 10] [--no-follow] [filters] [--json]
    pysandbox audit summary [filters] [--json]

The log is --log FILE, else $PYSANDBOX_AUDIT_LOG, else the default under the state
directory (audit/paths.py: $PYSANDBOX_STATE_DIR, /var/lib/pysandbox as root, $XDG_DATA_HOME/pysandbox
rootless; the pre-1-state-dir rootless log $XDG_STATE_HOME/pysandbox/audit.jsonl while there is no new one).
`show` and `summary` read the rotated files (FILE.N .. FILE.1) too, oldest first; a record with
a `count` stands for that many calls (the rate limit's coalesced records, docs/audit.md).
Exit status: 0 ok, 1 no log file, 2 bad option.
"""
from __future__ import annotations

import json
import os
import sys

import click

from audit import reader
from audit.sinks import default_log_path

from ..learn import learn_command     # `pysandbox learn` lives with the audit commands


def _filters(f):
    opts = [
        click.option("--log", "log_path", metavar="FILE", type=click.Path(dir_okay=False),
                     help="Audit log (default: the state directory's audit.jsonl)."),
        click.option("--sandbox", "sandboxes", multiple=True, metavar="ID|NAME",
                     help="Only this sandbox (id, id prefix or name); repeatable."),
        click.option("--type", "types", multiple=True, metavar="TYPE",
                     help="Only events of this type (or 'denial'); repeatable."),
        click.option("--since", metavar="WHEN", help="Only events since a duration ago (30s, 10m, 2h, 1d) "
                                                    "or an RFC 3339 time."),
        click.option("--syscall", "syscalls", multiple=True, metavar="NAME",
                     help="Only events about this system call; repeatable."),
        click.option("--severity", "min_severity", metavar="LEVEL",
                     help="Only events at least this severe (info, notice, warning, error, critical)."),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _make_filter(sandboxes, types, since, syscalls, min_severity) -> reader.Filter:
    try:
        return reader.Filter(sandboxes=tuple(sandboxes), types=tuple(types),
                             since=reader.parse_since(since) if since else None,
                             syscalls=tuple(syscalls), min_severity=min_severity)
    except reader.FilterError as e:
        raise click.UsageError(str(e)) from None


def _log(log_path) -> str:
    if log_path:
        return log_path
    path = str(default_log_path())
    if not os.path.exists(path) and not os.environ.get("PYSANDBOX_AUDIT_LOG"):
        # rootless logs were under $XDG_STATE_HOME/pysandbox before there was one state directory
        from audit.paths import legacy_audit_dir
        old = legacy_audit_dir(os.geteuid() != 0)
        if old and os.path.exists(os.path.join(old, os.path.basename(path))):
            return os.path.join(old, os.path.basename(path))
    return path


class _NoLog(click.ClickException):
    exit_code = 1


def _emit(ev: dict, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(ev, ensure_ascii=False, separators=(",", ":")) + "\n")
    else:
        sys.stdout.write(reader.format_event(ev) + "\n")


@click.group("audit")
def audit_group():
    """Read the audit log: denials, escape attempts, limits, exits."""


@audit_group.command("show")
@_filters
@click.option("-n", "--last", "last", type=click.IntRange(min=1), metavar="N", help="Only the last N matches.")
def show(log_path, sandboxes, types, since, syscalls, min_severity, as_json, last):
    """Print recorded events, oldest first."""
    path = _log(log_path)
    flt = _make_filter(sandboxes, types, since, syscalls, min_severity)
    _check(path)
    evs = (reader.last_events(path, last, flt, rotated=True) if last
           else reader.read_events(path, flt, rotated=True))
    try:
        for ev in evs:
            _emit(ev, as_json)
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    return 0


@audit_group.command("tail")
@_filters
@click.option("-n", "--lines", "lines", default=10, show_default=True, type=click.IntRange(min=0),
              help="Show the last N matching events first.")
@click.option("--follow/--no-follow", "-f/-F", default=True, show_default=True,
              help="Keep printing events as they are appended.")
def tail(log_path, sandboxes, types, since, syscalls, min_severity, as_json, lines, follow):
    """The last events, then new ones as they arrive (Ctrl-C to stop)."""
    path = _log(log_path)
    flt = _make_filter(sandboxes, types, since, syscalls, min_severity)
    if not follow or os.path.exists(path):
        _check(path)
    try:
        if os.path.exists(path) and lines:
            for ev in reader.last_events(path, lines, flt):
                _emit(ev, as_json)
        sys.stdout.flush()
        if follow:
            for ev in reader.follow(path, flt, from_end=True):
                _emit(ev, as_json)
                sys.stdout.flush()
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    return 0


@audit_group.command("summary")
@_filters
def summary(log_path, sandboxes, types, since, syscalls, min_severity, as_json):
    """Per sandbox: events by type, denials by system call, escape techniques, exit."""
    path = _log(log_path)
    flt = _make_filter(sandboxes, types, since, syscalls, min_severity)
    _check(path)
    s = reader.summarize(reader.read_events(path, flt, rotated=True))
    if as_json:
        click.echo(json.dumps([x.to_dict() for x in s], indent=2, ensure_ascii=False))
    else:
        click.echo(reader.format_summary(s))
    return 0


def _check(path: str) -> None:
    if not os.path.exists(path):
        raise _NoLog(f"no audit log at {path} (nothing recorded yet?)")
    if not os.path.isfile(path):                 # a FIFO would block, a device never end
        raise _NoLog(f"{path}: not a regular file: not an audit log")
    if not os.access(path, os.R_OK):
        raise _NoLog(f"cannot read the audit log {path}: permission denied")


COMMANDS = [audit_group, learn_command]
