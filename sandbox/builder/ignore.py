""".dockerignore, with Docker's rules (moby/patternmatcher): one pattern a line, `#` comments and
blank lines skipped, surrounding blanks trimmed, the pattern cleaned like Go's filepath.Clean and
its leading `/` dropped, `*` any run of non-`/`, `?` one non-`/`, `[...]` a class, `**` any number
of directories (also none), `\\` quotes the next character, `!` re-includes; the last pattern that
matches a path or one of its parent directories decides. Bounded: 1 MiB, 10 000 patterns.

(`pathspec` implements .gitignore's rules, which differ: there a pattern without `/` matches at any
depth; in Docker it is anchored at the context's root.)
"""
from __future__ import annotations

import posixpath
import re

MAX_BYTES = 1 << 20
MAX_PATTERNS = 10_000


class IgnoreError(Exception):
    pass


def _regex(pat: str) -> re.Pattern:
    out = ["^"]
    i, n = 0, len(pat)
    while i < n:
        c = pat[i]
        if c == "*":
            if i + 1 < n and pat[i + 1] == "*":
                i += 1
                if i + 1 >= n:
                    out.append(".*")
                elif pat[i + 1] == "/":
                    out.append("(.*/)?")
                    i += 1
                else:
                    out.append(".*")
            else:
                out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(pat[i + 1]))
            i += 1
        elif c == "[":
            j = pat.find("]", i + 1)
            if j < 0:
                raise IgnoreError(f"pattern {pat!r}: unterminated [")
            cls = pat[i + 1:j]
            if cls.startswith("^"):
                cls = "!" + cls[1:]
            cls = cls.replace("\\", "\\\\")
            out.append("[^" + cls[1:] + "]" if cls.startswith("!") else "[" + cls + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    out.append("$")
    try:
        return re.compile("".join(out))
    except re.error as e:
        raise IgnoreError(f"pattern {pat!r}: {e}") from None


class Ignore:
    def __init__(self, text: str = "", where: str = ".dockerignore"):
        self.rules: list[tuple[bool, re.Pattern]] = []          # (exclusion?, regex)
        if len(text) > MAX_BYTES:
            raise IgnoreError(f"{where}: larger than {MAX_BYTES} bytes")
        for ln, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            neg = line.startswith("!")
            if neg:
                line = line[1:].strip()
            if not line:
                continue
            pat = posixpath.normpath(line).lstrip("/") or "."
            if len(self.rules) >= MAX_PATTERNS:
                raise IgnoreError(f"{where}:{ln}: more than {MAX_PATTERNS} patterns")
            try:
                self.rules.append((neg, _regex(pat)))
            except IgnoreError as e:
                raise IgnoreError(f"{where}:{ln}:1: {e}") from None
        self.has_exceptions = any(neg for neg, _ in self.rules)

    def excluded(self, rel: str) -> bool:
        """Is `rel` (relative to the context, '/'-separated) excluded?"""
        if not self.rules or not rel or rel == ".":
            return False
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        result = False
        for neg, rx in self.rules:
            if any(rx.match(p) for p in prefixes):
                result = not neg
        return result
