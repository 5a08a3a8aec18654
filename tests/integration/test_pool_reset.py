"""The pool's reset on release (kiota/db.py): what a borrower leaves in its session never reaches the next one,
and a connection that held nothing goes back without asyncpg's reset round trip."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from kiota.db import Pool, create_pool, try_advisory_lock
from kiota.store.callbacks import plan_once

KEY = 4242


@pytest.fixture
async def one_connection(database_url: str) -> AsyncIterator[Pool]:
    """A pool of one connection: each loan gets the connection the last one gave back."""
    pool = await create_pool(database_url, min_size=1, max_size=1)
    yield pool
    await pool.close()


async def _lock_is_free(database_url: str) -> bool:
    """Whether another session can take KEY now (and gives it back at once)."""
    other = await asyncpg.connect(database_url)
    try:
        return bool(await other.fetchval("SELECT pg_try_advisory_lock($1)", KEY))
    finally:
        await other.close()


async def test_a_session_lock_left_by_a_borrower_is_freed_when_its_connection_goes_back(
    one_connection: Pool, database_url: str
) -> None:
    async with one_connection.acquire() as conn:
        assert await try_advisory_lock(conn, KEY)
        assert not await _lock_is_free(database_url)
        # No unlock: a borrower cancelled between its lock and its unlock.
    assert await _lock_is_free(database_url)
    async with one_connection.acquire() as conn:  # the same connection, lent again: it holds nothing
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
    assert held == 0


async def test_a_session_setting_is_undone_when_its_connection_goes_back(one_connection: Pool) -> None:
    async with one_connection.acquire() as conn:
        await plan_once(conn)
        assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
    async with one_connection.acquire() as conn:
        assert await conn.fetchval("SHOW plan_cache_mode") == "auto"


async def test_an_open_transaction_is_rolled_back_when_its_connection_goes_back(one_connection: Pool) -> None:
    async with one_connection.acquire() as conn:
        await conn.execute("CREATE TABLE left_open (n int)")
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("INSERT INTO left_open VALUES (1)")
        # Given back inside its transaction (never committed).
    async with one_connection.acquire() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT count(*) FROM left_open") == 0


async def test_only_a_connection_that_held_session_state_pays_the_reset_round_trip(
    one_connection: Pool, database_url: str
) -> None:
    sent: list[str] = []
    async with one_connection.acquire() as conn:
        conn.add_query_logger(lambda record: sent.append(record.query))
        await conn.fetchval("SELECT 1")
    other = await asyncpg.connect(database_url)
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", KEY)
        async with one_connection.acquire() as conn:  # a lock not granted (the lane is owned): no state
            assert not await try_advisory_lock(conn, KEY)
    finally:
        await other.close()
    async with one_connection.acquire() as conn:
        assert await try_advisory_lock(conn, KEY)
    async with one_connection.acquire() as conn:
        await conn.fetchval("SELECT 2")
    resets = [n for n, query in enumerate(sent) if "pg_advisory_unlock_all" in query]
    locks = [n for n, query in enumerate(sent) if query == "SELECT pg_try_advisory_lock($1)"]
    assert len(locks) == 2 and resets == [locks[1] + 1], sent  # after the granted lock's loan only
