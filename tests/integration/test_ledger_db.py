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
from kiota.sql import load_queries
from kiota.store.ledger import balance, post_entries, post_entry, user_balances
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


async def test_a_batch_posts_each_entry_once(pool: asyncpg.Pool) -> None:
    users = [await ensure_user(pool, f"batch-{i}", ExtendedPublicKey.parse(TEST_XPUB)) for i in range(3)]
    entries = [ledger.usdc_received(8453, f"0x{n:064x}", n % 2, users[n % 3].id, 1_000 + n) for n in range(10)]
    async with pool.acquire() as conn:
        async with conn.transaction():
            first = await post_entries(conn, entries[:4])
        assert [created for _, created in first] == [True] * 4
        async with conn.transaction():  # a replay with new entries: only the new ones are created
            second = await post_entries(conn, entries)
        assert second[:4] == [(entry_id, False) for entry_id, _ in first]
        assert [created for _, created in second[4:]] == [True] * 6
        assert len({entry_id for entry_id, _ in second}) == 10
        assert await conn.fetchval("SELECT count(*) FROM journal_entries") == 10
        assert await conn.fetchval("SELECT count(*) FROM postings") == 20
        for entry, (entry_id, _) in zip(entries, second, strict=True):
            rows = await conn.fetch(load_queries().entry_by_key, entry.key)
            assert {r["id"] for r in rows} == {entry_id}
            assert sorted((r["account_code"], r["direction"], r["amount"]) for r in rows) == sorted(
                (p.account, p.direction.value, p.amount) for p in entry.postings
            )
        for n, user in enumerate(users):
            expected = sum(1_000 + k for k in range(10) if k % 3 == n)
            assert await balance(conn, ledger.user_account(user.id, "USDC")) == expected
        assert await balance(conn, ledger.CUSTODY_USDC) == sum(1_000 + k for k in range(10))
        assert await post_entries(conn, []) == []


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (ledger.mpesa_received("dep-b0", 101), "other postings"),  # its key was used for other postings
        (Entry("k-unknown-b", "test", ledger.transfer("mpesa_float:KES", "nope:KES", "KES", 5)), "unknown account"),
        (Entry("k-asset-b", "test", ledger.transfer("custody:USDC", "mpesa_float:KES", "USDC", 5)), "wrong asset"),
        (ledger.mpesa_received("dep-b1", 5), "twice"),  # named twice in one batch
    ],
    ids=["other-postings", "unknown-account", "wrong-asset", "twice"],
)
async def test_a_batch_with_one_bad_entry_posts_nothing(pool: asyncpg.Pool, bad: Entry, error: str) -> None:
    async with pool.acquire() as conn:
        await post_entry(conn, ledger.mpesa_received("dep-b0", 100))
        batch = [ledger.mpesa_received("dep-b1", 5), bad, ledger.mpesa_received("dep-b2", 7)]
        with pytest.raises(LedgerError, match=error):
            async with conn.transaction():
                await post_entries(conn, batch)
        assert await conn.fetchval("SELECT count(*) FROM journal_entries") == 1
        assert await balance(conn, "mpesa_float:KES") == 100


async def test_the_batch_statement_unbalanced_fails_in_postgres(pool: asyncpg.Pool) -> None:
    """The balance trigger checks every entry of one batch statement at commit, not only the first."""
    postings = [
        ("t1", "mpesa_float:KES", "D", 5), ("t1", "customer_pending:KES", "C", 5),
        ("t2", "mpesa_float:KES", "D", 9), ("t2", "customer_pending:KES", "C", 8),
    ]  # fmt: skip
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.IntegrityConstraintViolationError) as caught:
            async with conn.transaction():  # the statement itself, bypassing every Python check
                await conn.execute(
                    load_queries().insert_entries, ["t1", "t2"], ["raw", "raw"], [None, None],
                    *([row[i] for row in postings] for i in range(2)), ["KES"] * 4,
                    *([row[i] for row in postings] for i in range(2, 4)),
                )  # fmt: skip
        assert caught.value.constraint_name == "entry_balanced"  # type: ignore[attr-defined]
        assert "does not balance" in str(caught.value)
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
