"""policies/dockerfile.py (the parser, substitution) and sandbox/builder/ignore.py (.dockerignore):
pure functions, no kernel."""
from __future__ import annotations

import pytest

from policies import dockerfile as D
from sandbox.builder.ignore import Ignore, IgnoreError


def parse(text):
    return D.parse(text, "Dockerfile")


def test_instructions_continuations_comments_and_stages():
    df = parse("# syntax=docker/dockerfile:1\nARG BASE=alpine\nFROM $BASE AS Build\n"
               "RUN echo a \\\n  # a comment inside\n  && echo b\n"
               'CMD ["sh", "-c", "x"]\nfrom build\ncopy --from=build --chmod=644 a b /d/\n')
    assert [a.args for a in df.meta_args] == ["BASE=alpine"]
    s0, s1 = df.stages
    assert (s0.base, s0.name, s1.base, s1.name) == ("$BASE", "build", "build", None)
    run, cmd = s0.instructions
    assert run.cmd == "RUN" and run.args == "echo a   && echo b" and (run.line, run.col) == (4, 5)
    assert cmd.json == ["sh", "-c", "x"]
    cp = s1.instructions[0]
    assert cp.cmd == "COPY" and cp.flags == {"from": "build", "chmod": "644"} and cp.args == "a b /d/"


def test_escape_directive():
    df = parse("# escape=`\nFROM x\nRUN dir c:\\ `\n  && echo\n")
    assert df.stages[0].instructions[0].args == "dir c:\\   && echo"


@pytest.mark.parametrize("text,where,what", [
    ("FROM x\nHEALTHCHECK CMD true\n", ":2:1:", "not supported"),
    ("FROM x\nFOO bar\n", ":2:1:", "FOO"),
    ("RUN x\n", ":1:1:", "before the first FROM"),
    ("FROM x\nRUN --mount=type=cache true\n", ":2:5:", "--mount"),
    ("FROM x\nRUN <<EOF\nhi\nEOF\n", ":2:5:", "heredoc"),
    ("FROM x\nCOPY --chown a\n", ":2:6:", "needs a value"),
    ("FROM x\nENV A=${B:?err}\n", ":2:5:", "unsupported modifier"),
    ("FROM x\nENV A=\"open\n", ":2:5:", "unterminated"),
    ("FROM x\nSHELL /bin/bash -c\n", ":2:7:", "JSON form"),
    ("FROM x AS a\nFROM y AS a\n", ":2:", "duplicate stage"),
    ("", "Dockerfile", "no FROM"),
])
def test_errors_name_file_line_col(text, where, what):
    with pytest.raises(D.DockerfileError) as e:
        parse(text)
    assert where in str(e.value) and what in str(e.value) and str(e.value).startswith("Dockerfile")


def test_bounds():
    with pytest.raises(D.DockerfileError, match="larger than"):
        parse("FROM x\n" + "#" * (D.MAX_BYTES + 1))
    with pytest.raises(D.DockerfileError, match="line longer"):
        parse("FROM x\nRUN " + "a" * (D.MAX_LINE + 1))
    with pytest.raises(D.DockerfileError, match="joined by continuation"):
        parse("FROM x\nRUN a \\\n" + "b \\\n" * (D.MAX_JOINED + 1) + "c\n")
    with pytest.raises(D.DockerfileError, match="more than"):
        parse("FROM x\n" + "ENV A=1\n" * (D.MAX_INSTRUCTIONS + 1))
    with pytest.raises(D.DockerfileError, match="NUL"):
        parse("FROM x\0\n")
    big = {"A": "x" * (D.MAX_EXPANDED // 2 + 1)}
    with pytest.raises(D.DockerfileError, match="expands to more than"):
        D.words("$A$A", big)


def test_substitution_as_docker():
    env = {"A": "a", "E": "", "SP": "x y"}
    w = lambda t: D.words(t, env)          # noqa: E731
    assert w("$A ${A} ${A}b $Ab") == ["a", "a", "ab", ""][:3] + w("$Ab")
    assert w("$Ab") == []                  # $Ab is the variable Ab: unset -> no word
    assert w("${E:-def} ${A:-def} ${A:+alt} ${E:+alt}x") == ["def", "a", "alt", "x"]
    assert w("${NOPE:-${A}z}") == ["az"]
    assert w("'$A' \"$A b\" \\$A") == ["$A", "a b", "$A"]
    assert w('"$SP"') == ["x y"] and w("$SP") == ["x y"]
    assert w('""') == [""]
    assert D.expand("${A}/${E:-/usr}", env) == "a//usr"


def test_key_values():
    df = parse('FROM x\nENV A=1 B="two words" C=${A}\nENV LEGACY some  value\nLABEL "k 1"=v\n')
    env = {"A": "0"}
    ins = df.stages[0].instructions
    assert D.key_values(ins[0], env, "\\", "Dockerfile") == [("A", "1"), ("B", "two words"), ("C", "0")]
    assert D.key_values(ins[1], env, "\\", "Dockerfile") == [("LEGACY", "some  value")]      # whitespace kept
    assert D.key_values(ins[2], env, "\\", "Dockerfile") == [("k 1", "v")]


def test_dockerignore_rules():
    ig = Ignore("# c\n*.md\n!README.md\nbuild/**\n!build/keep\n/tmp\n**/*.pyc\ndocs/?.txt\n[ab].x\n")
    ex = ig.excluded
    assert ex("x.md") and not ex("README.md") and not ex("sub/x.md")      # anchored at the root
    assert ex("build/a/b") and not ex("build/keep")
    assert ex("tmp") and ex("tmp/deep/file")                             # a directory: its contents too
    assert ex("a.pyc") and ex("p/q/r.pyc")
    assert ex("docs/1.txt") and not ex("docs/12.txt")
    assert ex("a.x") and not ex("c.x")
    assert not Ignore("").excluded("anything")
    with pytest.raises(IgnoreError):
        Ignore("[abc\n")
    with pytest.raises(IgnoreError):
        Ignore("x\n" * 10_001)
