"""`kiota ops`: what an operator types to find and fix a stuck deposit."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from kiota import ledger, operators
from kiota.deposits import complete_job_id
from kiota.hdwallet import ExtendedPublicKey
from kiota.store.ledger import post_entry
from kiota.users import ensure_user
from tests.support import TEST_XPUB

SHELL_PASSWORD = "an operator's shell password 1"


async def shell_operators(pool: asyncpg.Pool, *names: str) -> None:
    """Operator accounts for the shell's money actions, each with SHELL_PASSWORD."""
    for name in names:
        await operators.add_operator(pool, name, "operator", SHELL_PASSWORD)


async def kiota_ops(
    database_url: str, redis_url: str, *args: str, stderr_too: bool = True, password: str | None = None
) -> tuple[int, str]:
    """The command's exit code and output (standard error too, unless only what a script reads is wanted);
    `password` is typed on its standard input (the money actions ask for `--by`'s)."""
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
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if stderr_too else asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate(b"" if password is None else f"{password}\n".encode())
    return proc.returncode or 0, out.decode()


async def ops_json(database_url: str, redis_url: str, *args: str) -> tuple[int, Any]:
    """`kiota ops --json …`: its exit code and the one JSON document on its standard output."""
    code, out = await kiota_ops(database_url, redis_url, "--json", *args, stderr_too=False)
    return code, json.loads(out)


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
    assert code == 1, out  # something needs a person
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
    assert code == 1, out  # payouts are stopped: that needs a person
    assert "kill_switch=True" in out and "per_deposit_max=150.500000" in out and "daily_cap=5000.000000" in out
    code, out = await kiota_ops(database_url, redis_url, "kill-switch", "off")
    assert code == 0
    guards = await pool.fetchrow("SELECT * FROM payout_guards")
    assert not guards["kill_switch"] and guards["updated_by"] == "tester"
    code, out = await kiota_ops(database_url, redis_url, "review")
    assert code == 0 and "(none)" in out


async def test_a_treasurys_lane_is_shown_and_resumed_alone_from_the_command_line(
    pool: asyncpg.Pool, database_url: str, redis_url: str
) -> None:
    dry, other = "0x" + "aB" * 20, "0x" + "Cd" * 20
    await pool.execute(
        "INSERT INTO treasury_lanes (chain_id, address, paused, pause_reason) VALUES "
        "(8453, $1, true, 'treasury USDC 0 is below the payout 10'), (8453, $2, true, 'treasury ETH 0 wei')",
        dry,
        other,
    )
    code, out = await kiota_ops(database_url, redis_url, "guards")
    assert code == 1, out  # a paused lane needs a person
    assert f"treasury {dry} lane paused: treasury USDC 0 is below the payout 10" in out
    code, out = await kiota_ops(database_url, redis_url, "resume-lane", "--treasury", dry.lower())
    assert code == 0 and f"lane of treasury {dry.lower()} resumed" in out, out
    lanes = {r["address"]: r["paused"] for r in await pool.fetch("SELECT * FROM treasury_lanes")}
    assert lanes == {dry: False, other: True}
    code, out = await kiota_ops(database_url, redis_url, "resume-lane")  # every lane
    assert code == 0 and "lanes resumed" in out
    assert not await pool.fetchval("SELECT bool_or(paused) FROM treasury_lanes")
    code, out = await kiota_ops(database_url, redis_url, "guards")
    assert code == 0, out


async def test_the_shell_answers_scripts_in_json_and_says_by_its_exit_what_needs_a_person(
    pool: asyncpg.Pool, database_url: str, redis_url: str
) -> None:
    assert await ops_json(database_url, redis_url, "stuck") == (0, {"items": []})
    deposit_id = await paid_deposit_in_review(pool)
    code, answer = await ops_json(database_url, redis_url, "stuck")
    [row] = answer["items"]
    assert code == 1 and row["id"] == str(deposit_id) and row["amount_kes"] == 1295  # money as an integer

    code, answer = await ops_json(database_url, redis_url, "retry", str(deposit_id))
    job_id = complete_job_id(deposit_id)
    assert code == 0 and answer["job_id"] == job_id
    code, answer = await ops_json(database_url, redis_url, "jobs", "--deposit-id", str(deposit_id))
    [job] = answer["items"]
    assert code == 0 and (job["job_id"], job["status"], job["queue"]) == (job_id, "queued", "payouts")
    code, out = await kiota_ops(database_url, redis_url, "cancel-job", job_id)
    assert code == 0 and f"its deposit {deposit_id} is in review" in out
    code, answer = await ops_json(database_url, redis_url, "job", job_id)
    assert code == 0 and answer["status"] == "cancelled" and answer["job"]["id"] == job_id
    code, out = await kiota_ops(database_url, redis_url, "cancel-job", job_id)
    assert code == 2 and "kiota:" in out  # refused: it is not waiting any more


async def test_a_clean_draws_its_progress_and_refuses_today(
    pool: asyncpg.Pool, database_url: str, redis_url: str
) -> None:
    for n in range(3):
        await pool.execute(
            "INSERT INTO jobs (id, function, queue, status, enqueued_at, finished_at) "
            "VALUES ($1, 'scan_chain_tick', 'chain', 'succeeded', now() - interval '9 days', "
            "now() - interval '9 days')",
            f"cron:scan_chain_tick:{n}",
        )
    code, out = await kiota_ops(database_url, redis_url, "clean", "--older-than-days", "0")
    assert code == 2 and "at least 1 day" in out
    code, out = await kiota_ops(database_url, redis_url, "--progress", "clean", "--older-than-days", "7")
    assert code == 0 and "cleaning [" + "#" * 30 + "] 3/3 100%" in out, out
    assert out.rstrip().endswith("cleaned 3 job(s) and 0 attempt(s) that ended more than 7 days ago")
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 0
