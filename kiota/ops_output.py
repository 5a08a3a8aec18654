"""How `kiota ops` answers: plain lines for people, `--json` for scripts, a progress bar on standard error
for work that takes more than a moment, and an exit code that says whether something needs attention.

Exit codes: 0 all is well; 1 something needs a person (stuck deposits, open reviews, a reconciliation
difference, payouts stopped); 2 the command failed or was refused (bad input, a refused action). With
`--json`, standard output is exactly one JSON document; progress and messages go to standard error.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, TextIO

OK = 0
ATTENTION = 1
FAILED = 2

BAR_WIDTH = 30


def _plain(value: object) -> Any:
    """A value as JSON can carry it: money stays an integer (its smallest unit), never a float."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    return value


@dataclasses.dataclass(slots=True)
class Output:
    """Where a command's answer goes: `as_json` prints one document, else `name=value` lines."""

    as_json: bool = False
    stream: TextIO = dataclasses.field(default_factory=lambda: sys.stdout)

    def rows(self, rows: Sequence[object], columns: Sequence[str]) -> None:
        """Records (dataclasses), each as the named fields that have a value."""
        picked = [{name: getattr(row, name) for name in columns} for row in rows]
        if self.as_json:
            self._json({"items": picked})
            return
        if not picked:
            print("(none)", file=self.stream)
        for values in picked:
            print("  ".join(f"{name}={value}" for name, value in values.items() if value is not None), file=self.stream)

    def result(self, values: object, text: str) -> None:
        """One answer: `values` (a mapping or a record) as JSON, or the sentence `text` for a person."""
        if self.as_json:
            self._json(values)
        else:
            print(text, file=self.stream)

    def _json(self, document: object) -> None:
        json.dump(_plain(document), self.stream, separators=(",", ":"))
        self.stream.write("\n")


@dataclasses.dataclass(slots=True)
class Progress:
    """`label [#####-----] 12/40 30% 1.2s` on standard error, redrawn in place; silent when it is not a
    terminal unless asked (`kiota ops --progress`), so a script's log is not filled with bars."""

    label: str
    total: int
    enabled: bool
    stream: TextIO = dataclasses.field(default_factory=lambda: sys.stderr)
    done: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)

    def advance(self, count: int = 1) -> None:
        self.done = min(self.total, self.done + count) if self.total else self.done + count
        self._draw(end="")

    def finish(self) -> None:
        self._draw(end="\n")

    def line(self) -> str:
        share = self.done / self.total if self.total else 1.0
        filled = round(share * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        elapsed = time.monotonic() - self.started
        return f"{self.label} [{bar}] {self.done}/{self.total} {share:.0%} {elapsed:.1f}s"

    def _draw(self, end: str) -> None:
        if self.enabled:
            print(f"\r{self.line()}", end=end, file=self.stream, flush=True)
