"""Migrations against real PostgreSQL: empty database, twice, concurrently, edited."""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg
import pytest

from kiota.errors import MigrationError
from kiota.migrate import Migration, discover, migrate
from tests.support import REPO

EXPECTED_TABLES = {
    "users",
    "assets",
    "accounts",
    "journal_entries",
    "postings",
    "idempotency_keys",
    "worker_heartbeats",
    "schema_migrations",
}


async def _schema(dsn: str) -> tuple[set[str], list[tuple[str, str]]]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = {
            r["table_name"]
            for r in await conn.fetch("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        }
        applied = [
            (r["version"], r["name"])
            for r in await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        ]
        return tables, applied
    finally:
        await conn.close()


async def test_all_migrations_apply_to_an_empty_database_and_again_do_nothing(
    empty_database_url: str,
) -> None:
    first = await migrate(empty_database_url)  # also creates the database
    assert first == [m.version for m in discover()]
    assert await migrate(empty_database_url) == []
    tables, applied = await _schema(empty_database_url)
    assert EXPECTED_TABLES <= tables
    assert applied == [(m.version, m.name) for m in discover()]


async def _run_cli_migrate(dsn: str) -> tuple[int, str]:
    env = {**os.environ, "DATABASE_URL": dsn}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kiota.cli",
        "migrate",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_kiota_migrate_twice_concurrently_leaves_one_correct_schema(empty_database_url: str) -> None:
    results = await asyncio.gather(*(_run_cli_migrate(empty_database_url) for _ in range(2)))
    assert [code for code, _ in results] == [0, 0], results
    counts = sorted(int(out.split("kiota migrate: ")[1].split()[0]) for _, out in results)
    assert counts == [0, len(discover())], results  # one applied everything, the other nothing
    code, out = await _run_cli_migrate(empty_database_url)
    assert code == 0 and "0 applied" in out
    tables, applied = await _schema(empty_database_url)
    assert EXPECTED_TABLES <= tables
    assert len(applied) == len(discover())


async def test_an_edited_migration_is_refused(empty_database_url: str) -> None:
    original = discover()
    await migrate(empty_database_url, original)
    edited = [Migration(original[0].version, original[0].name, original[0].sql + "\n-- edited\n"), *original[1:]]
    with pytest.raises(MigrationError, match="edited after it was applied"):
        await migrate(empty_database_url, edited)


async def test_a_failing_migration_rolls_back_and_is_not_recorded(empty_database_url: str) -> None:
    broken = [*discover(), Migration("9999", "broken", "CREATE TABLE half_done (id int); SELECT 1/0;")]
    with pytest.raises(asyncpg.DivisionByZeroError):
        await migrate(empty_database_url, broken)
    tables, applied = await _schema(empty_database_url)
    assert "half_done" not in tables
    assert "9999" not in [v for v, _ in applied]


async def test_0009_numbers_transfers_recorded_by_the_old_key_and_keeps_their_credit_keys(
    empty_database_url: str,
) -> None:
    """Before 0009 a transfer was keyed by its log index, so one mined again behind another log became a second
    row (the old one orphaned). 0009 keys transfers by what they are: the live row must be the one a log on chain
    matches (seq 0), each credited row keeps the key of its journal entry, and the new key holds."""
    migrations = discover()
    before = [m for m in migrations if m.version < "0009"]
    await migrate(empty_database_url, before)
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(
            "INSERT INTO users (id, address_index, deposit_address) VALUES ('u', 0, '0x' || repeat('b', 40))"
        )
        row = (
            "INSERT INTO chain_transfers (chain_id, tx_hash, log_index, block_number, block_hash, token_address, "
            "from_address, to_address, amount_micro, user_id, kind, status) "
            "VALUES (8453, $1, $2, 10, '0xb', '0xt', '0xf', '0x' || repeat('b', 40), $3, 'u', 'deposit', $4) "
            "RETURNING id"
        )
        orphaned = await conn.fetchval(row, "0xaa", 0, 5, "orphaned")
        live = await conn.fetchval(row, "0xaa", 1, 5, "credited")
        other = await conn.fetchval(row, "0xaa", 2, 6, "seen")
        await migrate(empty_database_url)
        rows = {r["id"]: r for r in await conn.fetch("SELECT id, seq, credit_key, gone_rounds FROM chain_transfers")}
        assert [(rows[i]["seq"], rows[i]["credit_key"]) for i in (orphaned, live, other)] == [
            (1, None),
            (0, "usdc:8453:0xaa:1"),
            (0, None),
        ]
        with pytest.raises(asyncpg.UniqueViolationError):  # the same transfer again, at another index
            await conn.fetchval(row, "0xaa", 7, 6, "seen")
    finally:
        await conn.close()
