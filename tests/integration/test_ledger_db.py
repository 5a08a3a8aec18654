"""The ledger's invariants, enforced by PostgreSQL itself."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

from kiota import ledger
from kiota.errors import LedgerError
from kiota.hdwallet import ExtendedPublicKey
from kiota.ledger import Direction, Entry, Posting
from kiota.ledger_store import balance, post_entry, user_balances
from kiota.sql import load_queries
from kiota.users import ensure_user
from tests.support import TEST_XPUB


async def _raw_entry(conn: asyncpg.Connection, key: str, postings: list[tuple[str, str, str, int]]) -> None:
    """Insert an entry with plain SQL, bypassing every Python check."""
    async with conn.transaction():
        entry_id = await conn.fetchval(
            "INSERT INTO journal_entries (idempotency_key, kind) VALUES ($1, 'raw') RETURNING id", key
        )
        for code, asset, direction, amount in postings:
            await conn.execute(
                """INSERT INTO postings (entry_id, account_id, asset, direction, amount)
                   SELECT $1, id, $3, $4, $5 FROM accounts WHERE code = $2""",
                entry_id,
                code,
                asset,
                direction,
                amount,
            )


@pytest.mark.parametrize(
    "postings",
    [
        [("mpesa_float:KES", "KES", "D", 100), ("customer_pending:KES", "KES", "C", 99)],
        # Balanced in total value across assets, but not per asset.
        [
            ("mpesa_float:KES", "KES", "D", 100),
            ("customer_pending:KES", "KES", "C", 100),
            ("custody:USDC", "USDC", "D", 5),
            ("treasury:USDC", "USDC", "C", 4),
            ("fx:KES", "KES", "C", 1),
        ],
        [("mpesa_float:KES", "KES", "D", 100)],
    ],
)
async def test_raw_sql_unbalanced_entry_fails_in_postgres(
    pool: asyncpg.Pool, postings: list[tuple[str, str, str, int]]
) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.IntegrityConstraintViolationError) as caught:
            await _raw_entry(conn, "raw-1", postings)
        assert caught.value.constraint_name == "entry_balanced"  # type: ignore[attr-defined]
        assert await conn.fetchval("SELECT count(*) FROM journal_entries") == 0
        assert await conn.fetchval("SELECT count(*) FROM postings") == 0


async def test_an_entry_without_postings_fails_in_postgres(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="no postings"):
            await _raw_entry(conn, "raw-empty", [])


@pytest.mark.parametrize("amount", [0, -5])
async def test_non_positive_amounts_fail_in_postgres(pool: asyncpg.Pool, amount: int) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError):
            await _raw_entry(
                conn, "raw-neg", [("mpesa_float:KES", "KES", "D", amount), ("customer_pending:KES", "KES", "C", amount)]
            )


async def test_a_posting_in_the_wrong_asset_for_its_account_fails(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await _raw_entry(
                conn, "raw-asset", [("mpesa_float:KES", "USDC", "D", 5), ("treasury:USDC", "USDC", "C", 5)]
            )


async def test_the_ledger_is_append_only(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await post_entry(conn, ledger.mpesa_received("dep-1", 100))
        for statement in (
            "UPDATE postings SET amount = amount + 1",
            "DELETE FROM postings",
            "UPDATE journal_entries SET kind = 'x'",
            "DELETE FROM journal_entries",
            "TRUNCATE postings CASCADE",
        ):
            with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="append-only"):
                await conn.execute(statement)
        assert await balance(conn, "customer_pending:KES") == 100


async def test_replaying_an_idempotency_key_creates_nothing_new(pool: asyncpg.Pool) -> None:
    entry = ledger.mpesa_received("dep-2", 1500)
    async with pool.acquire() as conn:
        first_id, created = await post_entry(conn, entry)
        assert created
        for _ in range(3):
            assert await post_entry(conn, entry) == (first_id, False)
        assert await conn.fetchval("SELECT count(*) FROM journal_entries") == 1
        assert await conn.fetchval("SELECT count(*) FROM postings") == 2
        assert await balance(conn, "mpesa_float:KES") == 1500


async def test_concurrent_replays_post_once(pool: asyncpg.Pool) -> None:
    entry = ledger.mpesa_received("dep-3", 700)

    async def post() -> tuple[int, bool]:
        async with pool.acquire() as conn:
            return await post_entry(conn, entry)

    results = await asyncio.gather(*(post() for _ in range(10)))
    assert sum(created for _, created in results) == 1
    assert len({entry_id for entry_id, _ in results}) == 1
    assert await balance(pool, "customer_pending:KES") == 700


async def test_the_same_key_with_other_postings_is_refused(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await post_entry(conn, ledger.mpesa_received("dep-4", 100))
        with pytest.raises(LedgerError, match="other postings"):
            await post_entry(conn, ledger.mpesa_received("dep-4", 101))
        assert await balance(conn, "mpesa_float:KES") == 100


async def test_an_unknown_account_rolls_the_entry_back(pool: asyncpg.Pool) -> None:
    entry = Entry("k-unknown", "test", ledger.transfer("mpesa_float:KES", "nope:KES", "KES", 5))
    async with pool.acquire() as conn:
        with pytest.raises(LedgerError, match="unknown account"):
            await post_entry(conn, entry)
        assert await conn.fetchval("SELECT count(*) FROM journal_entries") == 0


async def test_balances_equal_the_sum_of_postings(pool: asyncpg.Pool) -> None:
    key = ExtendedPublicKey.parse(TEST_XPUB)
    users = [await ensure_user(pool, f"user-{i}", key) for i in range(3)]
    rng = random.Random(7)
    expected: dict[str, int] = {u.id: 0 for u in users}
    async with pool.acquire() as conn:
        for n in range(60):
            user = rng.choice(users)
            kes = rng.randint(10, 250_000)
            usdc = rng.randint(1, 2_000_000_000)
            await post_entry(conn, ledger.mpesa_received(f"d{n}", kes))
            await post_entry(conn, ledger.mpesa_converted_and_paid(f"d{n}", user.id, kes, usdc))
            tx = "0x" + f"{n:064x}"
            await post_entry(conn, ledger.usdc_received(8453, tx, 0, user.id, usdc))
            expected[user.id] += 2 * usdc
        for user in users:
            code = ledger.user_account(user.id, "USDC")
            from_view = await balance(conn, code)
            from_postings = await conn.fetchval(load_queries().balance_from_postings, code)
            assert from_view == from_postings == expected[user.id]
            assert await user_balances(conn, user.id) == {"USDC": expected[user.id]}
        # The whole book balances per asset.
        totals = await conn.fetch(
            "SELECT asset, sum(CASE direction WHEN 'D' THEN amount ELSE -amount END) AS net "
            "FROM postings GROUP BY asset"
        )
        assert {r["asset"]: r["net"] for r in totals} == {"KES": 0, "USDC": 0}


async def test_python_refuses_before_the_database_would() -> None:
    with pytest.raises(LedgerError):
        Entry("k", "t", (Posting("a", "KES", Direction.DEBIT, 5), Posting("b", "KES", Direction.CREDIT, 6)))
