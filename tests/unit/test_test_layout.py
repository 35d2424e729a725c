"""The test tree has no packages (no __init__.py: rootdir-relative imports, conftest on sys.path),
so two test modules with one base name in different directories make pytest stop with "import file
mismatch" for the whole run. Each test module's name is unique across tests/."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_test_module_names_are_unique():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
