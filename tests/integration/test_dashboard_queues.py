"""The dashboard's queues and jobs (`/admin/queues`, `/admin/jobs`, `/admin/jobs/{id}`, `/admin/actions`): what
operators see (counts, rates, depth, filtered lists, a job's attempts, logs and masked arguments) and what they do
(retry, batch retry, cancel, clean, the guards), each recorded, refused to viewers and to forged requests."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from html import unescape
from urllib.parse import quote, unquote, urlencode

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from api.dashboard.render import NOTICE_COOKIE
from kiota import job_actions, ledger, operators
from kiota.deposits import complete_job_id
from kiota.hdwallet import ExtendedPublicKey
from kiota.job_history import JobHistory, record_job
from kiota.job_names import JobName, Queue
from kiota.job_view import TickRun
from kiota.ops import stuck_deposits
from kiota.queue import create_queue
from kiota.queue_stats import sample_depth
from kiota.settings import Settings
from kiota.store import jobs as job_store
from kiota.store.ledger import post_entry
from kiota.sweeper import query_job_id, reenqueue_orphans, sweep
from kiota.users import ensure_user
from tests.integration.test_operators import csrf_token
from tests.support import ADMIN_AUTH, TEST_XPUB

PASSWORD = "correct horse battery staple 7"
VIEWER = ("viewer1", PASSWORD)
ARQ_QUEUE = "arq:queue:payouts"  # completions and STK queries wait here


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def viewer(pool: asyncpg.Pool) -> tuple[str, str]:
    await operators.add_operator(pool, VIEWER[0], "viewer", PASSWORD)
    return VIEWER


# --- seeding ---------------------------------------------------------------------------------------


async def deposit(pool: asyncpg.Pool, status: str, *, paid: bool = True, confirmed: bool = True) -> uuid.UUID:
    """A deposit in `status`: paid (a receipt, its money in the ledger) or not, its success confirmed or not."""
    await ensure_user(pool, "olga", ExtendedPublicKey.parse(TEST_XPUB))
    deposit_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO deposits (id, user_id, status, amount_kes, kes_per_usd, amount_usdc, phone_masked, "
            "checkout_request_id, mpesa_receipt, received_kes, review_reason, processing_since, confirmed_at, "
            "next_query_at) "
            "VALUES ($1, 'olga', $2, 1295, $3, 10000000, '2547****4149', $4, $5, $6, $7, $8, $9, $10)",
            deposit_id,
            status,
            Decimal("129.50"),
            f"ws_CO_{deposit_id.hex[:12]}",
            deposit_id.hex[:10].upper() if paid else None,
            1295 if paid else None,
            "payout failed 5 times" if status == "needs_review" else None,
            datetime.now(UTC) if status == "processing" else None,
            datetime.now(UTC) if confirmed and paid else None,
            None if status != "pending" else datetime(2099, 1, 1, tzinfo=UTC),  # not due for a query
        )
        if paid:
            await post_entry(conn, ledger.mpesa_received(str(deposit_id), 1295))
    return deposit_id


async def failed_job(pool: asyncpg.Pool, job_id: str, function: str, deposit_id: uuid.UUID | None) -> None:
    """A job that failed once (retried), then gave up: two attempts, the last with a traceback."""
    await record_job(pool, job_id, function, deposit_id)
    history = JobHistory(pool, job_id, "worker-1")
    await history.started()
    await history.failed_once("ChainUnavailable: RPC down", 0.01)
    await history.started()
    try:
        raise RuntimeError("the payout could not be signed")
    except RuntimeError as exc:
        await history.gave_up(f"RuntimeError: {exc}", cause=exc)


async def tick(pool: asyncpg.Pool, job_id: str, queue: Queue, error: str | None = None) -> None:
    run = TickRun(job_id, "scan_chain_tick", queue, "worker-1", datetime.now(UTC))
    await job_store.record_tick(pool, run, error=error, progress={"blocks_done": 3, "blocks_total": 3}, logs=None)


# --- reading and posting ---------------------------------------------------------------------------


async def get(client: httpx.AsyncClient, path: str, auth: tuple[str, str] = ADMIN_AUTH, **params: str) -> str:
    response = await client.get(path, params=params, auth=auth)
    assert response.status_code == 200, (path, response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("text/html")
    return response.text


async def post(
    client: httpx.AsyncClient,
    settings: Settings,
    path: str,
    fields: Mapping[str, str] | None = None,
    *,
    auth: tuple[str, str] = ADMIN_AUTH,
    token: str | None = "fetch",
    origin: str | None = None,
) -> httpx.Response:
    """A dashboard form posted as a browser does: urlencoded, with the page's CSRF token and our Origin."""
    form = dict(fields or {})
    if token == "fetch":
        token = await csrf_token(client, auth)
    if token is not None:
        form["csrf_token"] = token
    headers = {"Origin": origin or settings.public_url, "Content-Type": "application/x-www-form-urlencoded"}
    return await client.post(path, content=urlencode(form), headers=headers, auth=auth)


