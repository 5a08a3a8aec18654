"""The job history that explains itself: every attempt a row with its outcome, error and traceback, the
job's own log lines, cron rounds as jobs of their queue, read through `GET /api/v1/jobs` (admin)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
import structlog
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix

from kiota.deposits import complete_job_id
from kiota.job_history import JobHistory, finish_paid_jobs, record_job
from kiota.job_names import JobName, arq_queue_of
from kiota.logging import job_logs
from kiota.queue import create_queue
from kiota.store.jobs import job_by_id
from tests.conftest import MpesaSystem
from tests.integration.test_dashboard_queues import deposit
from tests.support import ADMIN_AUTH, bearer


@pytest.fixture
def keeping_job_logs() -> Iterator[None]:
    """structlog as `configure_logging` sets it up, as far as the jobs' own lines go (tests never call it)."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            job_logs,
            structlog.processors.JSONRenderer(),
        ]
    )
    try:
        yield
    finally:
        structlog.reset_defaults()


async def job_of(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await http.get(f"/api/v1/jobs/{job_id}", auth=ADMIN_AUTH)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def listed(http: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    response = await http.get("/api/v1/jobs", params=params, auth=ADMIN_AUTH)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


@pytest.mark.system_settings(intent_poll_seconds=1)
async def test_a_paid_deposit_shows_its_job_with_its_attempt_and_its_log_lines(
    keeping_job_logs: None, mpesa_system: MpesaSystem
) -> None:
    system = mpesa_system
    pending = await system.deposit("alice", (await system.initiate("alice", 1500)).json()["deposit_id"])
    assert pending["job_id"] is None  # not paid yet: no completion job
    done = await system.wait_status("alice", pending["deposit_id"], "completed")
    assert done["job_id"] == complete_job_id(pending["deposit_id"])
    listed_deposit = (await system.http.get("/api/v1/deposits", headers=bearer("alice"))).json()["items"][0]
    assert listed_deposit["job_id"] == done["job_id"]

    job = await job_of(system.http, done["job_id"])
    assert set(job) == {
        "job_id", "function", "queue", "status", "deposit_id", "intent_id", "attempts", "logs", "last_error",
        "enqueued_at", "started_at", "finished_at",
    }  # fmt: skip
    assert job["function"] == "complete_mpesa_deposit" and job["queue"] == "payouts"
    assert job["status"] == "succeeded" and job["deposit_id"] == done["deposit_id"] and job["intent_id"] is None
    [attempt] = job["attempts"]
    assert attempt["outcome"] == "succeeded" and attempt["error"] is None
    started, finished = datetime.fromisoformat(attempt["started_at"]), datetime.fromisoformat(attempt["finished_at"])
    assert datetime.fromisoformat(job["enqueued_at"]) <= started < finished  # a duration
    assert job["logs"], "the job's own lines are kept with it"
    assert all(line["level"] in {"info", "warning", "error"} and "job_id" not in line for line in job["logs"])
    assert all(line.get("deposit_id") == done["deposit_id"] for line in job["logs"])

    by_deposit = await listed(system.http, deposit_id=done["deposit_id"])
    assert [j["job_id"] for j in by_deposit] == [done["job_id"]]

    # The scan rounds of the running worker are jobs too: queue `chain`, with their progress.
    async with asyncio.timeout(10):
        while not (rounds := await listed(system.http, function="scan_chain_tick", status="succeeded")):
            await asyncio.sleep(0.1)
    assert rounds[0]["queue"] == "chain" and rounds[0]["attempts"][0]["outcome"] == "succeeded"
    scan = await job_by_id(system.pool, rounds[0]["job_id"])
    assert scan is not None and scan.progress is not None
    assert scan.progress["blocks_done"] == scan.progress["blocks_total"] > 0


async def test_a_job_that_failed_once_then_succeeded_shows_both_attempts_with_the_traceback(
    pool: asyncpg.Pool, client: httpx.AsyncClient
) -> None:
    await record_job(pool, "complete_mpesa_deposit:x", "complete_mpesa_deposit", None)
    history = JobHistory(pool, "complete_mpesa_deposit:x", "worker-1")
    assert await history.started() == 0
    try:
        raise ConnectionResetError("the RPC hung up")
    except ConnectionResetError as exc:
        assert await history.failed_once("ConnectionResetError: the RPC hung up", 0.0, cause=exc) == 1
    retrying = await job_of(client, "complete_mpesa_deposit:x")
    assert retrying["status"] == "retrying" and retrying["last_error"] == "ConnectionResetError: the RPC hung up"
    assert await history.started() == 1
    await history.succeeded()

    job = await job_of(client, "complete_mpesa_deposit:x")
    assert job["status"] == "succeeded" and job["finished_at"]
    first, second = job["attempts"]
    assert first["outcome"] == "failed" and second["outcome"] == "succeeded" and second["error"] is None
    assert first["error"].startswith("ConnectionResetError: the RPC hung up")
    assert "Traceback (most recent call last)" in first["error"] and "test_job_history.py" in first["error"]
    assert first["finished_at"] <= second["started_at"]


async def test_a_job_that_waits_is_deferred_and_the_list_filters(pool: asyncpg.Pool, client: httpx.AsyncClient) -> None:
    for job_id in ("query_mpesa_deposit:a", "query_mpesa_deposit:b", "complete_mpesa_deposit:c"):
        await record_job(pool, job_id, job_id.split(":")[0], None)
    waiting = JobHistory(pool, "query_mpesa_deposit:a")
    await waiting.started()
    await waiting.waiting(30.0)
    failing = JobHistory(pool, "query_mpesa_deposit:b")
    await failing.started()
    await failing.failed_once("TimeoutError: Daraja", 30.0)

    assert [j["job_id"] for j in await listed(client, status="deferred")] == ["query_mpesa_deposit:a"]
    assert [j["job_id"] for j in await listed(client, status="retrying")] == ["query_mpesa_deposit:b"]
    assert [j["job_id"] for j in await listed(client, status="queued")] == ["complete_mpesa_deposit:c"]
    assert [j["job_id"] for j in await listed(client, function="query_mpesa_deposit")] == [
        "query_mpesa_deposit:b",
        "query_mpesa_deposit:a",
    ]  # newest first
    assert len(await listed(client, limit="2")) == 2
    assert (await job_of(client, "query_mpesa_deposit:a"))["attempts"][0]["outcome"] == "deferred"
    bad = await client.get("/api/v1/jobs", params={"status": "running"}, auth=ADMIN_AUTH)
    assert bad.status_code == 422  # the contract's statuses only


async def test_an_unknown_job_is_404_and_no_admin_credentials_401(
    pool: asyncpg.Pool, client: httpx.AsyncClient
) -> None:
    await record_job(pool, "complete_mpesa_deposit:y", "complete_mpesa_deposit", None)
    assert (await client.get("/api/v1/jobs/nope", auth=ADMIN_AUTH)).status_code == 404
    for path in ("/api/v1/jobs/complete_mpesa_deposit:y", "/api/v1/jobs"):
        refused = await client.get(path)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
        assert (await client.get(path, auth=(ADMIN_AUTH[0], "wrong"))).status_code == 401


async def test_a_lane_owner_finishes_only_the_waiting_jobs_of_deposits_it_paid_and_arq_forgets_them(
    pool: asyncpg.Pool, redis_url: str
) -> None:
    """`finish_paid_jobs` (a lane owner's turn paid these deposits): a job waiting for a later run leaves arq's
    queue and succeeds; one a worker has begun meanwhile, one still running, and one of a deposit not paid (never
    passed by a lane; here to show it is not trusted) are not touched, here or in arq. With Redis gone nothing is
    raised and nothing changes: the job runs again and finds its deposit paid."""
    queue = create_queue(redis_url)
    function = JobName.COMPLETE_MPESA_DEPOSIT
    arq_queue = arq_queue_of(function)
    try:
        paid, begun, running, unpaid = [await deposit(pool, "processing") for _ in range(4)]
        await _paid(pool, paid, begun, running)
        for deposit_id in (paid, begun, running, unpaid):
            job_id = complete_job_id(deposit_id)
            await record_job(pool, job_id, function, deposit_id)
            await queue.enqueue_job(function, str(deposit_id), _job_id=job_id, _queue_name=arq_queue, _defer_by=60)
            history = JobHistory(pool, job_id)
            await history.started()
            if deposit_id != running:
                await history.waiting(60)
        for deposit_id in (begun, running):  # a worker has begun it (again, or still runs it)
            await queue.set(in_progress_key_prefix + complete_job_id(deposit_id), b"1")

        paid_now = [paid, begun, running, unpaid]
        assert await finish_paid_jobs(pool, paid_now, queue=queue, paid_by="owner:1") == 1

        statuses = {r["deposit_id"]: r["status"] for r in await pool.fetch("SELECT deposit_id, status FROM jobs")}
        assert statuses == {paid: "succeeded", begun: "retrying", running: "running", unpaid: "retrying"}
        logs = await pool.fetchval("SELECT logs FROM jobs WHERE deposit_id = $1", paid)
        assert logs[-1]["event"] == "deposit paid in its lane owner's turn: no further run needed"
        assert logs[-1]["paid_in_turn_of"] == "owner:1"
        in_arq = {d: await queue.zscore(arq_queue, complete_job_id(d)) is not None for d in statuses}
        assert in_arq == {paid: False, begun: True, running: True, unpaid: True}
        assert not await queue.exists(job_key_prefix + complete_job_id(paid), retry_key_prefix + complete_job_id(paid))
        row = await pool.fetchrow("SELECT * FROM jobs WHERE deposit_id = $1", paid)
        assert row["next_run_at"] is None and row["last_outcome"] == "succeeded" and row["finished_at"] is not None
    finally:
        await queue.aclose(close_connection_pool=True)

    gone = create_queue("redis://127.0.0.1:1/0")  # nobody listens there
    try:
        again = await deposit(pool, "processing")
        await _paid(pool, again)
        await record_job(pool, complete_job_id(again), function, again)
        history = JobHistory(pool, complete_job_id(again))
        await history.started()
        await history.waiting(60)
        assert await finish_paid_jobs(pool, [again], queue=gone, paid_by="owner:2") == 0
        assert await pool.fetchval("SELECT status FROM jobs WHERE deposit_id = $1", again) == "retrying"
    finally:
        await gone.aclose(close_connection_pool=True)


async def _paid(pool: asyncpg.Pool, *deposit_ids: uuid.UUID) -> None:
    await pool.execute(
        "UPDATE deposits SET status = 'completed', completed_at = now(), tx_hash = '0x' || md5(id::text) "
        "WHERE id = ANY($1::uuid[])",
        list(deposit_ids),
    )


async def test_a_run_that_ends_after_an_operator_queued_its_job_again_leaves_it_queued_and_says_so(
    pool: asyncpg.Pool,
) -> None:
    """An operator's retry during a run (arq refuses its enqueue while the run holds the job id) must not be
    overwritten by the run's success: the deposit would stay processing with its job 'succeeded', and no sweeper
    queues a succeeded job. The run learns it was queued again (and its job, jobs/payouts.py, runs again)."""
    plain, retried, cancelled = [await deposit(pool, "processing") for _ in range(3)]
    for deposit_id in (plain, retried, cancelled):
        await record_job(pool, complete_job_id(deposit_id), JobName.COMPLETE_MPESA_DEPOSIT, deposit_id)
        await JobHistory(pool, complete_job_id(deposit_id)).started()
    await record_job(pool, complete_job_id(retried), JobName.COMPLETE_MPESA_DEPOSIT, retried, reset=True)
    await pool.execute("UPDATE jobs SET status = 'cancelled' WHERE id = $1", complete_job_id(cancelled))

    ends = {d: await JobHistory(pool, complete_job_id(d)).succeeded() for d in (plain, retried, cancelled)}

    assert ends == {plain: False, retried: True, cancelled: False}
    statuses = {r["deposit_id"]: r["status"] for r in await pool.fetch("SELECT deposit_id, status FROM jobs")}
    assert statuses == {plain: "succeeded", retried: "queued", cancelled: "cancelled"}
