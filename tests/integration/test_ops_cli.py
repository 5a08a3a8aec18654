"""`kiota ops`: what an operator types to find and fix a stuck deposit."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import asyncpg
from redis.asyncio import Redis

from kiota import ledger
from kiota.deposits import complete_job_id
from kiota.hdwallet import ExtendedPublicKey
from kiota.store.ledger import post_entry
from kiota.users import ensure_user
from tests.support import TEST_XPUB


async def kiota_ops(database_url: str, redis_url: str, *args: str) -> tuple[int, str]:
    env = {"PATH": os.environ["PATH"], "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kiota.cli",
        "ops",
        "--by",
        "tester",
        *args,
        env=env,
        cwd=Path(__file__).parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def paid_deposit_in_review(pool: asyncpg.Pool) -> uuid.UUID:
    await ensure_user(pool, "olga", ExtendedPublicKey.parse(TEST_XPUB))
    deposit_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO deposits (id, user_id, status, amount_kes, kes_per_usd, amount_usdc, phone_masked, "
            "checkout_request_id, mpesa_receipt, received_kes, review_reason) "
            "VALUES ($1, 'olga', 'needs_review', 1295, $2, 10000000, '2547****4149', 'ws_CO_1', 'ABC123DEF4', 1295, "
            "'payout failed 5 times; last error: RPC failed')",
            deposit_id,
            Decimal("129.50"),
        )
        await post_entry(conn, ledger.mpesa_received(str(deposit_id), 1295))
    return deposit_id


async def test_find_and_retry_a_stuck_deposit(pool: asyncpg.Pool, database_url: str, redis_url: str) -> None:
    deposit_id = await paid_deposit_in_review(pool)
    code, out = await kiota_ops(database_url, redis_url, "stuck")
    assert code == 0, out
    assert str(deposit_id) in out and "payout failed 5 times" in out

    code, out = await kiota_ops(database_url, redis_url, "retry", str(deposit_id))
    assert code == 0, out
    assert f"retrying {deposit_id}" in out
    assert await pool.fetchval("SELECT status FROM deposits WHERE id = $1", deposit_id) == "processing"
    job = await pool.fetchrow("SELECT * FROM jobs WHERE deposit_id = $1", deposit_id)
    assert job["id"] == complete_job_id(deposit_id) and job["status"] == "queued" and job["failures"] == 0
    redis = Redis.from_url(redis_url)
    try:
        assert await redis.zscore("arq:queue:payouts", complete_job_id(deposit_id)) is not None
    finally:
        await redis.aclose()

    code, out = await kiota_ops(database_url, redis_url, "retry", str(deposit_id))
    assert code == 0  # still processing: re-enqueued again, harmlessly


async def test_retry_refuses_what_it_cannot_help(pool: asyncpg.Pool, database_url: str, redis_url: str) -> None:
    code, out = await kiota_ops(database_url, redis_url, "retry", "not-an-id")
    assert code == 2 and "not a deposit id" in out
    code, out = await kiota_ops(database_url, redis_url, "retry", str(uuid.uuid4()))
    assert code == 2 and "no deposit" in out


async def test_guards_from_the_command_line(pool: asyncpg.Pool, database_url: str, redis_url: str) -> None:
    code, out = await kiota_ops(database_url, redis_url, "kill-switch", "on")
    assert code == 0 and "kill switch on" in out
    code, out = await kiota_ops(database_url, redis_url, "limits", "--per-deposit", "150.5", "--daily", "5000")
    assert code == 0, out
    assert "kill_switch=True" in out and "per_deposit_max=150.500000" in out and "daily_cap=5000.000000" in out
    code, out = await kiota_ops(database_url, redis_url, "kill-switch", "off")
    assert code == 0
    guards = await pool.fetchrow("SELECT * FROM payout_guards")
    assert not guards["kill_switch"] and guards["updated_by"] == "tester"
    code, out = await kiota_ops(database_url, redis_url, "review")
    assert code == 0 and "(none)" in out
