"""The launch sequence has no module-level switches: what a launch does differently is passed per
launch (sequence.LaunchHooks through launcher.Launch.hooks), never set on the module, where it would
change every later launch of the same process (a launch server, the API, a test run) and hide a
branch from someone reading sandbox/launch/sequence.py top to bottom. Static checks (AST), no kernel."""
from __future__ import annotations

import ast
import dataclasses
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEQUENCE = "sandbox.launch.sequence"
SCANNED = ("sandbox", "audit", "policies", "bench", "tests")


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, node: ast.ImportFrom, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_pkg else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _sequence_names(tree: ast.AST, module: str, is_pkg: bool) -> set:
    """Names under which this module holds sandbox.launch.sequence (module, alias)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == SEQUENCE and a.asname:
                    names.add(a.asname)
                elif a.name == SEQUENCE:
                    names.add(SEQUENCE)            # used as sandbox.launch.sequence.x
        elif isinstance(node, ast.ImportFrom):
            src = _resolve(module, node, is_pkg)
            for a in node.names:
                if f"{src}.{a.name}" == SEQUENCE:
                    names.add(a.asname or a.name)
    return names


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def assignments_to_sequence(source: str, module: str, is_pkg: bool = False) -> list:
    """(line, text) of every assignment to, deletion of or setattr on an attribute of the sequence
    module in `source`."""
    tree = ast.parse(source)
    names = _sequence_names(tree, module, is_pkg)
    if module == SEQUENCE:
        return []
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and _dotted(node.func) in ("setattr", "delattr", "monkeypatch.setattr"):
            if node.args and _dotted(node.args[0]) in names | {SEQUENCE}:
                found.append((node.lineno, ast.unparse(node)))
            elif node.args and isinstance(node.args[0], ast.Constant) and \
                    str(node.args[0].value).startswith(SEQUENCE + "."):
                found.append((node.lineno, ast.unparse(node)))
            continue
        stack = list(targets)
        while stack:
            t = stack.pop()
            if isinstance(t, (ast.Tuple, ast.List)):
                stack.extend(t.elts)
            elif isinstance(t, ast.Attribute) and _dotted(t.value) in names:
                found.append((node.lineno, ast.unparse(t)))
    return found


def test_no_module_assigns_to_sequence_attributes():
    offenders = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if ".venv" in path.parts:
                continue
            module = _module_name(path)
            for line, text in assignments_to_sequence(path.read_text(), module, path.name == "__init__.py"):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {text}")
    assert not offenders, "set per launch (sequence.LaunchHooks, Launch.hooks), not on the module:\n" + \
        "\n".join(offenders)


def test_sequence_has_no_global_statement_nor_mutable_switch():
    tree = ast.parse((ROOT / "sandbox/launch/sequence.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Global, ast.Nonlocal))]
    module_names = set()
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                module_names.add(_dotted(t))
    assert module_names <= {"PLAIN", "_seccomp"}, module_names


@pytest.mark.parametrize("source, module", [
    ("from ..launch import sequence\nsequence.spawn_inline = False\n", "sandbox.runtime.monitor"),
    ("from sandbox.launch import sequence as s\ns.before_program, x = f, 1\n", "tests.unit.x"),
    ("import sandbox.launch.sequence\nsandbox.launch.sequence.join_mount = True\n", "bench.x"),
    ("from . import sequence\nsetattr(sequence, 'pid1_pdeathsig', False)\n", "sandbox.launch.other"),
    ("def f(monkeypatch):\n    monkeypatch.setattr('sandbox.launch.sequence.spawn_inline', False)\n", "tests.x"),
])
def test_the_check_sees_each_form(source, module):
    """The checker itself, on made-up sources (simulated offenders: none of these is in the tree)."""
    assert assignments_to_sequence(source, module)


def test_the_check_leaves_other_modules_alone():
    assert not assignments_to_sequence("from . import wire\nwire.X = 1\nrun.hooks = h\n", "sandbox.launcher")


def test_plain_hooks_are_todays_launch():
    from sandbox.launch import sequence
    assert sequence.PLAIN == sequence.LaunchHooks(before_program=None, spawn_inline=True,
                                                  pid1_pdeathsig=True, join_mount=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sequence.PLAIN.spawn_inline = False        # noqa: the frozen dataclass refuses it
