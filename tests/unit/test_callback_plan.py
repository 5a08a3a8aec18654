"""What applying a callback writes (plan), and which callbacks share a group (split_repeats): pure, by table."""

from __future__ import annotations

import uuid

import pytest

from kiota.callbacks import split_repeats
from kiota.mpesa import DepositView, StkCallback
from kiota.mpesa_answers import Seen, plan

PAID = StkCallback("m", "ws_CO_1", 0, "ok", amount_kes=1500, receipt="RCPT000001")
PAID_LESS = StkCallback("m", "ws_CO_1", 0, "ok", amount_kes=1499, receipt="RCPT000001")
PAID_OTHER_RECEIPT = StkCallback("m", "ws_CO_1", 0, "ok", amount_kes=1500, receipt="RCPT000002")
CANCELLED = StkCallback("m", "ws_CO_1", 1032, "Request cancelled by user")

PENDING = DepositView("pending", 1500, None, None)
PROCESSING = DepositView("processing", 1500, "RCPT000001", None, 1500)
COMPLETED = DepositView("completed", 1500, "RCPT000001", None, 1500)
FAILED_1032 = DepositView("failed", 1500, None, "1032")
QUERIED_PAID = DepositView("processing", 1500, None, None, 1500)  # the STK query booked it, no receipt


DEPOSIT = uuid.UUID("00000000-0000-0000-0000-00000000d0d0")


def _seen(deposit: DepositView | None, taken: bool = False) -> Seen:
    return Seen(77, None if deposit is None else DEPOSIT, deposit, taken)


@pytest.mark.parametrize(
    ("deposit", "callback", "taken", "expected"),
    [
        # (disposition, deposit change, entry kind, entry key, job id, review kind, review key)
        (
            PENDING, PAID, False,
            ("succeeded", "succeeded", "mpesa_received", f"mpesa:{DEPOSIT}:received",
             f"complete_mpesa_deposit:{DEPOSIT}", None, None),
        ),
        (PENDING, CANCELLED, False, ("failed", "failed", None, None, None, None, None)),
        (QUERIED_PAID, PAID, False, ("duplicate", "receipt", None, None, None, None, None)),
        (PROCESSING, PAID, False, ("duplicate", None, None, None, None, None, None)),
        (
            None, PAID, False,
            ("review", None, "mpesa_suspense", "mpesa:receipt:RCPT000001:suspense", None, "mpesa_callback",
             "receipt:RCPT000001"),
        ),
        (
            PENDING, PAID_LESS, False,
            ("review", "needs_review", "mpesa_suspense", "mpesa:receipt:RCPT000001:suspense", None,
             "mpesa_callback", "receipt:RCPT000001"),
        ),
        (
            PENDING, PAID, True,
            ("review", "needs_review", "mpesa_suspense", "mpesa:receipt:RCPT000001:suspense", None,
             "mpesa_callback", "receipt:RCPT000001"),
        ),
        (
            COMPLETED, PAID_OTHER_RECEIPT, False,
            ("review", None, "mpesa_suspense", "mpesa:receipt:RCPT000002:suspense", None, "mpesa_callback",
             "receipt:RCPT000002"),
        ),
        (None, CANCELLED, False, ("unknown_failure", None, None, None, None, None, None)),
        (PROCESSING, CANCELLED, False, ("review", None, None, None, None, "contradiction", "callback:77")),
        (FAILED_1032, CANCELLED, False, ("duplicate", None, None, None, None, None, None)),
    ],
)  # fmt: skip
def test_plan_writes_what_the_decision_says(
    deposit: DepositView | None, callback: StkCallback, taken: bool, expected: tuple[str | None, ...]
) -> None:
    p = plan(callback, _seen(deposit, taken))
    entry, review = p.entry, p.review
    assert (
        p.disposition,
        p.deposit_change,
        entry and entry.kind,
        entry and entry.key,
        p.job_id,
        review and review.kind,
        review and review.key,
    ) == expected
    if entry is not None:  # shillings received: from the float, owed to the customer or held in suspense
        assert {(x.account, x.direction.value, x.amount) for x in entry.postings} >= {
            ("mpesa_float:KES", "D", callback.amount_kes)
        }
    if p.deposit_change in ("failed", "needs_review"):
        assert p.deposit_reason
    if review is not None and review.kind == "mpesa_callback":
        assert review.amount_kes == callback.amount_kes


def test_repeats_wait_for_the_next_group_in_their_order() -> None:
    def cb(checkout: str, receipt: str | None) -> StkCallback:
        return StkCallback("m", checkout, 0 if receipt else 1032, "", receipt=receipt)

    a1, a2, b, c_same_receipt, d, a3 = (
        cb("A", "R1"),
        cb("A", None),
        cb("B", "R2"),
        cb("C", "R1"),
        cb("D", None),
        cb("A", "R1"),
    )
    group, rest = split_repeats([a1, a2, b, c_same_receipt, d, a3], lambda x: x)
    assert group == [a1, b, d]
    assert rest == [a2, c_same_receipt, a3]
    again, later = split_repeats(rest, lambda x: x)
    assert again == [a2, c_same_receipt] and later == [a3]
