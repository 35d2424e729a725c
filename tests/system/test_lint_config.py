"""`[tool.pysandbox.lint]` in pyproject.toml (issue 19): paths, ignore, fail-on, threshold, found
from the current directory upwards; the command line overrides it; a bad table is one line with
file:line:col and exit 2, never a traceback, and nothing is linted then.

The project directory is a temp directory outside the work tree (lint reads files only: no
sandbox, so root alone is enough)."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import REPO

# a profile with two warnings (PSB401 no memory limit, PSB203 escape-class syscalls) and no error
PROFILE = (REPO / "profiles" / "default.yaml").read_text()


@pytest.fixture
def project(shared_tmp):
    (shared_tmp / "sandbox").mkdir()
    (shared_tmp / "sandbox" / "app.yaml").write_text(PROFILE)
    (shared_tmp / "sub" / "deeper").mkdir(parents=True)

    def write(table: str):
        (shared_tmp / "pyproject.toml").write_text('[project]\nname = "app"\n\n' + table)
    return shared_tmp, write


def _lint(root_runner, cwd, *args):
    r = root_runner("lint", "--format", "json", *args, cwd=str(cwd))
    assert "Traceback" not in r.stderr, r.stderr
    return r


def test_settings_apply_from_a_subdirectory(root_runner, project):
    d, write = project
    write('[tool.pysandbox.lint]\npaths = ["sandbox"]\nfail-on = "warning"\n')
    r = _lint(root_runner, d / "sub" / "deeper")
    assert r.returncode == 1, r                       # two warnings, fail-on warning from the file
    doc = json.loads(r.stdout)
    assert doc["summary"]["fail_on"] == "warning"
    assert [os.path.basename(p["file"]) for p in doc["profiles"]] == ["app.yaml"]
    # the command line overrides the file
    r = _lint(root_runner, d / "sub" / "deeper", "--fail-on", "error")
    assert r.returncode == 0 and json.loads(r.stdout)["summary"]["fail_on"] == "error", r


def test_ignore_and_threshold(root_runner, project):
    d, write = project
    write('[tool.pysandbox.lint]\npaths = ["sandbox"]\nfail-on = "warning"\nignore = ["PSB401", "psb203"]\n')
    r = _lint(root_runner, d)
    assert r.returncode == 0, r                       # both warnings ignored
    doc = json.loads(r.stdout)
    ignored = {f["code"] for f in doc["findings"] if f.get("suppressed")}
    assert {"PSB401", "PSB203"} <= ignored            # kept, marked suppressed, not dropped
    # --ignore replaces the file's list: PSB203 counts again
    r = _lint(root_runner, d, "--ignore", "PSB401")
    assert r.returncode == 1, r
    # threshold from the file (default.yaml scores 3.6): above it fails, the CLI's wins
    write('[tool.pysandbox.lint]\npaths = ["sandbox"]\nthreshold = 1.0\n')
    assert _lint(root_runner, d).returncode == 1
    assert _lint(root_runner, d, "--threshold", "9.5").returncode == 0
    # --no-config: the file is not read (no ./profiles here: a usage error)
    r = root_runner("lint", "--no-config", cwd=str(d))
    assert r.returncode == 2 and "no ./profiles directory" in r.stderr


@pytest.mark.parametrize("table,says", [
    ('[tool.pysandbox.lint]\npaths = ["sandbox"]\ntreshold = 3\n', ":6:1: [tool.pysandbox.lint]: unknown key 'treshold'"),
    ('[tool.pysandbox.lint]\nignore = ["PSB999"]\n', ":5:1: [tool.pysandbox.lint] ignore: unknown rule 'PSB999'"),
    ('[tool.pysandbox.lint]\nfail-on = "fatal"\n', ":5:1: [tool.pysandbox.lint] fail-on: expected one of"),
    ('[tool.pysandbox.lint]\nthreshold = 11\n', ":5:1: [tool.pysandbox.lint] threshold: expected a number"),
    ('[tool.pysandbox.lint]\npaths = "x" \nthreshold = true\n', "threshold: expected a number"),
    ('[tool.pysandbox.lint]\npaths = [1]\n', "paths: expected a list of non-empty strings"),
    ('[tool.pysandbox.lint]\npaths = [\n', "invalid TOML"),
    ('[tool.pysandbox.lint]\nx = "\x00"\n', "invalid TOML"),
])
def test_bad_table_is_one_line_exit_2(root_runner, project, table, says):
    d, write = project
    write(table)
    r = root_runner("lint", cwd=str(d))
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(d / "pyproject.toml") in lines[0] and says in lines[0], r.stderr
    assert r.stdout == ""                             # nothing linted


def test_paths_stay_inside_the_project(root_runner, project):
    """A pyproject.toml that came with the code cannot point lint outside its project directory
    (absolute, `..`, or through a symlink); a path inside still works (the other side)."""
    d, write = project
    os.symlink("/etc", d / "etc-link")
    for bad in ('"/etc/shadow"', '"../../etc/passwd"', '"etc-link/passwd"'):
        write(f'[tool.pysandbox.lint]\npaths = [{bad}]\n')
        r = root_runner("lint", cwd=str(d))
        assert r.returncode == 2 and "resolves outside the project directory" in r.stderr, (bad, r)
        assert ":5:1:" in r.stderr and "root:" not in r.stderr + r.stdout
    write('[tool.pysandbox.lint]\npaths = ["./sandbox/../sandbox/app.yaml"]\nfail-on = "error"\n')
    r = root_runner("lint", cwd=str(d))
    assert r.returncode == 0, r


def test_oversized_pyproject_is_refused(root_runner, project):
    d, write = project
    write("[tool.pysandbox.lint]\n" + "# padding\n" * 120_000)     # > 1 MiB
    r = root_runner("lint", cwd=str(d))
    assert r.returncode == 2 and "larger than 1048576 bytes" in r.stderr, r
    # a pyproject.toml without the table changes nothing: ./profiles is the default again
    write("")
    shutil.copytree(d / "sandbox", d / "profiles")
    r = root_runner("lint", cwd=str(d))
    assert r.returncode == 0, r
