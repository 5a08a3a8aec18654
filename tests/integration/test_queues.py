"""Named queues: a pause holds jobs without losing one, `--queues` serves a subset, jobs left in arq's old
default queue move to theirs, the stats, `kiota worker --check`, and the treasury key only where payouts run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from eth_account import Account

from kiota import operators, queues
from kiota.job_names import ARQ_DEFAULT_QUEUE, Queue, arq_queue_name
from kiota.queue import adopt_default_queue, create_queue
from kiota.settings import Settings
from tests.conftest import MpesaSystem
from tests.integration.test_operators import PASSWORD, csrf_token, origin
from tests.integration.test_ops_cli import kiota_ops
from tests.support import TREASURY_KEY, base_env

PAYOUTS = arq_queue_name(Queue.PAYOUTS)


async def wait_for(predicate: object, seconds: float = 20) -> None:
    async with asyncio.timeout(seconds):
        while not await predicate():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def completions_queued(system: MpesaSystem) -> int:
    """The deposits' completion jobs waiting in the payouts queue (the lane's upkeep cron waits there too)."""
    members = await system.queue.zrange(PAYOUTS, 0, -1)
    return sum(m.decode().startswith("complete_mpesa_deposit:") for m in members)


async def paid_deposits(system: MpesaSystem, users: list[str]) -> list[str]:
    """Deposits whose success callback came: each one's completion job is recorded and queued."""
    ids = [(await system.initiate(user, 1295)).json()["deposit_id"] for user in users]

    async def queued() -> bool:
        return await completions_queued(system) == len(ids)

    await wait_for(queued)
    return ids


