"""The rules of `pysandbox lint`: one module per rule, `psbNNN_<name>.py`, found here by listing this
package (no hand-kept list to drift from the modules).

A rule module declares `RULE` (a model.Rule: code, name, severity, summary, rationale, bad and
good example, fix) and at most one check:

    check(ctx)            needs the compiled plan (ctx.plan); runs when the profile compiles
    check_document(ctx)   needs only the merged document; runs even when the profile does not compile

A rule with neither (PSB001-PSB005) is reported by the engine itself: a profile that does not
load or compile, and the inline suppressions. Checks are pure functions that call
`ctx.report(RULE, message, hint, *paths)`; they run in code order.
"""
from __future__ import annotations

import importlib
import pkgutil
import re

from ..context import Check
from ..model import Rule

_MODULE = re.compile(r"psb\d{3}_[a-z0-9_]+")


def _discover() -> tuple[dict[str, Rule], list[Check], list[Check]]:
    rules: dict[str, Rule] = {}
    checks: list[Check] = []
    doc_checks: list[Check] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not _MODULE.fullmatch(info.name):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        rule = mod.RULE
        if info.name != rule.module or rule.code in rules:
            raise ImportError(f"policies/lint/rules/{info.name}.py declares {rule.code} {rule.name}: "
                              f"its module must be {rule.module}.py, one per code")
        rules[rule.code] = rule
        if hasattr(mod, "check"):
            checks.append(mod.check)
        if hasattr(mod, "check_document"):
            doc_checks.append(mod.check_document)
    return rules, checks, doc_checks


RULES, CHECKS, DOC_CHECKS = _discover()      # code -> Rule, in code order; the checks in code order

__all__ = ["RULES", "CHECKS", "DOC_CHECKS"]
