"""The CLI's side of the launch server (sandbox/server/local.py) agrees with the server's and the
launcher's constants it mirrors (it may not import them: a cached run imports no launcher), and
stays lean."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def test_the_constants_local_mirrors_are_the_same():
    from sandbox import launcher
    from sandbox.server import local, loop
    assert local.FORWARDED == launcher.FORWARDED
    assert (local.NOT_HERE, local.NEED_PLAN) == (loop.NOT_HERE, loop.NEED_PLAN)
    assert local.SOCK_DIR == "server"


def test_local_imports_no_launcher_nor_heavy_library():
    r = subprocess.run([sys.executable, "-I", "-S", "-c",
                        f"import sys; sys.path.append({str(REPO)!r}); import sandbox.server.local, sandbox.cli.runner\n"
                        "print(sorted(m for m in ('sandbox.launcher', 'hashlib', 'click', 'yaml', 'jsonschema',"
                        " 'seccomp', 'pyseccomp', 'typing') if m in sys.modules))"],
                       capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_build_env_takes_the_given_environment():
    """The server builds the program's environment from its client's (env.allow), not its own."""
    import dataclasses
    from policies import plan as P
    from sandbox.launcher import build_env
    proc = dataclasses.replace(P.Process(argv=("/bin/true",)), env_allow=("TERM", "LC_*"), env_set=(("A", "1"),))
    env = build_env(type("Plan", (), {"process": proc})(), {"TERM": "t", "LC_ALL": "C", "HOME": "/h"})
    assert env["TERM"] == "t" and env["LC_ALL"] == "C" and "HOME" not in env and env["A"] == "1"
