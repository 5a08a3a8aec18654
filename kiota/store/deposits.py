"""M-Pesa deposits in PostgreSQL: the writes of an initiate (record, push, refusal, review) and the reads
of the app and the payouts."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from kiota.db import Connection, Executor
from kiota.records import Deposit
from kiota.sql import load_queries


async def lock_user_deposits(conn: Connection, user_id: str) -> None:
    """Hold the user's row until the transaction ends: one user's initiates count one after the other."""
    await conn.execute(load_queries().lock_user_deposits, user_id)


async def pending_deposits_of_user(conn: Connection, user_id: str) -> int:
    count: int = await conn.fetchval(load_queries().pending_deposits_of_user, user_id)
    return count


async def deposit_of_request(conn: Connection, user_id: str, request_key: str) -> Deposit | None:
    """The deposit an earlier request with this Idempotency-Key made, if any."""
    row = await conn.fetchrow(load_queries().deposit_of_request, user_id, request_key)
    return None if row is None else Deposit.from_row(row)


async def forget_request_key(conn: Connection, deposit_id: uuid.UUID) -> bool:
    """Free the key of a deposit whose push Daraja refused (it reached no phone); False for any other."""
    return await conn.fetchval(load_queries().forget_request_key, deposit_id) is not None


async def insert_deposit(
    conn: Connection,
    deposit_id: uuid.UUID,
    *,
    user_id: str,
    amount_kes: int,
    kes_per_usd: Decimal,
    amount_usdc: int,
    phone_masked: str,
    request_key: str | None,
) -> None:
    await conn.execute(
        load_queries().insert_deposit,
        deposit_id, user_id, amount_kes, kes_per_usd, amount_usdc, phone_masked, request_key,
    )  # fmt: skip


async def deposit_push_refused(conn: Executor, deposit_id: uuid.UUID, code: str | None, reason: str) -> None:
    await conn.execute(load_queries().deposit_push_refused, deposit_id, code, reason)


async def deposit_to_review(conn: Executor, deposit_id: uuid.UUID, reason: str) -> None:
    await conn.execute(load_queries().deposit_to_review, deposit_id, reason)


async def lock_checkout(conn: Connection, checkout_request_id: str) -> None:
    """Serialise recording a push with its callback arriving early (same CheckoutRequestID), until commit."""
    await conn.execute(load_queries().lock_checkout, checkout_request_id)


async def deposit_pushed(
    conn: Connection, deposit_id: uuid.UUID, checkout_request_id: str, merchant_request_id: str, query_after: float
) -> None:
    """Daraja accepted the push: its ids, and when to ask about it if no callback comes (seconds from now)."""
    await conn.execute(load_queries().deposit_pushed, deposit_id, checkout_request_id, merchant_request_id, query_after)


async def early_callbacks(conn: Connection, checkout_request_id: str) -> int:
    """Callbacks for this CheckoutRequestID that found no deposit (they came before the push was recorded)."""
    count: int = await conn.fetchval(load_queries().early_callbacks, checkout_request_id)
    return count


async def processing_since(conn: Executor, deposit_id: uuid.UUID) -> datetime | None:
    """When the deposit began processing (M-Pesa said paid); None if it never did."""
    since: datetime | None = await conn.fetchval(load_queries().deposit_processing_since, deposit_id)
    return since


async def deposit_of_user(conn: Executor, deposit_id: uuid.UUID, user_id: str) -> Deposit | None:
    """The deposit, if it is this user's (another user's is none)."""
    row = await conn.fetchrow(load_queries().deposit_of_user, deposit_id, user_id)
    return None if row is None else Deposit.from_row(row)


async def deposits_of_user(conn: Executor, user_id: str, limit: int) -> list[Deposit]:
    """The user's deposits, newest first."""
    return [Deposit.from_row(row) for row in await conn.fetch(load_queries().deposits_of_user, user_id, limit)]
