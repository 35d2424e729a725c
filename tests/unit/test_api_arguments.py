"""The Python API's argument checks (issue: sweep): bad values raised deep inside (the JSON
encoder, the compiler's comparisons) or were silently misread; now each is refused before anything
is launched, as docs/api.md says — a bad override or profile as SandboxError with the CLI's line, a
bad run() argument as TypeError/ValueError. Nothing here launches a sandbox (no root, no kernel):
every case raises before the launch server is asked."""
from __future__ import annotations

import math

import pytest

from sandbox.api import Sandbox, SandboxError


@pytest.fixture(scope="module")
def sb():
    return Sandbox("strict")


@pytest.mark.parametrize("kw, message", [
    ({"timeout": float("nan")}, "--timeout nan: must be a finite number of seconds > 0"),
    ({"timeout": math.inf}, "--timeout inf: must be a finite number of seconds > 0"),
    ({"timeout": "abc"}, "--timeout 'abc': must be a finite number of seconds > 0"),
    ({"timeout": 0}, "--timeout 0: must be a finite number of seconds > 0"),
    ({"pids_limit": "abc"}, "--pids-limit: 'abc' is not a valid integer"),
    ({"cpu_shares": 1.5}, "--cpu-shares: 1.5 is not a valid integer"),
    ({"blkio_weight": True}, "--blkio-weight: True is not a valid integer"),
])
def test_bad_override_value_is_sandbox_error(kw, message):
    with pytest.raises(SandboxError) as e:
        Sandbox("strict", **kw)
    assert str(e.value) == message


def test_int_override_as_string_is_taken_as_the_cli_takes_it():
    assert Sandbox("strict", pids_limit="64").plan.limits.pids == 64


def test_non_iterable_list_override_is_type_error():
    with pytest.raises(TypeError, match=r"Sandbox\(\): ports must be a str or a list of str, not int"):
        Sandbox("strict", ports=8080)


def test_unusable_audit_log_is_sandbox_error(tmp_path):
    with pytest.raises(SandboxError, match=r"^audit log .*: Is a directory$"):
        Sandbox("strict", audit_log=str(tmp_path))


@pytest.mark.parametrize("args, kw, exc, message", [
    ("/bin/true", {}, TypeError, "argv must be a list of str"),
    (["/bin/cat"], {"input": 5}, TypeError, "input must be bytes or str, not int"),
    (["/bin/true"], {"timeout": float("nan")}, ValueError, "timeout must be a finite number of seconds > 0"),
    (["/bin/true"], {"timeout": -1}, ValueError, "timeout must be a finite number of seconds > 0"),
    (["/bin/true"], {"timeout": "5"}, TypeError, "timeout must be a number of seconds, not str"),
    (["/bin/true"], {"env": ["A=1"]}, TypeError, "env must be a mapping"),
])
def test_bad_run_argument_raises_before_launch(sb, args, kw, exc, message):
    with pytest.raises(exc, match=message):
        sb.run(args, **kw)


@pytest.mark.parametrize("request_text", ["not json", "[1]", '{"argv": "/bin/true"}', '{"argv": [], "overrides": [1]}'])
def test_worker_bad_request_is_one_json_error(request_text):
    """`python -m sandbox.api` (the pytest plugin's as_user worker) answered a bad request with a
    traceback; now with {"error": ...}, before any launch."""
    import json
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "sandbox.api"], input=request_text, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p
    assert list(json.loads(p.stdout)) == ["error"], p
