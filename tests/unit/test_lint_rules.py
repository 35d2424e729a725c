"""The lint rules as modules (policies/lint/rules/psbNNN_<name>.py): the registry finds every one,
each rule's bad example reports exactly that rule (plus the companions it declares, `also`) and its
good example reports nothing, and the documents and fixtures generated from the modules
(`python -m policies.lint.ruledoc`) are the committed ones. Pure: no root, no kernel."""
from __future__ import annotations

import importlib
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from policies.lint import lint_paths, ruledoc
from policies.lint import rules as rules_pkg
from policies.lint.rules import CHECKS, DOC_CHECKS, RULES

ROOT = Path(ruledoc.ROOT)
BASE = ROOT / ruledoc.FIXTURES / "base.yaml"
KERNEL = (6, 18)
ENGINE_RULES = {"PSB001", "PSB002", "PSB003", "PSB004", "PSB005"}    # reported by the engine itself


def _lint_example(tmp_path: Path, code: str, which: str):
    """Lint the rule's example as its fixture directory holds it: CODE/WHICH.yaml beside ../base.yaml."""
    shutil.copy(BASE, tmp_path / "base.yaml")
    d = tmp_path / code
    d.mkdir()
    p = d / f"{which}.yaml"
    p.write_text(getattr(RULES[code], which))
    return p, lint_paths([str(p)], kernel=KERNEL, profile_path=[str(tmp_path)])


def test_the_registry_finds_every_rule_module():
    names = sorted(m.name for m in pkgutil.iter_modules(rules_pkg.__path__))
    assert names == sorted(r.module for r in RULES.values()), "a module in policies/lint/rules/ is not a rule"
    assert list(RULES) == sorted(RULES), "rules are registered in code order"
    for code, rule in RULES.items():
        mod = importlib.import_module(f"policies.lint.rules.{rule.module}")
        assert mod.RULE is rule and rule.code == code
        assert mod.__doc__.startswith(f"{code} {rule.name}: "), mod.__name__
        for field in ("summary", "rationale", "bad", "good", "fix"):
            assert getattr(rule, field).strip(), f"{code}: no {field}"
        assert set(rule.also) <= set(RULES) - {code}, code
        has = [hasattr(mod, "check"), hasattr(mod, "check_document")]
        assert sum(has) == (0 if code in ENGINE_RULES else 1), f"{code}: checks {has}"
    assert len(CHECKS) + len(DOC_CHECKS) == len(RULES) - len(ENGINE_RULES)


@pytest.mark.parametrize("code", sorted(RULES))
def test_bad_example_reports_exactly_its_rule(code, tmp_path):
    p, r = _lint_example(tmp_path, code, "bad")
    rule = RULES[code]
    assert {f.code for f in r.active} == {code, *rule.also}, [(f.code, f.message) for f in r.active]
    marked = [i + 1 for i, ln in enumerate(rule.bad.splitlines()) if f"# expect: {code}" in ln]
    hits = [f for f in r.active if f.code == code]
    if marked:
        assert any(f.file == str(p.resolve()) and f.line in marked for f in hits), \
            (marked, [(f.file, f.line) for f in hits])


@pytest.mark.parametrize("code", sorted(RULES))
def test_good_example_reports_nothing(code, tmp_path):
    _, r = _lint_example(tmp_path, code, "good")
    assert r.active == [], [(f.code, f.message) for f in r.active]


def test_generated_docs_and_fixtures_are_committed():
    assert ruledoc.stale(ROOT) == [], "run `python -m policies.lint.ruledoc` and commit the result"


def test_ruledoc_check_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "policies.lint.ruledoc", "--check"], cwd=tmp_path,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run([sys.executable, "-m", "policies.lint.ruledoc", "--bogus"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_page_has_every_section_in_order():
    for rule in RULES.values():
        text = ruledoc.render(rule)
        heads = re.findall(r"^## (\w+)", text, re.M)
        assert heads == ["Rationale", "Bad", "Good", "Fix"], (rule.code, heads)
        assert "# expect:" not in text, rule.code


def test_a_stale_page_is_found(tmp_path):
    for rel in ("docs/rules", "tests/lint_fixtures"):
        shutil.copytree(ROOT / rel, tmp_path / rel)
    shutil.copy(ROOT / "docs/lint.md", tmp_path / "docs/lint.md")
    assert ruledoc.stale(tmp_path) == []
    (tmp_path / "docs/rules/PSB101.md").write_text("# PSB101 edited by hand\n")
    (tmp_path / "docs/rules/PSB999.md").write_text("# PSB999 no such rule\n")
    (tmp_path / "tests/lint_fixtures/PSB102/bad.yaml").unlink()
    assert ruledoc.stale(tmp_path) == ["docs/rules/PSB101.md", "tests/lint_fixtures/PSB102/bad.yaml",
                                       "docs/rules/PSB999.md"]
