"""Lost callbacks: ask Daraja (STK query) about pushes whose callback never came.

A success completes the deposit at its quote (the query carries no amount and no
receipt: the push's amount stands); a failure fails it; "still processing" waits
with backoff; 24 hours without an answer sends it to review. Only a `pending`
deposit is ever changed here, under its row lock, so a query never downgrades a
callback's success.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog

from kiota import ledger
from kiota.confirm import CONFIRMED_BY_QUERY
from kiota.daraja import DarajaClient, QueryResult
from kiota.deposits import complete_job_id
from kiota.errors import DarajaError, DarajaRefused
from kiota.job_history import record_job
from kiota.job_names import JobName
from kiota.mpesa import Action, DepositView, StkCallback, decide
from kiota.sql import load_queries
from kiota.store.ledger import post_entry

log = structlog.get_logger(__name__)

GIVE_UP_AFTER = timedelta(hours=24)
MAX_QUERY_BACKOFF_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class QueryOutcome:
    action: str  # completed_by_query | failed_by_query | waiting | review | nothing
    enqueue_job_id: str | None = None


def query_backoff(attempts: int, base: float) -> float:
    return min(MAX_QUERY_BACKOFF_SECONDS, base * float(2 ** min(attempts, 10)))


async def query_deposit(
    pool: asyncpg.Pool, daraja: DarajaClient, deposit_id: uuid.UUID, backoff_base: float
) -> QueryOutcome:
    q = load_queries()
    row = await pool.fetchrow(q.deposit_by_id, deposit_id)
    if row is None or row["status"] != "pending" or row["checkout_request_id"] is None:
        return QueryOutcome("nothing")
    bound = log.bind(deposit_id=str(deposit_id), checkout_request_id=row["checkout_request_id"])
    result: QueryResult | None = None
    try:
        result = await daraja.stk_query(row["checkout_request_id"])
        answer = "pending" if result.status == "pending" else f"result {result.result_code}"
    except DarajaError as exc:
        answer = f"{'refused' if isinstance(exc, DarajaRefused) else 'unavailable'}: {exc.message}"
    async with pool.acquire() as conn, conn.transaction():
        locked = await conn.fetchrow(q.deposit_for_query, deposit_id)
        if locked is None or locked["status"] != "pending":
            return QueryOutcome("nothing")  # a callback got there first: it stands
        if result is not None and result.status == "resolved" and result.result_code is not None:
            callback = StkCallback(
                merchant_request_id="",
                checkout_request_id=locked["checkout_request_id"],
                result_code=result.result_code,
                result_desc=result.result_desc or "",
                amount_kes=locked["amount_kes"] if result.result_code == 0 else None,
            )
            view = DepositView("pending", locked["amount_kes"], None, None)
            decision = decide(view, callback)
            if decision.action is Action.SUCCEED:
                await conn.execute(q.deposit_succeeded, deposit_id, None, locked["amount_kes"], None)
                # The STK query's 0 is the confirmation itself (kiota/confirm.py): not asked twice.
                await conn.execute(q.deposit_confirmed, deposit_id, CONFIRMED_BY_QUERY, answer, 0)
                await post_entry(conn, ledger.mpesa_received(str(deposit_id), locked["amount_kes"]))
                await record_job(conn, complete_job_id(deposit_id), JobName.COMPLETE_MPESA_DEPOSIT, deposit_id)
                bound.info("lost callback recovered by query: paid")
                return QueryOutcome("completed_by_query", complete_job_id(deposit_id))
            await conn.execute(q.deposit_failed, deposit_id, str(result.result_code), decision.reason)
            bound.info("lost callback recovered by query: failed", result_code=result.result_code)
            return QueryOutcome("failed_by_query")
        pushed_at = locked["pushed_at"] or datetime.now(UTC)
        if datetime.now(UTC) - pushed_at > GIVE_UP_AFTER:
            reason = f"no answer from M-Pesa within 24 hours of the push (last query: {answer})"
            await conn.execute(q.deposit_to_review, deposit_id, reason)
            bound.warning("deposit sent to review: no answer in 24 hours")
            return QueryOutcome("review")
        wait = query_backoff(locked["query_attempts"], backoff_base)
        await conn.execute(q.deposit_query_again, deposit_id, wait, answer[:500])
        bound.info("stk query: not final yet", answer=answer, retry_in=wait)
        return QueryOutcome("waiting")
