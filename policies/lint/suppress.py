"""Inline suppressions, read from the raw file text (PyYAML drops comments).

    seccomp:
      allow: [ptrace]   # pysandbox: ignore[PSB203] the test runner debugs its children
      # pysandbox: ignore[PSB101, PSB501] CI job needs the host network and NET_ADMIN
      network: host

A suppression written after YAML on a line applies to that line. One written on a line
of its own applies to the next line that is not a comment (so it may sit in a block of
comments right above the offending line). The reason is required: a suppression without
one is not honoured and is itself a finding (PSB003).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

_RE = re.compile(r"#\s*pysandbox\s*:\s*ignore\s*\[(?P<codes>[^\]]*)\](?P<reason>.*)$", re.IGNORECASE)
_CODE = re.compile(r"^[A-Z]{3}\d{3}\Z")


@dataclass
class Suppression:
    file: str
    line: int            # where the comment is
    col: int
    target: Optional[int]  # the line it applies to (None: nothing follows)
    codes: tuple
    reason: str
    used: bool = False
    bad_codes: tuple = field(default_factory=tuple)

    @property
    def valid(self) -> bool:
        return bool(self.reason)


def _reason(text: str) -> str:
    r = text.strip().lstrip(":-–—").strip()
    return r if re.search(r"[A-Za-z0-9]", r) else ""


def parse(text: str, file: str, known_codes=()) -> list[Suppression]:
    lines = text.splitlines()
    out = []
    comment_only = [ln.lstrip().startswith("#") for ln in lines]
    for i, ln in enumerate(lines):
        if "pysandbox" not in ln.lower():
            continue
        m = _RE.search(ln)
        if not m:
            continue
        hash_col = m.start()
        codes = tuple(c.strip().upper() for c in re.split(r"[,\s]+", m.group("codes")) if c.strip())
        if comment_only[i]:
            j = i + 1
            while j < len(lines) and comment_only[j]:
                j += 1
            target = j + 1 if j < len(lines) else None
        else:
            target = i + 1
        bad = tuple(c for c in codes if not _CODE.match(c) or (known_codes and c not in known_codes))
        out.append(Suppression(file=file, line=i + 1, col=hash_col + 1, target=target, codes=codes,
                               reason=_reason(m.group("reason")), bad_codes=bad))
    return out


def read(file: str, known_codes=()) -> list[Suppression]:
    try:
        with open(file, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return []
    return parse(text, file, known_codes)
