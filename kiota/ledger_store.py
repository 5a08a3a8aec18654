"""The ledger in PostgreSQL: post entries idempotently and read balances."""

from __future__ import annotations

import contextlib

import asyncpg

from kiota.db import Connection
from kiota.errors import LedgerError
from kiota.ledger import Direction, Entry, Posting
from kiota.sql import load_queries


async def post_entry(conn: Connection, entry: Entry) -> tuple[int, bool]:
    """Write `entry` once; return (entry id, created).

    Replaying the same key with the same postings returns the first entry and
    creates nothing; the same key with other postings is an error, never a
    silent second movement. Call it inside the caller's transaction so that the
    entry commits with the state change it pays for.
    """
    q = load_queries()
    # Inside the caller's transaction no savepoint is needed (an error aborts it all anyway);
    # alone, the entry and its postings still commit together.
    async with contextlib.AsyncExitStack() as stack:
        if not conn.is_in_transaction():
            await stack.enter_async_context(conn.transaction())
        entry_id = await conn.fetchval(q.insert_entry, entry.key, entry.kind, entry.memo)
        if entry_id is None:
            return await _existing(conn, entry), False
        status = await conn.execute(
            q.insert_postings,
            entry_id,
            [p.account for p in entry.postings],
            [p.asset for p in entry.postings],
            [p.direction.value for p in entry.postings],
            [p.amount for p in entry.postings],
        )
        if status != f"INSERT 0 {len(entry.postings)}":
            raise LedgerError(f"entry {entry.key!r} names an unknown account or a wrong asset")
    return entry_id, True


async def _existing(conn: Connection, entry: Entry) -> int:
    rows = await conn.fetch(load_queries().entry_by_key, entry.key)
    stored = sorted(
        (Posting(r["account_code"], r["asset"], Direction(r["direction"]), r["amount"]) for r in rows),
        key=_order,
    )
    if not rows or stored != sorted(entry.postings, key=_order):
        raise LedgerError(f"idempotency key {entry.key!r} was used for other postings")
    entry_id: int = rows[0]["id"]
    return entry_id


def _order(p: Posting) -> tuple[str, str, str, int]:
    return (p.account, p.asset, p.direction.value, p.amount)


async def balance(conn: Connection | asyncpg.Pool, account: str) -> int:
    value = await conn.fetchval(load_queries().balance_by_code, account)
    if value is None:
        raise LedgerError(f"no account {account!r}")
    return int(value)


async def user_balances(conn: Connection | asyncpg.Pool, user_id: str) -> dict[str, int]:
    rows = await conn.fetch(load_queries().user_balances, user_id)
    return {r["asset"]: int(r["balance"]) for r in rows}
