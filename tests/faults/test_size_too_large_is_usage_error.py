"""Issue 18 item 7: a size the kernel cannot hold (above 2**63 - 64 KiB: a cgroup reads anything
larger back as "unlimited") is a usage error when the flag or profile is parsed — exit 2, one line
naming the flag (or file:line:col) — not a launch failure (125, "reads back ...") after cgroups were
created. The legitimate sizes still work, up to the largest one."""
from __future__ import annotations

import pytest

from policies.units import MAX_BYTES, parse_bytes


@pytest.mark.parametrize("flag,value", [("--memory", "99999999999g"), ("--memory", "8192p"),
                                        ("--memory-swap", "99999999999999999999"),
                                        ("--memory-reservation", "9223372036854775807"),
                                        ("--memory", "8191p")])      # fits, but twice it (memory+swap) does not
def test_too_large_size_is_refused_at_parse_time(runner, flag, value):
    opts = [flag, value] if flag == "--memory" else ["--memory", "64m", flag, value]
    r = runner("run", "--profile", "strict", *opts, "--", "/bin/true")
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "too large" in lines[0], r
    assert lines[0].startswith("pysandbox: --memory"), r       # names the flag
    assert "reads back" not in r.stderr


def test_too_large_size_in_a_profile_names_file_line_col(runner, tmp_profile):
    path = tmp_profile("extends: strict\nlimits:\n  memory: 99999999999g\n", name="faults-big.yaml")
    r = runner("run", "--profile", path, "--", "/bin/true")
    assert r.returncode == 2, r
    line = r.stderr.strip()
    assert "\n" not in line and f"{path}:3:" in line and "too large" in line, r


def test_legitimate_sizes_still_work(runner):
    assert runner("run", "--profile", "strict", "--memory", "64m", "--", "/bin/true").returncode == 0
    # the largest memory limit with an unlimited memory+swap: accepted and enforced as written
    r = runner("run", "--profile", "strict", "--memory", "4095p", "--memory-swap", "-1", "--", "/bin/true")
    assert r.returncode == 0, r


def test_parse_bounds():
    assert parse_bytes(str(MAX_BYTES)) == MAX_BYTES
    assert parse_bytes("1.5m") == 3 << 19
    assert parse_bytes("-1") == -1
    for bad in (MAX_BYTES + 1, str(MAX_BYTES + 1), "8192p", "9" * 400):
        with pytest.raises(ValueError):
            parse_bytes(bad)
