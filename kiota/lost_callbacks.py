"""Lost callbacks: ask Daraja (STK query) about pushes whose callback never came.

The query's final answer is carried out as a posted callback is, by the same apply step
(`kiota.store.callbacks.apply`): `from_query` makes it an `StkCallback`, decided and planned as
one (`kiota.mpesa_answers`). Two things differ. No `mpesa_callbacks` row is written: nobody
posted anything. And a success's 0 is its confirmation (`kiota.confirm`), written with it, so it
is not asked twice. The query carries no amount and no receipt: a success completes the deposit
at its quote (the push's amount stands); a failure fails it.

"Still processing" waits with backoff; 24 hours without an answer sends it to review. Only a
`pending` deposit is ever changed here, so a query never downgrades a callback's success: the
answer is decided on the deposit as read before asking and applied only if the deposit still
looks so (a callback that got there first stands), and the other writes name `pending` too.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from kiota.confirm import CONFIRMED_BY_QUERY
from kiota.daraja import DarajaClient, QueryResult
from kiota.db import Pool
from kiota.errors import DarajaError, DarajaRefused
from kiota.mpesa import DepositView, StkCallback
from kiota.mpesa_answers import Decided, Seen, plan
from kiota.records import Deposit
from kiota.store import callbacks as store

log = structlog.get_logger(__name__)

GIVE_UP_AFTER = timedelta(hours=24)
MAX_QUERY_BACKOFF_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class QueryOutcome:
    action: str  # completed_by_query | failed_by_query | waiting | review | nothing
    enqueue_job_id: str | None = None


def query_backoff(attempts: int, base: float) -> float:
    return min(MAX_QUERY_BACKOFF_SECONDS, base * float(2 ** min(attempts, 10)))


def from_query(deposit: Deposit, result_code: int, result_desc: str, answer: str) -> Decided:
    """The STK query's final answer about a pending deposit, decided as a callback would be. Pure."""
    assert deposit.checkout_request_id is not None
    said = StkCallback(
        merchant_request_id="",
        checkout_request_id=deposit.checkout_request_id,
        result_code=result_code,
        result_desc=result_desc,
        amount_kes=deposit.amount_kes if result_code == 0 else None,
    )
    view = DepositView(
        deposit.status, deposit.amount_kes, deposit.mpesa_receipt, deposit.failure_code, deposit.received_kes
    )
    seen = Seen(None, deposit.id, view, False)
    return Decided(said, seen, plan(said, seen, confirmed_by=CONFIRMED_BY_QUERY, confirm_answer=answer))


async def query_deposit(pool: Pool, daraja: DarajaClient, deposit_id: uuid.UUID, backoff_base: float) -> QueryOutcome:
    deposit = await store.deposit(pool, deposit_id)
    if deposit is None or deposit.status != "pending" or deposit.checkout_request_id is None:
        return QueryOutcome("nothing")
    bound = log.bind(deposit_id=str(deposit_id), checkout_request_id=deposit.checkout_request_id)
    result: QueryResult | None = None
    try:
        result = await daraja.stk_query(deposit.checkout_request_id)
        answer = "pending" if result.status == "pending" else f"result {result.result_code}"
    except DarajaError as exc:
        answer = f"{'refused' if isinstance(exc, DarajaRefused) else 'unavailable'}: {exc.message}"
    if result is not None and result.status == "resolved" and result.result_code is not None:
        item = from_query(deposit, result.result_code, result.result_desc or "", answer)
        if item.plan.deposit_change not in ("succeeded", "failed"):
            return QueryOutcome("nothing")  # cannot happen for a pending deposit at its own amount
        (applied,) = await store.apply(pool, [item])
        if not applied:
            return QueryOutcome("nothing")  # a callback got there first: it stands
        if item.plan.deposit_change == "succeeded":
            bound.info("lost callback recovered by query: paid")
            return QueryOutcome("completed_by_query", item.plan.job_id)
        bound.info("lost callback recovered by query: failed", result_code=result.result_code)
        return QueryOutcome("failed_by_query")
    pushed_at = deposit.pushed_at or datetime.now(UTC)
    if datetime.now(UTC) - pushed_at > GIVE_UP_AFTER:
        reason = f"no answer from M-Pesa within 24 hours of the push (last query: {answer})"
        if not await store.unanswered_to_review(pool, deposit_id, reason):
            return QueryOutcome("nothing")
        bound.warning("deposit sent to review: no answer in 24 hours")
        return QueryOutcome("review")
    wait = query_backoff(deposit.query_attempts, backoff_base)
    if not await store.query_again(pool, deposit_id, wait, answer[:500]):
        return QueryOutcome("nothing")
    bound.info("stk query: not final yet", answer=answer, retry_in=wait)
    return QueryOutcome("waiting")
