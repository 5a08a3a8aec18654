"""The arq worker: settings, start-up, job context and the registered functions.

Every job is `async def f(ctx, ...)`; what it needs arrives in `ctx`, built once
in `startup`. A job function only unpacks `ctx` and calls a service function in
`kiota/` that a test can call without arq.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from arq import cron
from arq.connections import ArqRedis
from arq.constants import default_queue_name, health_check_key_suffix
from arq.worker import Worker, func
from redis.exceptions import RedisError

from jobs.mpesa import complete_mpesa_deposit, query_mpesa_deposit, scan_chain_tick, sweep_tick
from jobs.outages import (
    POSTGRES,
    REDIS,
    Outages,
    RunningJob,
    outage_aware,
    postgres_answers,
    restore_running_jobs,
    supervise,
)
from kiota.chain_rpc import ChainReader
from kiota.confirm import ConfirmTiming
from kiota.daraja import DarajaClient
from kiota.db import close_pool, create_pool, try_advisory_lock
from kiota.ingester import ScanConfig
from kiota.job_names import JobName
from kiota.logging import configure_logging
from kiota.payouts import LaneConfig
from kiota.process import freeze_what_lives_forever
from kiota.queue import create_queue, deserialize_job, redis_settings, serialize_job
from kiota.settings import WorkerSettings, load_settings
from kiota.sql import load_queries
from kiota.sweeper import sweep, worker_lock_key
from kiota.treasury import Treasury

log = structlog.get_logger(__name__)

# A killed worker's job is re-run only after its in-progress key expires
# (job_timeout + 10 s), so jobs are kept short and the timeout low: a stuck
# deposit waits well under a minute, not arq's default five.
DEFAULT_RECURSION_LIMIT = 1000
JOB_TIMEOUT_SECONDS = 40
IN_PROGRESS_SECONDS = JOB_TIMEOUT_SECONDS + 10  # arq's in-progress key lives this long
# Polling sets throughput (REFERENCE.md: defaults give ~20 jobs/s). 50 ms keeps
# latency low without spinning Redis; 20 concurrent jobs fit a 20-connection pool.
POLL_DELAY_SECONDS = 0.05
MAX_JOBS = 20
# On SIGTERM arq waits this long for running jobs before cancelling them; it is
# below Render's maxShutdownDelaySeconds (render.yaml) and above JOB_TIMEOUT.
JOB_COMPLETION_WAIT_SECONDS = 45


async def startup(ctx: dict[str, Any]) -> None:
    """Every start of an arq worker: the first, and each after an outage (`jobs/outages.py`), which
    keeps the clients, the worker's id and its running jobs, and puts those jobs back in Redis."""
    settings: WorkerSettings = ctx.get("settings") or load_settings(WorkerSettings)
    ctx["settings"] = settings
    outages: Outages = ctx.setdefault("outages", _outages(ctx, settings))
    running: dict[str, RunningJob] = ctx.setdefault("running_jobs", {})
    if "pool" not in ctx:  # the first start builds the pool and clients; a start after an outage keeps them
        await _build(ctx, settings)
        outages.on_back(POSTGRES, functools.partial(_database_back, ctx))
    # Liveness: a session lock held for the worker's whole life. When the process dies,
    # PostgreSQL frees it, and the sweeper knows this worker's running jobs are orphans.
    await ensure_liveness(ctx)
    await heartbeat(ctx)
    restored = await restore_running_jobs(ctx["redis"], running, IN_PROGRESS_SECONDS)
    report = await sweep(ctx["pool"], ctx["redis"], settings.sweep_seconds, force=True)
    outages.mark_up(REDIS)
    outages.mark_up(POSTGRES)
    resumed, ctx["started"] = ctx.get("started", False), True
    log.info(
        "worker resumed" if resumed else "worker started",
        worker_id=ctx["worker_id"],
        running=restored,
        recovered=report.recovered,
        reenqueued=report.reenqueued,
    )


