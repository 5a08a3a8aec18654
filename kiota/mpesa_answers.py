"""An M-Pesa answer about a push, decided: what carrying it out writes. Pure, no I/O.

M-Pesa answers a push in one of two ways: the callback it posts (`kiota.callbacks`), or the STK
query we ask when that callback is lost (`kiota.lost_callbacks`). Either way the answer is an
`StkCallback` (what M-Pesa said), `kiota.mpesa.decide` decides it on the deposit as it was read
(`Seen`), `plan` turns the decision into the rows to write, and the store carries out the
`Decided` item with one function for both, `mpesa_apply_answers` (`kiota.store.callbacks.apply`):
a deposit is marked paid in one place. What differs is only what each way brings along: a posted
callback has its own row in `mpesa_callbacks`, the record of what was POSTed (`Decided.callback`);
the STK query's answer has none, and its 0 is itself the success's confirmation
(`Plan.confirmed_by`, see `kiota.confirm`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from kiota import ledger
from kiota.job_names import JobName
from kiota.mpesa import Action, DepositView, StkCallback, decide
from kiota.records import Callback


@dataclass(frozen=True, slots=True)
class Seen:
    """What PostgreSQL said when the answer's deposit was read: what a decision is made on."""

    callback_id: int | None  # the posted callback's row; None for the STK query's answer
    deposit_id: uuid.UUID | None
    deposit: DepositView | None
    receipt_taken: bool  # the answer's receipt is on some deposit already


@dataclass(frozen=True, slots=True)
class ReviewItem:
    kind: str
    key: str
    amount_kes: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What applying one answer writes, besides a posted callback's own row."""

    disposition: str
    deposit_change: str | None = None  # succeeded | receipt | failed | needs_review
    deposit_reason: str | None = None
    entry: ledger.Entry | None = None
    job_id: str | None = None
    review: ReviewItem | None = None
    confirmed_by: str | None = None  # the answer confirms the success it books (the STK query's 0)
    confirm_answer: str | None = None


@dataclass(frozen=True, slots=True)
class Decided:
    """An answer ready to be carried out: what M-Pesa said, what was seen, what to write, and, for a
    posted callback, its row."""

    answer: StkCallback
    seen: Seen
    plan: Plan
    callback: Callback | None = None


def plan(cb: StkCallback, seen: Seen, *, confirmed_by: str | None = None, confirm_answer: str | None = None) -> Plan:
    """The decision for one answer, as rows to write. Pure: the table tests call it.

    `confirmed_by`/`confirm_answer`: the answer is also the confirmation of a success it books."""
    decision = decide(seen.deposit, cb, receipt_used_elsewhere=seen.receipt_taken)
    deposit_id = seen.deposit_id
    if decision.action is Action.SUCCEED:
        assert cb.amount_kes is not None and deposit_id is not None
        return Plan(
            "succeeded",
            "succeeded",
            entry=ledger.mpesa_received(str(deposit_id), cb.amount_kes),
            job_id=JobName.COMPLETE_MPESA_DEPOSIT.job_id(deposit_id),
            confirmed_by=confirmed_by,
            confirm_answer=confirm_answer,
        )
    if decision.action is Action.ATTACH_RECEIPT:
        return Plan("duplicate", "receipt")
    if decision.action is Action.FAIL:
        return Plan("failed", "failed", decision.reason)
    if decision.action is Action.REVIEW:
        return _review(cb, seen, decision.reason or "review", decision.deposit_status)
    if decision.action is Action.NOTE_FAILURE:
        if deposit_id is None:
            return Plan("unknown_failure")
        review = None
        if decision.reason:
            review = ReviewItem("contradiction", f"callback:{seen.callback_id}", None, decision.reason)
        return Plan("review", review=review)
    return Plan("duplicate")


def _review(cb: StkCallback, seen: Seen, reason: str, new_status: str | None) -> Plan:
    """Money arrived that we will not credit automatically: book it to suspense and list it."""
    key = f"receipt:{cb.receipt}" if cb.receipt else f"callback:{seen.callback_id}"
    entry = ledger.mpesa_unmatched(key, cb.amount_kes) if cb.succeeded and cb.amount_kes else None
    to_review = new_status == "needs_review" and seen.deposit_id is not None
    return Plan(
        "review",
        "needs_review" if to_review else None,
        reason if to_review else None,
        entry=entry,
        review=ReviewItem("mpesa_callback", key, cb.amount_kes, reason),
    )
