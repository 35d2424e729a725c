"""`pysandbox lint` as root and as the unprivileged test user gives the same findings (needs root
to switch users). The rest of lint is pure and tested in tests/unit/test_lint.py."""
from __future__ import annotations

import json
import os

import pytest

from conftest import REPO

FIX = REPO / "tests" / "lint_fixtures"


def test_same_findings_as_root_and_as_unprivileged_user():
    """Lint is pure and compiles for a fixed unprivileged caller: who runs it does not matter."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run as the unprivileged test user")
    from conftest import TEST_USER, Runner
    target = str(FIX / "PSB303" / "bad.yaml")
    out = {}
    for name, runner in (("root", Runner(None)), ("user", Runner(TEST_USER))):
        r = runner("lint", "--format", "json", "--profile-path", str(FIX), target, cwd="/tmp")
        assert r.returncode == 0, r            # PSB303 is a warning
        d = json.loads(r.stdout)
        out[name] = ([(f["code"], f["line"], f["column"]) for f in d["findings"]],
                     d["profiles"][0]["score"]["exposure"])
    assert out["root"] == out["user"] and out["root"][0] == [("PSB303", 4, 3)]