async def _build(ctx: dict[str, Any], settings: WorkerSettings) -> None:
    # No connection floor (min_size=0): asyncpg would keep re-opening the floor while PostgreSQL
    # is down and log a traceback for each try; the outage handling waits for it instead.
    ctx["pool"] = await create_pool(settings.database_url, min_size=0, max_size=MAX_JOBS + 2)
    ctx["treasury"] = Treasury(
        settings.base_rpc_url,
        settings.treasury_private_key.get_secret_value(),
        settings.base_chain_id,
        settings.base_usdc_address,
    )
    ctx["daraja"] = DarajaClient.from_settings(settings, redis=ctx["redis"])  # one token for the app
    ctx["chain_reader"] = ChainReader(settings.base_rpc_url)
    ctx["scan_config"] = ScanConfig(
        chain_id=settings.base_chain_id,
        token=settings.base_usdc_address,
        treasury=ctx["treasury"].address,
        confirmations_required=settings.deposit_confirmations_required,
        max_checks=settings.intent_max_checks,
    )
    ctx.setdefault("lane_config", LaneConfig())
    ctx["lane_config"].confirmations_required = settings.deposit_confirmations_required  # a payout's finality
    ctx.setdefault("backoff_base_seconds", 1.0)
    ctx.setdefault("query_backoff_seconds", 30.0)
    ctx.setdefault("confirm_timing", ConfirmTiming())
    ctx["worker_id"] = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    ctx["started_at"] = datetime.now(UTC)
    ctx["liveness"] = Liveness(worker_lock_key(ctx["worker_id"]))


def _outages(ctx: dict[str, Any], settings: WorkerSettings) -> Outages:
    """Outage tracking for a worker run without the supervisor (tests): it heals on its own."""

    async def redis_answers() -> None:
        await ctx["redis"].ping()

    return Outages({REDIS: redis_answers, POSTGRES: functools.partial(postgres_answers, settings.database_url)})


async def _database_back(ctx: dict[str, Any]) -> None:
    """PostgreSQL is back: new connections for the pool, the liveness lock taken again, a heartbeat."""
    await ctx["pool"].expire_connections()
    await heartbeat(ctx)


def _closed(conn: Any) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:  # the pool took the dead connection back
        return True


@dataclass(eq=False)
class Liveness:
    """This worker's liveness lock and the connection that holds it, one object for the worker's
    life. Each job gets a copy of `ctx`, so the connection is kept here: put in a job's `ctx`
    itself, a connection taken again would be lost with the copy (and its session leaked)."""

    key: int
    conn: Any = None
    guard: asyncio.Lock = field(default_factory=asyncio.Lock)


async def ensure_liveness(ctx: dict[str, Any]) -> None:
    """Hold this worker's liveness lock; take it again on a new connection if PostgreSQL
    restarted under us (the sweeper would otherwise think this worker dead)."""
    liveness: Liveness = ctx["liveness"]
    async with liveness.guard:  # jobs start concurrently: one of them re-takes the lock, the others wait
        current = liveness.conn
        if current is None or _closed(current):
            if current is not None:
                with contextlib.suppress(Exception):
                    await ctx["pool"].release(current)
                liveness.conn = None
            liveness.conn = await _take_liveness_lock(ctx["pool"], liveness.key)
            if current is not None:  # PostgreSQL restarted (its outage, if seen, is logged once by jobs/outages.py)
                log.info("liveness lock taken again after a lost database connection", worker_id=ctx["worker_id"])


async def _take_liveness_lock(pool: asyncpg.Pool, key: int) -> Any:
    conn = await pool.acquire()
    try:
        locked = await try_advisory_lock(conn, key)
    except BaseException:  # PostgreSQL went away between the two: a connection kept would be leaked
        with contextlib.suppress(Exception):
            await pool.release(conn)
        raise
    if not locked:
        await pool.release(conn)
        raise RuntimeError("another session holds this worker's liveness lock")
    return conn


async def shutdown(ctx: dict[str, Any]) -> None:
    if ctx.get("outages") is not None:
        await ctx["outages"].aclose()
    liveness: Liveness | None = ctx.get("liveness")
    if liveness is not None and liveness.conn is not None:
        with contextlib.suppress(Exception):  # the connection may have died with PostgreSQL
            await ctx["pool"].release(liveness.conn)
    for client in ("treasury", "daraja", "chain_reader"):
        if ctx.get(client) is not None:
            await ctx[client].aclose()
    if ctx.get("pool") is not None:
        await close_pool(ctx["pool"])
    log.info("worker stopped", worker_id=ctx.get("worker_id"))


async def on_job_start(ctx: dict[str, Any]) -> None:
    structlog.contextvars.bind_contextvars(job_id=ctx.get("job_id"), job_try=ctx.get("job_try"))
    with contextlib.suppress(Exception):  # a job must not fail because the database blinked here
        await ensure_liveness(ctx)


async def on_job_end(ctx: dict[str, Any]) -> None:
    structlog.contextvars.clear_contextvars()


