"""Findings, severities and what a rule is, for `pysandbox lint` (pure data; the rules themselves
are the modules of policies/lint/rules/)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

SEVERITIES = ("info", "warning", "error")
RANK = {s: i for i, s in enumerate(SEVERITIES)}
SARIF_LEVEL = {"error": "error", "warning": "warning", "info": "note"}


@dataclass(frozen=True)
class Rule:
    """One lint rule, as its module in policies/lint/rules/ declares it (ruff's rule modules are the
    model): everything its documentation page says comes from here (policies/lint/ruledoc.py)."""
    code: str          # PSB101
    name: str          # dangerous-capability (kebab-case, stable)
    severity: str      # default severity; a finding may be lower/higher (severity_varies)
    summary: str       # one sentence for the rule table / SARIF shortDescription
    rationale: str = ""              # why it matters (markdown)
    bad: str = ""                    # a profile the rule reports; `# expect: CODE` marks the line
    good: str = ""                   # the same profile fixed: the rule does not report it
    fix: str = ""                    # how to fix a finding (markdown)
    severity_varies: bool = False    # some findings are reported at another severity (the rationale says when)
    also: tuple = ()                 # codes the bad example necessarily reports too (the rationale says why)
    suppression: str = ""            # replaces the page's "suppress a reviewed exception" paragraph

    def __post_init__(self):
        if not re.fullmatch(r"PSB\d{3}", self.code) or not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", self.name):
            raise ValueError(f"bad rule code or name: {self.code} {self.name}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"{self.code}: unknown severity {self.severity!r}")

    @property
    def module(self) -> str:
        """The name of the rule's module in policies/lint/rules/."""
        return f"{self.code.lower()}_{self.name.replace('-', '_')}"


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str
    message: str                     # one line
    hint: str                        # how to fix it, one line
    file: str
    line: int
    col: int
    profile: str = ""                # the profile file being linted when it was found
    suppressed: Optional[str] = None  # the suppression's reason when suppressed inline

    @property
    def key(self) -> tuple:
        """Identity across profiles: a parent's finding seen through two children is one finding."""
        return (self.code, self.file, self.line, self.col, self.message)

    def at_least(self, level: str) -> bool:
        return RANK[self.severity] >= RANK[level]

    def to_dict(self) -> dict:
        d = {"code": self.code, "severity": self.severity, "message": self.message, "hint": self.hint,
             "file": self.file, "line": self.line, "column": self.col, "profile": self.profile}
        if self.suppressed is not None:
            d["suppressed"] = self.suppressed
        return d


@dataclass
class ProfileReport:
    """Everything lint learned about one profile file."""
    file: str
    name: str = ""
    files: list = field(default_factory=list)       # the extends chain, most derived first
    findings: list = field(default_factory=list)    # Finding, suppressed ones included
    score: Optional[object] = None                  # score.Exposure, None when it did not compile
    plan: Optional[object] = None                   # the compiled plan.Plan lint judged (None: did not compile)
