"""What a benchmark hands back to the report: rows of figures against baselines, and notes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Row:
    bench: str
    what: str
    figure: str
    baseline: str = ""
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None


@dataclass
class Result:
    bench: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    setup: str = ""


def ratio(value: float, base: float) -> float | None:
    return value / base if base > 0 else None
