"""Bad rows: what a reader could not turn into a valid record, and where.

A reader either raises on the first bad row (``bad=None``: strict, for tests and one-off
runs) or records every bad row in a :class:`BadRows` collector and goes on (the replay and
the backtest report them and skip them). Each entry says which file, which line (1-based,
the header is line 1 for CSV) and why, in one line a person can act on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from schemas.codec import explain
from wattmix.errors import SchemaError


@dataclass(frozen=True)
class BadRow:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class BadRowError(SchemaError):
    """Raised by a strict reader (no collector) on the first bad row."""

    def __init__(self, row: BadRow) -> None:
        super().__init__(str(row))
        self.row = row


@dataclass
class BadRows:
    """Collects bad rows across files; ``limit`` bounds memory on a hopeless file."""

    rows: list[BadRow] = field(default_factory=list)
    count: int = 0
    limit: int = 10_000

    def add(self, file: str | Path, line: int, reason: str) -> None:
        self.count += 1
        if len(self.rows) < self.limit:
            self.rows.append(BadRow(str(file), line, reason))

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:  # a collector is truthy even when empty
        return True

    def summary(self, max_lines: int = 10) -> str:
        if not self.count:
            return "no bad rows"
        lines = [f"{self.count} bad row(s) skipped:"] + [f"  {r}" for r in self.rows[:max_lines]]
        if self.count > max_lines:
            lines.append(f"  ... and {self.count - max_lines} more")
        return "\n".join(lines)


def report(bad: BadRows | None, file: str | Path, line: int, reason: str) -> None:
    """Record a bad row, or raise :class:`BadRowError` when no collector is given."""
    if bad is None:
        raise BadRowError(BadRow(str(file), line, reason))
    bad.add(file, line, reason)


def one_line(exc: Exception) -> str:
    """A pydantic ValidationError (the wire contract's own wording) or any error, as one line."""
    if isinstance(exc, ValidationError):
        return explain(exc)
    return " ".join(str(exc).split())
