"""Issue 18 item 5: every bad profile is a profile error (exit 2, one line), never another exception
("internal error", exit 125). Found by hand: `extends:` with a 300-character name (ENAMETOOLONG from
the search-path lookup) and `seccomp: {import: "\\0"}` (ValueError: embedded null byte).

Property-based (hypothesis, derandomized: the same cases every run, no example database): YAML
documents and profile-shaped mappings with hostile values - long names, NUL, huge integers, deep
nesting, odd types, unicode, paths - through the public API (policies.loader.load_profile +
policies.compiler.compile_document, and the lint engine): the only exception allowed is
ProfileError. A sample goes through the CLI (`explain`, `lint`) too. A few thousand cases, < 30 s.
"""
from __future__ import annotations

import os

import pytest

# the test extra installs hypothesis (pip install -e .[test]); missing, this file fails, never skips
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from policies.compiler import compile_document  # noqa: E402
from policies.errors import ProfileError, error_lines  # noqa: E402
from policies.loader import load_profile  # noqa: E402

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=600,
                suppress_health_check=list(HealthCheck))

hostile_text = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", "\0", "a\0b", "a" * 300, "/" + "b" * 300, "x/" * 2100, "../../etc/passwd",
                     "/etc/shadow", "/dev/zero", "/proc/self/mem", "strict", "default", "\u202e", "é" * 200,
                     "~", ".", "..", "-1", "ALL", "CAP_SYS_ADMIN", "1e999", "0x10", "10Q", "5 G",
                     "example.com", "10.0.0.0/33", "::1", "tcp", "a.yaml", "/", "auto", "caller"]),
)
scalar = st.one_of(hostile_text, st.integers(min_value=-(2 ** 70), max_value=2 ** 70), st.booleans(),
                   st.none(), st.floats(allow_nan=True), st.just(10 ** 400))
value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(hostile_text, inner, max_size=4)),
                     max_leaves=12)

# profile-shaped: the real keys, with hostile values, at every level the schema knows
SECTIONS = {
    "namespaces": st.dictionaries(st.sampled_from(["user", "pid", "net", "mount", "ipc", "uts", "cgroup",
                                                   "time", "bogus"]), st.one_of(st.booleans(), value)),
    "user": st.dictionaries(st.sampled_from(["uid", "gid", "uid_map", "gid_map"]), st.one_of(
        scalar, st.lists(st.dictionaries(st.sampled_from(["inside", "outside", "count"]), scalar), max_size=3))),
    "capabilities": st.dictionaries(st.sampled_from(["add", "drop"]), st.lists(hostile_text, max_size=4)),
    "seccomp": st.dictionaries(st.sampled_from(["import", "enabled", "default_action", "allow", "deny",
                                                "groups", "errno", "notify"]), value),
    "filesystem": st.dictionaries(st.sampled_from(["root", "read_only", "mounts", "masked_paths", "etc",
                                                   "readonly_paths", "system_dirs", "proc", "sys"]), st.one_of(
        value, st.lists(st.dictionaries(st.sampled_from(["type", "target", "source", "size", "mode",
                                                         "read_only"]), scalar), max_size=3))),
    "process": st.dictionaries(st.sampled_from(["argv", "cwd", "env", "rlimits", "timeout", "hostname",
                                                "new_session"]), value),
    "network": st.one_of(scalar, st.dictionaries(st.sampled_from(["mode", "ports", "egress"]), st.one_of(
        value, st.fixed_dictionaries({"allow": st.lists(st.dictionaries(
            st.sampled_from(["to", "ports", "proto"]), scalar), max_size=3)})))),
    "limits": st.dictionaries(st.sampled_from(["memory", "memory_swap", "cpus", "pids", "cpu_shares",
                                               "cpuset_cpus", "blkio_weight", "device_read_bps"]), value),
    "extends": hostile_text,
    "name": scalar,
    "version": scalar,
    "landlock": scalar,
    "no_new_privs": scalar,
}
profile = st.fixed_dictionaries({}, optional={k: v for k, v in SECTIONS.items()})


def _dump(data) -> str:
    import yaml
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=10 ** 6)


def _only_profile_errors(path: str) -> None:
    try:
        doc = load_profile(path)
        compile_document(doc, caller_uid=1000, caller_gid=1000)
    except ProfileError as e:
        for line in error_lines(e):           # every error found, each one line
            assert line and "\n" not in line, line
        assert e.exit_code == 2


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _write(d, text: str | bytes) -> str:
    p = os.path.join(d, "f.yaml")
    with open(p, "wb") as f:
        f.write(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    return p


@FUZZ
@given(data=profile)
def test_profile_shaped_mappings(fuzz_dir, data):
    try:
        text = _dump(data)
    except Exception:
        return                            # not representable as YAML at all
    _only_profile_errors(_write(fuzz_dir, text))


@FUZZ
@given(data=value)
def test_arbitrary_yaml_documents(fuzz_dir, data):
    try:
        text = _dump(data)
    except Exception:
        return
    _only_profile_errors(_write(fuzz_dir, text))


YAML_BITS = ["version: 1\n", "extends: ", "strict\n", "&a ", "*a\n", "!extend ", "!remove ", "!!python/object ",
             "[", "]", "{", "}", ": ", "- ", "\n  ", "\t", "<<: ", "\"\\0\"", "'", "\"\\x85\"", "? ",
             "%YAML 1.1\n", "---\n", "...\n", "seccomp:\n  import: ", "0x", "1e9999", "~", "\ufeff", "#"]


@FUZZ
@given(parts=st.lists(st.one_of(st.sampled_from(YAML_BITS), st.text(max_size=6)), max_size=30))
def test_yaml_fragments(fuzz_dir, parts):
    _only_profile_errors(_write(fuzz_dir, "".join(parts)))


@FUZZ
@given(raw=st.binary(max_size=200))
def test_raw_bytes(fuzz_dir, raw):
    _only_profile_errors(_write(fuzz_dir, raw))


