"""The arq worker: its settings, start-up and shutdown, and the registered functions.

Every job is `async def f(ctx, ...)`; what it needs arrives in `ctx` as one
`WorkerContext` (jobs/context.py), built once in `startup`. A job function only
unpacks it and calls a service function in `kiota/` that a test can call without arq.
The jobs live by area: payouts (jobs/payouts.py), the chain (jobs/chain.py) and
housekeeping (jobs/maintenance.py); outages are jobs/outages.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

import structlog
from arq import cron
from arq.connections import ArqRedis
from arq.constants import default_queue_name, health_check_key_suffix
from arq.typing import StartupShutdown
from arq.worker import Function, Worker, func
from redis.exceptions import RedisError

from jobs.chain import scan_chain_tick
from jobs.context import ArqJob, WorkerContext, WorkerState, WorkerTuning, arq_redis, build_context
from jobs.maintenance import heartbeat, sweep_tick
from jobs.outages import POSTGRES, REDIS, Outages, outage_aware, postgres_answers, restore_running_jobs, supervise
from jobs.payouts import complete_mpesa_deposit, query_mpesa_deposit
from kiota.job_names import JobName
from kiota.logging import configure_logging
from kiota.process import freeze_what_lives_forever, restore_recursion_limit
from kiota.queue import create_queue, deserialize_job, redis_settings, serialize_job
from kiota.settings import WorkerSettings
from kiota.sweeper import sweep

log = structlog.get_logger(__name__)

# A killed worker's job is re-run only after its in-progress key expires
# (job_timeout + 10 s), so jobs are kept short and the timeout low: a stuck
# deposit waits well under a minute, not arq's default five.
JOB_TIMEOUT_SECONDS = 40
IN_PROGRESS_SECONDS = JOB_TIMEOUT_SECONDS + 10  # arq's in-progress key lives this long
# Polling sets throughput (REFERENCE.md: defaults give ~20 jobs/s). 50 ms keeps
# latency low without spinning Redis; 20 concurrent jobs fit a 20-connection pool.
POLL_DELAY_SECONDS = 0.05
MAX_JOBS = 20
# On SIGTERM arq waits this long for running jobs before cancelling them; it is
# below Render's maxShutdownDelaySeconds (render.yaml) and above JOB_TIMEOUT.
JOB_COMPLETION_WAIT_SECONDS = 45


async def startup(ctx: dict[str, Any], *, settings: WorkerSettings, tuning: WorkerTuning) -> None:
    """Every start of an arq worker: the first, and each after an outage (`jobs/outages.py`), which
    keeps the context (clients, the worker's id) and the running jobs, and puts those jobs back in Redis."""
    state: WorkerState = ctx.setdefault(WorkerState.KEY, WorkerState(_outages(ctx, settings)))
    if WorkerContext.KEY not in ctx:  # the first start builds the context; a start after an outage keeps it
        ctx[WorkerContext.KEY] = await build_context(settings, tuning, arq_redis(ctx), pool_size=MAX_JOBS + 2)
        state.outages.on_back(POSTGRES, functools.partial(_database_back, ctx))
    deps = WorkerContext.of(ctx)
    # Liveness: a session lock held for the worker's whole life (jobs/liveness.py).
    await deps.liveness.hold(deps.pool)
    await heartbeat(ctx)
    restored = await restore_running_jobs(deps.queue, state.running, IN_PROGRESS_SECONDS)
    report = await sweep(deps.pool, deps.queue, deps.settings.sweep_seconds, force=True)
    state.outages.mark_up(REDIS)
    state.outages.mark_up(POSTGRES)
    resumed, state.started = state.started, True
    log.info(
        "worker resumed" if resumed else "worker started",
        worker_id=deps.worker_id,
        running=restored,
        recovered=report.recovered,
        reenqueued=report.reenqueued,
    )


def _startup_with(settings: WorkerSettings, tuning: WorkerTuning) -> StartupShutdown:
    async def start(ctx: dict[str, Any]) -> None:
        await startup(ctx, settings=settings, tuning=tuning)

    return start


def _outages(ctx: dict[str, Any], settings: WorkerSettings) -> Outages:
    """Outage tracking for a worker run without the supervisor (tests): it heals on its own."""

    async def redis_answers() -> None:
        await arq_redis(ctx).ping()

    return Outages({REDIS: redis_answers, POSTGRES: functools.partial(postgres_answers, settings.database_url)})


async def _database_back(ctx: dict[str, Any]) -> None:
    """PostgreSQL is back: new connections for the pool, the liveness lock taken again, a heartbeat."""
    await WorkerContext.of(ctx).pool.expire_connections()
    await heartbeat(ctx)


async def shutdown(ctx: dict[str, Any]) -> None:
    state = WorkerState.of(ctx)
    if state is not None:
        await state.outages.aclose()
    deps = WorkerContext.find(ctx)
    if deps is not None:
        await deps.aclose()
    log.info("worker stopped", worker_id=deps.worker_id if deps is not None else None)


async def on_job_start(ctx: dict[str, Any]) -> None:
    job = ArqJob.of(ctx)
    structlog.contextvars.bind_contextvars(job_id=job.job_id, job_try=job.job_try)
    deps = WorkerContext.find(ctx)
    if deps is not None:
        with contextlib.suppress(Exception):  # a job must not fail because the database blinked here
            await deps.liveness.hold(deps.pool)


async def on_job_end(ctx: dict[str, Any]) -> None:
    structlog.contextvars.clear_contextvars()


# Results are not kept in Redis (keep_result=0): the history is in PostgreSQL, and a
# finished job's id must be free again for a sweeper's or an operator's re-enqueue.
# max_tries is high because arq counts every run, waits included; real failures are
# counted in PostgreSQL and end in needs_review after five.
# Every function is outage-aware: an outage skips a cron tick or makes a job wait, never a traceback.
FUNCTIONS: list[Function] = [
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
    tuning: WorkerTuning | None = None,
) -> Worker:
    """One arq worker; tests pass `tuning` to shorten the lane's waits and backoffs."""
    return Worker(
        functions=FUNCTIONS,
        cron_jobs=CRON_JOBS,
        redis_settings=redis_settings(settings.redis_url),
        on_startup=_startup_with(settings, tuning or WorkerTuning()),
        on_shutdown=shutdown,
        on_job_start=on_job_start,
        on_job_end=on_job_end,
        burst=burst,
        handle_signals=handle_signals,
        **queue_options(),
    )


def _supervised_worker(ctx: dict[str, Any], queue: ArqRedis, settings: WorkerSettings) -> Worker:
    """One of the supervisor's workers: they share the context (pools, clients, the worker's id,
    its running jobs) and the Redis client; shutdown is the supervisor's, once, at the end."""
    return Worker(
        functions=FUNCTIONS,
        cron_jobs=CRON_JOBS,
        redis_pool=queue,
        on_startup=_startup_with(settings, WorkerTuning()),
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
    ctx: dict[str, Any] = {WorkerState.KEY: WorkerState(outages)}
    try:
        await supervise(lambda: _supervised_worker(ctx, queue, settings), outages, JOB_COMPLETION_WAIT_SECONDS)
    finally:
        with contextlib.suppress(RedisError):
            await queue.delete(default_queue_name + health_check_key_suffix)
        await shutdown(ctx)
        await queue.aclose(close_connection_pool=True)


def run_worker(settings: WorkerSettings) -> None:
    restore_recursion_limit()
    configure_logging()
    freeze_what_lives_forever()
    asyncio.run(serve(settings))