def notice(response: httpx.Response) -> str:
    """What an action said, as the page it went back to shows it (api/dashboard/render.py's notice cookie)."""
    assert response.status_code == 303, (response.status_code, response.text[:500])
    assert response.headers["location"].startswith("/admin")
    value = response.cookies.get(NOTICE_COOKIE)
    assert value, response.headers
    return unquote(value)


def job_page(job_id: str) -> str:
    return f"/admin/jobs/{quote(job_id, safe='')}"


def listed_jobs(html: str) -> list[str]:
    return re.findall(r'<tr data-job="([^"]+)"', html)


def card_counts(html: str, queue: str) -> dict[str, int]:
    card = html.split(f'data-queue="{queue}"', 1)[1].split("</section>", 1)[0]
    return {status: int(n) for status, n in re.findall(r'data-status="(\w+)">(\d+)<', card)}


async def actions(pool: asyncpg.Pool, action: str) -> list[asyncpg.Record]:
    return list(await pool.fetch("SELECT * FROM admin_actions WHERE action = $1 ORDER BY id", action))


# --- what operators and viewers see ----------------------------------------------------------------


async def test_every_page_renders_for_operators_and_viewers_but_viewers_get_no_buttons(
    client: httpx.AsyncClient, pool: asyncpg.Pool, viewer: tuple[str, str]
) -> None:
    paid = await deposit(pool, "needs_review")
    await failed_job(pool, complete_job_id(paid), JobName.COMPLETE_MPESA_DEPOSIT, paid)
    waiting = await deposit(pool, "processing")
    await record_job(pool, complete_job_id(waiting), JobName.COMPLETE_MPESA_DEPOSIT, waiting)
    pages = ["/admin/queues", "/admin/queues/live", "/admin/jobs", "/admin/jobs/live", "/admin/actions",
             job_page(complete_job_id(paid)), job_page(complete_job_id(waiting))]  # fmt: skip
    for path in pages:
        assert 'method="post"' not in await get(client, path, viewer), path
    operator_sees = {path: await get(client, path) for path in pages}
    queues_page = operator_sees["/admin/queues"]
    assert "Turn the kill switch on" in queues_page and "/admin/queues/clean" in queues_page
    assert "Retry all matching" in operator_sees["/admin/jobs"]
    assert ">Retry</button>" in operator_sees[job_page(complete_job_id(paid))]
    assert ">Cancel</button>" in operator_sees[job_page(complete_job_id(waiting))]
    assert ">Retry</button>" not in operator_sees[job_page(complete_job_id(waiting))]  # queued: nothing to retry
    assert (await client.get("/admin/jobs/no-such-job", auth=ADMIN_AUTH)).status_code == 404
    assert (await client.get("/admin/queues")).status_code == 401


