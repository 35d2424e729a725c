"""docs/security.md maps each control to the tests that prove it: every test it names must exist
(a file, and where a test is named, a function of that name in it), so that the threat model
cannot point at a test that was renamed or removed. Pure: reads files only."""
from __future__ import annotations

import fnmatch
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "security.md"
_TOKEN = re.compile(r"`((?:tests/[\w/]+\.py)?(?:::[\w*\[\]-]+)?)`")


def _functions(path: Path) -> set:
    return set(re.findall(r"^\s*(?:async\s+)?def (test_\w+)", path.read_text(), re.M))


def references():
    for line in DOC.read_text().splitlines():
        if not line.startswith("|"):
            continue
        last = None
        for tok in _TOKEN.findall(line):
            if not tok:
                continue
            file, _, name = tok.partition("::")
            if file:
                last = file
            elif last is None:
                raise AssertionError(f"{tok!r} names no file in: {line[:120]}")
            yield (file or last), name.split("[")[0] or None


def test_every_test_the_threat_model_names_exists():
    refs = list(references())
    assert len(refs) > 60, "the controls table lost its test references"
    missing = []
    for file, name in refs:
        path = REPO / file
        if not path.is_file():
            missing.append(file)
            continue
        if name and not fnmatch.filter(_functions(path), name):
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"


def test_every_security_regression_test_is_in_the_threat_model():
    """Each file of tests/security/ (one per hole) is named by the threat model."""
    named = {f for f, _ in references()}
    files = {str(p.relative_to(REPO)) for p in (REPO / "tests" / "security").glob("test_*.py")}
    assert files - named == set(), f"tests/security/ files the threat model does not name: {sorted(files - named)}"
