"""The arq workers: one per named queue, their settings, start-up and shutdown, and the registered functions.

arq has no priorities: each queue (`payouts`, `chain`, `maintenance`) has its own arq worker, with its own
number of jobs at once (QUEUE_CONCURRENCY_*), so a payout never waits behind a scan round. `kiota worker
--queues payouts,chain` serves a subset; the process's queue workers share one context and start up once.

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
from datetime import datetime
from typing import Any

import structlog
from arq import cron
from arq.connections import ArqRedis
from arq.constants import health_check_key_suffix, in_progress_key_prefix
from arq.cron import CronJob
from arq.utils import timestamp_ms
from arq.worker import Function, Worker, func
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from jobs.chain import scan_chain_tick
from jobs.context import ArqJob, WorkerContext, WorkerState, WorkerTuning, arq_redis, build_context
from jobs.maintenance import heartbeat, lane_upkeep_tick, sweep_tick
from jobs.outages import POSTGRES, REDIS, Outages, outage_aware, postgres_answers, restore_running_jobs, supervise
from jobs.payouts import complete_mpesa_deposit, query_mpesa_deposit
from kiota.job_names import JobName, Queue, arq_queue_name, queue_of
from kiota.logging import configure_logging
from kiota.process import freeze_what_lives_forever, restore_recursion_limit
from kiota.queue import adopt_default_queue, create_queue, deserialize_job, serialize_job
from kiota.queues import HEARTBEAT_SECONDS, paused_in_redis
from kiota.settings import WorkerSettings
from kiota.store.queues import forget_worker
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
MAX_JOBS = 20  # the benchmark's baseline; each queue's own is QUEUE_CONCURRENCY_* (payouts: 20 too)
# On SIGTERM arq waits this long for running jobs before cancelling them; it is
# below Render's maxShutdownDelaySeconds (render.yaml) and above JOB_TIMEOUT.
JOB_COMPLETION_WAIT_SECONDS = 45


async def startup(ctx: dict[str, Any], *, settings: WorkerSettings, tuning: WorkerTuning) -> None:
    """Every start of the process's queue workers (once for all of them, `_StartOnce`): the first, and each
    after an outage (`jobs/outages.py`), which keeps the context (clients, the worker's id) and the running
    jobs, and puts those jobs back in Redis."""
    state: WorkerState = ctx.setdefault(WorkerState.KEY, WorkerState(_outages(ctx, settings)))
    if WorkerContext.KEY not in ctx:  # the first start builds the context; a start after an outage keeps it
        pool_size = sum(settings.concurrency(q) for q in settings.queues) + 3  # + liveness, heartbeat, sweep
        ctx[WorkerContext.KEY] = await build_context(settings, tuning, arq_redis(ctx), pool_size=pool_size)
        state.outages.on_back(POSTGRES, functools.partial(_database_back, ctx))
    deps = WorkerContext.of(ctx)
    # Liveness: a session lock held for the worker's whole life (jobs/liveness.py); the heartbeat also
    # tells Redis each queue's pause from PostgreSQL, before any job is taken.
    await deps.liveness.hold(deps.pool)
    await heartbeat(ctx)
    adopted = await adopt_default_queue(deps.queue)
    restored = await restore_running_jobs(deps.queue, state.running, IN_PROGRESS_SECONDS)
    report = await sweep(deps.pool, deps.queue, deps.settings.sweep_seconds, force=True)
    state.outages.mark_up(REDIS)
    state.outages.mark_up(POSTGRES)
    if state.heartbeats is None:
        state.heartbeats = asyncio.create_task(_beat(ctx), name="heartbeat")
    resumed, state.started = state.started, True
    log.info(
        "worker resumed" if resumed else "worker started",
        worker_id=deps.worker_id,
        queues=",".join(deps.settings.queues),
        running=restored,
        recovered=report.recovered,
        reenqueued=report.reenqueued,
        adopted=adopted,
    )


async def _beat(ctx: dict[str, Any]) -> None:
    """The process's heartbeat, one for all its queue workers (an arq cron's job could be run by another
    process's worker). A missed beat during an outage is only late: the start after it beats at once."""
    while True:
        await asyncio.sleep(HEARTBEAT_SECONDS)
        try:
            await heartbeat(ctx)
        except Exception as exc:
            log.debug("heartbeat missed", error=f"{type(exc).__name__}: {exc}")


class _StartOnce:
    """The start-up of one generation of the process's queue workers: the first worker to start runs it,
    the others wait for it (they share the context). A failed start-up is tried again by the next."""

    def __init__(self, settings: WorkerSettings, tuning: WorkerTuning) -> None:
        self._settings, self._tuning = settings, tuning
        self._lock = asyncio.Lock()
        self._done = False

    async def __call__(self, ctx: dict[str, Any]) -> None:
        async with self._lock:
            if not self._done:
                await startup(ctx, settings=self._settings, tuning=self._tuning)
                self._done = True


# arq's claim of a due job, as its start_jobs makes it in a WATCH/MULTI transaction: not in progress anywhere,
# still queued, due; then marked in progress for the in-progress timeout. Returns the job's score, or nil.
# KEYS: the job's in-progress key, the queue. ARGV: the job id, now (ms), the in-progress timeout (ms).
_CLAIM = """
if redis.call('exists', KEYS[1]) == 1 then return nil end
local score = redis.call('zscore', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return nil end
redis.call('psetex', KEYS[1], ARGV[3], '1')
return score
"""


class QueueWorker(Worker):
    """One named queue's arq worker. While its queue is paused (a Redis key, `kiota/queues.py`) it takes
    no job: the check is made on each poll that finds due jobs, so a pause is honoured within one poll."""

    def __init__(self, queue: Queue, *, ctx: dict[str, Any], **options: Any) -> None:
        super().__init__(queue_name=arq_queue_name(queue), ctx=ctx, **options)
        self.ctx = ctx  # shared by the process's queue workers (arq's `ctx or {}` would part an empty one)
        self.queue = queue
        self.starting = 0  # jobs being started now (a Redis round trip each): a stop lets them finish
        self._claim_script: AsyncScript | None = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's (0.28, pinned), with two changes.
        - One job at a time, only while jobs may be picked. arq asks whether it may pick jobs once per poll, then
          starts the whole batch it read (up to 100 jobs); a stop (SIGTERM, an outage) in the middle of it went on
          starting jobs after the stop had counted those to wait for, and the process closed its pool under them
          (B7 saw five fail with "pool is closing" at one stop).
        - A job is claimed in one round trip (`_CLAIM`), not arq's five (WATCH, EXISTS, ZSCORE, MULTI…EXEC,
          UNWATCH): the same rule, atomic in Redis as arq's transaction is."""
        if job_ids and await paused_in_redis(self.pool, self.queue):
            return
        for job_id_b in job_ids:
            if not self.allow_pick_jobs:
                return
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs or not self.allow_pick_jobs:  # (a stop came while it waited)
                self.sem.release()
                return
            self.job_counter += 1
            job_id = job_id_b.decode()
            self.starting += 1
            try:
                score = await self._claim(job_id)
            except BaseException:
                self.job_counter -= 1
                self.sem.release()
                raise
            finally:
                self.starting -= 1
            if score is None:  # begun elsewhere, gone, or deferred again meanwhile
                self.job_counter -= 1
                self.sem.release()
                continue
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def _claim(self, job_id: str) -> int | None:
        """The job's queue score if this worker may run it now (it marked the job in progress), else None."""
        if self._claim_script is None:
            self._claim_script = self.pool.register_script(_CLAIM)
        keys = [in_progress_key_prefix + job_id, self.queue_name]
        args: list[str | int] = [job_id, timestamp_ms(), int(self.in_progress_timeout_s * 1000)]
        score = await self._claim_script(keys=keys, args=args)
        return None if score is None else int(score)

    async def run_cron(self, n: datetime, delay: float, num_windows: int = 2) -> None:
        """A paused queue's cron ticks are skipped, not enqueued: each tick's id is its time, so held ones
        would pile up (an hour of a 1 s tick is 3,600 jobs) and all run at the resume."""
        if self.cron_jobs and await paused_in_redis(self.pool, self.queue):
            for cron_job in self.cron_jobs:
                if cron_job.next_run is not None and cron_job.next_run < n:
                    cron_job.calculate_next(n)
            return
        await super().run_cron(n, delay, num_windows)


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
        if state.heartbeats is not None:
            state.heartbeats.cancel()
            await asyncio.gather(state.heartbeats, return_exceptions=True)
    deps = WorkerContext.find(ctx)
    if deps is not None:
        with contextlib.suppress(Exception):  # stopped: no longer counted as consuming (else it ages out)
            await forget_worker(deps.pool, deps.worker_id)
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
# Each function and cron runs on its queue's worker (kiota/job_names.py's JOB_QUEUES).
FUNCTIONS: list[Function] = [
    func(outage_aware(complete_mpesa_deposit), name=JobName.COMPLETE_MPESA_DEPOSIT, max_tries=10_000, keep_result=0),
    func(outage_aware(query_mpesa_deposit), name=JobName.QUERY_MPESA_DEPOSIT, max_tries=10_000, keep_result=0),
]
SWEEP_TICK_SECONDS = 5  # how often the sweeper looks; SWEEP_SECONDS gates the Redis re-enqueue
_EVERY_SWEEP = set(range(0, 60, SWEEP_TICK_SECONDS))
CRON_JOBS = [
    cron(outage_aware(sweep_tick, cron=True), second=_EVERY_SWEEP, unique=True, timeout=30, keep_result=0),
    cron(outage_aware(lane_upkeep_tick, cron=True), second=_EVERY_SWEEP, unique=True, timeout=30, keep_result=0),
    cron(outage_aware(scan_chain_tick, cron=True), second=set(range(60)), unique=True, timeout=30, keep_result=0),
]


