"""Run the lint: collect profile files, load + compile each through the same path as `run` and
`explain` (policies.loader.load_profile -> policies.compiler.compile_document), apply the rules,
the inline suppressions, de-duplicate what several profiles inherit, and score each profile."""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from .. import compiler as C
from ..errors import Location, ProfileError, ProfileErrors, _one_line
from ..loader import is_path_ref, load_profile, resolve_profile
from . import model as M
from . import suppress as S
from .context import Ctx
from .rules import CHECKS, DOC_CHECKS, RULES
# the rules the engine reports itself (their modules declare them; they have no check)
from .rules.psb001_invalid_profile import RULE as PSB001
from .rules.psb002_extends_missing import RULE as PSB002
from .rules.psb003_suppression_without_reason import RULE as PSB003
from .rules.psb004_suppression_unknown_rule import RULE as PSB004
from .rules.psb005_suppression_unused import RULE as PSB005
from .score import exposure

PROFILE_SUFFIXES = (".yaml", ".yml")
# Caller the plan is compiled for: an unprivileged user, so `auto` maps the sandbox to that user
# (an explicit host-root mapping then stands out), independent of who runs the linter.
LINT_CALLER_UID = 1000
LINT_CALLER_GID = 1000


class LintUsageError(Exception):
    """A bad path or option: exit 2."""


@dataclass
class LintResult:
    reports: list = field(default_factory=list)       # ProfileReport, in input order
    findings: list = field(default_factory=list)      # de-duplicated over all profiles, suppressed included

    @property
    def active(self) -> list:
        return [f for f in self.findings if f.suppressed is None]

    @property
    def suppressed(self) -> list:
        return [f for f in self.findings if f.suppressed is not None]

    def failed(self, fail_on: str = "error", threshold: Optional[float] = None) -> bool:
        if any(f.at_least(fail_on) for f in self.active):
            return True
        if threshold is not None:
            return any(r.score is not None and r.score.score > threshold for r in self.reports)
        return False


def collect(paths: Iterable[str]) -> list[Path]:
    """Files (as given) and directories (recursively, *.yaml / *.yml, sorted). Profile names of the
    profile search path (`strict`) are accepted too."""
    out: list[Path] = []
    for raw in paths:
        if "\0" in raw:
            raise LintUsageError(f"{raw!r}: contains a NUL byte")
        p = Path(raw)
        try:
            p.lstat()
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR):       # ENAMETOOLONG, EACCES, ELOOP
                raise LintUsageError(f"{raw}: {e.strerror}") from None
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix in PROFILE_SUFFIXES and q.is_file()
                           and not any(part.startswith(".") for part in q.relative_to(p).parts))
            if not found:
                raise LintUsageError(f"{raw}: no profiles (*.yaml, *.yml) in this directory")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        elif p.exists():
            raise LintUsageError(f"{raw}: not a file or directory")
        elif not is_path_ref(raw):
            try:
                out.append(resolve_profile(raw))
            except FileNotFoundError:
                raise LintUsageError(f"{raw}: no such file, directory or profile name") from None
            except ProfileError as e:           # not a possible name (NUL, too long, odd characters)
                raise LintUsageError(f"{raw!r}: {e.message}") from None
        else:
            raise LintUsageError(f"{raw}: no such file or directory")
    seen, uniq = set(), []
    for p in out:
        k = str(p.resolve())
        if k not in seen:
            seen.add(k)
            uniq.append(p)
    return uniq


def _loc_of(e: ProfileError, fallback: str) -> Location:
    if e.location is not None:
        return e.location
    return Location(e.file or fallback, 1, 1)


def _err_finding(e: ProfileError, profile: str) -> M.Finding:
    msg = _one_line(e.message)
    loc = _loc_of(e, profile)
    if msg.startswith(("extends unknown profile", "extends missing file")):
        return M.Finding(PSB002.code, PSB002.severity, msg, "fix the name or path in `extends:` "
                         "(names are looked up in the user profile directories, then the shipped ones)",
                         loc.file, loc.line, loc.col, profile)
    return M.Finding(PSB001.code, PSB001.severity, msg, "fix the profile at this node",
                     loc.file, loc.line, loc.col, profile)


