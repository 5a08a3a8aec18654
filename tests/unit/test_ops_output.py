"""`kiota ops`'s answers: JSON a script can read (money as integers), and a progress bar that says how far."""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from kiota.ops_output import Output, Progress


@dataclass(frozen=True)
class Row:
    id: uuid.UUID
    amount_kes: int
    rate: Decimal
    at: datetime
    note: str | None


ROW = Row(uuid.UUID(int=1), 1295, Decimal("129.50"), datetime(2026, 12, 7, tzinfo=UTC), None)


def test_rows_as_json_keep_money_as_integers_and_name_every_column() -> None:
    out = io.StringIO()
    Output(as_json=True, stream=out).rows([ROW], ["id", "amount_kes", "rate", "at", "note"])
    assert json.loads(out.getvalue()) == {
        "items": [
            {
                "id": "00000000-0000-0000-0000-000000000001",
                "amount_kes": 1295,
                "rate": "129.50",
                "at": "2026-12-07T00:00:00+00:00",
                "note": None,
            }
        ]
    }


def test_rows_as_text_leave_out_what_has_no_value_and_say_none_when_empty() -> None:
    out = io.StringIO()
    Output(stream=out).rows([ROW], ["amount_kes", "note"])
    Output(stream=out).rows([], ["amount_kes"])
    assert out.getvalue() == "amount_kes=1295\n(none)\n"


def test_a_result_is_one_json_document_or_one_sentence() -> None:
    as_json, as_text = io.StringIO(), io.StringIO()
    Output(as_json=True, stream=as_json).result({"released": 2}, "2 released")
    Output(stream=as_text).result({"released": 2}, "2 released")
    assert json.loads(as_json.getvalue()) == {"released": 2} and as_text.getvalue() == "2 released\n"


def test_progress_draws_in_place_only_when_enabled() -> None:
    shown, hidden = io.StringIO(), io.StringIO()
    for stream, enabled in ((shown, True), (hidden, False)):
        bar = Progress("cleaning", 4, enabled, stream=stream)
        bar.advance(1)
        bar.advance(3)
        bar.advance(5)  # never past the total
        bar.finish()
    assert hidden.getvalue() == ""
    frames = shown.getvalue().split("\r")[1:]
    assert frames[0].startswith("cleaning [" + "#" * 8 + "-" * 22 + "] 1/4 25%")
    assert frames[-1].startswith("cleaning [" + "#" * 30 + "] 4/4 100%") and frames[-1].endswith("s\n")
