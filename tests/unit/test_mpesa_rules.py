"""M-Pesa rules by table: what a callback does to a deposit (decide), and the parser's fast paths."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from kiota.mpesa import (
    MAX_NESTING,
    NAIROBI,
    RECEIPT_USED_ELSEWHERE,
    Action,
    DepositView,
    MalformedCallback,
    StkCallback,
    decide,
    parse_callback,
)
from tests.support import success_body

PAID = StkCallback("m", "ws_CO_1", 0, "ok", amount_kes=1500, receipt="RCPT000001")
PAID_LESS = StkCallback("m", "ws_CO_1", 0, "ok", amount_kes=1499, receipt="RCPT000001")
PAID_OTHER_RECEIPT = StkCallback("m", "ws_CO_1", 0, "ok", amount_kes=1500, receipt="RCPT000002")
CANCELLED = StkCallback("m", "ws_CO_1", 1032, "Request cancelled by user")
EXPIRED = StkCallback("m", "ws_CO_1", 1019, "expired")

PENDING = DepositView("pending", 1500, None, None)
PROCESSING = DepositView("processing", 1500, "RCPT000001", None, 1500)
COMPLETED = DepositView("completed", 1500, "RCPT000001", None, 1500)
FAILED_1032 = DepositView("failed", 1500, None, "1032")
QUERIED_PAID = DepositView("processing", 1500, None, None, 1500)  # the STK query booked it, no receipt
REVIEW = DepositView("needs_review", 1500, None, None)


@pytest.mark.parametrize(
    ("deposit", "callback", "elsewhere", "action", "new_status"),
    [
        (None, PAID, False, Action.REVIEW, None),
        (None, CANCELLED, False, Action.NOTE_FAILURE, None),
        (PENDING, PAID, False, Action.SUCCEED, "processing"),
        (PENDING, PAID_LESS, False, Action.REVIEW, "needs_review"),
        (PENDING, CANCELLED, False, Action.FAIL, "failed"),
        (PROCESSING, PAID, False, Action.DUPLICATE, None),
        (COMPLETED, PAID, False, Action.DUPLICATE, None),
        (PROCESSING, PAID_OTHER_RECEIPT, False, Action.REVIEW, None),
        (PROCESSING, CANCELLED, False, Action.NOTE_FAILURE, None),
        (FAILED_1032, CANCELLED, False, Action.DUPLICATE, None),
        (FAILED_1032, EXPIRED, False, Action.NOTE_FAILURE, None),
        (FAILED_1032, PAID, False, Action.REVIEW, "needs_review"),
        (QUERIED_PAID, PAID, False, Action.ATTACH_RECEIPT, None),
        (QUERIED_PAID, PAID_LESS, False, Action.REVIEW, None),
        (REVIEW, PAID, False, Action.REVIEW, None),
        # A receipt already on another deposit is never booked or attached again.
        (PENDING, PAID, True, Action.REVIEW, "needs_review"),
        (QUERIED_PAID, PAID, True, Action.REVIEW, "needs_review"),
        # ... and changes nothing else.
        (PROCESSING, PAID, True, Action.DUPLICATE, None),
        (None, PAID, True, Action.REVIEW, None),
        (PENDING, CANCELLED, True, Action.FAIL, "failed"),
    ],
)
def test_decide(
    deposit: DepositView | None,
    callback: StkCallback,
    elsewhere: bool,
    action: Action,
    new_status: str | None,
) -> None:
    decision = decide(deposit, callback, receipt_used_elsewhere=elsewhere)
    assert (decision.action, decision.deposit_status) == (action, new_status)
    if elsewhere and decide(deposit, callback).action in (Action.SUCCEED, Action.ATTACH_RECEIPT):
        assert decision.reason == RECEIPT_USED_ELSEWHERE


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


def test_nairobi_is_three_hours_ahead_of_utc() -> None:
    """The client, the callback parser and the simulator share this one zone: pin it to the fact."""
    assert datetime(2019, 12, 19, 10, 21, 15, tzinfo=NAIROBI).astimezone(UTC) == datetime(
        2019, 12, 19, 7, 21, 15, tzinfo=UTC
    )


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
