"""Dockerfile parser (pure: no I/O beyond the text it is given) for `pysandbox build`.

The subset: FROM (image or `scratch`, `AS name`), RUN (shell and exec form), COPY/ADD (local
sources; --chown, --chmod, --from=stage), ENV, ARG, WORKDIR, USER, CMD, ENTRYPOINT, LABEL, EXPOSE,
SHELL; comments, the `# escape=` directive, line continuation, and variable substitution as
Docker does it ($VAR, ${VAR}, ${VAR:-word}, ${VAR:+word}, `\\$` literal; quotes in words).
Anything else is a `DockerfileError` naming file:line:col. Every input is bounded: text size,
line count and length, lines joined by continuation, instructions, stages, expansion size.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Optional

MAX_BYTES = 1 << 20            # the Dockerfile
MAX_LINES = 20_000
MAX_LINE = 64 * 1024           # one physical line
MAX_JOINED = 1000              # physical lines joined into one instruction
MAX_INSTRUCTIONS = 2000
MAX_STAGES = 64
MAX_EXPANDED = 256 * 1024      # one word after substitution

SUPPORTED = ("FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "CMD", "ENTRYPOINT",
             "LABEL", "EXPOSE", "SHELL")
KNOWN_UNSUPPORTED = ("ONBUILD", "HEALTHCHECK", "STOPSIGNAL", "VOLUME", "MAINTAINER")
_FLAGS = {"COPY": ("from", "chown", "chmod"), "ADD": ("chown", "chmod"), "FROM": (), "RUN": ()}
_SUBSTITUTED = ("FROM", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "LABEL", "EXPOSE")
_JSON_FORM = ("RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STAGE_RE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


class DockerfileError(Exception):
    """One line: `file:line:col: message` (exit 2)."""

    def __init__(self, msg: str, file: str = "Dockerfile", line: int = 0, col: int = 0):
        self.msg, self.file, self.line, self.col = msg, file, line, col
        where = f"{file}:{line}:{col}" if line else file
        super().__init__(f"{where}: {msg}")


@dataclass
class Instruction:
    cmd: str                       # upper case
    args: str                      # the raw argument text after the flags (continuations joined)
    line: int
    col: int                       # column of the arguments
    flags: dict = field(default_factory=dict)
    json: Optional[list] = None    # exec form, when the arguments are a JSON array of strings
    original: str = ""             # `CMD args` as written (history, cache key)


@dataclass
class Stage:
    base: str                      # unexpanded FROM argument
    name: Optional[str]
    index: int
    line: int
    col: int
    instructions: list = field(default_factory=list)


@dataclass
class Dockerfile:
    file: str
    escape: str
    meta_args: list                # ARG instructions before the first FROM
    stages: list


# --------------------------------------------------------------------------- physical -> logical lines

def parse(text, file: str = "Dockerfile") -> Dockerfile:
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise DockerfileError(f"larger than {MAX_BYTES} bytes", file)
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DockerfileError(f"not UTF-8 text (byte {e.start})", file) from None
    if len(text) > MAX_BYTES:
        raise DockerfileError(f"larger than {MAX_BYTES} bytes", file)
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\0" in text:
        raise DockerfileError("contains a NUL byte", file)
    lines = text.split("\n")
    if len(lines) > MAX_LINES:
        raise DockerfileError(f"more than {MAX_LINES} lines", file)
    escape = "\\"
    # parser directives: leading `# key=value` comments
    for i, raw in enumerate(lines):
        m = re.fullmatch(r"\s*#\s*([A-Za-z]+)\s*=\s*(\S*)\s*", raw.rstrip("\r"))
        if not m:
            break
        key = m.group(1).lower()
        if key == "escape":
            if m.group(2) not in ("\\", "`"):
                raise DockerfileError(f"invalid escape character {m.group(2)!r} (\\ or `)", file, i + 1, 1)
            escape = m.group(2)
        elif key not in ("syntax", "check"):
            break
    logical: list[tuple[int, int, str]] = []          # (line, col, text)
    cur: list[str] = []
    start = 0
    for i, raw in enumerate(lines):
        n = i + 1
        if len(raw) > MAX_LINE:
            raise DockerfileError(f"line longer than {MAX_LINE} characters", file, n, 1)
        line = raw.rstrip("\r")
        stripped = line.lstrip()
        if stripped.startswith("#"):
            continue                                   # comments, also inside a continuation
        if not cur and not stripped:
            continue
        if not cur:
            start = n
        body = line.rstrip()
        if body.endswith(escape):                     # Docker: the escape char, then only blanks
            cur.append(body[:-1])
            if len(cur) > MAX_JOINED:
                raise DockerfileError(f"more than {MAX_JOINED} lines joined by continuation", file, start, 1)
            continue
        cur.append(line)
        logical.append((start, 1 + len(cur[0]) - len(cur[0].lstrip()), "".join(cur)))
        cur = []
    if cur and "".join(cur).strip():
        logical.append((start, 1 + len(cur[0]) - len(cur[0].lstrip()), "".join(cur)))
    if len(logical) > MAX_INSTRUCTIONS:
        raise DockerfileError(f"more than {MAX_INSTRUCTIONS} instructions", file)
    df = Dockerfile(file=file, escape=escape, meta_args=[], stages=[])
    names: set = set()
    for ln, col, text_ in logical:
        ins = _instruction(text_.strip(), ln, col, file, escape)
        if ins.cmd == "FROM":
            if len(df.stages) >= MAX_STAGES:
                raise DockerfileError(f"more than {MAX_STAGES} stages", file, ln, col)
            words = ins.args.split()
            name = None
            if len(words) == 3 and words[1].lower() == "as":
                name = words[2].lower()
                if not _STAGE_RE.fullmatch(name):
                    raise DockerfileError(f"invalid stage name {words[2]!r}", file, ln, ins.col)
                if name in names:
                    raise DockerfileError(f"duplicate stage name {name!r}", file, ln, ins.col)
                names.add(name)
            elif len(words) != 1:
                raise DockerfileError("FROM takes IMAGE [AS NAME]", file, ln, ins.col)
            if ins.flags:
                raise DockerfileError(f"FROM --{next(iter(ins.flags))} is not supported", file, ln, col)
            df.stages.append(Stage(base=words[0], name=name, index=len(df.stages), line=ln, col=ins.col))
        elif not df.stages:
            if ins.cmd != "ARG":
                raise DockerfileError(f"{ins.cmd} before the first FROM (only ARG may come first)", file, ln, col)
            df.meta_args.append(ins)
        else:
            df.stages[-1].instructions.append(ins)
    if not df.stages:
        raise DockerfileError("no FROM instruction", file, 1, 1)
    return df


def _instruction(text: str, ln: int, col: int, file: str, escape: str) -> Instruction:
    m = re.match(r"(\S+)(\s*)", text)
    word = m.group(1)
    cmd = word.upper()
    acol = col + m.end()
    if cmd not in SUPPORTED:
        why = "is not supported by pysandbox build" if cmd in KNOWN_UNSUPPORTED or cmd.isalpha() else "is not an instruction"
        raise DockerfileError(f"{word} {why} (supported: {', '.join(SUPPORTED)})", file, ln, col)
    rest = text[m.end():]
    flags: dict = {}
    while rest.startswith("--"):
        fm = re.match(r"--([A-Za-z-]+)(?:=(\S*))?(\s*)", rest)
        if not fm:
            raise DockerfileError(f"malformed flag in {cmd}", file, ln, acol)
        key = fm.group(1).lower()
        if key not in _FLAGS.get(cmd, ()):
            raise DockerfileError(f"{cmd} --{key} is not supported", file, ln, acol)
        if fm.group(2) is None or fm.group(2) == "":
            raise DockerfileError(f"{cmd} --{key} needs a value (--{key}=VALUE)", file, ln, acol)
        if key in flags:
            raise DockerfileError(f"{cmd} --{key} given twice", file, ln, acol)
        flags[key] = fm.group(2)
        acol += fm.end()
        rest = rest[fm.end():]
    if re.search(r"<<-?[\"']?[A-Za-z_]", rest) and cmd in ("RUN", "COPY", "ADD"):
        raise DockerfileError(f"heredocs (<<) in {cmd} are not supported", file, ln, acol + rest.index("<<"))
    ins = Instruction(cmd=cmd, args=rest.strip(), line=ln, col=acol, flags=flags,
                      original=" ".join([cmd] + [f"--{k}={v}" for k, v in flags.items()] + [rest.strip()]).strip())
    if cmd in _JSON_FORM and ins.args.startswith("["):
        try:
            val = json.loads(ins.args)
        except ValueError:
            val = None
        if isinstance(val, list) and all(isinstance(v, str) for v in val):
            ins.json = val
    if not ins.args and cmd not in ("CMD", "ENTRYPOINT"):
        raise DockerfileError(f"{cmd} needs arguments", file, ln, acol)
    if cmd in _SUBSTITUTED and ins.json is None:
        words(ins.args, {}, escape, where=(file, ln, acol))   # syntax (quotes, ${...}) checked before any step runs
    if cmd == "SHELL" and not ins.json:
        raise DockerfileError('SHELL needs the JSON form: SHELL ["executable", "parameters"]', file, ln, acol)
    if cmd in ("COPY", "ADD") and ins.json is not None and len(ins.json) < 2:
        raise DockerfileError(f"{cmd} needs a source and a destination", file, ln, acol)
    return ins


# --------------------------------------------------------------------------- words and substitution

def words(text: str, env: dict, escape: str = "\\", *, where=("Dockerfile", 0, 0), expand: bool = True,
          split: bool = True) -> list[str]:
    """Split `text` into shell-like words (whitespace separated; '...' literal, "..." with
    substitution, escape char quoting the next one) with $VAR substitution from `env`."""
    out: list[str] = []
    cur: list[str] = []
    have = False
    i, n = 0, len(text)
    quote = None
    total = 0
    while i < n:
        c = text[i]
        if quote == "'":
            if c == "'":
                quote = None
            else:
                cur.append(c)
            i += 1
            continue
        if c == escape and i + 1 < n:
            nxt = text[i + 1]
            if quote == '"' and nxt not in ('"', escape, "$"):
                cur.append(c)
            cur.append(nxt)
            have = True
            i += 2
            continue
        if quote is None and split and c in " \t\r\n":
            if have:
                out.append("".join(cur))
                cur, have = [], False
            i += 1
            continue
        if quote is None and c in "'\"":
            quote, have = c, True
            i += 1
            continue
        if quote == '"' and c == '"':
            quote = None
            i += 1
            continue
        if c == "$" and expand:
            val, i = _dollar(text, i, env, escape, where)
            cur.append(val)
            have = have or bool(val)
            total += len(val)
            if total > MAX_EXPANDED:
                raise DockerfileError(f"a word expands to more than {MAX_EXPANDED} characters", *where)
            continue
        cur.append(c)
        have = True
        i += 1
    if quote:
        raise DockerfileError(f"unterminated {quote} quote", *where)
    if have:
        out.append("".join(cur))
    return out


def expand(text: str, env: dict, escape: str = "\\", where=("Dockerfile", 0, 0)) -> str:
    """Substitute variables in `text` (quotes processed, whitespace kept): one word."""
    return "".join(words(text.strip(), env, escape, where=where, split=False))


def _dollar(text: str, i: int, env: dict, escape: str, where, depth: int = 0) -> tuple[str, int]:
    n = len(text)
    if i + 1 >= n:
        return "$", i + 1
    if text[i + 1] == "{":
        j = i + 2
        m = _NAME_RE.match(text, j)
        if not m:
            raise DockerfileError("bad substitution: ${ must be followed by a variable name", *where)
        name = m.group(0)
        j = m.end()
        if j < n and text[j] == "}":
            return str(env.get(name, "")), j + 1
        if text.startswith(":-", j) or text.startswith(":+", j):
            op = text[j:j + 2]
            j += 2
            # the word runs to the matching brace; it may itself hold substitutions
            level, k = 1, j
            while k < n:
                if text[k] == escape:
                    k += 2
                    continue
                if text[k] == "{":
                    level += 1
                elif text[k] == "}":
                    level -= 1
                    if level == 0:
                        break
                k += 1
            if k >= n:
                raise DockerfileError("bad substitution: missing }", *where)
            if depth > 8:
                raise DockerfileError("substitution nested too deep", *where)
            word = " ".join(words(text[j:k], env, escape, where=where)) if "$" in text[j:k] else text[j:k]
            val = env.get(name)
            if op == ":-":
                return (str(val) if val else word), k + 1
            return (word if val else ""), k + 1
        raise DockerfileError(f"unsupported modifier in ${{{name}{text[j:j+2]}...}} (supported: :- :+)", *where)
    m = _NAME_RE.match(text, i + 1)
    if not m:
        return "$", i + 1
    return str(env.get(m.group(0), "")), m.end()


def key_values(ins: Instruction, env: dict, escape: str, file: str) -> list[tuple[str, str]]:
    """ENV/LABEL arguments: `k=v k2="v 2"`, or the legacy `k value with spaces` form."""
    where = (file, ins.line, ins.col)
    raw = ins.args
    first = (words(raw, {}, escape, where=where, expand=False) or [""])[0]
    if "=" not in first:
        if ins.cmd == "LABEL":
            raise DockerfileError("LABEL needs key=value", *where)
        first = raw.split(None, 1)[0]
        rest = raw.split(None, 1)[1] if len(raw.split(None, 1)) > 1 else None
        if rest is None:
            raise DockerfileError(f"{ins.cmd} {first} needs a value", *where)
        return [(first, expand(rest, env, escape, where))]
    out = []
    for w in words(raw, env, escape, where=where):
        k, eq, v = w.partition("=")
        if not eq or not k:
            raise DockerfileError(f"{ins.cmd}: {w!r} is not key=value", *where)
        out.append((k, v))
    return out


def check_env_name(name: str, where) -> None:
    if not _NAME_RE.fullmatch(name):
        raise DockerfileError(f"invalid variable name {name!r}", *where)
