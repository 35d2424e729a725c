"""The architecture contract (issue 21): `lint-imports` checks the import-linter contracts of
pyproject.toml [tool.importlinter] - sandbox above policies and audit, policies and audit import
neither sandbox nor each other, nothing but the CLI imports the CLI, mechanisms never import a
front-end, no import cycles, ctypes only in sandbox._sys. Reads source files only: no root, no kernel.

The second test proves each contract can fail: the same contracts against a small tree that breaks
every one of them must report every one broken."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(cwd: Path, config: Path) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"import-linter is not installed beside {sys.executable}: pip install -e '.[test]'")
    # --no-cache: no .import_linter_cache/ left in the tree
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", str(config)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_the_tree_keeps_every_contract():
    r = lint_imports(ROOT, ROOT / "pyproject.toml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Contracts: {len(contracts())} kept, 0 broken." in r.stdout, r.stdout


BREAKING_TREE = {
    "sandbox/__init__.py": "",
    "sandbox/_sys.py": "import ctypes\n",
    "sandbox/cli.py": "import sandbox.api\n",
    "sandbox/api.py": "import policies.rules\n",
    "sandbox/pytest_plugin.py": "import sandbox.api\n",
    "sandbox/mech.py": "import sandbox.cli\nimport sandbox.api\n",        # cli-on-top, front-ends
    "sandbox/ring_a.py": "import sandbox.ring_b\n",                       # acyclic
    "sandbox/ring_b.py": "import sandbox.ring_a\n",
    "policies/__init__.py": "",
    "policies/rules.py": "import audit.log\n",                            # layers (policies -> audit)
    "audit/__init__.py": "",
    "audit/log.py": "import ctypes\nimport sandbox.mech\n",               # ctypes, layers (audit -> sandbox)
}


def test_each_contract_fails_on_a_tree_that_breaks_it(tmp_path):
    tree = dict(BREAKING_TREE)
    for c in contracts():         # every module a contract names exists (import-linter insists)
        for key in ("protected_modules", "allowed_importers", "source_modules", "ancestors"):
            for name in c.get(key, ()):
                rel = name.replace(".", "/") + ".py"
                if "*" not in name and rel not in tree and name.replace(".", "/") + "/__init__.py" not in tree:
                    tree[rel] = ""
    for rel, text in tree.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    config = tmp_path / "pyproject.toml"
    config.write_text((ROOT / "pyproject.toml").read_text())
    r = lint_imports(tmp_path, config)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"Contracts: 0 kept, {len(contracts())} broken." in r.stdout, r.stdout