async def test_a_paused_queue_holds_its_jobs_and_resume_runs_every_one(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    state = await queues.pause(system.pool, system.queue, "payouts", "amina")
    assert state.paused and state.changed_by == "amina"
    ids = await paid_deposits(system, ["u1", "u2", "u3"])
    await asyncio.sleep(1.0)  # twenty polls of the payouts worker
    assert await completions_queued(system) == 3  # held in Redis, none taken
    statuses = await system.pool.fetch("SELECT status FROM jobs WHERE function = 'complete_mpesa_deposit'")
    assert [r["status"] for r in statuses] == ["queued"] * 3
    assert await system.pool.fetchval("SELECT count(*) FROM payouts") == 0
    # Redis wiped of the pause (a flush, a restart): the worker's heartbeat tells it again from PostgreSQL.
    await system.queue.delete(queues.paused_key(Queue.PAYOUTS))
    assert await queues.mirror_pauses(system.pool, system.queue) == {
        "chain": False,
        "maintenance": False,
        "payouts": True,
    }
    assert await queues.paused_in_redis(system.queue, Queue.PAYOUTS)

    await queues.resume(system.pool, system.queue, "payouts", "amina")
    for deposit_id, user in zip(ids, ["u1", "u2", "u3"], strict=True):
        await system.wait_status(user, deposit_id, "completed")
    assert await system.pool.fetchval("SELECT count(*) FROM payouts") == 3
    actions = await operators.actions_on(system.pool, "queue", "payouts")
    assert [(a.actor, a.action, a.before, a.after) for a in reversed(actions)] == [
        ("amina", "pause_queue", {"paused": False}, {"paused": True}),
        ("amina", "resume_queue", {"paused": True}, {"paused": False}),
    ]


@pytest.mark.no_worker
async def test_a_worker_consumes_only_the_queues_it_is_given(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    await system.start_worker(queues="chain,maintenance")
    assert [w.queue for w in system.workers] == [Queue.CHAIN, Queue.MAINTENANCE]
    [deposit_id] = await paid_deposits(system, ["u1"])
    await asyncio.sleep(1.0)
    assert await completions_queued(system) == 1  # nobody here takes payouts
    assert (await system.deposit("u1", deposit_id))["status"] == "processing"
    await system.stop_worker()
    await system.start_worker(queues="payouts")
    await system.wait_status("u1", deposit_id, "completed")


@pytest.mark.no_worker
async def test_jobs_left_in_arqs_old_default_queue_are_not_lost_at_the_upgrade(mpesa_system: MpesaSystem) -> None:
    """The previous release queued every job in `arq:queue`: a worker's start moves them to their queues."""
    system = mpesa_system
    [deposit_id] = await paid_deposits(system, ["u1"])
    job_id = f"complete_mpesa_deposit:{deposit_id}"
    score = await system.queue.zscore(PAYOUTS, job_id)
    assert score is not None
    async with system.queue.pipeline(transaction=True) as tr:  # as the old release left it
        tr.zrem(PAYOUTS, job_id)
        tr.zadd(ARQ_DEFAULT_QUEUE, {job_id: score})
        await tr.execute()
    await system.start_worker()
    await system.wait_status("u1", deposit_id, "completed")
    assert await system.queue.zcard(ARQ_DEFAULT_QUEUE) == 0


async def test_adopting_the_default_queue_keeps_each_jobs_place_and_leaves_foreign_jobs(redis_url: str) -> None:
    queue = create_queue(redis_url)
    try:
        await queue.enqueue_job("complete_mpesa_deposit", "d1", _job_id="complete_mpesa_deposit:d1", _defer_by=60)
        await queue.enqueue_job("scan_chain_tick", _job_id="cron:scan_chain_tick:1")
        await queue.enqueue_job("somebody_elses", _job_id="theirs")
        await queue.zadd(ARQ_DEFAULT_QUEUE, {"expired": 1})  # its job key is gone
        before = await queue.zscore(ARQ_DEFAULT_QUEUE, "complete_mpesa_deposit:d1")
        assert await adopt_default_queue(queue) == 2
        assert await queue.zscore(PAYOUTS, "complete_mpesa_deposit:d1") == before  # still deferred a minute
        assert await queue.zscore(arq_queue_name(Queue.CHAIN), "cron:scan_chain_tick:1") is not None
        assert {m.decode() for m in await queue.zrange(ARQ_DEFAULT_QUEUE, 0, -1)} == {"theirs", "expired"}
        assert await adopt_default_queue(queue) == 0  # twice: nothing doubled
    finally:
        await queue.aclose(close_connection_pool=True)


# --- over HTTP and the shell ----------------------------------------------------------------------


async def test_pause_and_resume_over_http_need_an_operator_and_the_csrf_token(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    await operators.add_operator(pool, "viewer1", "viewer", PASSWORD)
    await operators.add_operator(pool, "achieng", "operator", PASSWORD)
    viewer, operator = ("viewer1", PASSWORD), ("achieng", PASSWORD)
    pause = "/api/v1/admin/queues/chain/pause"
    viewer_token = await csrf_token(client, viewer)
    headers = {**origin(settings), "X-CSRF-Token": viewer_token}
    assert (await client.post(pause, auth=viewer, headers=headers)).status_code == 403
    assert (await client.post(pause, auth=operator, headers=origin(settings))).status_code == 403  # no token
    token = await csrf_token(client, operator)
    headers = {**origin(settings), "X-CSRF-Token": token}
    assert (await client.post(pause, auth=operator, headers={"X-CSRF-Token": token})).status_code == 403
    assert await queues.paused(pool) == {"chain": False, "maintenance": False, "payouts": False}
    assert await pool.fetchval("SELECT count(*) FROM admin_actions") == 0

    response = await client.post(pause, auth=operator, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["paused"] is True and response.json()["changed_by"] == "achieng"
    assert (await client.post("/api/v1/admin/queues/nope/pause", auth=operator, headers=headers)).status_code == 422
    stats = (await client.get("/api/v1/admin/stats", auth=viewer)).json()
    assert stats["queues"]["chain"]["paused"] is True and stats["queues"]["payouts"]["paused"] is False
    response = await client.post("/api/v1/admin/queues/chain/resume", auth=operator, headers=headers)
    assert response.status_code == 200 and response.json()["paused"] is False
    actions = await operators.actions_on(pool, "queue", "chain")
    assert [(a.actor, a.actor_role, a.action) for a in reversed(actions)] == [
        ("achieng", "operator", "pause_queue"),
        ("achieng", "operator", "resume_queue"),
    ]


async def test_the_stats_are_the_contracts_shape(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    from tests.support import ADMIN_AUTH

    await pool.execute(
        "INSERT INTO jobs (id, function, queue, status, last_outcome) VALUES "
        "('a', 'complete_mpesa_deposit', 'payouts', 'queued', NULL), "
        "('b', 'complete_mpesa_deposit', 'payouts', 'retrying', 'deferred'), "
        "('c', 'complete_mpesa_deposit', 'payouts', 'retrying', 'failed'), "
        "('d', 'scan_chain_tick', 'chain', 'succeeded', 'succeeded')"
    )
    assert (await client.get("/api/v1/admin/stats")).status_code == 401
    response = await client.get("/api/v1/admin/stats", auth=ADMIN_AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"queues", "deposits", "intents", "workers"}
    assert set(body["queues"]) == {"payouts", "chain", "maintenance"}
    words = {"queued", "active", "deferred", "retrying", "blocked", "succeeded", "failed", "paused"}
    for counts in body["queues"].values():
        assert set(counts) == words
        assert counts["paused"] is False
        assert all(type(counts[w]) is int for w in words - {"paused"})
    assert body["queues"]["payouts"] | {"paused": False} == {
        **dict.fromkeys(words, 0),
        "queued": 1,
        "deferred": 1,
        "retrying": 1,
        "paused": False,
    }
    assert body["queues"]["chain"]["succeeded"] == 1
    assert body["deposits"] == {} and body["intents"] == {} and body["workers"] == []


async def test_kiota_ops_pauses_and_resumes_a_queue_and_records_it(
    pool: asyncpg.Pool, database_url: str, redis_url: str
) -> None:
    code, out = await kiota_ops(database_url, redis_url, "pause", "maintenance")
    assert (code, out.strip().splitlines()[-1]) == (0, "queue maintenance paused by tester"), out
    queue = create_queue(redis_url)
    try:
        assert await queues.paused_in_redis(queue, Queue.MAINTENANCE)
        code, out = await kiota_ops(database_url, redis_url, "queues")  # exit 1: a paused queue, no live worker
        assert code == 1 and "maintenance  queued=0" in out and "paused=True" in out and "no live worker" in out
        code, out = await kiota_ops(database_url, redis_url, "resume", "maintenance")
        assert (code, out.strip().splitlines()[-1]) == (0, "queue maintenance resumed by tester"), out
        assert not await queues.paused_in_redis(queue, Queue.MAINTENANCE)
    finally:
        await queue.aclose(close_connection_pool=True)
    actions = await operators.actions_on(pool, "queue", "maintenance")
    assert [(a.actor, a.action) for a in reversed(actions)] == [("tester", "pause_queue"), ("tester", "resume_queue")]
    code, out = await kiota_ops(database_url, redis_url, "pause", "nope")
    assert code == 2 and "invalid choice" in out


# --- `kiota worker`: the key only where payouts run, --check, SIGTERM -------------------------------


async def kiota(env: dict[str, str], *args: str, cwd: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kiota.cli", *args, cwd=cwd, env={"PATH": os.environ["PATH"], **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode().strip()


@asynccontextmanager
async def worker_process(env: dict[str, str], *args: str, cwd: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """A `kiota worker` process, stopped (SIGTERM, then SIGKILL) however the test ends."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kiota.cli", "worker", *args, cwd=cwd, env={"PATH": os.environ["PATH"], **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_a_chain_and_maintenance_worker_needs_no_treasury_key_and_check_sees_its_queues(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    env = base_env(database_url, redis_url)
    code, out = await kiota(env, "worker", cwd=tmp_path)
    assert (code, out) == (2, "kiota: missing required setting TREASURY_PRIVATE_KEY")
    code, out = await kiota(env, "worker", "--queues", "payouts", cwd=tmp_path)
    assert (code, out) == (2, "kiota: missing required setting TREASURY_PRIVATE_KEY")
    code, out = await kiota(env, "worker", "--queues", "chain,maintenance", cwd=tmp_path)
    assert code == 2 and "missing required setting TREASURY_ADDRESS" in out
    code, out = await kiota(env, "worker", "--queues", "payouts,bogus", cwd=tmp_path)
    assert code == 2 and "WORKER_QUEUES" in out
    code, out = await kiota(env, "worker", "--check", cwd=tmp_path)
    assert (code, out) == (1, "kiota worker --check: no live worker consumes payouts, chain, maintenance")

    address = Account.from_key(TREASURY_KEY).address
    without_key = {**env, "TREASURY_ADDRESS": address}
    async with worker_process(without_key, "--queues", "chain,maintenance", cwd=tmp_path) as proc:
        conn = await asyncpg.connect(database_url)
        try:
            async with asyncio.timeout(30):
                while not await conn.fetchval("SELECT queues FROM worker_heartbeats"):
                    assert proc.returncode is None
                    await asyncio.sleep(0.05)
            assert await conn.fetchval("SELECT queues FROM worker_heartbeats") == ["chain", "maintenance"]
        finally:
            await conn.close()
        code, out = await kiota(env, "worker", "--check", "--queues", "chain", cwd=tmp_path)
        assert (code, out) == (0, "kiota worker --check: ok: chain (1 worker(s))")
        code, out = await kiota(env, "worker", "--check", cwd=tmp_path)
        assert (code, out) == (1, "kiota worker --check: no live worker consumes payouts")
        proc.send_signal(signal.SIGTERM)
        log, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, log.decode()
    code, out = await kiota(env, "worker", "--check", "--queues", "maintenance", cwd=tmp_path)
    assert (code, out) == (1, "kiota worker --check: no live worker consumes maintenance")


@pytest.mark.no_worker
async def test_sigterm_during_a_running_payout_pays_it_exactly_once(mpesa_system: MpesaSystem, tmp_path: Path) -> None:
    """A real `kiota worker` gets SIGTERM while a payout job runs (its transaction broadcast, not yet mined):
    the job finishes or is left for the next worker, which completes it; one transfer either way."""
    from tests.integration.test_payout_lane import mining, rpc, transfers_from

    system = mpesa_system
    await rpc(system, "evm_setAutomine", False)
    async with worker_process(system.env(), "--queues", "payouts", cwd=tmp_path) as proc:
        [deposit_id] = [(await system.initiate("u1", 1295)).json()["deposit_id"]]

        async def broadcast() -> bool:
            return bool(
                await system.pool.fetchval("SELECT count(*) FROM payout_attempts WHERE broadcast_at IS NOT NULL")
            )

        await wait_for(broadcast, 30)
        running = await system.pool.fetchval(
            "SELECT status FROM jobs WHERE function = 'complete_mpesa_deposit' AND deposit_id = $1::uuid", deposit_id
        )
        assert running == "running"
        proc.send_signal(signal.SIGTERM)
        log, _ = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, log.decode()[-3000:]
    lines = [json.loads(line) for line in log.decode().splitlines() if line.startswith("{")]
    assert any(line.get("event") == "worker stopping; running jobs may finish" for line in lines)
    async with mining(system):
        await system.start_worker()
        await system.wait_status("u1", deposit_id, "completed", seconds=60)
    assert len(await transfers_from(system, system.treasury_address)) == 1
    assert await system.pool.fetchval("SELECT count(*) FROM payouts WHERE deposit_id = $1::uuid", deposit_id) == 1
