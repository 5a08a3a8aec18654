"""What an operator does without reading code: find stuck deposits, retry them, flip the guards.

The CLI (`kiota ops …`) and, later, the dashboard call these.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg
import structlog
from arq.connections import ArqRedis

from kiota.db import Connection
from kiota.deposits import complete_job_id
from kiota.errors import KiotaError
from kiota.job_history import enqueue, record_job
from kiota.job_names import JobName
from kiota.sql import load_queries

log = structlog.get_logger(__name__)


class CannotRetry(KiotaError):
    """The deposit is not in a state a retry can help."""


@dataclass(frozen=True, slots=True)
class RetryResult:
    deposit_id: str
    job_id: str
    enqueued: bool
    confirmed: bool = True  # False: its M-Pesa success is not confirmed, and the STK query is asked again


async def retry_deposit(pool: asyncpg.Pool, queue: ArqRedis, deposit_id: uuid.UUID, by: str) -> RetryResult:
    """Run a deposit's completion again: one in review goes back to processing (with a fresh
    count of failures and a fresh 30-minute window); one still processing is re-enqueued.
    A success M-Pesa has not confirmed is never paid by a retry: its job asks the STK query
    again (with a fresh bound) and sends it back to review if the answer is still not 0.
    A deposit whose payout may still be mined (given up on, and its nonce not yet decided at the
    required confirmations: kiota/payouts.py) is refused: a second payout could pay it twice."""
    q = load_queries()
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(q.deposit_for_retry, deposit_id)
        if row is None:
            raise CannotRetry(f"no deposit {deposit_id}")
        in_flight = await conn.fetchrow(q.payout_in_flight_of_deposit, deposit_id)
        if row["status"] == "needs_review" and in_flight is not None:
            raise CannotRetry(
                f"the deposit's payout {in_flight['id']} (nonce {in_flight['nonce']}) is {in_flight['status']}: "
                "the chain has not yet decided it at DEPOSIT_CONFIRMATIONS_REQUIRED confirmations, and a reorg "
                "could still mine it, so a new payout could pay twice. The lane decides it by itself (its nonce "
                "filled: payout cancelled, retry then; or mined after all: deposit completed); retry in a minute."
            )
        if row["status"] == "needs_review":
            if await conn.fetchval(q.deposit_retry_from_review, deposit_id) is None:
                raise CannotRetry("only a paid deposit (with an M-Pesa receipt) that was not paid out can be retried")
        elif row["status"] != "processing":
            raise CannotRetry(f"the deposit is {row['status']}; there is nothing to retry")
        job_id = await _restart_job(conn, deposit_id)
    enqueued = await enqueue(queue, JobName.COMPLETE_MPESA_DEPOSIT, job_id, str(deposit_id))
    log.info("operator retried a deposit", deposit_id=str(deposit_id), by=by)
    return RetryResult(str(deposit_id), job_id, enqueued, row["confirmed_at"] is not None)


async def confirm_deposit(
    pool: asyncpg.Pool, queue: ArqRedis, deposit_id: uuid.UUID, by: str, note: str = ""
) -> RetryResult:
    """An operator found the payment on the M-Pesa statement: the deposit's success is confirmed by them
    (recorded with their name and note, in place of the STK query's 0), and its completion runs again,
    from review if it was there. Only money received for this deposit and never paid out, once."""
    q = load_queries()
    who = f"operator:{by}"
    said = f"checked on the M-Pesa statement by {by}" + (f": {note}" if note else "")
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(q.deposit_for_retry, deposit_id)
        if row is None:
            raise CannotRetry(f"no deposit {deposit_id}")
        if row["confirmed_at"] is not None:
            raise CannotRetry("the deposit is confirmed already; `kiota ops retry` runs its completion again")
        status = await conn.fetchval(q.deposit_confirmed_by_operator, deposit_id, who, said[:500])
        if status is None:
            raise CannotRetry(
                f"the deposit is {row['status']}: only a success received for it (processing or in review) "
                "and never paid out can be confirmed"
            )
        if status == "needs_review" and await conn.fetchval(q.deposit_retry_from_review, deposit_id) is None:
            raise CannotRetry("the deposit has an open review of its callbacks (kiota ops review): resolve that first")
        await conn.execute(q.resolve_unconfirmed_review, deposit_id, f"confirmed by operator {by}: {note}"[:1000])
        job_id = await _restart_job(conn, deposit_id)
    enqueued = await enqueue(queue, JobName.COMPLETE_MPESA_DEPOSIT, job_id, str(deposit_id))
    log.warning("operator confirmed an M-Pesa payment by hand", deposit_id=str(deposit_id), by=by, note=note)
    return RetryResult(str(deposit_id), job_id, enqueued)


async def _restart_job(conn: Connection, deposit_id: uuid.UUID) -> str:
    job_id = complete_job_id(deposit_id)
    await record_job(conn, job_id, JobName.COMPLETE_MPESA_DEPOSIT, deposit_id, reset=True)
    return job_id


async def release_blocked(pool: asyncpg.Pool, queue: ArqRedis) -> int:
    """Re-enqueue every blocked job (after a guard was released)."""
    q = load_queries()
    rows = await pool.fetch(q.blocked_jobs)
    for row in rows:
        await pool.execute(q.requeue_blocked_job, row["id"])
        await enqueue(queue, row["function"], row["id"], str(row["deposit_id"]))
    return len(rows)


async def set_kill_switch(pool: asyncpg.Pool, queue: ArqRedis, on: bool, by: str) -> int:
    await pool.execute(load_queries().set_kill_switch, on, by)
    log.warning("payout kill switch " + ("ON" if on else "off"), by=by)
    return 0 if on else await release_blocked(pool, queue)


async def resume_lane(pool: asyncpg.Pool, queue: ArqRedis, by: str) -> int:
    await pool.execute(load_queries().resume_lane, by)
    log.warning("payout lane resumed", by=by)
    return await release_blocked(pool, queue)


async def stuck_deposits(pool: asyncpg.Pool, older_than_seconds: float = 600) -> list[asyncpg.Record]:
    return list(await pool.fetch(load_queries().stuck_deposits, older_than_seconds))
