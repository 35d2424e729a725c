"""`[tool.pysandbox.lint]` in pyproject.toml: a project's lint settings, as ruff and mypy keep theirs.

    [tool.pysandbox.lint]
    paths = ["profiles", "ci/sandbox.yaml"]   # what `pysandbox lint` lints without PATH arguments
    ignore = ["PSB203"]                      # rule codes whose findings are suppressed (listed with
                                             # --show-suppressed, reason: "ignored in pyproject.toml")
    fail-on = "warning"                      # error | warning | info
    threshold = 2.0                          # exposure score 0.0-10.0

The file is the nearest pyproject.toml from the current directory upwards (the first one found,
with or without the table, ends the search, as ruff does); `paths` are relative to its directory
and must resolve inside it.
The command line's options override each setting. The file is the project's, not necessarily the
caller's (CI lints contributions): it is read bounded (at most MAX_BYTES), and any error — TOML
syntax, an unknown key, a wrong type, an unknown rule — is one line with file:line:col where known
(LintConfigError; exit 2), never a traceback. Pure: reads files only.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import model as M
from .rules import RULES

MAX_BYTES = 1 << 20
LEVELS = ("error", "warning", "info")
KEYS = ("paths", "ignore", "fail-on", "threshold")
IGNORED_REASON = "ignored in pyproject.toml [tool.pysandbox.lint]"


class LintConfigError(Exception):
    """A bad pyproject.toml lint table: the message is one line, `file[:line:col]: what`."""


@dataclass(frozen=True)
class LintConfig:
    file: Optional[str] = None               # the pyproject.toml read, None when there was none
    paths: tuple = ()
    ignore: tuple = ()
    fail_on: Optional[str] = None
    threshold: Optional[float] = None
    present: bool = False                    # the file had a [tool.pysandbox.lint] table
    keys: frozenset = field(default_factory=frozenset)


def find_pyproject(start: Optional[str] = None) -> Optional[Path]:
    d = Path(start or os.getcwd()).resolve()
    for p in (d, *d.parents):
        f = p / "pyproject.toml"
        if f.is_file():
            return f
    return None


def _read(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise LintConfigError(f"{path}: cannot read: {e.strerror}") from None
    if len(data) > MAX_BYTES:
        raise LintConfigError(f"{path}: larger than {MAX_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise LintConfigError(f"{path}: not UTF-8 text") from None


def _where(text: str, path: Path, key: Optional[str]) -> str:
    """file:line:col of KEY inside the [tool.pysandbox.lint] table (file:line of the table when
    KEY is None or not found on a line of its own); tomllib keeps no positions."""
    lines = text.splitlines()
    start = None
    for i, line in enumerate(lines):
        if re.match(r"\s*\[\s*tool\s*\.\s*pysandbox\s*\.\s*lint\s*\]", line):
            start = i
            break
    if start is None:
        return str(path)
    if key is not None:
        for j in range(start + 1, len(lines)):
            if re.match(r"\s*\[", lines[j]):
                break
            m = re.match(r"(\s*)([\"']?)" + re.escape(key) + r"\2\s*=", lines[j])
            if m:
                return f"{path}:{j + 1}:{len(m.group(1)) + 1}"
    return f"{path}:{start + 1}:1"


def load(start: Optional[str] = None) -> LintConfig:
    path = find_pyproject(start)
    if path is None:
        return LintConfig()
    text = _read(path)
    import tomllib
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\(at line (\d+), column (\d+)\)$", msg)
        if m:
            raise LintConfigError(f"{path}:{m.group(1)}:{m.group(2)}: invalid TOML: {msg[:m.start()].strip()}") from None
        raise LintConfigError(f"{path}: invalid TOML: {msg}") from None
    table = doc.get("tool", {}).get("pysandbox", {}).get("lint") if isinstance(doc.get("tool"), dict) else None
    if table is None:
        return LintConfig(file=str(path))
    if not isinstance(table, dict):
        raise LintConfigError(f"{_where(text, path, None)}: [tool.pysandbox.lint] must be a table")
    for k in table:
        if k not in KEYS:
            raise LintConfigError(f"{_where(text, path, k)}: [tool.pysandbox.lint]: unknown key {k!r} "
                                  f"(known: {', '.join(KEYS)})")

    def strings(key) -> tuple:
        v = table.get(key, [])
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v) or len(v) > 1000:
            raise LintConfigError(f"{_where(text, path, key)}: [tool.pysandbox.lint] {key}: "
                                  "expected a list of non-empty strings")
        return tuple(v)

    # the file may come with the code being linted: its paths stay inside its project directory
    # (realpath: symlinks followed), so it cannot point lint at /etc/shadow or another's home
    base = os.path.realpath(path.parent)
    paths = []
    for p in strings("paths"):
        full = os.path.realpath(os.path.join(base, p))
        if full != base and not full.startswith(base.rstrip("/") + "/"):
            raise LintConfigError(f"{_where(text, path, 'paths')}: [tool.pysandbox.lint] paths: {p!r} resolves "
                                  f"outside the project directory {base}")
        paths.append(full)
    paths = tuple(paths)
    ignore = tuple(c.upper() for c in strings("ignore"))
    unknown = [c for c in ignore if c not in RULES]
    if unknown:
        raise LintConfigError(f"{_where(text, path, 'ignore')}: [tool.pysandbox.lint] ignore: unknown "
                              f"rule {unknown[0]!r} (see pysandbox lint --list-rules)")
    fail_on = table.get("fail-on")
    if fail_on is not None and fail_on not in LEVELS:
        raise LintConfigError(f"{_where(text, path, 'fail-on')}: [tool.pysandbox.lint] fail-on: expected "
                              f"one of {', '.join(LEVELS)}")
    threshold = table.get("threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 10.0:
            raise LintConfigError(f"{_where(text, path, 'threshold')}: [tool.pysandbox.lint] threshold: "
                                  "expected a number from 0.0 to 10.0")
        threshold = float(threshold)
    return LintConfig(file=str(path), paths=paths, ignore=ignore, fail_on=fail_on, threshold=threshold,
                      present=True, keys=frozenset(table))


def apply_ignore(result, codes, reason: str = IGNORED_REASON):
    """Suppress (keep, marked with REASON) the findings of the rule CODES in RESULT, in place."""
    codes = set(codes)
    if not codes:
        return result

    def mark(f):
        if f.code in codes and f.suppressed is None:
            return M.Finding(**{**f.__dict__, "suppressed": reason})
        return f

    result.findings[:] = [mark(f) for f in result.findings]
    for r in result.reports:
        if getattr(r, "findings", None) is not None:
            r.findings[:] = [mark(f) for f in r.findings]
    return result
