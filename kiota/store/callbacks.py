"""M-Pesa's answers in PostgreSQL: the reads they are decided on, the one write path that carries
them out, and the rows of posted callbacks (sql/queries/callbacks.sql).

`apply` is the only way an answer changes a deposit: paid (with its journal entry and its
completion job), failed, or sent to review, for a posted callback and for the STK query's answer
alike (`kiota.mpesa_answers`). A callback row is a `kiota.records.Callback`, built whole by name
in `kiota.callbacks` (`callback_row`) and written as the table's own row type: a new column is
the record's field, its value there, and its migration; nothing here.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from kiota.db import Connection, Executor, keeps_session_state
from kiota.job_names import JobName
from kiota.ledger import Posting
from kiota.mpesa import DepositView, StkCallback
from kiota.mpesa_answers import Decided, Seen
from kiota.records import Callback, Deposit
from kiota.sql import load_queries


@dataclasses.dataclass(frozen=True, slots=True)
class Stamp:
    """The id and time a callback's row will carry, drawn by the database when it is first read."""

    id: int
    received_at: datetime


async def read(conn: Connection, answers: Sequence[StkCallback]) -> list[tuple[Seen, Stamp]]:
    """Each posted answer's deposit as it is now (nothing locked: `apply` checks it again under the
    CheckoutRequestID's lock), and the stamp of its row."""
    rows = await conn.fetch(
        load_queries().callback_views, [a.checkout_request_id for a in answers], [a.receipt for a in answers]
    )
    out: list[tuple[Seen, Stamp]] = []
    for row in rows:
        deposit = None
        if row["deposit_id"] is not None:
            deposit = DepositView(
                row["status"], row["amount_kes"], row["mpesa_receipt"], row["failure_code"], row["received_kes"]
            )
        seen = Seen(row["callback_id"], row["deposit_id"], deposit, row["receipt_taken"])
        out.append((seen, Stamp(row["callback_id"], row["received_at"])))
    return out


async def plan_once(conn: Connection) -> None:
    """For a connection that runs `read` and `apply` again and again (a lane of callback groups):
    left to choose, PostgreSQL re-plans the call at every group (its argument, the group, is a
    large constant in a custom plan). Undone when the connection goes back to its pool."""
    keeps_session_state(conn)
    await conn.execute("SET plan_cache_mode = force_generic_plan")


async def apply(conn: Executor, items: Sequence[Decided]) -> list[bool]:
    """Carry out decided answers in one statement, its own transaction; for each, whether it was
    applied (False: its deposit changed since it was seen; nothing of it was written, decide it
    again). The items name each CheckoutRequestID and each receipt once. A database error fails
    them all."""
    applied = set(await conn.fetchval(load_queries().apply_answers, [_item(i, d) for i, d in enumerate(items, 1)]))
    return [i in applied for i in range(1, len(items) + 1)]


def _item(ord_: int, decided: Decided) -> dict[str, Any]:
    """One `mpesa_answer_in` (sql/migrations/0012), by name."""
    answer, seen, plan = decided.answer, decided.seen, decided.plan
    view, entry, review = seen.deposit, plan.entry, plan.review
    return {
        "ord": ord_,
        "callback": None if decided.callback is None else _columns(decided.callback),
        "checkout_request_id": answer.checkout_request_id,
        "result_code": answer.result_code,
        "amount_kes": answer.amount_kes,
        "mpesa_receipt": answer.receipt,
        "transaction_at": answer.transaction_at,
        "seen_deposit_id": seen.deposit_id,
        "seen_status": None if view is None else view.status,
        "seen_receipt": None if view is None else view.receipt,
        "seen_failure_code": None if view is None else view.failure_code,
        "seen_received_kes": None if view is None else view.received_kes,
        "seen_receipt_taken": seen.receipt_taken,
        "deposit_change": plan.deposit_change,
        "deposit_reason": plan.deposit_reason,
        "confirmed_by": plan.confirmed_by,
        "confirm_answer": plan.confirm_answer,
        "entry_key": None if entry is None else entry.key,
        "entry_kind": None if entry is None else entry.kind,
        "postings": None if entry is None else [_posting(p) for p in entry.postings],
        "job_id": plan.job_id,
        "job_function": None if plan.job_id is None else JobName.COMPLETE_MPESA_DEPOSIT,
        "review_kind": None if review is None else review.kind,
        "review_key": None if review is None else review.key,
        "review_amount_kes": None if review is None else review.amount_kes,
        "review_reason": None if review is None else review.reason,
    }


def _posting(p: Posting) -> tuple[str, str, str, int]:
    """One `ledger_posting_in`."""
    return (p.account, p.asset, p.direction.value, p.amount)


_CALLBACK_COLUMNS = tuple(field.name for field in dataclasses.fields(Callback))


def _columns(row: Callback) -> dict[str, Any]:
    """A callback row as the table's row type, by name."""
    return {name: getattr(row, name) for name in _CALLBACK_COLUMNS}


async def stamp(conn: Executor) -> Stamp:
    """The stamp of a callback row written on its own (a malformed callback)."""
    row = await conn.fetchrow(load_queries().callback_stamp)
    assert row is not None
    return Stamp(row["id"], row["received_at"])


async def insert_callback(conn: Executor, row: Callback) -> None:
    await conn.execute(load_queries().insert_callback, _columns(row))


async def deposit(conn: Executor, deposit_id: uuid.UUID) -> Deposit | None:
    row = await conn.fetchrow(load_queries().deposit_for_query, deposit_id)
    return None if row is None else Deposit.from_row(row)


async def query_again(conn: Executor, deposit_id: uuid.UUID, wait: float, answer: str) -> bool:
    """The STK query had no final answer: ask again in `wait` seconds. False if no longer pending."""
    return await conn.fetchval(load_queries().deposit_query_again, deposit_id, wait, answer) is not None


async def unanswered_to_review(conn: Executor, deposit_id: uuid.UUID, reason: str) -> bool:
    """No final answer in time: a person looks. False if no longer pending."""
    return await conn.fetchval(load_queries().deposit_unanswered_to_review, deposit_id, reason) is not None
