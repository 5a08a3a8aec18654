"""Named SQL queries, kept in `sql/queries/*.sql` and loaded once.

A file holds blocks that start with `-- name: <name>`; the text up to the next
such line is the query. Queries are never built with f-strings.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_NAME_LINE = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def sql_dir() -> Path:
    """Where the SQL lives: beside the package when installed, the repo's `sql/` otherwise."""
    packaged = Path(__file__).parent / "_sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "sql"


class Queries:
    """Named queries; `q.user_by_id` or `q["user_by_id"]`."""

    def __init__(self, queries: dict[str, str]) -> None:
        self._queries = queries

    def __getattr__(self, name: str) -> str:
        try:
            return self._queries[name]
        except KeyError:
            raise AttributeError(f"no SQL query named {name!r}") from None

    def __getitem__(self, name: str) -> str:
        return self._queries[name]

    def names(self) -> list[str]:
        return sorted(self._queries)


def parse_queries(text: str, source: str = "<text>") -> dict[str, str]:
    parts = _NAME_LINE.split(text)
    found: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in found:
            raise ValueError(f"query {name!r} is defined twice in {source}")
        found[name] = body.strip()
    return found


@cache
def load_queries() -> Queries:
    merged: dict[str, str] = {}
    for path in sorted((sql_dir() / "queries").glob("*.sql")):
        for name, body in parse_queries(path.read_text(encoding="utf-8"), path.name).items():
            if name in merged:
                raise ValueError(f"query {name!r} is defined in more than one file")
            merged[name] = body
    return Queries(merged)
