"""Users in PostgreSQL: read one, and create one with its address index and ledger accounts."""

from __future__ import annotations

from collections.abc import Iterable

from kiota.db import Connection, Executor
from kiota.records import User
from kiota.sql import load_queries


async def user_by_id(conn: Executor, user_id: str) -> User | None:
    row = await conn.fetchrow(load_queries().user_by_id, user_id)
    return None if row is None else User.from_row(row)


async def next_address_index(conn: Connection) -> int:
    """A fresh index from the database's sequence: unique, never handed out twice."""
    index: int = await conn.fetchval(load_queries().next_address_index)
    return index


async def insert_user(conn: Connection, user_id: str, address_index: int, deposit_address: str) -> User | None:
    """The new user; None if another request created this user first."""
    row = await conn.fetchrow(load_queries().insert_user, user_id, address_index, deposit_address)
    return None if row is None else User.from_row(row)


async def insert_user_accounts(conn: Connection, user_id: str, assets: Iterable[str]) -> None:
    await conn.execute(load_queries().insert_user_accounts, user_id, list(assets))
