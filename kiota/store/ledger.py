"""The ledger in PostgreSQL: post entries idempotently and read balances."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import asyncpg

from kiota.db import Connection, Executor
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


async def post_entries(conn: Connection, entries: Sequence[Entry]) -> list[tuple[int, bool]]:
    """Write many entries, each once, in one statement whatever their number; (entry id, created) each.

    The same rules as `post_entry`, entry by entry: a key used before with the same postings
    creates nothing (one more statement reads those back), with other postings it is an error. The
    database's balance trigger still checks every entry at commit. Call it inside the caller's
    transaction, so that the entries commit with the state change they pay for.
    """
    if not entries:
        return []
    keys = [entry.key for entry in entries]
    if len(set(keys)) != len(keys):
        raise LedgerError("one batch names an idempotency key twice")
    q = load_queries()
    postings = [(entry.key, p) for entry in entries for p in entry.postings]
    rows = await conn.fetch(
        q.insert_entries,
        keys,
        [entry.kind for entry in entries],
        [entry.memo for entry in entries],
        [key for key, _ in postings],
        [p.account for _, p in postings],
        [p.asset for _, p in postings],
        [p.direction.value for _, p in postings],
        [p.amount for _, p in postings],
    )
    created = {row["idempotency_key"]: (row["id"], row["postings"]) for row in rows}
    for entry in entries:
        if entry.key in created and created[entry.key][1] != len(entry.postings):
            raise LedgerError(f"entry {entry.key!r} names an unknown account or a wrong asset")
    existing = await _existing_many(conn, [entry for entry in entries if entry.key not in created])
    return [(created[e.key][0], True) if e.key in created else (existing[e.key], False) for e in entries]


async def _existing_many(conn: Connection, entries: list[Entry]) -> dict[str, int]:
    if not entries:
        return {}
    rows = await conn.fetch(load_queries().entries_by_keys, [entry.key for entry in entries])
    stored: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        stored.setdefault(row["idempotency_key"], []).append(row)
    return {entry.key: _same_postings(entry, stored.get(entry.key, [])) for entry in entries}


async def _existing(conn: Connection, entry: Entry) -> int:
    return _same_postings(entry, await conn.fetch(load_queries().entry_by_key, entry.key))


def _same_postings(entry: Entry, rows: Sequence[asyncpg.Record]) -> int:
    """The stored entry's id, when its postings are the entry's; else the key was reused: an error."""
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


async def balance(conn: Executor, account: str) -> int:
    value = await conn.fetchval(load_queries().balance_by_code, account)
    if value is None:
        raise LedgerError(f"no account {account!r}")
    return int(value)


async def user_balances(conn: Executor, user_id: str) -> dict[str, int]:
    rows = await conn.fetch(load_queries().user_balances, user_id)
    return {r["asset"]: int(r["balance"]) for r in rows}