def functions_of(queue: Queue) -> list[Function]:
    return [f for f in FUNCTIONS if queue_of(f.name) == queue]


def crons_of(queue: Queue) -> list[CronJob]:
    return [c for c in CRON_JOBS if queue_of(c.name.removeprefix("cron:")) == queue]


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


def build_workers(
    settings: WorkerSettings,
    queue: ArqRedis,
    ctx: dict[str, Any],
    *,
    tuning: WorkerTuning | None = None,
    burst: bool = False,
) -> list[QueueWorker]:
    """One arq worker per queue the settings name (`kiota worker --queues`), each with its own concurrency,
    sharing `ctx` (pools, clients, the worker's id, its running jobs) and the Redis client; they start up
    once together. Signals and shutdown are the caller's (the supervisor's, or a test's). Tests pass
    `tuning` to shorten the lane's waits and backoffs."""
    start = _StartOnce(settings, tuning or WorkerTuning())
    workers = []
    for served in settings.queues:
        workers.append(
            QueueWorker(
                served,
                ctx=ctx,
                functions=functions_of(served),
                cron_jobs=crons_of(served),
                redis_pool=queue,
                on_startup=start,
                on_job_start=on_job_start,
                on_job_end=on_job_end,
                handle_signals=False,
                burst=burst,
                **{**queue_options(), "max_jobs": settings.concurrency(served)},
            )
        )
    return workers