def schema_findings(doc, profile: str) -> list[M.Finding]:
    """Every schema violation (the compiler stops at the first), each at its node."""
    try:
        errors = list(C._validator().iter_errors(doc.data))
        message = C._schema_message
    except Exception:                      # pragma: no cover - compiler internals changed
        try:
            C.validate(doc)
            return []
        except ProfileError as e:
            return [_err_finding(e, profile)]
    out = []
    for err in errors:
        path = tuple(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            if extra:
                path += (extra[0],)      # point at the unknown key, not at its parent
        loc = doc.locate(path) or Location(profile, 1, 1)
        out.append(M.Finding(PSB001.code, PSB001.severity, message(err), "fix the value to match the profile "
                             "schema (policies/schema/profile.schema.json)", loc.file, loc.line, loc.col, profile))
    out.sort(key=lambda f: (f.file, f.line, f.col))
    return out


def lint_file(path, *, kernel=None, allow=()) -> M.ProfileReport:
    """Lint one profile file (suppressions are applied by lint_paths)."""

    profile = str(Path(path).resolve()) if Path(path).exists() else str(path)
    rep = M.ProfileReport(file=profile, files=[profile])
    try:
        doc = load_profile(profile, allow=allow)
    except ProfileError as e:
        rep.findings.append(_err_finding(e, profile))
        return rep
    rep.files = list(doc.files)
    rep.name = str(doc.data.get("name") or Path(profile).stem)
    ctx = Ctx(doc, None, profile)
    for chk in DOC_CHECKS:
        chk(ctx)
    doc_findings = list(ctx.findings)
    schema = schema_findings(doc, profile)
    try:
        # every error of every stage in one pass (policies.errors.ProfileErrors), schema's included
        compiled = C.compile_document(doc, C.Overrides(), caller_uid=LINT_CALLER_UID,
                                      caller_gid=LINT_CALLER_GID, kernel=kernel,
                                      owned_ids=False)     # PSB105 reports them

    except ProfileError as e:
        out = doc_findings + schema
        for one in (e.errors if isinstance(e, ProfileErrors) else [e]):
            f = _err_finding(one, profile)
            # an unknown syscall is already reported precisely by PSB207 at the same node (a DNS
            # egress name by PSB503), a schema error by schema_findings
            if not any((d.file, d.line, d.col) == (f.file, f.line, f.col) and
                       (d.code != PSB001.code or d.message == f.message) for d in out):
                out.append(f)
        if isinstance(e, ProfileErrors) and e.total > len(e.errors):
            out.append(M.Finding(PSB001.code, PSB001.severity, f"... and {e.total - len(e.errors)} more errors",
                                 "fix the errors above first", profile, 1, 1, profile))
        rep.findings = out
        return rep
    except Exception as e:               # never a traceback from lint: report it on the profile
        loc = doc.locate(()) or Location(profile, 1, 1)
        doc_findings.append(M.Finding(PSB001.code, PSB001.severity, f"cannot compile: {type(e).__name__}: {e}",
                                      "report this as a pysandbox bug", loc.file, loc.line, loc.col, profile))
        rep.findings = doc_findings + schema
        return rep
    ctx = Ctx(doc, compiled.plan, profile)
    for chk in CHECKS:
        chk(ctx)
    rep.findings = doc_findings + ctx.findings
    rep.name = compiled.plan.name
    rep.plan = compiled.plan
    rep.score = exposure(compiled.plan)
    return rep


def lint_paths(paths: Iterable[str], *, kernel=None, profile_path=()) -> LintResult:
    paths = list(paths)
    files = collect(paths)
    # extends: paths may resolve into the directories linted and those the caller allows
    allow = tuple(profile_path) + tuple(p for p in paths if os.path.isdir(p))
    result = LintResult()
    for f in files:
        result.reports.append(lint_file(f, kernel=kernel, allow=allow))

    # suppressions of every file any linted profile is made of
    sup_files: list[str] = []
    for r in result.reports:
        for f in r.files:
            if f not in sup_files:
                sup_files.append(f)
    sups = {f: S.read(f, known_codes=tuple(RULES)) for f in sup_files}

    def apply(f: M.Finding) -> M.Finding:
        for s in sups.get(f.file, ()):
            if s.valid and s.target == f.line and f.code in s.codes:
                s.used = True
                return M.Finding(**{**f.__dict__, "suppressed": s.reason})
        return f

    seen: dict[tuple, M.Finding] = {}
    for r in result.reports:
        r.findings = [apply(f) for f in r.findings]
        for f in r.findings:
            seen.setdefault(f.key, f)

    # findings about the suppressions themselves (never suppressible)
    owner = {}
    for r in result.reports:
        for f in r.files:
            owner.setdefault(f, r)
    for file, lst in sups.items():
        for s in lst:
            meta = []
            if not s.reason:
                meta.append(M.Finding(PSB003.code, PSB003.severity,
                                      f"suppression of {', '.join(s.codes) or 'nothing'} gives no reason "
                                      "(not honoured)", "write why after the bracket: "
                                      "`# pysandbox: ignore[PSB203] the test runner needs ptrace`",
                                      file, s.line, s.col, owner[file].file))
            for c in s.bad_codes:
                meta.append(M.Finding(PSB004.code, PSB004.severity, f"suppression names unknown rule {c!r}",
                                      "use a code from `pysandbox lint --list-rules`", file, s.line, s.col,
                                      owner[file].file))
            if s.reason and not s.used and not s.bad_codes:
                meta.append(M.Finding(PSB005.code, PSB005.severity,
                                      f"suppression of {', '.join(s.codes)} matches no finding on line "
                                      f"{s.target if s.target else '(end of file)'}",
                                      "remove the stale suppression", file, s.line, s.col, owner[file].file))
            for f in meta:
                owner[file].findings.append(f)
                seen.setdefault(f.key, f)

    rank = {s: i for i, s in enumerate(reversed(M.SEVERITIES))}
    for r in result.reports:
        r.findings.sort(key=lambda f: (f.file, f.line, f.col, f.code))
    result.findings = sorted(seen.values(), key=lambda f: (f.file, f.line, f.col, rank[f.severity], f.code))
    return result


def relpath(file: str, base: Optional[str] = None) -> str:
    """A path relative to the working directory when it lies below it."""
    base = base or os.getcwd()
    try:
        rel = os.path.relpath(file, base)
    except ValueError:
        return file
    return file if rel.startswith("..") else rel
