"""Errors and warnings about a policy, each pinned to a file, line and column.

One small type shared by every stage (YAML, includes, prefix files, the model,
cross-checks) so that all of them report in the same ``file:line:col: key.path:
message`` shape that editors and ``floodguard check`` users can jump to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]

#: A key path as pydantic reports it: mapping keys are str, list indices int.
KeyPath = tuple[str | int, ...]


def format_path(path: Sequence[str | int]) -> str:
    """``('protect', 3, 'limits', 'udp')`` → ``protect[3].limits.udp``."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        else:
            out.append(f".{part}" if out else part)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Loc:
    """A place in a file; line and column count from 1 as editors do."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    """One problem found in a policy.

    ``path`` is the dotted key path (``protect[3].limits.udp.pps``), or the empty
    string for problems with a whole file. Warnings print with ``warning:``
    before the message; errors print exactly ``file:line:col: path: message``.
    """

    file: str
    line: int
    column: int
    path: str
    message: str
    severity: Severity = "error"

    @classmethod
    def at(
        cls, loc: Loc, path: Sequence[str | int] | str, message: str, severity: Severity = "error"
    ) -> PolicyIssue:
        text = path if isinstance(path, str) else format_path(path)
        return cls(loc.file, loc.line, loc.column, text, message, severity)

    @property
    def loc(self) -> Loc:
        return Loc(self.file, self.line, self.column)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}: "
        path = f"{self.path}: " if self.path else ""
        kind = "warning: " if self.severity == "warning" else ""
        return f"{where}{path}{kind}{self.message}"

