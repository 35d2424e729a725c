"""`pysandbox lint`: schema and security rules, an exposure score, inline suppressions and
text/JSON/SARIF output for profiles kept in git. Pure: never imports `sandbox` or `audit`.

    from policies.lint import lint_paths
    result = lint_paths(["profiles/"], kernel=(6, 18))
    result.findings, result.reports[0].score.score
"""
from .engine import LintResult, LintUsageError, collect, lint_file, lint_paths
from .model import SEVERITIES, Finding, ProfileReport, Rule
from .rules import RULES
from .score import Exposure, exposure

__all__ = ["LintResult", "LintUsageError", "collect", "lint_file", "lint_paths", "RULES", "SEVERITIES",
           "Finding", "ProfileReport", "Rule", "Exposure", "exposure"]