async def serve(settings: WorkerSettings) -> None:
    """`kiota worker`: a queue worker per served queue under the outage supervisor until SIGTERM
    (jobs/outages.py). Redis or PostgreSQL down, at start or later, is waited out."""
    queue = create_queue(settings.redis_url)  # connects on first use: a start with Redis down waits
    outages = Outages(
        {REDIS: queue.ping, POSTGRES: functools.partial(postgres_answers, settings.database_url)}, supervised=True
    )
    ctx: dict[str, Any] = {WorkerState.KEY: WorkerState(outages)}
    try:
        await supervise(lambda: build_workers(settings, queue, ctx), outages, JOB_COMPLETION_WAIT_SECONDS)
    finally:
        with contextlib.suppress(RedisError):
            await queue.delete(*(arq_queue_name(q) + health_check_key_suffix for q in settings.queues))
        await shutdown(ctx)
        await queue.aclose(close_connection_pool=True)


def run_worker(settings: WorkerSettings) -> None:
    restore_recursion_limit()
    configure_logging()
    freeze_what_lives_forever()
    # The stdlib loop, not uvloop: on uvloop (bdd7b75) one spawned worker of the suite hung a second after its start
    # and stayed so for 38 min, idle (no timer, no Redis command, every reply read off its sockets) and deaf to
    # SIGTERM; uvloop's share of the CPU saved was ~5% (bench/RESULTS.md, 2026-12-07). Not worth an unexplained hang.
    asyncio.run(serve(settings))
