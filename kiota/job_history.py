"""The durable job history in PostgreSQL (`jobs`): Redis carries only the job id.

Each job row names what it serves (a deposit), counts real failures (a worker
killed mid-job is not one), and says why it waits or is blocked, so an operator
can see and retry it without reading code or Redis. Every run of it is an attempt row (`job_attempts`:
start, end, outcome, error with traceback), written in the statement that records the run's step, with
the job's own log lines (`kiota.logging.JobLogs`). Cron ticks that did real work are recorded too
(`recorded_tick`). `job_detail` and `find_jobs` read it all back for the jobs API. Each run's end is also
counted, with its duration, in the process's metrics (`kiota_jobs_total`, `kiota_job_duration_seconds`):
counted as it happens and summed in Redis, since cleaning old rows here must not make a counter go down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import structlog
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.jobs import serialize_job

from kiota import metrics
from kiota.db import Executor, Pool
from kiota.job_names import JobName, Queue, arq_queue_of
from kiota.job_view import JobFilter, JobStatus, TickRun, shown_status
from kiota.logging import job_logs
from kiota.queue import deserialize_job
from kiota.records import JobAttempt, JobRun
from kiota.store import jobs as store

log = structlog.get_logger(__name__)

MAX_BACKOFF_SECONDS = 60.0
ERROR_DETAIL_CHARS = 16000  # an attempt's error with its traceback


def backoff_seconds(failures: int, base: float = 1.0, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: base·2^(n-1), capped, times a random 0.5-1.5."""
    raw = min(MAX_BACKOFF_SECONDS, base * float(2 ** max(failures - 1, 0)))
    jitter: float = (rng or random).random()
    return raw * (0.5 + jitter)


async def record_job(
    db: Executor, job_id: str, function: str, deposit_id: uuid.UUID | None, *, reset: bool = False
) -> None:
    """Record the job before it is enqueued (commit, then enqueue); `reset`: an operator's or the sweeper's
    retry, which queues an existing job again and starts its count of failures again."""
    await store.record_job(db, job_id, function, deposit_id, reset=reset)


async def enqueue(queue: ArqRedis, function: str, job_id: str, *args: object) -> bool:
    """Tell Redis about a job already recorded in PostgreSQL. Failing here loses nothing:
    the sweeper re-enqueues recorded work that Redis never heard of."""
    try:
        await queue.enqueue_job(function, *args, _job_id=job_id, _queue_name=arq_queue_of(function))
    except Exception as exc:
        log.warning("enqueue failed; the sweeper will retry", job_id=job_id, error=f"{type(exc).__name__}: {exc}")
        return False
    return True


# arq's enqueue rule for many jobs at once, atomically per job as arq's WATCH/MULTI/EXEC is:
# a job id is refused while its job key or its result key exists. Otherwise the job is
# stored (expiring like arq's) and queued at the given score.
# KEYS: the queue, then per job its job key and result key. ARGV: score, expiry (ms), then per
# job its id and serialized job.
_ENQUEUE_MANY = """
local enqueued = 0
for i = 1, (#KEYS - 1) / 2 do
    local job_key, result_key = KEYS[2 * i], KEYS[2 * i + 1]
    if redis.call('exists', job_key, result_key) == 0 then
        redis.call('psetex', job_key, ARGV[2], ARGV[2 * i + 2])
        redis.call('zadd', KEYS[1], ARGV[1], ARGV[2 * i + 1])
        enqueued = enqueued + 1
    end
end
return enqueued
"""


async def enqueue_many(queue: ArqRedis, function: str, jobs: Sequence[tuple[str, tuple[object, ...]]]) -> int:
    """Tell Redis about jobs already recorded in PostgreSQL, in one round trip: `jobs` are
    (job id, args). Returns how many were queued (a job id Redis holds is refused, as arq's
    `enqueue_job` does). Failing loses nothing: the sweeper re-enqueues what Redis never heard of."""
    enqueued_at = int(time.time() * 1000)
    keys: list[str] = [arq_queue_of(function)]
    args: list[int | str | bytes] = [enqueued_at, queue.expires_extra_ms]
    for job_id, job_args in jobs:
        keys += [job_key_prefix + job_id, result_key_prefix + job_id]
        args += [job_id, serialize_job(function, job_args, {}, None, enqueued_at, serializer=queue.job_serializer)]
    try:
        enqueued: int = await queue.register_script(_ENQUEUE_MANY)(keys=keys, args=args)
    except Exception as exc:
        log.warning(
            "enqueue failed; the sweeper will retry",
            job_ids=[job_id for job_id, _ in jobs],
            error=f"{type(exc).__name__}: {exc}",
        )
        return 0
    return enqueued


