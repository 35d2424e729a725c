"""`pysandbox lint [PATH ...]`: lint profiles for CI (schema, security rules, exposure score).

    pysandbox lint                          # ./profiles, recursively
    pysandbox lint profiles/ my.yaml        # files and directories (*.yaml, *.yml)
    pysandbox lint --format sarif -o lint.sarif
    pysandbox lint --fail-on warning --threshold 2.0
    pysandbox lint --ignore PSB203            # or [tool.pysandbox.lint] in pyproject.toml

Exit codes: 0 clean; 1 a finding at or above --fail-on (default error), or a profile's
exposure above --threshold; 2 usage error (bad path, bad option).
The rules, score and formats live in `policies.lint` (pure); this module is only the CLI.
"""
from __future__ import annotations

import errno
import os
import sys

import click

from ..doctor import kernel_version as _kernel_version

FORMATS = ("text", "json", "sarif")
LEVELS = ("error", "warning", "info")


class LintUsage(click.ClickException):
    exit_code = 2


def _threshold(ctx, param, value):
    if value is None:
        return None
    if not 0.0 <= value <= 10.0:
        raise click.BadParameter("must be between 0.0 and 10.0")
    return value


@click.command("lint")
@click.argument("paths", nargs=-1, metavar="[PATH]...")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True,
              help="Output format (sarif: SARIF 2.1.0 for code-scanning upload).")
@click.option("--fail-on", type=click.Choice(LEVELS), default="error", show_default=True,
              help="Exit 1 when a finding has this severity or a higher one.")
@click.option("--threshold", type=float, callback=_threshold, metavar="SCORE",
              help="Exit 1 when a profile's exposure score is above SCORE (0.0-10.0).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
              help="Write the report to FILE instead of standard output.")
@click.option("--breakdown/--no-breakdown", default=None,
              help="Per-profile exposure table (default: only when linting one profile).")
@click.option("--show-suppressed", is_flag=True, help="Also list findings suppressed inline (text format).")
@click.option("--ignore", "ignore", multiple=True, metavar="CODE",
              help="Suppress the findings of rule CODE (repeatable; replaces pyproject.toml's ignore).")
@click.option("--no-config", is_flag=True, help="Do not read [tool.pysandbox.lint] from pyproject.toml.")
@click.option("--list-rules", is_flag=True, help="List the rules and exit.")
@click.option("--profile-path", "profile_path", multiple=True, metavar="DIR",
              help="Also allow extends:/seccomp.import paths to resolve into DIR.")
@click.pass_context
def lint(ctx, paths, fmt, fail_on, threshold, output, breakdown, show_suppressed, ignore, no_config, list_rules,
         profile_path):
    """Lint profiles: schema errors, security rules, exposure score.

    PATH is a profile file, a directory (searched recursively for *.yaml/*.yml) or a profile
    name; the default is [tool.pysandbox.lint] paths of the nearest pyproject.toml, else
    ./profiles. Suppress a finding inline, with a reason:
    `# pysandbox: ignore[PSB203] the test runner needs ptrace`. Settings in pyproject.toml
    ([tool.pysandbox.lint]: paths, ignore, fail-on, threshold) are overridden by these options.
    """
    from policies.lint import LintUsageError, lint_paths
    from policies.lint import config as C
    from policies.lint import output as O

    if list_rules:
        click.echo(O.rules_table())
        return 0
    cfg = C.LintConfig()
    if not no_config:
        try:
            cfg = C.load()
        except C.LintConfigError as e:
            raise LintUsage(str(e)) from None
    from click.core import ParameterSource
    given = {n for n in ("fail_on", "threshold") if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE}
    if "fail_on" not in given and cfg.fail_on is not None:
        fail_on = cfg.fail_on
    if "threshold" not in given and cfg.threshold is not None:
        threshold = cfg.threshold
    if ignore:
        ignore = tuple(c.upper() for c in ignore)
        from policies.lint import RULES
        bad = [c for c in ignore if c not in RULES]
        if bad:
            raise LintUsage(f"--ignore {bad[0]}: unknown rule (see pysandbox lint --list-rules)")
    else:
        ignore = cfg.ignore
    if not paths and cfg.paths:
        paths = cfg.paths
    if not paths:
        if not os.path.isdir("profiles"):
            raise LintUsage("no PATH given and there is no ./profiles directory")
        paths = ("profiles",)
    try:
        result = lint_paths(paths, kernel=_kernel_version(), profile_path=profile_path)
    except LintUsageError as e:
        raise LintUsage(str(e)) from None
    C.apply_ignore(result, ignore, C.IGNORED_REASON if not ctx.params.get("ignore") else "ignored by --ignore")
    if fmt == "json":
        text = O.render_json(result, fail_on=fail_on, threshold=threshold)
    elif fmt == "sarif":
        text = O.render_sarif(result)
    else:
        color = output is None and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        text = O.render_text(result, breakdown=breakdown, color=color, show_suppressed=show_suppressed)
        if threshold is not None:
            worse = [r for r in result.reports if r.score is not None and r.score.score > threshold]
            for r in worse:
                text += (f"\nexposure {r.score.score:.1f} of {O.relpath(r.file)} is above the threshold "
                         f"{threshold:.1f}")
    if output:
        try:
            # opened without blocking (a FIFO nobody reads: ENXIO, not a hang), then written blocking
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
            os.set_blocking(fd, True)
            with open(fd, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        except OSError as e:
            why = "a FIFO nobody reads" if e.errno == errno.ENXIO else e.strerror
            raise LintUsage(f"cannot write {output}: {why}") from None
        if fmt != "text":
            # keep CI logs readable: a one-line summary on stderr
            c = {s: sum(1 for x in result.active if x.severity == s) for s in LEVELS}
            click.echo(f"pysandbox lint: {c['error']} errors, {c['warning']} warnings, {c['info']} info "
                       f"-> {output}", err=True)
        else:
            click.echo(text.rsplit("\n", 1)[-1], err=True)
    else:
        click.echo(text)
    return 1 if result.failed(fail_on, threshold) else 0


COMMANDS = [lint]