async def test_the_queue_cards_count_the_jobs_by_status_with_their_rates_and_depth(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    for _ in range(2):
        waiting = await deposit(pool, "processing")
        await record_job(pool, complete_job_id(waiting), JobName.COMPLETE_MPESA_DEPOSIT, waiting)
    paid = await deposit(pool, "needs_review")
    await failed_job(pool, complete_job_id(paid), JobName.COMPLETE_MPESA_DEPOSIT, paid)
    for n in range(3):
        await tick(pool, f"cron:scan_chain_tick:{n}", Queue.CHAIN)
    await tick(pool, "cron:scan_chain_tick:9", Queue.CHAIN, error="ChainUnavailable: RPC down")

    html = await get(client, "/admin/queues")
    assert 'data-refresh="/admin/queues/live"' in html
    live = await get(client, "/admin/queues/live")
    assert "<html" not in live  # a fragment
    payouts, chain, maintenance = (card_counts(live, queue) for queue in Queue)
    assert payouts == {**dict.fromkeys(payouts, 0), "queued": 2, "failed": 1}
    assert chain == {**dict.fromkeys(chain, 0), "succeeded": 3, "failed": 1}
    assert set(maintenance.values()) == {0} and len(maintenance) == 8
    chain_card = live.split('data-queue="chain"', 1)[1].split("</section>", 1)[0]
    assert "<strong>0.1</strong>/min" in chain_card and "(25.0% of attempts)" in chain_card  # 4 ended, 1 failed
    payouts_card = live.split('data-queue="payouts"', 1)[1].split("</section>", 1)[0]
    assert "(100.0% of attempts)" in payouts_card  # the failed job's two attempts, both failed

    # Depth: the heartbeat's sample, once a minute whichever worker writes first.
    await sample_depth(pool)
    await sample_depth(pool)
    rows = await pool.fetch("SELECT queue, waiting, active FROM queue_depth_samples ORDER BY queue")
    assert [tuple(row) for row in rows] == [("chain", 0, 0), ("maintenance", 0, 0), ("payouts", 2, 0)]
    assert "jobs waiting, most per 10 minutes, last 6 hours: " in unescape(await get(client, "/admin/queues/live"))


async def test_filters_and_search_narrow_the_list_newest_first_by_pages(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    paid = await deposit(pool, "needs_review")
    await failed_job(pool, complete_job_id(paid), JobName.COMPLETE_MPESA_DEPOSIT, paid)
    pending = await deposit(pool, "pending")
    await record_job(pool, query_job_id(pending), JobName.QUERY_MPESA_DEPOSIT, pending)
    for n in range(51):
        await tick(pool, f"cron:scan_chain_tick:{n:03}", Queue.CHAIN)

    first = listed_jobs(await get(client, "/admin/jobs"))
    assert len(first) == 50 and first[0] == "cron:scan_chain_tick:050"  # newest first
    second = await get(client, "/admin/jobs", page="2")
    assert len(listed_jobs(second)) == 3 and "← newer" in second
    assert listed_jobs(await get(client, "/admin/jobs", queue="payouts")) == [
        query_job_id(pending),
        complete_job_id(paid),
    ]
    assert listed_jobs(await get(client, "/admin/jobs", status="failed")) == [complete_job_id(paid)]
    assert listed_jobs(await get(client, "/admin/jobs", status="queued", function="query_mpesa_deposit")) == [
        query_job_id(pending)
    ]
    assert listed_jobs(await get(client, "/admin/jobs", deposit_id=str(paid))) == [complete_job_id(paid)]
    assert listed_jobs(await get(client, "/admin/jobs", q=str(pending)[:8])) == [query_job_id(pending)]
    assert listed_jobs(await get(client, "/admin/jobs", q="tick:04", queue="chain")) == [
        f"cron:scan_chain_tick:{n:03}" for n in range(49, 39, -1)
    ]
    assert listed_jobs(await get(client, "/admin/jobs", since="2099-01-01T00:00")) == []
    assert len(listed_jobs(await get(client, "/admin/jobs/live", until="2099-01-01T00:00"))) == 50
    refused = await get(client, "/admin/jobs", deposit_id="not-a-uuid", status="lost")
    assert "deposit_id is a UUID" in refused and "status is one of" in refused
    # The GET /api/v1/jobs path is the same query, and still answers as before.
    api = await client.get("/api/v1/jobs", params={"status": "failed"}, auth=ADMIN_AUTH)
    assert [item["job_id"] for item in api.json()["items"]] == [complete_job_id(paid)]


async def test_a_jobs_page_shows_its_attempts_traceback_logs_and_masked_arguments(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    paid = await deposit(pool, "needs_review")
    job_id = complete_job_id(paid)
    await failed_job(pool, job_id, JobName.COMPLETE_MPESA_DEPOSIT, paid)
    await pool.execute(
        "UPDATE jobs SET logs = $2 WHERE id = $1",
        job_id,
        [{"event": "push sent", "level": "info", "phone": "254708374149", "timestamp": "2026-12-07T03:00:00Z"},
         {"event": "token fetched with password=hunter2", "level": "warning", "tx_hash": "0x" + "cd" * 32}],
    )  # fmt: skip
    html = unescape(await get(client, job_page(job_id)))
    assert html.count("<details><summary>") == 2  # two attempts, each with its error
    assert "ChainUnavailable: RPC down" in html and "RuntimeError: the payout could not be signed" in html
    assert "Traceback (most recent call last)" in html  # the last attempt's, from the exception
    assert f'href="/admin/deposits/{paid}"' in html
    assert "push sent" in html and "2547****4149" in html and "254708374149" not in html
    assert "hunter2" not in html and "password=[masked]" in html and "cd" * 32 in html
    assert f'"deposit_id": "{paid}"' in html and "from the job's record" in html

    # A job still queued in Redis shows what Redis holds, masked.
    pending = await deposit(pool, "pending")
    queued_id = query_job_id(pending)
    await record_job(pool, queued_id, JobName.QUERY_MPESA_DEPOSIT, pending)
    queue = create_queue(settings.redis_url)
    try:
        await queue.enqueue_job(JobName.QUERY_MPESA_DEPOSIT, str(pending), _job_id=queued_id, phone="254711222333",
                                access_token="tok-zz9-secret")  # fmt: skip
    finally:
        await queue.aclose(close_connection_pool=True)
    html = unescape(await get(client, job_page(queued_id)))
    assert "from Redis (the job as queued)" in html and str(pending) in html
    assert "2547****2333" in html and "254711222333" not in html and "tok-zz9-secret" not in html
    assert "Not run yet." in html


# --- what operators do -----------------------------------------------------------------------------


async def test_retry_of_a_failed_completion_goes_through_the_deposits_retry_and_is_recorded(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings, redis: Redis
) -> None:
    paid = await deposit(pool, "needs_review")
    job_id = complete_job_id(paid)
    await failed_job(pool, job_id, JobName.COMPLETE_MPESA_DEPOSIT, paid)

    said = notice(await post(client, settings, f"{job_page(job_id)}/retry"))
    assert said == "deposit completion retried"
    assert await pool.fetchval("SELECT status FROM deposits WHERE id = $1", paid) == "processing"
    job = await job_store.job_by_id(pool, job_id)
    assert job is not None and (job.status, job.failures) == ("queued", 0)
    assert await redis.zscore(ARQ_QUEUE, job_id) is not None
    [action] = await actions(pool, "retry_job")
    assert (action["actor"], action["target_kind"], action["target_id"]) == (ADMIN_AUTH[0], "job", job_id)
    assert action["before"] == {"status": "failed", "deposit_status": "needs_review"}
    assert action["after"] == {"status": "queued", "deposit_status": "processing", "enqueued": True, "batch": False}
    assert "retry_job" in await get(client, job_page(job_id))  # shown on the page it changed

    # Only a failed or cancelled job; and retry_deposit's money refusals are kept.
    said = notice(await post(client, settings, f"{job_page(job_id)}/retry"))
    assert said == "refused: the job is queued: only a failed or cancelled job is retried"
    unpaid = await deposit(pool, "needs_review", paid=False)
    await failed_job(pool, complete_job_id(unpaid), JobName.COMPLETE_MPESA_DEPOSIT, unpaid)
    said = notice(await post(client, settings, f"{job_page(complete_job_id(unpaid))}/retry"))
    assert said.startswith("refused: only a paid deposit")
    assert await pool.fetchval("SELECT status FROM deposits WHERE id = $1", unpaid) == "needs_review"
    assert len(await actions(pool, "retry_job")) == 1


async def test_retry_of_a_failed_stk_query_queues_the_query_again(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings, redis: Redis
) -> None:
    pending = await deposit(pool, "pending", paid=False)
    job_id = query_job_id(pending)
    await failed_job(pool, job_id, JobName.QUERY_MPESA_DEPOSIT, pending)
    assert notice(await post(client, settings, f"{job_page(job_id)}/retry")) == "STK query queued again"
    assert await pool.fetchval("SELECT status FROM jobs WHERE id = $1", job_id) == "queued"
    assert await redis.zscore(ARQ_QUEUE, job_id) is not None
    [action] = await actions(pool, "retry_job")
    assert action["before"]["status"] == "failed" and action["after"]["status"] == "queued"
    await tick(pool, "cron:scan_chain_tick:1", Queue.CHAIN, error="boom")
    said = notice(await post(client, settings, f"{job_page('cron:scan_chain_tick:1')}/retry"))
    assert said == "refused: scan_chain_tick runs again on its own schedule: there is nothing to retry"


async def test_retry_all_matching_retries_every_failed_job_of_the_filter_and_reports_refusals(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    paid = [await deposit(pool, "needs_review") for _ in range(2)]
    for deposit_id in paid:
        await failed_job(pool, complete_job_id(deposit_id), JobName.COMPLETE_MPESA_DEPOSIT, deposit_id)
    unpaid = await deposit(pool, "needs_review", paid=False)
    await failed_job(pool, complete_job_id(unpaid), JobName.COMPLETE_MPESA_DEPOSIT, unpaid)
    other = await deposit(pool, "needs_review")  # not failed: outside the filter
    await record_job(pool, complete_job_id(other), JobName.COMPLETE_MPESA_DEPOSIT, other)
    await tick(pool, "cron:scan_chain_tick:1", Queue.CHAIN, error="boom")  # failed, but another queue

    response = await post(client, settings, "/admin/jobs/retry", {"queue": "payouts", "status": "failed"})
    said = notice(response)
    assert response.headers["location"] == "/admin/jobs?queue=payouts&status=failed"
    assert said.startswith(f"retried 2 jobs; refused 1: {complete_job_id(unpaid)}: only a paid deposit"), said
    statuses = {row["id"]: row["status"] for row in await pool.fetch("SELECT id, status FROM deposits")}
    assert [statuses[d] for d in paid] == ["processing", "processing"] and statuses[unpaid] == "needs_review"
    recorded = await actions(pool, "retry_job")
    assert sorted(a["target_id"] for a in recorded) == sorted(complete_job_id(d) for d in paid)
    assert all(a["after"]["batch"] for a in recorded)
    assert await pool.fetchval("SELECT status FROM jobs WHERE id = 'cron:scan_chain_tick:1'") == "failed"
    bad = await post(client, settings, "/admin/jobs/retry", {"deposit_id": "nope"})
    assert notice(bad) == "refused: deposit_id is a UUID"


async def test_cancel_leaves_the_deposit_in_review_and_neither_the_sweeper_nor_a_racing_run_revives_it(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings, redis: Redis
) -> None:
    paid = await deposit(pool, "processing")
    job_id = complete_job_id(paid)
    await record_job(pool, job_id, JobName.COMPLETE_MPESA_DEPOSIT, paid)
    queue = create_queue(settings.redis_url)
    try:
        await queue.enqueue_job(JobName.COMPLETE_MPESA_DEPOSIT, str(paid), _job_id=job_id, _queue_name=ARQ_QUEUE)
        assert await redis.zscore(ARQ_QUEUE, job_id) is not None

        said = notice(await post(client, settings, f"{job_page(job_id)}/cancel"))
        assert said.startswith("job cancelled; its deposit is in review")
        assert await redis.zscore(ARQ_QUEUE, job_id) is None and not await redis.exists(f"arq:job:{job_id}")
        row = await pool.fetchrow("SELECT status, review_reason FROM deposits WHERE id = $1", paid)
        assert row["status"] == "needs_review" and f"cancelled by {ADMIN_AUTH[0]}" in row["review_reason"]
        assert paid in [stuck.id for stuck in await stuck_deposits(pool)]  # where operators look
        [action] = await actions(pool, "cancel_job")
        assert action["before"] == {"status": "queued", "deposit_status": "processing"}
        assert action["after"] == {"status": "cancelled", "deposit_status": "needs_review"}

        # The sweeper re-enqueues what PostgreSQL holds open; a cancelled job is not open.
        assert await reenqueue_orphans(pool, queue, 0) == 0
        await sweep(pool, queue, 0, force=True)
        assert await redis.zscore(ARQ_QUEUE, job_id) is None
        # A worker that took the job before the cancel changes neither the job nor the money.
        history = JobHistory(pool, job_id, "worker-1")
        assert await history.started() == 0
        await history.succeeded()
        job = await job_store.job_by_id(pool, job_id)
        assert job is not None and job.status == "cancelled" and job.runs == 0
        assert "cancelled" in await get(client, job_page(job_id))

        # Only a waiting job is cancelled; a cancelled one can be retried (back through the deposit's retry).
        assert notice(await post(client, settings, f"{job_page(job_id)}/cancel")).startswith(
            "refused: the job is cancelled: only a job waiting to run"
        )
        assert notice(await post(client, settings, f"{job_page(job_id)}/retry")) == "deposit completion retried"
        assert await pool.fetchval("SELECT status FROM deposits WHERE id = $1", paid) == "processing"

        # An STK query is not cancelled: it is how we learn whether the customer paid (review finding 4).
        pending = await deposit(pool, "pending", paid=False)
        await record_job(pool, query_job_id(pending), JobName.QUERY_MPESA_DEPOSIT, pending)
        said = notice(await post(client, settings, f"{job_page(query_job_id(pending))}/cancel"))
        assert said.startswith("refused: an STK query is how we learn whether the customer paid"), said
        assert await pool.fetchval("SELECT status FROM jobs WHERE id = $1", query_job_id(pending)) == "queued"
        assert await pool.fetchval("SELECT status FROM deposits WHERE id = $1", pending) == "pending"
    finally:
        await queue.aclose(close_connection_pool=True)


async def test_a_large_clean_goes_by_batches_and_reports_its_progress(pool: asyncpg.Pool) -> None:
    ids = [f"cron:scan_chain_tick:{n}" for n in range(5)]
    for job_id in ids:
        await tick(pool, job_id, Queue.CHAIN)
    await pool.execute("UPDATE jobs SET finished_at = now() - interval '9 days' WHERE id = ANY($1::text[])", ids)
    seen: list[tuple[int, int]] = []
    admin = operators.Admin("olga", "operator")
    done = await job_actions.clean_history(pool, 7, admin, batch=2, on_progress=lambda *p: seen.append(p))
    assert done == (5, 5) and seen == [(2, 5), (4, 5), (5, 5)]
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 0
    [action] = await actions(pool, "clean_history")
    assert (action["before"], action["after"]) == (
        {"older_than_days": 7, "matching": 5},
        {"jobs_deleted": 5, "attempts_deleted": 5},
    )


# What a clean never touches.
KEPT = """SELECT (SELECT count(*) FROM deposits) AS deposits, (SELECT count(*) FROM journal_entries) AS journal_entries,
    (SELECT count(*) FROM postings) AS postings, (SELECT count(*) FROM mpesa_callbacks) AS mpesa_callbacks,
    (SELECT count(*) FROM payouts) AS payouts, (SELECT count(*) FROM admin_actions) AS admin_actions"""


async def test_clean_deletes_only_old_finished_job_history(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    old_paid = await deposit(pool, "needs_review")
    await failed_job(pool, complete_job_id(old_paid), JobName.COMPLETE_MPESA_DEPOSIT, old_paid)
    await tick(pool, "cron:scan_chain_tick:old", Queue.CHAIN)
    await tick(pool, "cron:scan_chain_tick:new", Queue.CHAIN)
    waiting = await deposit(pool, "processing")
    await record_job(pool, complete_job_id(waiting), JobName.COMPLETE_MPESA_DEPOSIT, waiting)  # open: never cleaned
    old = [complete_job_id(old_paid), "cron:scan_chain_tick:old", complete_job_id(waiting)]
    await pool.execute(
        "UPDATE jobs SET finished_at = CASE WHEN finished_at IS NULL THEN NULL ELSE now() - interval '40 days' END, "
        "enqueued_at = now() - interval '40 days' WHERE id = ANY($1::text[])",
        old,
    )
    before = await pool.fetchrow(KEPT)
    assert before["deposits"] == 2 and before["journal_entries"] == 2

    assert notice(await post(client, settings, "/admin/queues/clean", {"days": "0"})) == (
        "refused: history is cleaned only when older than at least 1 day"
    )
    said = notice(await post(client, settings, "/admin/queues/clean", {"days": "30"}))
    assert said == "cleaned 2 jobs and 3 attempts that ended more than 30 days ago"
    remaining = {row["id"] for row in await pool.fetch("SELECT id FROM jobs")}
    assert remaining == {"cron:scan_chain_tick:new", complete_job_id(waiting)}
    assert await pool.fetchval("SELECT count(*) FROM job_attempts") == 1
    assert dict(await pool.fetchrow(KEPT)) == {**dict(before), "admin_actions": before["admin_actions"] + 1}
    [action] = await actions(pool, "clean_history")
    assert action["before"] == {"older_than_days": 30, "matching": 2}
    assert action["after"] == {"jobs_deleted": 2, "attempts_deleted": 3}
    assert "clean_history" in await get(client, "/admin/queues")  # shown on the page it changed


async def test_the_kill_switch_and_lane_resume_from_the_queues_page(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    said = notice(await post(client, settings, "/admin/queues/kill-switch", {"on": "true"}))
    assert said == "kill switch ON: no payout is signed"
    assert await pool.fetchval("SELECT kill_switch FROM payout_guards")
    html = await get(client, "/admin/queues")
    assert "Turn the kill switch off" in html and "<code>kill_switch</code>" in html
    said = notice(await post(client, settings, "/admin/queues/kill-switch", {"on": "false"}))
    assert said == "kill switch off; 0 blocked jobs released"
    await pool.execute("UPDATE payout_guards SET lane_paused = true, pause_reason = 'nonce gap'")
    assert "nonce gap" in await get(client, "/admin/queues")
    said = notice(await post(client, settings, "/admin/queues/resume-lane"))
    assert said == "payout lane resumed; 0 blocked jobs released"
    assert not await pool.fetchval("SELECT lane_paused FROM payout_guards")
    recorded = await pool.fetch("SELECT action, before, after FROM admin_actions ORDER BY id")
    assert [r["action"] for r in recorded] == ["kill_switch", "kill_switch", "resume_lane"]
    assert (recorded[0]["before"]["kill_switch"], recorded[0]["after"]["kill_switch"]) == (False, True)
    assert (recorded[2]["before"]["lane_paused"], recorded[2]["after"]["lane_paused"]) == (True, False)


async def test_one_treasurys_lane_is_shown_and_resumed_alone_from_the_queues_page(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    dry, wet = "0x" + "aB" * 20, "0x" + "Cd" * 20
    await pool.execute(
        "INSERT INTO treasury_lanes (chain_id, address, paused, pause_reason) VALUES "
        "(8453, $1, true, 'treasury USDC 0 is below the payout 10'), (8453, $2, true, 'treasury ETH 0 wei')",
        dry,
        wet,
    )
    html = await get(client, "/admin/queues")
    assert dry in html and wet in html and "treasury USDC 0 is below the payout 10" in html
    said = notice(await post(client, settings, "/admin/queues/resume-lane", {"treasury": dry}))
    assert said == f"payout lane of treasury {dry} resumed; 0 blocked jobs released"
    lanes = {r["address"]: r["paused"] for r in await pool.fetch("SELECT * FROM treasury_lanes")}
    assert lanes == {dry: False, wet: True}  # the other treasury's lane stays paused
    [recorded] = await pool.fetch("SELECT * FROM admin_actions")
    assert (recorded["action"], recorded["target_kind"], recorded["target_id"]) == ("resume_lane", "treasury_lane", dry)


async def test_a_queue_is_paused_and_resumed_from_its_card(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings, redis_url: str
) -> None:
    said = notice(await post(client, settings, "/admin/queues/payouts/pause"))
    assert said == "queue payouts paused: its jobs wait"
    live = await get(client, "/admin/queues/live")
    payouts = live[live.index('data-queue="payouts"') : live.index('data-queue="chain"')]
    assert "s-paused" in payouts and "resume payouts" in payouts and "pause chain" in live
    redis = Redis.from_url(redis_url)
    try:
        assert await redis.exists("kiota:queue-paused:payouts")  # what the workers read on every poll
    finally:
        await redis.aclose()
    assert notice(await post(client, settings, "/admin/queues/nowhere/pause")).startswith("refused: no queue 'nowhere'")
    assert notice(await post(client, settings, "/admin/queues/payouts/resume")) == "queue payouts resumed"
    assert "pause payouts" in await get(client, "/admin/queues/live")
    recorded = await pool.fetch("SELECT action, target_kind, target_id FROM admin_actions ORDER BY id")
    assert [tuple(r) for r in recorded] == [
        ("pause_queue", "queue", "payouts"),
        ("resume_queue", "queue", "payouts"),
    ]
    assert "pause_queue" in await get(client, "/admin/queues")  # shown on the page it changed


async def test_the_actions_log_filters_by_who_and_what(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    await operators.add_operator(pool, "achieng", "operator", PASSWORD)
    await post(client, settings, "/admin/queues/kill-switch", {"on": "true"})
    await post(client, settings, "/admin/queues/kill-switch", {"on": "false"}, auth=("achieng", PASSWORD))
    await post(client, settings, "/admin/queues/clean", {"days": "7"}, auth=("achieng", PASSWORD))
    rows = re.compile(r"<tr>\s*<td>[^<]*</td>\s*<td>(\S+) ")
    assert rows.findall(await get(client, "/admin/actions")) == ["achieng", "achieng", ADMIN_AUTH[0]]
    assert rows.findall(await get(client, "/admin/actions", actor="achieng")) == ["achieng", "achieng"]
    only = await get(client, "/admin/actions", action="kill_switch", actor="achieng")
    assert rows.findall(only) == ["achieng"] and "clean_history" not in only
    assert "No action matches." in await get(client, "/admin/actions", actor="nobody")


ROUTES = [
    ("/admin/queues/kill-switch", {"on": "true"}),
    ("/admin/queues/resume-lane", {}),
    ("/admin/queues/clean", {"days": "1"}),
    ("/admin/queues/payouts/pause", {}),
    ("/admin/queues/payouts/resume", {}),
    ("/admin/jobs/retry", {"status": "failed"}),
    ("/admin/jobs/JOB/retry", {}),
    ("/admin/jobs/JOB/cancel", {}),
]


@pytest.mark.parametrize(("path", "fields"), ROUTES, ids=[path for path, _ in ROUTES])
async def test_every_action_refuses_a_viewer_a_missing_token_and_another_origin(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    settings: Settings,
    viewer: tuple[str, str],
    path: str,
    fields: dict[str, str],
) -> None:
    paid = await deposit(pool, "processing")
    job_id = complete_job_id(paid)
    await record_job(pool, job_id, JobName.COMPLETE_MPESA_DEPOSIT, paid)
    path = path.replace("JOB", quote(job_id, safe=""))
    refused = [
        await post(client, settings, path, fields, auth=viewer),  # with a valid token of its own
        await post(client, settings, path, fields, token=None),
        await post(client, settings, path, fields, token="1.forged"),
        await post(client, settings, path, fields, origin="https://evil.example"),
    ]
    assert [r.status_code for r in refused] == [403] * 4
    assert "operator" in refused[0].json()["detail"]
    assert await pool.fetchval("SELECT count(*) FROM admin_actions") == 0
    assert await pool.fetchval("SELECT status FROM jobs WHERE id = $1", job_id) == "queued"
    assert not await pool.fetchval("SELECT kill_switch FROM payout_guards")
    assert (await post(client, settings, path, fields)).status_code == 303  # the same, done right
