"""`pysandbox lint`: every rule against a failing and a passing fixture, locations through
`extends`, inline suppressions, the exposure score, text/JSON/SARIF output (SARIF validated against
the shipped OASIS schema), exit codes of the real CLI, and the shipped profiles.

Pure policy code: nothing here needs root or touches the kernel (the CLI runs as a subprocess)."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest

from policies.compiler import compile_profile
from policies.lint import RULES, lint_paths
from policies.lint import output as O
from policies.lint import suppress as S
from policies.lint.engine import LINT_CALLER_GID, LINT_CALLER_UID

from conftest import PYSANDBOX, REPO as ROOT  # noqa: E402  (the installed entry point: missing, the CLI tests fail)

FIX = ROOT / "tests" / "lint_fixtures"
KERNEL = (6, 18)
SARIF_SCHEMA = json.loads((ROOT / "policies" / "schema" / "sarif-2.1.0.json").read_text())


def lint(*paths):
    # the fixtures' base.yaml is extended by path from tmp_path: allowed explicitly (--profile-path)
    return lint_paths([str(p) for p in paths], kernel=KERNEL, profile_path=[str(FIX)])


def cli(*args, cwd=ROOT):
    cmd = [PYSANDBOX]
    if args and args[0] == "lint":      # the fixtures extend ../base.yaml: allowed explicitly
        args = ("lint", "--profile-path", FIX) + tuple(args[1:])
    return subprocess.run(cmd + [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=120)


def expected_lines(path: Path, code: str) -> list[int]:
    return [i + 1 for i, ln in enumerate(path.read_text().splitlines()) if f"# expect: {code}" in ln]


# ------------------------------------------------------------------------------------------
# every rule: a failing and a passing fixture, a documentation page
# ------------------------------------------------------------------------------------------

def test_base_fixture_is_clean():
    r = lint(FIX / "base.yaml")
    assert r.findings == [], [(f.code, f.message) for f in r.findings]
    assert r.reports[0].score.score <= 0.5


@pytest.mark.parametrize("code", sorted(RULES))
def test_rule_bad_fixture_fails(code):
    bad = FIX / code / "bad.yaml"
    r = lint(bad)
    hits = [f for f in r.findings if f.code == code]
    assert hits, f"{code} not reported for {bad}: {[(f.code, f.message) for f in r.findings]}"
    for f in hits:
        assert f.severity in ("error", "warning", "info")
        assert f.message and "\n" not in f.message
        assert f.hint and "\n" not in f.hint
        assert f.line >= 1 and f.col >= 1
        assert f.file == str(bad.resolve()), "the finding must point at the fixture that introduced it"
    lines = expected_lines(bad, code)
    if lines:
        assert any(f.line in lines for f in hits), (lines, [(f.line, f.col) for f in hits])


@pytest.mark.parametrize("code", sorted(RULES))
def test_rule_good_fixture_passes(code):
    good = FIX / code / "good.yaml"
    r = lint(good)
    assert not [f for f in r.active if f.code == code], [(f.code, f.message) for f in r.findings]


@pytest.mark.parametrize("code", sorted(RULES))
def test_rule_has_doc_page(code):
    page = ROOT / "docs" / "rules" / f"{code}.md"
    text = page.read_text()
    assert text.startswith(f"# {code} {RULES[code].name}")
    for section in ("## Rationale", "## Bad", "## Good"):
        assert section in text


def test_rule_docs_listed_in_lint_md():
    text = (ROOT / "docs" / "lint.md").read_text()
    for code in RULES:
        assert f"rules/{code}.md" in text, code


# ------------------------------------------------------------------------------------------
# locations survive extends; a parent's finding seen through two children is one finding
# ------------------------------------------------------------------------------------------

def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def test_location_points_at_the_file_that_introduced_the_node(tmp_path):
    base = (FIX / "base.yaml").read_text()
    parent = _write(tmp_path / "parent.yaml", base.replace("network: none", "network: host"))
    child = _write(tmp_path / "child.yaml", "version: 1\nextends: parent.yaml\ncapabilities:\n"
                                             "  add: [BPF]\n")
    r = lint(child)
    net = [f for f in r.findings if f.code == "PSB501"]
    cap = [f for f in r.findings if f.code == "PSB101"]
    assert net and net[0].file == str(parent.resolve())
    assert net[0].line == base.splitlines().index("network: none") + 1
    assert cap and cap[0].file == str(child.resolve()) and (cap[0].line, cap[0].col) == (4, 9)
    assert net[0].profile == str(child.resolve())


def test_inherited_finding_is_reported_once(tmp_path):
    base = (FIX / "base.yaml").read_text()
    _write(tmp_path / "parent.yaml", base.replace("no_new_privs: true", "no_new_privs: false"))
    for n in ("a", "b"):
        _write(tmp_path / f"{n}.yaml", "version: 1\nextends: parent.yaml\n")
    r = lint(tmp_path)
    assert len(r.reports) == 3
    nnp = [f for f in r.findings if f.code == "PSB102"]
    assert len(nnp) == 1 and nnp[0].file.endswith("parent.yaml")
    # each profile still carries it in its own report
    assert all(any(f.code == "PSB102" for f in rep.findings) for rep in r.reports)


def test_lint_judges_the_same_plan_explain_shows():
    p = ROOT / "profiles" / "examples" / "web-server.yaml"
    rep = lint(p).reports[0]
    plan = compile_profile(str(p), caller_uid=LINT_CALLER_UID, caller_gid=LINT_CALLER_GID, kernel=KERNEL).plan
    assert rep.plan == plan


def test_extends_missing_profile_by_name(tmp_path):
    p = _write(tmp_path / "x.yaml", "version: 1\nextends: no-such-profile-name\n")
    r = lint(p)
    assert [(f.code, f.line, f.col) for f in r.findings] == [("PSB002", 2, 1)]


def test_broken_yaml_is_psb001_with_position(tmp_path):
    p = _write(tmp_path / "x.yaml", "version: 1\nnamespaces: {user: true\nno_new_privs: true\n")
    r = lint(p)
    assert len(r.findings) == 1 and r.findings[0].code == "PSB001"
    assert "invalid YAML" in r.findings[0].message and r.findings[0].line >= 2


def test_all_schema_errors_reported_at_their_nodes(tmp_path):
    p = _write(tmp_path / "x.yaml", "version: 1\nextends: %s\nno_new_privs: maybe\nlimits:\n  pids: 0\n"
               % (FIX / "base.yaml"))
    r = lint(p)
    got = sorted((f.code, f.line) for f in r.findings)
    assert got == [("PSB001", 3), ("PSB001", 5)], got


def test_unknown_syscall_is_one_precise_finding(tmp_path):
    p = _write(tmp_path / "x.yaml", "version: 1\nextends: %s\nseccomp:\n  allow: !extend [mkdirr]\n"
               % (FIX / "base.yaml"))
    r = lint(p)
    assert [(f.code, f.severity, f.line, f.col) for f in r.findings] == [("PSB207", "error", 4, 19)]


def test_capabilities_without_drop_all_keeps_everything(tmp_path):
    base = (FIX / "base.yaml").read_text()
    p = _write(tmp_path / "x.yaml", base.replace("  drop: [ALL]\n", ""))
    f = [f for f in lint(p).findings if f.code == "PSB101"]
    assert f and "SYS_ADMIN" in f[0].message


def test_escape_through_group_points_at_group_and_names_it(tmp_path):
    p = _write(tmp_path / "x.yaml", "version: 1\nextends: %s\nseccomp:\n  allow: !extend ['@mount']\n"
               % (FIX / "base.yaml"))
    f = [f for f in lint(p).findings if f.code == "PSB203"]
    assert f and (f[0].line, f[0].col) == (4, 19) and "mount" in f[0].message and "@mount" in f[0].hint


def test_namespace_creating_clone_is_an_escape(tmp_path):
    p = _write(tmp_path / "x.yaml", "version: 1\nextends: %s\nseccomp:\n  allow: !extend [clone]\n"
               % (FIX / "base.yaml"))
    f = [f for f in lint(p).findings if f.code == "PSB203"]
    assert f and "clone(CLONE_NEW*)" in f[0].message and f[0].severity == "error"
    ok = _write(tmp_path / "y.yaml", "version: 1\nextends: %s\nseccomp:\n  allow: !extend\n"
                "    - {names: [clone], args: [{index: 0, op: masked_eq, mask: 0x7e020000, value: 0}]}\n"
                % (FIX / "base.yaml"))
    assert not [f for f in lint(ok).findings if f.code == "PSB203"]


# ------------------------------------------------------------------------------------------
# inline suppressions
# ------------------------------------------------------------------------------------------

def test_suppression_parse_forms():
    text = ("a: 1  # pysandbox: ignore[PSB101] needed\n"
            "# pysandbox: ignore[psb203, PSB501] - CI runner\n"
            "# another comment\n"
            "b: 2\n"
            "c: 3  # pysandbox: ignore[PSB101]\n"
            "d: '# not pysandbox at all'\n")
    s = S.parse(text, "f.yaml", known_codes=tuple(RULES))
    assert [(x.line, x.target, x.codes, x.reason) for x in s] == [
        (1, 1, ("PSB101",), "needed"),
        (2, 4, ("PSB203", "PSB501"), "CI runner"),
        (5, 5, ("PSB101",), ""),
    ]
    assert not s[2].valid


def test_suppression_trailing_and_above_and_without_reason(tmp_path):
    b = str(FIX / "base.yaml")
    p = _write(tmp_path / "x.yaml",
               f"version: 1\nextends: {b}\n"
               "no_new_privs: false   # pysandbox: ignore[PSB102] legacy setuid helper, tracked in #12\n"
               "# pysandbox: ignore[PSB501] talks to the host's loopback-only database\n"
               "network: host\n"
               "namespaces:\n"
               "  ipc: false   # pysandbox: ignore[PSB502]\n")
    r = lint(p)
    by = {f.code: f for f in r.findings}
    assert by["PSB102"].suppressed.startswith("legacy setuid helper")
    assert by["PSB501"].suppressed.startswith("talks to")
    assert by["PSB502"].suppressed is None              # no reason: not honoured ...
    assert by["PSB003"].line == 7 and by["PSB003"].severity == "error"   # ... and reported
    assert r.failed("error")                             # PSB003 is an error
    assert {f.code for f in r.active} == {"PSB502", "PSB003"}


def test_suppressed_findings_do_not_fail_the_run(tmp_path):
    b = str(FIX / "base.yaml")
    p = _write(tmp_path / "x.yaml", f"version: 1\nextends: {b}\n"
               "network: host  # pysandbox: ignore[PSB501] integration test against a host service\n")
    r = lint(p)
    assert not r.failed("info")
    assert [f.code for f in r.suppressed] == ["PSB501"]


# ------------------------------------------------------------------------------------------
# the exposure score
# ------------------------------------------------------------------------------------------

def test_score_rows_add_up_and_range(tmp_path):
    for rep in lint(ROOT / "profiles").reports:
        e = rep.score
        assert 0.0 <= e.score <= 10.0
        assert abs(sum(r.share for r in e.rows) - e.score) < 0.06
        assert {r.name for r in e.rows} >= {"UserNamespace", "Capabilities", "SeccompFilter", "Network"}


def test_wide_open_profile_scores_unsafe(tmp_path):
    p = _write(tmp_path / "open.yaml", "version: 1\nnamespaces: {user: false, pid: false, ipc: false, uts: false, "
               "cgroup: false, net: false}\ncapabilities: {add: [ALL]}\nno_new_privs: false\n"
               "seccomp: {enabled: false}\nnetwork: host\nfilesystem:\n  read_only: false\n"
               "  mounts: [{type: bind, source: /, target: /host, read_only: false}]\n")
    rep = lint(p).reports[0]
    assert rep.score.score >= 9.0 and rep.score.level == "UNSAFE"
    codes = {f.code for f in rep.findings}
    assert {"PSB101", "PSB102", "PSB103", "PSB201", "PSB301", "PSB302", "PSB501", "PSB502",
            "PSB401", "PSB402", "PSB303", "PSB304"} <= codes


def test_strict_scores_best_of_shipped_profiles():
    reps = {Path(r.file).stem: r for r in lint(ROOT / "profiles").reports}
    assert "strict" in reps and len(reps) >= 3
    strict = reps["strict"].score.score
    for name, r in reps.items():
        if name != "strict":
            assert r.score.score > strict, (name, r.score.score, strict)


def test_suppression_does_not_change_the_score(tmp_path):
    b = str(FIX / "base.yaml")
    a = _write(tmp_path / "a.yaml", f"version: 1\nextends: {b}\nnetwork: host\n")
    s = _write(tmp_path / "s.yaml", f"version: 1\nextends: {b}\nnetwork: host  # pysandbox: ignore[PSB501] ok\n")
    ra, rs = lint(a).reports[0], lint(s).reports[0]
    assert ra.score.score == rs.score.score > lint(FIX / "base.yaml").reports[0].score.score


# ------------------------------------------------------------------------------------------
# output formats
# ------------------------------------------------------------------------------------------

def _sarif_validator():
    cls = jsonschema.validators.validator_for(SARIF_SCHEMA)
    cls.check_schema(SARIF_SCHEMA)
    return cls(SARIF_SCHEMA, format_checker=cls.FORMAT_CHECKER)


def test_shipped_sarif_schema_is_the_oasis_2_1_0_schema():
    assert SARIF_SCHEMA["title"] == "Static Analysis Results Format (SARIF) Version 2.1.0 JSON Schema"
    assert SARIF_SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert len(SARIF_SCHEMA["definitions"]) == 52 and "suppression" in SARIF_SCHEMA["definitions"]


def test_sarif_validates_against_schema(tmp_path):
    b = str(FIX / "base.yaml")
    _write(tmp_path / "sup.yaml", f"version: 1\nextends: {b}\nnetwork: host  # pysandbox: ignore[PSB501] ok here\n")
    paths = [FIX / c / "bad.yaml" for c in ("PSB101", "PSB203", "PSB303")] + [tmp_path]
    r = lint(*paths)
    doc = json.loads(O.render_sarif(r, base=str(ROOT)))
    _sarif_validator().validate(doc)
    run = doc["runs"][0]
    assert doc["version"] == "2.1.0"
    assert [x["id"] for x in run["tool"]["driver"]["rules"]] == sorted(RULES)
    res = run["results"]
    assert {x["ruleId"] for x in res} >= {"PSB101", "PSB203", "PSB303", "PSB501"}
    one = next(x for x in res if x["ruleId"] == "PSB101")
    loc = one["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"] == {"uri": "tests/lint_fixtures/PSB101/bad.yaml", "uriBaseId": "%SRCROOT%"}
    assert loc["region"]["startLine"] == 4 and one["level"] == "error"
    sup = next(x for x in res if x["ruleId"] == "PSB501")
    assert sup["suppressions"] == [{"kind": "inSource", "justification": "ok here"}]
    # a broken document really fails the schema (the validation is not vacuous)
    bad = json.loads(json.dumps(doc))
    bad["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        _sarif_validator().validate(bad)


def test_json_output_shape():
    r = lint(FIX / "PSB102" / "bad.yaml")
    d = json.loads(O.render_json(r))
    assert d["summary"]["error"] == 1 and d["summary"]["failed"] is True
    f = d["findings"][0]
    assert set(f) >= {"code", "severity", "message", "hint", "file", "line", "column"}
    assert d["profiles"][0]["score"]["exposure"] == r.reports[0].score.score


def test_text_output_has_breakdown_for_one_profile():
    txt = O.render_text(lint(ROOT / "profiles" / "strict.yaml"))
    assert "NAME" in txt and "EXPOSURE" in txt and "Overall exposure level for strict" in txt


# ------------------------------------------------------------------------------------------
# the CLI (subprocess): exit codes 0 / 1 / 2
# ------------------------------------------------------------------------------------------

def test_cli_clean_profile_exits_0():
    p = cli("lint", FIX / "base.yaml")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 errors" in p.stdout


def test_cli_error_finding_exits_1_with_file_line_col():
    p = cli("lint", FIX / "PSB101" / "bad.yaml")
    assert p.returncode == 1
    assert re.search(r"tests/lint_fixtures/PSB101/bad\.yaml:4:27: error PSB101 ", p.stdout), p.stdout
    assert "hint:" in p.stdout


def test_cli_fail_on_levels():
    w = FIX / "PSB301" / "bad.yaml"                       # a warning only
    assert cli("lint", w).returncode == 0
    assert cli("lint", "--fail-on", "warning", w).returncode == 1
    i = FIX / "PSB208" / "bad.yaml"                       # an info only
    assert cli("lint", "--fail-on", "warning", i).returncode == 0
    assert cli("lint", "--fail-on", "info", i).returncode == 1


def test_cli_threshold():
    p = FIX / "PSB501" / "good.yaml"
    assert cli("lint", "--threshold", "5", p).returncode == 0
    w = FIX / "PSB401" / "bad.yaml"                       # a warning; its exposure is above 0.1
    r = cli("lint", "--threshold", "0.1", w)
    assert r.returncode == 1 and "above the threshold" in r.stdout


@pytest.mark.parametrize("args", [
    ("lint", "/nonexistent/profiles"),
    ("lint", "--format", "xml", "tests/lint_fixtures/base.yaml"),
    ("lint", "--fail-on", "fatal", "tests/lint_fixtures/base.yaml"),
    ("lint", "--threshold", "11", "tests/lint_fixtures/base.yaml"),
    ("lint", "--threshold", "abc", "tests/lint_fixtures/base.yaml"),
    ("lint", "--no-such-option"),
])
def test_cli_usage_errors_exit_2_one_line(args):
    p = cli(*args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) <= 3


def test_cli_sarif_to_file_validates(tmp_path):
    out = tmp_path / "lint.sarif"
    p = cli("lint", "--format", "sarif", "-o", out, FIX / "PSB203" / "bad.yaml", FIX / "PSB501" / "bad.yaml")
    assert p.returncode == 1
    assert "-> " in p.stderr and p.stdout == ""
    _sarif_validator().validate(json.loads(out.read_text()))


def test_cli_json_is_parseable():
    p = cli("lint", "--format", "json", FIX / "PSB204" / "bad.yaml")
    d = json.loads(p.stdout)
    assert p.returncode == 0 and d["summary"]["warning"] >= 1


def test_cli_default_path_is_profiles(tmp_path):
    (tmp_path / "profiles" / "sub").mkdir(parents=True)
    (tmp_path / "profiles" / "sub" / "p.yaml").write_text((FIX / "base.yaml").read_text())
    p = cli("lint", cwd=tmp_path)
    assert p.returncode == 0 and "profiles/sub/p.yaml" in p.stdout
    empty = tmp_path / "e"
    empty.mkdir()
    assert cli("lint", cwd=empty).returncode == 2


def test_cli_list_rules():
    p = cli("lint", "--list-rules")
    assert p.returncode == 0
    for code in RULES:
        assert code in p.stdout


def test_cli_lint_by_profile_name():
    p = cli("lint", "--format", "json", "strict")
    d = json.loads(p.stdout)
    assert d["profiles"][0]["name"] == "strict"


# ------------------------------------------------------------------------------------------
# the project's own profiles (CI runs `pysandbox lint profiles/` before pytest)
# ------------------------------------------------------------------------------------------

def test_shipped_profiles_lint_clean_at_error():
    p = cli("lint", "profiles/")
    assert p.returncode == 0, p.stdout


def test_pre_commit_hook_definition():
    import yaml
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    h = next(h for h in hooks if h["id"] == "pysandbox-lint")
    assert h["entry"].startswith("pysandbox lint") and h["language"] == "python"
    assert re.search(h["files"], "profiles/strict.yaml")


