"""Users, created on first sight of a token's subject, each with a deposit address."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from kiota.hdwallet import ExtendedPublicKey
from kiota.ledger import USER_ASSETS
from kiota.sql import load_queries


@dataclass(frozen=True, slots=True)
class User:
    id: str
    address_index: int
    deposit_address: str
    created_at: datetime


def _user(row: asyncpg.Record) -> User:
    return User(row["id"], row["address_index"], row["deposit_address"], row["created_at"])


async def ensure_user(pool: asyncpg.Pool, user_id: str, xpub: ExtendedPublicKey) -> User:
    """The user with this id, created (with its address and accounts) if new.

    The index comes from a database sequence, so it is unique and never reused;
    a losing racer just skips one index.
    """
    q = load_queries()
    row = await pool.fetchrow(q.user_by_id, user_id)
    if row is not None:
        return _user(row)
    async with pool.acquire() as conn, conn.transaction():
        index: int = await conn.fetchval(q.next_address_index)
        row = await conn.fetchrow(q.insert_user, user_id, index, xpub.child_address(index))
        if row is None:
            row = await conn.fetchrow(q.user_by_id, user_id)
            assert row is not None
            return _user(row)
        await conn.execute(q.insert_user_accounts, user_id, list(USER_ASSETS))
        return _user(row)
