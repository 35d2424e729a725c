"""The CLI's client of the launch server (sandbox/server/lean.py): its message round-trips, it
agrees with the launcher's constants it mirrors (it may not import them: a served run imports no
launcher), and it stays lean (C modules only: `socket`, `signal`, `json` or `pickle` cost ~10 ms
each, docs/performance.md)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent


def test_the_constants_lean_mirrors_are_the_same():
    from sandbox import launcher
    from sandbox.server import lean
    assert lean.FORWARDED == launcher.FORWARDED
    assert lean.SOCK_DIR == "server" and lean.INSTALL == str(REPO)


def test_a_run_message_round_trips_and_bad_ones_are_refused():
    from sandbox.server import lean
    env = ((b"A", b"1=2"), (b"B\xff", b""), (b"HOME", b"/root"))
    msg = lean.encode(["--profile", "strict", "-e", "X=\udcff"], ["/bin/sh", "-c", "echo ''"], "/tmp/d ir",
                      env, 0o22, ((1, 2), (-1, -1)), "/opt/x")
    f = lean.decode(msg)
    assert f == {"umask": 0o22, "cwd": "/tmp/d ir", "install": "/opt/x",
                 "options": ["--profile", "strict", "-e", "X=\udcff"], "cmd": ["/bin/sh", "-c", "echo ''"],
                 "environ": {"A": "1=2", "B\udcff": "", "HOME": "/root"}, "rlimits": ((1, 2), (-1, -1))}
    for bad in (b"", b"PSBCLI2\0" + msg[8:], msg + b"\0x", msg.replace(b"\x003\x00A=", b"\x009\x00A="),
                msg.replace(b"B\xff=", b"B\xff")):
        with pytest.raises((ValueError, StopIteration)):
            lean.decode(bad)


def test_lean_imports_no_launcher_nor_heavy_module():
    r = subprocess.run([sys.executable, "-I", "-S", "-c",
                        f"import sys; sys.path.append({str(REPO)!r}); import sandbox.cli, sandbox.server.lean\n"
                        "print(sorted(m for m in ('sandbox.launcher', 'sandbox.plancache', 'policies.plan', 'socket',"
                        " 'signal', 'json', 'pickle', 're', 'enum', 'threading', 'audit.events', 'typing')"
                        " if m in sys.modules))"],
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
