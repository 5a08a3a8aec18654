"""What an operator reads and changes in PostgreSQL: stuck deposits, open reviews, a deposit retried or
confirmed by hand, blocked jobs released, and each user's ledger USDC for the reconciliation.

Owns the named queries of `sql/queries/ops.sql`.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime

from kiota.db import Connection, Pool
from kiota.records import Deposit, JobRun, Record, ReviewItem
from kiota.sql import load_queries


@dataclasses.dataclass(frozen=True, slots=True)
class StuckDeposit(Record):
    """A deposit an operator should look at (in review, or not finished after a while), with its job."""

    id: uuid.UUID
    user_id: str
    status: str
    amount_kes: int
    amount_usdc: int
    mpesa_receipt: str | None
    checkout_request_id: str | None
    failure_reason: str | None
    review_reason: str | None
    confirmed_by: str | None
    confirm_answer: str | None
    created_at: datetime
    updated_at: datetime
    job_id: str | None
    job_status: str | None
    failures: int | None
    last_error: str | None
    blocked_reason: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class UserLedger(Record):
    """A user's deposit address and the USDC the ledger says they hold."""

    id: str
    deposit_address: str
    ledger_micro: int


async def stuck_deposits(pool: Pool, older_than_seconds: float) -> list[StuckDeposit]:
    return [StuckDeposit.from_row(row) for row in await pool.fetch(load_queries().stuck_deposits, older_than_seconds)]


async def open_review_items(pool: Pool) -> list[ReviewItem]:
    return [ReviewItem.from_row(row) for row in await pool.fetch(load_queries().open_review_items)]


async def deposit_for_retry(conn: Connection, deposit_id: uuid.UUID) -> Deposit | None:
    """The deposit, locked (FOR UPDATE) until the caller's transaction ends."""
    row = await conn.fetchrow(load_queries().deposit_for_retry, deposit_id)
    return None if row is None else Deposit.from_row(row)


async def retry_from_review(conn: Connection, deposit_id: uuid.UUID) -> bool:
    """Back to processing from review, if it was paid in M-Pesa, never paid out, and no callback review is open."""
    return await conn.fetchval(load_queries().deposit_retry_from_review, deposit_id) is not None


async def confirmed_by_operator(conn: Connection, deposit_id: uuid.UUID, who: str, said: str) -> str | None:
    """The deposit's success confirmed by an operator; its status, or None when it cannot be."""
    status: str | None = await conn.fetchval(load_queries().deposit_confirmed_by_operator, deposit_id, who, said)
    return status


async def blocked_jobs(pool: Pool) -> list[JobRun]:
    return [JobRun.from_row(row) for row in await pool.fetch(load_queries().blocked_jobs)]


async def requeue_blocked_job(pool: Pool, job_id: str) -> None:
    await pool.execute(load_queries().requeue_blocked_job, job_id)


async def user_ledgers(pool: Pool) -> list[UserLedger]:
    """Every user, in address order, with their ledger USDC."""
    return [UserLedger.from_row(row) for row in await pool.fetch(load_queries().reconcile_users)]
