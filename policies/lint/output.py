"""Render a LintResult as text, JSON or SARIF 2.1.0."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from . import model as M
from .engine import LintResult, relpath
from .ruledoc import render
from .rules import RULES

TOOL_NAME = "pysandbox-lint"
TOOL_VERSION = "0.1.0"
SARIF_SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schema" / "sarif-2.1.0.json"


def _counts(findings) -> dict:
    c = {s: 0 for s in M.SEVERITIES}
    for f in findings:
        c[f.severity] += 1
    return c


# --- text ----------------------------------------------------------------------------------

def breakdown_table(rep: M.ProfileReport, color: bool = False) -> str:
    e = rep.score
    rows = sorted(e.rows, key=lambda r: (-r.share, r.name))
    w1 = max(len(r.name) for r in rows)
    w2 = max(len(r.description) for r in rows)
    lines = [f"  {'':2}{'NAME':<{w1}}  {'DESCRIPTION':<{w2}}  EXPOSURE"]
    for r in rows:
        mark = "✓" if r.ok else "✗"
        if color:
            mark = f"\x1b[32m{mark}\x1b[0m" if r.ok else f"\x1b[31m{mark}\x1b[0m"
        lines.append(f"  {mark} {r.name:<{w1}}  {r.description:<{w2}}  {r.share:.2f}" if not r.ok
                     else f"  {mark} {r.name:<{w1}}  {r.description}")
    lines.append(f"  → Overall exposure level for {rep.name}: {e.score:.1f} {e.level}")
    return "\n".join(lines)


def render_text(result: LintResult, *, breakdown: Optional[bool] = None, color: bool = False,
                show_suppressed: bool = False) -> str:
    out = []
    sev_color = {"error": "\x1b[31m", "warning": "\x1b[33m", "info": "\x1b[36m"}
    for f in result.findings:
        if f.suppressed is not None and not show_suppressed:
            continue
        sev = f"{sev_color[f.severity]}{f.severity}\x1b[0m" if color else f.severity
        sup = f" (suppressed: {f.suppressed})" if f.suppressed is not None else ""
        out.append(f"{relpath(f.file)}:{f.line}:{f.col}: {sev} {f.code} {f.message}{sup}")
        out.append(f"    hint: {f.hint}")
    scored = [r for r in result.reports if r.score is not None]
    if breakdown is None:
        breakdown = len(result.reports) == 1
    if scored:
        if out:
            out.append("")
        if breakdown:
            for r in scored:
                out.append(f"{relpath(r.file)}:")
                out.append(breakdown_table(r, color))
                out.append("")
        else:
            w = max(len(relpath(r.file)) for r in scored)
            out.append(f"{'PROFILE':<{w}}  EXPOSURE  LEVEL")
            for r in sorted(scored, key=lambda r: r.score.score):
                out.append(f"{relpath(r.file):<{w}}  {r.score.score:>8.1f}  {r.score.level}")
            out.append("")
    c = _counts(result.active)
    n_sup = len(result.suppressed)
    out.append(f"{len(result.reports)} profile{'s' if len(result.reports) != 1 else ''}: "
               f"{c['error']} error{'s' if c['error'] != 1 else ''}, {c['warning']} warning"
               f"{'s' if c['warning'] != 1 else ''}, {c['info']} info"
               + (f", {n_sup} suppressed" if n_sup else ""))
    return "\n".join(out)


# --- json ----------------------------------------------------------------------------------

def render_json(result: LintResult, *, fail_on: str = "error", threshold: Optional[float] = None) -> str:
    def fd(f):
        d = f.to_dict()
        d["file"] = relpath(f.file)
        d["profile"] = relpath(f.profile)
        return d
    doc = {
        "version": 1,
        "tool": {"name": TOOL_NAME, "version": TOOL_VERSION},
        "profiles": [{
            "file": relpath(r.file), "name": r.name, "extends_chain": [relpath(x) for x in r.files],
            "score": r.score.to_dict() if r.score else None,
            "findings": [fd(f) for f in r.findings],
        } for r in result.reports],
        "findings": [fd(f) for f in result.findings],
        "summary": {**_counts(result.active), "suppressed": len(result.suppressed),
                    "fail_on": fail_on, "threshold": threshold,
                    "failed": result.failed(fail_on, threshold)},
    }
    return json.dumps(doc, indent=2)


# --- sarif ---------------------------------------------------------------------------------

def _uri(file: str, base: str) -> tuple[str, Optional[str]]:
    rel = relpath(file, base)
    if rel != file and not os.path.isabs(rel):
        return rel.replace(os.sep, "/"), "%SRCROOT%"
    return Path(file).resolve().as_uri(), None


def render_sarif(result: LintResult, *, base: Optional[str] = None) -> str:
    base = base or os.getcwd()
    codes = sorted(RULES)
    index = {c: i for i, c in enumerate(codes)}
    rules = []
    for c in codes:
        r = RULES[c]
        d = {"id": c, "name": r.name, "shortDescription": {"text": r.summary},
             "fullDescription": {"text": r.summary},
             "defaultConfiguration": {"level": M.SARIF_LEVEL[r.severity]},
             "properties": {"tags": ["security", "pysandbox"], "precision": "high",
                            "problem.severity": r.severity}}
        h = render(r)           # the rule's page (docs/rules/CODE.md is generated from the same module)
        d["help"] = {"text": h, "markdown": h}
        rules.append(d)
    results = []
    for f in result.findings:
        uri, base_id = _uri(f.file, base)
        art = {"uri": uri}
        if base_id:
            art["uriBaseId"] = base_id
        res = {
            "ruleId": f.code, "ruleIndex": index[f.code], "level": M.SARIF_LEVEL[f.severity],
            "message": {"text": f"{f.message}. Fix: {f.hint}"},
            "locations": [{"physicalLocation": {"artifactLocation": art,
                                                "region": {"startLine": f.line, "startColumn": f.col}}}],
            "partialFingerprints": {"pysandboxLint/v1": f"{f.code}:{uri}:{f.message}"},
            "properties": {"profile": relpath(f.profile, base)},
        }
        if f.suppressed is not None:
            res["suppressions"] = [{"kind": "inSource", "justification": f.suppressed}]
        results.append(res)
    run = {
        "tool": {"driver": {"name": TOOL_NAME, "version": TOOL_VERSION, "semanticVersion": TOOL_VERSION,
                            "rules": rules}},
        "originalUriBaseIds": {"%SRCROOT%": {"uri": Path(base).resolve().as_uri() + "/"}},
        "invocations": [{"executionSuccessful": True}],
        "results": results,
        "columnKind": "unicodeCodePoints",
        "properties": {"exposure": {relpath(r.file, base): (r.score.score if r.score else None)
                                    for r in result.reports}},
    }
    return json.dumps({"$schema": SARIF_SCHEMA_URI, "version": "2.1.0", "runs": [run]}, indent=2)


def rules_table() -> str:
    w = max(len(r.name) for r in RULES.values())
    lines = [f"{'CODE':<7} {'SEVERITY':<8} {'NAME':<{w}}  SUMMARY"]
    for c in sorted(RULES):
        r = RULES[c]
        lines.append(f"{c:<7} {r.severity:<8} {r.name:<{w}}  {r.summary}")
    return "\n".join(lines)
