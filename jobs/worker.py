"""The arq worker: settings, start-up, job context and the registered functions.

Every job is `async def f(ctx, ...)`; what it needs arrives in `ctx`, built once
in `startup`. A job function only unpacks `ctx` and calls a service function in
`kiota/` that a test can call without arq.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from arq import cron
from arq.worker import Worker, func

from jobs.mpesa import complete_mpesa_deposit, query_mpesa_deposit, scan_chain_tick, sweep_tick
from kiota.chain_rpc import ChainReader
from kiota.confirm import ConfirmTiming
from kiota.daraja import DarajaClient
from kiota.db import close_pool, create_pool, try_advisory_lock
from kiota.ingester import ScanConfig
from kiota.logging import configure_logging
from kiota.payouts import LaneConfig
from kiota.process import freeze_what_lives_forever
from kiota.queue import deserialize_job, redis_settings, serialize_job
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
# Polling sets throughput (REFERENCE.md: defaults give ~20 jobs/s). 50 ms keeps
# latency low without spinning Redis; 20 concurrent jobs fit a 20-connection pool.
POLL_DELAY_SECONDS = 0.05
MAX_JOBS = 20
# On SIGTERM arq waits this long for running jobs before cancelling them; it is
# below Render's maxShutdownDelaySeconds (render.yaml) and above JOB_TIMEOUT.
JOB_COMPLETION_WAIT_SECONDS = 45


async def startup(ctx: dict[str, Any]) -> None:
    settings: WorkerSettings = ctx.get("settings") or load_settings(WorkerSettings)
    ctx["settings"] = settings
    ctx["pool"] = await create_pool(settings.database_url, min_size=1, max_size=MAX_JOBS + 2)
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
    # Liveness: a session lock held for the worker's whole life. When the process dies,
    # PostgreSQL frees it, and the sweeper knows this worker's running jobs are orphans.
    await ensure_liveness(ctx)
    await heartbeat(ctx)
    report = await sweep(ctx["pool"], ctx["redis"], settings.sweep_seconds, force=True)
    log.info("worker started", worker_id=ctx["worker_id"], recovered=report.recovered, reenqueued=report.reenqueued)


def _closed(conn: Any) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:  # the pool took the dead connection back
        return True


async def ensure_liveness(ctx: dict[str, Any]) -> None:
    """Hold this worker's liveness lock; take it again on a new connection if PostgreSQL
    restarted under us (the sweeper would otherwise think this worker dead)."""
    guard: asyncio.Lock = ctx.setdefault("liveness_guard", asyncio.Lock())
    async with guard:  # jobs start concurrently: one of them re-takes the lock, the others wait
        current = ctx.get("liveness")
        if current is not None and not _closed(current):
            return
        if current is not None:
            with contextlib.suppress(Exception):
                await ctx["pool"].release(current)
        conn = await ctx["pool"].acquire()
        if not await try_advisory_lock(conn, worker_lock_key(ctx["worker_id"])):
            await ctx["pool"].release(conn)
            raise RuntimeError("another session holds this worker's liveness lock")
        ctx["liveness"] = conn
        if current is not None:
            log.warning("liveness lock taken again after a lost database connection", worker_id=ctx["worker_id"])


async def shutdown(ctx: dict[str, Any]) -> None:
    if ctx.get("liveness") is not None:
        with contextlib.suppress(Exception):  # the connection may have died with PostgreSQL
            await ctx["pool"].release(ctx["liveness"])
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
FUNCTIONS: list[Any] = [
    func(complete_mpesa_deposit, max_tries=10_000, keep_result=0),
    func(query_mpesa_deposit, max_tries=10_000, keep_result=0),
]
SWEEP_TICK_SECONDS = 5  # how often the sweeper looks; SWEEP_SECONDS gates the Redis re-enqueue
CRON_JOBS = [
    cron(heartbeat, second={0, 30}, run_at_startup=False, timeout=10),
    cron(sweep_tick, second=set(range(0, 60, SWEEP_TICK_SECONDS)), unique=True, timeout=30, keep_result=0),
    cron(scan_chain_tick, second=set(range(60)), unique=True, timeout=30, keep_result=0),
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
    """The worker; tests pass `ctx` to shorten the lane's waits and backoffs."""
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


def run_worker(settings: WorkerSettings) -> None:
    # web3 imports py_ecc, which raises the recursion limit to 100000 at import; with it a
    # deeply nested JSON answer could overflow the C stack instead of raising. Put it back.
    sys.setrecursionlimit(DEFAULT_RECURSION_LIMIT)
    configure_logging()
    worker = build_worker(settings)
    freeze_what_lives_forever()
    worker.run()
