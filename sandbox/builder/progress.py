"""The build's progress display: `plain` (one line a step), `auto` (rich's spinner for long work
on a terminal, plain otherwise), `quiet` (nothing; a failing RUN's output is still shown)."""
from __future__ import annotations

import contextlib
import sys


class Progress:
    def __init__(self, mode: str = "auto", stream=None):
        self.stream = stream or sys.stderr
        self.quiet = mode == "quiet"
        self._console = None
        if mode == "auto" and hasattr(self.stream, "isatty") and self.stream.isatty():
            try:
                from rich.console import Console        # only on a terminal
                self._console = Console(file=self.stream, highlight=False)
            except ImportError:
                self._console = None

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self._console is not None:
            self._console.print(text, markup=False)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def step(self, n: int, total: int, text: str) -> None:
        if self._console is not None and not self.quiet:
            self._console.print(f"[bold blue]STEP {n}/{total}:[/] ", end="")
            self._console.print(text, markup=False, highlight=False)
        else:
            self.line(f"STEP {n}/{total}: {text}")

    @contextlib.contextmanager
    def working(self, what: str):
        """A spinner while `what` runs (a terminal only)."""
        if self._console is not None and not self.quiet:
            with self._console.status(what, spinner="dots"):
                yield
        else:
            yield