# Jobs taken off arq's queue as arq's own end of a job takes them (keep_result=0: no result key): the queue's
# entry, the job, its count of tries. Never a job a worker has begun (its in-progress key): that run ends it.
# KEYS: the queue, then per job its in-progress, job and retry keys. ARGV: the job ids. Returns the ids dropped.
_DROP_QUEUED = """
local dropped = {}
for i = 1, #ARGV do
    local at = 3 * i - 1
    if redis.call('exists', KEYS[at]) == 0 and redis.call('zrem', KEYS[1], ARGV[i]) == 1 then
        redis.call('del', KEYS[at + 1], KEYS[at + 2])
        dropped[#dropped + 1] = ARGV[i]
    end
end
return dropped
"""
# How long a lane owner waits for Redis to drop the jobs (it holds its lane meanwhile); past it, they run again.
DROP_TIMEOUT_SECONDS = 1.0


async def finish_paid_jobs(db: Executor, deposit_ids: Sequence[uuid.UUID], *, queue: ArqRedis, paid_by: str) -> int:
    """A lane owner's turn (job `paid_by`) has just paid these deposits (`db`: its connection, free between its
    statements). Their jobs waiting for a later run (stored 'retrying'; they left the owned lane,
    kiota/payouts/lane.py) are taken off arq's queue, then recorded succeeded: that run never comes. On Base's
    2-second blocks most deposits are paid this way; a run only to find its deposit paid was a third of the
    worker's work per deposit (bench B7). Redis first: a job a worker has begun meanwhile is left to that run, and
    a job dropped from Redis but not recorded (PostgreSQL failed) is open work Redis lacks, which the sweeper
    queues again. Either way it runs once more, finds its deposit paid and succeeds, as before; so failures are
    logged, never raised into the lane. No run, so no attempt row: counted as a success in `kiota_jobs_total`,
    with no duration. Returns how many jobs were finished."""
    function = JobName.COMPLETE_MPESA_DEPOSIT
    line: dict[str, object] = {
        "event": "deposit paid in its lane owner's turn: no further run needed",
        "level": "info",
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "paid_in_turn_of": paid_by,
    }
    try:
        job_ids = await store.jobs_open_of_paid(db, [function.job_id(d) for d in deposit_ids])
        if not job_ids:
            return 0
        keys = [arq_queue_of(function)]
        for job_id in job_ids:
            keys += [in_progress_key_prefix + job_id, job_key_prefix + job_id, retry_key_prefix + job_id]
        async with asyncio.timeout(DROP_TIMEOUT_SECONDS):
            dropped = [job_id.decode() for job_id in await queue.register_script(_DROP_QUEUED)(keys=keys, args=job_ids)]
        finished = await store.jobs_paid_meanwhile(db, dropped, [line]) if dropped else 0
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.warning("could not finish the jobs of deposits paid meanwhile; they run again", error=error)
        return 0
    if finished:
        metrics.tally.count(metrics.JOBS, function, "succeeded", amount=finished)
    return finished


def error_detail(error: str, cause: BaseException | None) -> str:
    """An attempt's error as stored: the short error and, when an exception caused it, its traceback."""
    if cause is None:
        return error[:ERROR_DETAIL_CHARS]
    trace = "".join(traceback.format_exception(cause))
    return f"{error}\n\n{trace}"[:ERROR_DETAIL_CHARS]


def _logs_of(job_id: str) -> list[dict[str, object]] | None:
    """The job's log lines since its last record (kiota/logging.py keeps them), or None."""
    return job_logs.take(job_id) or None


