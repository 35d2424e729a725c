"""Hole 11: the API's launch server put the caller's sys.path ahead of the standard library, and
the `pysandbox` entry's `python -IS` was never proven.

A caller's module path is not the launch server's: an application that adds a plugin directory
to the front of sys.path (or runs from a directory holding a `json.py`, or sets PYTHONPATH /
PYTHONUSERBASE for its children) must not get that directory's `pickle.py`, `json.py` or `sandbox/`
imported by the server that clones every sandbox (it runs as the caller, with its privileges, and
forks every PID 1). The server runs `python -I -S` with the standard library first and then only
the directories this package and its dependencies were imported from (sandbox.server.client.module_roots).
The same for the CLI: the venv's `pysandbox` script (sandbox/entry.py) runs `python -IS`.

Each hostile module only writes a marker file when imported (harmless if the hole is there);
every test shows both sides: no marker, and the sandbox ran (exit 0, its output).
Run as root and as the unprivileged user (runner fixture).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, _ensure_delegation

PY = sys.executable        # the venv's interpreter
# modules the launch server or the CLI import (stdlib, dependencies, this package)
HOSTILE = ("json", "pickle", "select", "socket", "struct", "signal", "yaml", "click", "prctl",
           "jsonschema", "pyseccomp")


def _plant(d: Path, marker: Path) -> None:
    """Hostile modules in `d` that only append their name to `marker` when imported."""
    d.mkdir(parents=True, exist_ok=True)
    body = ("import sys\nwith open(%r, 'a') as f:\n    f.write(__name__ + ' ' + repr(sys.argv) + '\\n')\n"
            % str(marker))
    for m in HOSTILE:
        (d / f"{m}.py").write_text(body)
    (d / "sandbox").mkdir(exist_ok=True)
    (d / "sandbox" / "__init__.py").write_text(body)
    (d / "sandbox" / "server").mkdir(exist_ok=True)
    for m in ("__init__", "client", "protocol", "loop", "template", "pid1"):
        (d / "sandbox" / "server" / f"{m}.py").write_text(body)
    os.system(f"chmod -R a+rX {d}")


def _as(runner):
    if not runner.rootless:
        return {}
    _ensure_delegation(runner.uid, runner.gid)
    return dict(user=runner.uid, group=runner.gid, extra_groups=[])


def _marker(shared_tmp) -> Path:
    m = shared_tmp / "imported"
    # the marker's directory must be writable by the hostile code in either identity
    os.chmod(shared_tmp, 0o777)
    return m


CALLER = textwrap.dedent("""
    import os, sys
    from sandbox.api import Sandbox
    sb = Sandbox("strict")
    # after its own imports, the application puts an untrusted directory first on its module path
    # and sets the environment its children inherit
    sys.path.insert(0, {hostile!r})
    sys.path.append({repo!r})     # (so that the server could start even from the old, sys.path-derived path)
    os.environ["PYTHONPATH"] = {hostile!r}
    os.environ["PYTHONUSERBASE"] = {userbase!r}
    r = sb.run(["/bin/echo", "sandboxed-ok"])
    print(r.exit_code, r.stdout.decode().strip(), r.message)
""")


def test_launch_server_ignores_callers_module_path(runner, shared_tmp):
    marker = _marker(shared_tmp)
    hostile = shared_tmp / "plugins"
    userbase = shared_tmp / "userbase"
    _plant(hostile, marker)
    _plant(userbase / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages", marker)
    script = shared_tmp / "app" / "caller.py"
    script.parent.mkdir()
    script.write_text(CALLER.format(hostile=str(hostile), userbase=str(userbase), repo=str(REPO)))
    os.system(f"chmod -R a+rX {script.parent}")
    # the caller's working directory holds the same hostile modules
    p = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=120, cwd=str(hostile),
                       env=runner.env(), **_as(runner))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[:2] == ["0", "sandboxed-ok"], (p.stdout, p.stderr)
    assert not marker.exists(), f"hostile module imported: {marker.read_text()}"


def test_api_works_from_any_directory(runner, shared_tmp):
    """A new user's first try: `cd /tmp && python -c 'from sandbox.api import Sandbox; ...'` with the
    venv's python (an editable install: the package is found through its finder hook, which the
    server's `-S` does not run). Before: 'the launch server ended without a result'."""
    code = ("from sandbox.api import Sandbox; r = Sandbox('strict').run(['/bin/echo', 'from-tmp']); "
            "print(r.exit_code, r.stdout.decode().strip(), r.message)")
    p = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120, cwd="/tmp",
                       env=runner.env(), **_as(runner))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[:2] == ["0", "from-tmp"], (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr


def test_server_module_path_is_stdlib_first():
    """The derivation itself: the standard library stays first, then this package's root and the
    dependencies' directories, derived from the modules' files - not the caller's sys.path."""
    from sandbox.server import client
    import sysconfig
    roots = client.module_roots()
    assert str(REPO) in roots
    assert os.path.realpath(sysconfig.get_paths()["purelib"]) in roots      # prctl, pyseccomp
    sys.path.insert(0, "/nonexistent-pysbx-profiles")
    try:
        assert "/nonexistent-pysbx-profiles" not in client.module_roots()
    finally:
        sys.path.remove("/nonexistent-pysbx-profiles")
    assert "sys.path +=" in client.BOOT and "[:0]" not in client.BOOT


@pytest.mark.parametrize("miss", [False, True], ids=["cached", "compiled"])
def test_cli_entry_ignores_pythonpath_user_site_and_cwd(runner, shared_tmp, miss):
    """`pysandbox run` from a directory holding hostile modules, with PYTHONPATH and a user site
    holding them too: none is imported, on the plan cache's fast path or a full compilation
    (which imports yaml, jsonschema, click)."""
    marker = _marker(shared_tmp)
    hostile = shared_tmp / "cwd"
    userbase = shared_tmp / "userbase"
    _plant(hostile, marker)
    _plant(userbase / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages", marker)
    env = {"PYTHONPATH": str(hostile), "PYTHONUSERBASE": str(userbase), "PYTHONSTARTUP": str(hostile / "json.py")}
    opts = ("--hostname", f"prof-{os.urandom(4).hex()}") if miss else ()
    for _ in range(2):          # the second run of the same options takes the cached plan
        r = runner("run", "--profile", "strict", *opts, "--", "/bin/echo", "cli-ok", env=env, cwd=str(hostile))
        assert r.returncode == 0, r
        assert r.stdout.strip() == "cli-ok"
    assert not marker.exists(), f"hostile module imported: {marker.read_text()}"
    # the entry script (pysandbox-py; pysandbox is the C front, sandbox/cli/front.c) is the isolated one
    # (sandbox/entry.py), not pip's console script
    script = Path(sys.executable).parent / "pysandbox-py"
    first = script.read_text().splitlines()[0]
    assert first.endswith(" -IS"), first
    # and its module path: the standard library first, nothing of the environment or cwd
    p = subprocess.run([str(script), "run", "--profile", "strict", "--", "/bin/true"], capture_output=True,
                       env=dict(runner.env(), **env), cwd=str(hostile), text=True, timeout=60, **_as(runner))
    assert p.returncode == 0, p.stderr
    code = script.read_text().replace("from sandbox.cli import main\nmain()", "print(repr(sys.path))")
    out = subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True, text=True, env=env,
                         cwd=str(hostile), timeout=30).stdout
    path = eval(out)
    stdlib = os.path.dirname(os.__file__)
    assert path.index(stdlib) < path.index(str(REPO)), path
    assert not [p for p in path if p.startswith(str(shared_tmp)) or p in ("", ".")], path
