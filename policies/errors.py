"""Errors of the policy layer: one line each, pointing at file:line:column where known.

The compiler reports every error it finds in one pass (as a compiler does): `ProfileErrors`, a
ProfileError holding them all in file order (at most MAX_ERRORS; one more line says how many were
left out). Printed one error per line (`lines()`); its `message`/`location` are the first's."""
from __future__ import annotations

from .plan import dataclass            # shared methods, none compiled by exec at import (plan.py)

TYPE_CHECKING = False  # annotations only (postponed): importing typing is ~2 ms of the launch path
if TYPE_CHECKING:
    from typing import Optional


@dataclass(frozen=True)
class Location:
    """Where in a profile: file, line and column (1-based)."""
    file: str
    line: int      # 1-based
    col: int       # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class ProfileError(Exception):
    """A broken profile or bad override. CLI exit code 2, printed as one line."""

    exit_code = 2

    def __init__(self, message: str, location: Optional[Location] = None, file: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.location = location
        self.file = file if file is not None else (location.file if location else None)

    def __str__(self) -> str:
        msg = _one_line(self.message)
        if self.location is not None:
            return f"{_one_line(str(self.location))}: {msg}"
        if self.file:
            return f"{_one_line(self.file)}: {msg}"
        return msg


_CONTROL = {c: f"\\x{c:02x}" for c in list(range(0x20)) + [0x7f]}


def _one_line(text: str) -> str:
    """A message quoting a key or value of the profile stays one line: control characters (a
    newline in a key, an escape sequence) are shown as \\xNN."""
    return text.translate(_CONTROL)


MAX_ERRORS = 50


class ProfileErrors(ProfileError):
    """Several profile errors found in one pass (sorted by file, line, column; de-duplicated)."""

    def __init__(self, errors):
        flat = []
        for e in errors:
            flat.extend(e.errors if isinstance(e, ProfileErrors) else [e])
        seen, uniq = set(), []
        for e in flat:
            k = str(e)
            if k not in seen:
                seen.add(k)
                uniq.append(e)

        def key(e):
            loc = e.location
            return (e.file or "", loc.line if loc else 0, loc.col if loc else 0)
        uniq.sort(key=key)
        self.total = len(uniq)
        self.errors = uniq[:MAX_ERRORS]
        first = self.errors[0]
        super().__init__(first.message, first.location, first.file)

    def lines(self) -> list:
        out = [str(e) for e in self.errors]
        if self.total > len(self.errors):
            out.append(f"... and {self.total - len(self.errors)} more errors (the first {MAX_ERRORS} are shown)")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def error_lines(e: ProfileError) -> list:
    """The lines to print for a ProfileError (several for ProfileErrors)."""
    return e.lines() if isinstance(e, ProfileErrors) else [str(e)]