class JobHistory:
    """One job's row, as a run of it goes: started, then succeeded, waiting, blocked, failed once, or given up.
    Each step is one statement: the job's row, its attempt's row and its log lines together."""

    def __init__(self, pool: Pool, job_id: str, worker_id: str | None = None) -> None:
        self._pool = pool
        self.job_id = job_id
        self.worker_id = worker_id
        self._started = time.monotonic()

    async def started(self) -> int:
        """Mark the run (and which worker runs it) and open its attempt; returns the failures so far."""
        self._started = time.monotonic()
        run = await store.job_started(self._pool, self.job_id, self.worker_id)
        return run.failures if run is not None else 0

    async def succeeded(self) -> bool:
        """The run succeeded. True when the job was queued again during it (an operator's retry, whose enqueue arq
        refused while this run held the job id): it is left queued, and the caller runs it again."""
        queued_again = await store.job_succeeded(self._pool, self.job_id, _logs_of(self.job_id))
        self._ended("succeeded")
        return queued_again

    async def failed_once(self, error: str, retry_in: float, cause: BaseException | None = None) -> int:
        detail = error_detail(error, cause)
        failures = await store.job_failed_once(
            self._pool, self.job_id, error[:2000], retry_in, detail, _logs_of(self.job_id)
        )
        self._ended("failed")
        return failures

    async def waiting(self, retry_in: float) -> None:
        await store.job_waiting(self._pool, self.job_id, retry_in, _logs_of(self.job_id))
        self._ended("deferred")

    async def blocked(self, reason: str, recheck_in: float | None = None) -> None:
        await store.job_blocked(self._pool, self.job_id, reason, recheck_in, _logs_of(self.job_id))
        self._ended("blocked")

    async def gave_up(self, error: str, cause: BaseException | None = None) -> None:
        detail = error_detail(error, cause)
        await store.job_gave_up(self._pool, self.job_id, error[:2000], detail, _logs_of(self.job_id))
        self._ended("failed")

    def _ended(self, outcome: str) -> None:
        """Count the run's end with the attempt's outcome (job_attempts.outcome's words), once it is recorded."""
        job_ran(self.job_id.partition(":")[0], outcome, time.monotonic() - self._started)


def job_ran(function: str, outcome: str, seconds: float) -> None:
    """A run of `function` ended: counted, with its duration, in the process's metrics."""
    metrics.tally.count(metrics.JOBS, function, outcome)
    metrics.tally.observe(metrics.JOB_DURATION, seconds, function)


@dataclasses.dataclass
class TickOutcome:
    """What a recorded tick says of itself: its progress, or that it did nothing worth a row."""

    progress: dict[str, object] | None = None
    worth_recording: bool = True


@asynccontextmanager
async def recorded_tick(
    pool: Pool, job_id: str, function: str, queue: Queue, worker_id: str | None
) -> AsyncIterator[TickOutcome]:
    """A cron tick's real work, recorded in the job history as it ends (one statement), with its
    outcome, error and traceback, progress and log lines. Enter it only once the tick is due."""
    tick = TickRun(job_id, function, queue, worker_id, datetime.now(UTC))
    outcome = TickOutcome()
    started = time.monotonic()
    try:
        yield outcome
    except Exception as exc:
        job_ran(function, "failed", time.monotonic() - started)
        error = error_detail(f"{type(exc).__name__}: {exc}", exc)
        try:
            await store.record_tick(pool, tick, error=error, progress=outcome.progress, logs=_logs_of(job_id))
        except Exception as lost:  # the tick's own error matters more (PostgreSQL may be what failed)
            log.warning("tick not recorded", error=f"{type(lost).__name__}: {lost}")
        raise
    job_ran(function, "succeeded", time.monotonic() - started)
    logs = _logs_of(job_id)
    if outcome.worth_recording:
        await store.record_tick(pool, tick, error=None, progress=outcome.progress, logs=logs)


@dataclasses.dataclass(frozen=True, slots=True)
class JobDetail:
    """A job as the jobs API shows it: its row and its attempts."""

    run: JobRun
    attempts: list[JobAttempt]

    @property
    def status(self) -> JobStatus:
        return shown_status(self.run.status, self.run.last_outcome)


async def job_detail(pool: Pool, job_id: str) -> JobDetail | None:
    run = await store.job_by_id(pool, job_id)
    if run is None:
        return None
    return JobDetail(run, await store.attempts_of_jobs(pool, [job_id]))


async def find_jobs(pool: Pool, found: JobFilter, limit: int, offset: int = 0) -> list[JobDetail]:
    """The jobs that match, newest first (a page: `offset` skipped), each with its attempts (two statements,
    whatever the limit)."""
    runs = await store.find_jobs(pool, found, limit, offset)
    attempts: dict[str, list[JobAttempt]] = {run.id: [] for run in runs}
    for attempt in await store.attempts_of_jobs(pool, list(attempts)):
        attempts[attempt.job_id].append(attempt)
    return [JobDetail(run, attempts[run.id]) for run in runs]


async def queued_arguments(queue: ArqRedis, job_id: str) -> dict[str, object] | None:
    """The arguments Redis holds for a job still queued there (arq's job data: args and kwargs), or None."""
    raw = await queue.get(job_key_prefix + job_id)
    if raw is None:
        return None
    data = deserialize_job(raw)
    return {"args": data.get("a", []), "kwargs": data.get("k", {})}
