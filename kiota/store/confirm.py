"""A success's confirmation by the STK query, in PostgreSQL (sql/queries/confirm.sql; see `kiota.confirm`).

Every change to a deposit names a processing, unconfirmed one and says whether it found it: a
deposit that left that state meanwhile (paid, confirmed, in review) is left alone.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from kiota.db import Connection, Executor, Pool
from kiota.records import Callback, Deposit
from kiota.sql import load_queries


@dataclass(frozen=True, slots=True)
class Claim:
    """A confirmation attempt begun: the deposit, how long its confirmation has been asked for, and
    whether it is under review (an operator's retry of a refused success)."""

    deposit: Deposit
    waited: timedelta
    under_review: bool


async def claim(pool: Pool, deposit_id: uuid.UUID) -> Claim | None:
    """None unless the deposit is processing and unconfirmed."""
    row = await pool.fetchrow(load_queries().confirm_claim, deposit_id)
    if row is None:
        return None
    return Claim(Deposit.from_row(row), timedelta(seconds=row["waited_seconds"]), row["under_review"])


async def confirmed(conn: Executor, deposit_id: uuid.UUID, by: str, answer: str, attempts: int) -> bool:
    """Mark it confirmed (once), counting `attempts` more questions."""
    return await conn.fetchval(load_queries().deposit_confirmed, deposit_id, by, answer, attempts) is not None


async def ask_again(pool: Pool, deposit_id: uuid.UUID, answer: str) -> int | None:
    """Keep the answer and count the question; the attempts so far, or None."""
    attempts: int | None = await pool.fetchval(load_queries().deposit_confirm_again, deposit_id, answer)
    return attempts


async def to_review(conn: Connection, deposit_id: uuid.UUID, reason: str, answer: str) -> bool:
    """Not confirmed: the deposit goes to review, unpaid, with the query's answer."""
    return await conn.fetchval(load_queries().deposit_unconfirmed_to_review, deposit_id, reason, answer) is not None


async def open_review(conn: Connection, deposit_id: uuid.UUID, amount_kes: int | None, reason: str) -> None:
    """List it for a person (once per deposit; opened again if a retry is refused again)."""
    await conn.execute(load_queries().open_unconfirmed_review, deposit_id, amount_kes, reason)


async def resolve_review(db: Executor, deposit_id: uuid.UUID, resolution: str) -> None:
    """Close its review item: the success was confirmed after all."""
    await db.execute(load_queries().resolve_unconfirmed_review, deposit_id, resolution)


async def success_callbacks(pool: Pool, checkout_request_id: str) -> list[Callback]:
    """What the success callbacks posted about a push said, in order."""
    rows = await pool.fetch(load_queries().success_callbacks_of_checkout, checkout_request_id)
    return [Callback.from_row(row) for row in rows]
