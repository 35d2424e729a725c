"""The CLI package's shape (issue 21): main knows the command modules, none imports main; every
command is there; the fast path's modules import no click, YAML, jsonschema or libseccomp.
No root, no kernel: the modules are parsed or imported, nothing is launched."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "sandbox" / "cli"

# every command `pysandbox --help` lists (a move that drops one fails here)
COMMANDS = {"audit", "build", "cgroups", "commit", "completion", "diff", "doctor", "exec", "explain", "export",
            "image", "inspect", "kill", "learn", "lint", "logs", "network", "pause", "profiles", "prune",
            "ps", "rm", "run", "server", "stats", "stop", "top", "unpause", "volume"}


def _py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def _imports(path: Path):
    """(level, module, names) of every import statement in the file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield 0, a.name, ()
        elif isinstance(node, ast.ImportFrom):
            yield node.level, node.module or "", tuple(a.name for a in node.names)


def test_command_modules_never_import_main():
    modules = [p for p in CLI.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert modules
    for p in modules:
        for level, mod, names in _imports(p):
            where = f"{p.relative_to(REPO)}: import {'.' * level}{mod} {names}"
            assert not (level == 0 and (mod == "sandbox.cli" or mod.startswith("sandbox.cli."))), where
            assert not (level == 0 and mod == "sandbox" and "cli" in names), where
            assert not (level == 1 and mod == ""
                        and set(names) - {p2.stem for p2 in CLI.glob("*.py")}), where   # `from . import main`
            assert not (level == 2 and mod == "" and "cli" in names), where


def test_every_command_is_registered():
    r = _py("from sandbox.cli import build, COMMAND_MODULES\n"
            "import importlib\n"
            "for m in COMMAND_MODULES: assert importlib.import_module('sandbox.cli.' + m).COMMANDS, m\n"
            "print(' '.join(sorted(build().commands)))")
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) == COMMANDS
    assert "warning" not in r.stderr


def test_fast_path_modules_are_lean():
    """What a cached `run` imports of the CLI (sandbox.cli, its runner) pulls in none of the
    heavy libraries: they would cost milliseconds on every run."""
    r = _py("import sys\nimport sandbox.cli, sandbox.cli.runner\n"
            "heavy = [m for m in ('click', 'yaml', 'jsonschema', 'seccomp', 'pyseccomp') if m in sys.modules]\n"
            "print(heavy)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_python_m_sandbox_cli_from_any_directory():
    r = subprocess.run([sys.executable, "-m", "sandbox.cli", "--version"], cwd="/", capture_output=True,
                       text=True, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("pysandbox, version ")
