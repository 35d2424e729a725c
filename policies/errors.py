"""Errors of the policy layer: one line, pointing at file:line:column where known."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Location:
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
        if self.location is not None:
            return f"{self.location}: {self.message}"
        if self.file:
            return f"{self.file}: {self.message}"
        return self.message