async def heartbeat(ctx: dict[str, Any]) -> None:
    """Say in PostgreSQL that this worker is alive (the dashboard lists workers from it)."""
    await ensure_liveness(ctx)
    await ctx["pool"].execute(
        load_queries().record_heartbeat,
        ctx["worker_id"],
        socket.gethostname(),
        os.getpid(),
        ctx["started_at"],
    )


# Results are not kept in Redis (keep_result=0): the history is in PostgreSQL, and a
# finished job's id must be free again for a sweeper's or an operator's re-enqueue.
# max_tries is high because arq counts every run, waits included; real failures are
# counted in PostgreSQL and end in needs_review after five.
# Every function is outage-aware: an outage skips a cron tick or makes a job wait, never a traceback.
FUNCTIONS: list[Any] = [
    func(outage_aware(complete_mpesa_deposit), name=JobName.COMPLETE_MPESA_DEPOSIT, max_tries=10_000, keep_result=0),
    func(outage_aware(query_mpesa_deposit), name=JobName.QUERY_MPESA_DEPOSIT, max_tries=10_000, keep_result=0),
]
SWEEP_TICK_SECONDS = 5  # how often the sweeper looks; SWEEP_SECONDS gates the Redis re-enqueue
CRON_JOBS = [
    cron(outage_aware(heartbeat, cron=True), second={0, 30}, run_at_startup=False, timeout=10),
    cron(
        outage_aware(sweep_tick, cron=True),
        second=set(range(0, 60, SWEEP_TICK_SECONDS)),
        unique=True,
        timeout=30,
        keep_result=0,
    ),
    cron(outage_aware(scan_chain_tick, cron=True), second=set(range(60)), unique=True, timeout=30, keep_result=0),
]


def queue_options() -> dict[str, Any]:
    """The arq settings that shape throughput and safety; the benchmark's no-op baseline uses them too."""
    return {
        "job_serializer": serialize_job,
        "job_deserializer": deserialize_job,
        "job_timeout": JOB_TIMEOUT_SECONDS,
        "poll_delay": POLL_DELAY_SECONDS,
        "max_jobs": MAX_JOBS,
        "job_completion_wait": JOB_COMPLETION_WAIT_SECONDS,
        "keep_result": 0,
    }


def build_worker(
    settings: WorkerSettings,
    *,
    burst: bool = False,
    handle_signals: bool = True,
    ctx: dict[str, Any] | None = None,
) -> Worker:
    """One arq worker; tests pass `ctx` to shorten the lane's waits and backoffs."""
    return Worker(
        functions=FUNCTIONS,
        cron_jobs=CRON_JOBS,
        redis_settings=redis_settings(settings.redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        on_job_start=on_job_start,
        on_job_end=on_job_end,
        burst=burst,
        handle_signals=handle_signals,
        **queue_options(),
        ctx={"settings": settings, **(ctx or {})},
    )


def _supervised_worker(ctx: dict[str, Any], queue: ArqRedis) -> Worker:
    """One of the supervisor's workers: they share the context (pools, clients, the worker's id,
    its running jobs) and the Redis client; shutdown is the supervisor's, once, at the end."""
    return Worker(
        functions=FUNCTIONS,
        cron_jobs=CRON_JOBS,
        redis_pool=queue,
        on_startup=startup,
        on_job_start=on_job_start,
        on_job_end=on_job_end,
        handle_signals=False,  # the supervisor's
        **queue_options(),
        ctx=ctx,
    )


async def serve(settings: WorkerSettings) -> None:
    """`kiota worker`: arq workers under the outage supervisor until SIGTERM (jobs/outages.py).
    Redis or PostgreSQL down, at start or later, is waited out."""
    queue = create_queue(settings.redis_url)  # connects on first use: a start with Redis down waits
    outages = Outages(
        {REDIS: queue.ping, POSTGRES: functools.partial(postgres_answers, settings.database_url)}, supervised=True
    )
    ctx: dict[str, Any] = {"settings": settings, "outages": outages}
    try:
        await supervise(lambda: _supervised_worker(ctx, queue), outages, JOB_COMPLETION_WAIT_SECONDS)
    finally:
        with contextlib.suppress(RedisError):
            await queue.delete(default_queue_name + health_check_key_suffix)
        await shutdown(ctx)
        await queue.aclose(close_connection_pool=True)


def run_worker(settings: WorkerSettings) -> None:
    # web3 imports py_ecc, which raises the recursion limit to 100000 at import; with it a
    # deeply nested JSON answer could overflow the C stack instead of raising. Put it back.
    sys.setrecursionlimit(DEFAULT_RECURSION_LIMIT)
    configure_logging()
    freeze_what_lives_forever()
    asyncio.run(serve(settings))
