"""pytest plugin (entry point `pytest11: pysandbox`): the `pysandbox` fixture.

    def test_mount_is_denied(pysandbox):
        r = pysandbox.py("import ctypes; print(ctypes.CDLL(None).mount(b'x', b'/tmp', b'tmpfs', 0, None))")
        assert r.exit_code == 0 and r.stdout.strip() == "-1"
        assert r.denied("mount")                       # recorded by the sandbox's audit path

    def test_bind_80(pysandbox):
        code = "import socket; socket.socket().bind(('127.0.0.1', 80))"
        assert pysandbox.py(code).exit_code != 0                              # strict: no capability
        assert pysandbox.py(code, cap_add=["NET_BIND_SERVICE"]).exit_code == 0

`pysandbox.run(argv, profile=..., input=..., timeout=..., env=..., **overrides)` returns a
`sandbox.api.RunResult` (exit_code, stdout, stderr as str, events, denied(name), denials).
Overrides use the Python names of the CLI flags (cap_add, cap_drop, volumes, tmpfs, read_only, env,
workdir, hostname, network, timeout, memory, cpus, pids_limit, ulimits, security_opt, user, ...).
Each (profile, overrides) pair is compiled once per test session and launched per call.

`pysandbox.as_user(NAME)` runs the same calls as another (unprivileged) user through a worker
process (`python -m sandbox.api`): rootless sandboxes. Needs root to switch users.

Options: `--pysandbox-profile NAME` / ini `pysandbox_profile` (default profile, `strict`).

`denied()` needs the audit path: the profile must record seccomp denials (`seccomp.notify_denials:
true`, as `strict` does), and the kernel seccomp user notification (or the /dev/kmsg fallback).
Capability refusals (EPERM from the kernel without CAP_X) are not seccomp denials: assert on the
exit code / output for those.
"""
from __future__ import annotations

import base64
import json
import os
import pwd
import subprocess
import sys
import threading
from typing import Optional

import pytest

_CACHE: dict = {}
_LOCK = threading.Lock()
HOST_PYTHON = "/usr/bin/python3"


def _key(profile, overrides):
    def freeze(v):
        if isinstance(v, dict):
            return tuple(sorted((k, freeze(x)) for k, x in v.items()))
        if isinstance(v, (list, tuple, set)):
            return tuple(freeze(x) for x in v)
        return v
    return (profile, freeze(overrides))


class PySandbox:
    """What the `pysandbox` fixture gives a test."""

    def __init__(self, profile: str = "strict", user: Optional[str] = None):
        self.profile = profile
        self.user = user

    def sandbox(self, profile: Optional[str] = None, **overrides):
        """The compiled `sandbox.api.Sandbox` for (profile, overrides), cached for the session."""
        from sandbox.api import Sandbox
        key = _key(profile or self.profile, overrides)
        with _LOCK:
            sb = _CACHE.get(key)
            if sb is None:
                sb = _CACHE[key] = Sandbox(profile or self.profile, **overrides)
        return sb

    def run(self, argv, *, profile: Optional[str] = None, input=None, timeout: Optional[float] = 60,
            env=None, text: bool = True, **overrides):
        if self.user:
            return self._run_as(argv, profile or self.profile, overrides, input, timeout, env, text)
        return self.sandbox(profile, **overrides).run(list(argv), input=input, timeout=timeout, env=env, text=text)

    def sh(self, script: str, **kw):
        return self.run(["/bin/sh", "-c", script], **kw)

    def py(self, code: str, **kw):
        """Run Python code with the host's /usr/bin/python3 inside the sandbox."""
        return self.run([HOST_PYTHON, "-c", code], **kw)

    def as_user(self, user: str) -> "PySandbox":
        return PySandbox(self.profile, user)

    def _run_as(self, argv, profile, overrides, input, timeout, env, text):
        from sandbox.api import RunResult, SandboxError
        pw = pwd.getpwnam(self.user)
        if isinstance(input, str):
            input = input.encode()
        req = {"profile": profile, "overrides": overrides, "argv": list(argv), "timeout": timeout, "env": env,
               "input": base64.b64encode(input).decode() if input is not None else None}
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        p = subprocess.run([sys.executable, "-m", "sandbox.api"], input=json.dumps(req), capture_output=True,
                           text=True, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], cwd="/tmp",
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": pw.pw_dir, "USER": self.user,
                                "LANG": "C.UTF-8", "PYTHONPATH": root},
                           timeout=(timeout or 60) + 30)
        try:
            d = json.loads(p.stdout)
        except ValueError:
            raise SandboxError(f"worker as {self.user} failed (exit {p.returncode}): {p.stderr[-2000:]}") from None
        if "error" in d:
            raise SandboxError(d["error"])
        out, err = base64.b64decode(d["stdout"]), base64.b64decode(d["stderr"])
        if text:
            out, err = out.decode(errors="replace"), err.decode(errors="replace")
        return RunResult(exit_code=d["exit_code"], stdout=out, stderr=err, events=d["events"],
                         duration=d["duration"], timed_out=d["timed_out"], signal=d["signal"],
                         message=d["message"], sandbox_id=d["sandbox_id"], argv=tuple(argv))


def pytest_addoption(parser):
    group = parser.getgroup("pysandbox")
    group.addoption("--pysandbox-profile", default=None, help="Default profile of the pysandbox fixture.")
    parser.addini("pysandbox_profile", "Default profile of the pysandbox fixture.", default="strict")


def pytest_configure(config):
    config.addinivalue_line("markers", "pysandbox(profile): default profile for the pysandbox fixture in this test")


@pytest.fixture
def pysandbox(request) -> PySandbox:
    """Run commands in real sandboxes and assert on exit code, output and denials."""
    profile = request.config.getoption("--pysandbox-profile") or request.config.getini("pysandbox_profile")
    m = request.node.get_closest_marker("pysandbox")
    if m is not None:
        profile = m.kwargs.get("profile") or (m.args[0] if m.args else profile)
    return PySandbox(profile or "strict")
