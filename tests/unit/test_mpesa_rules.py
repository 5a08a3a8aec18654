"""M-Pesa rules by table: the callback parser's fast paths read what the slow ones read."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from kiota.mpesa import (
    MAX_NESTING,
    NAIROBI,
    MalformedCallback,
    parse_callback,
)
from tests.support import success_body


def _as_strptime_read_it(value: object) -> datetime | None:
    """The reading before: 14 digits starting 20, then strptime, in Nairobi time."""
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not re.fullmatch(r"20[0-9]{12}", text):
        return None
    try:
        return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=NAIROBI).astimezone(UTC)
    except ValueError:
        return None


@pytest.mark.parametrize(
    "value",
    [20191219102115, "20191219102115", 20240229235959, 20230229000000, 20230101000000, 20191319102115,
     20191219252115, 20190230102115, 20191219102160, 20191219106015, 20191200102115, 20191219102115.0,
     "2019121910211", 201912191021150, "2019-12-19T10:21:15", "00010101000000", "２０１９１２１９１０２１１５",
     True, None],
)  # fmt: skip
def test_transaction_dates_read_as_strptime_read_them(value: object) -> None:
    """TransactionDate is read without strptime now (it was a tenth of the parse): the same answers."""
    document = success_body("ws_CO_1", 1500)
    for item in document["Body"]["stkCallback"]["CallbackMetadata"]["Item"]:
        if item["Name"] == "TransactionDate":
            item["Value"] = value
    try:
        parsed = parse_callback(json.dumps(document).encode()).transaction_at
    except MalformedCallback:
        parsed = None
    assert parsed == _as_strptime_read_it(value)


@pytest.mark.parametrize(
    ("depth", "in_string", "refused"),
    [(MAX_NESTING - 1, False, False), (MAX_NESTING, False, False), (MAX_NESTING + 1, False, True),
     (MAX_NESTING * 4, True, False)],
)  # fmt: skip
def test_nesting_is_counted_outside_strings(depth: int, in_string: bool, refused: bool) -> None:
    """Brackets inside strings do not nest; the bracket count is only a shortcut for small bodies."""
    document = success_body("ws_CO_1", 1500)
    if in_string:
        document["Body"]["stkCallback"]["ResultDesc"] = "[" * depth + "{" * depth
        raw = json.dumps(document).encode()
    else:
        outer = depth - 6  # Body, stkCallback, CallbackMetadata, Item and its entries: 6 deep
        raw = b"[" * outer + json.dumps(document).encode() + b"]" * outer
    try:
        parse_callback(raw)
    except MalformedCallback as exc:
        assert refused == ("too deep" in str(exc)), exc
    else:
        assert not refused
