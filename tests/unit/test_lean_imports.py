"""The launch path's imports made lazy (docs/performance.md, "Where ~75 ms go"): what stands in for
a module until it is used behaves as the module once used. Each check runs in a fresh interpreter
(`python -I -S`, as the entry script), since pytest itself has imported them all."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])


def _run(code: str) -> None:
    r = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path.append({ROOT!r})\n" + code],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_plan_leaves_inspect_unloaded_until_used():
    _run("""
import policies.plan, dataclasses
assert type(sys.modules["inspect"]).__name__ == "_LazyModule", sys.modules["inspect"]
assert "ast" not in sys.modules and "dis" not in sys.modules and "tokenize" not in sys.modules
import inspect                                     # an import binds the stand-in, loads nothing
assert "ast" not in sys.modules
assert str(inspect.signature(len)) == "(obj, /)"   # the first use loads the real module
assert type(sys.modules["inspect"]).__name__ == "module" and "ast" in sys.modules
from inspect import isclass, cleandoc              # and every form of import works afterwards
assert isclass(int) and dataclasses.inspect.isclass(int) and cleandoc(" a\\n b") == "a\\nb"

@dataclasses.dataclass
class NoDoc:                                       # dataclass() writes its docstring with inspect
    x: int
assert NoDoc.__doc__ == "NoDoc(x: int)", NoDoc.__doc__
""")


def test_a_class_without_docstring_loads_inspect_through_the_stand_in():
    _run("""
import policies.plan, dataclasses
@dataclasses.dataclass
class NoDoc:
    x: int
assert NoDoc.__doc__ == "NoDoc(x: int)", NoDoc.__doc__
import inspect
assert inspect.isclass(NoDoc) and type(sys.modules["inspect"]).__name__ == "module"
""")


def test_inspect_already_imported_is_left_alone():
    _run("""
import inspect
real = sys.modules["inspect"]
import policies.plan
assert sys.modules["inspect"] is real
""")


def test_the_reclaimer_runs_when_owner_records_exist(tmp_path, monkeypatch):
    """sandbox.cli.main skips importing sandbox.store.reclaim when <state dir>/owners has no record
    (only the reclaimer's `.lock`, or no directory): it asks _owner_records."""
    from sandbox import cli
    monkeypatch.setenv("PYSANDBOX_STATE_DIR", str(tmp_path))
    assert cli._owner_records() is False                    # no owners/ yet
    (tmp_path / "owners").mkdir()
    (tmp_path / "owners" / ".lock").write_text("")
    assert cli._owner_records() is False
    (tmp_path / "owners" / "abc123.4242.77").write_text("{}")
    assert cli._owner_records() is True
