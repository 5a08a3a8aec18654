"""The job history and the workers in PostgreSQL: the `jobs` rows and their `job_attempts`, the maintenance
runs, the heartbeats.

Owns the named queries of `sql/queries/jobs.sql` and `workers.sql` (but `blocked_jobs` and
`requeue_blocked_job`, the operator's), and runs by name the sweeper's three deposit queries of
`deposits.sql` (which deposits are due for an STK query, or for review). A job's row comes back as a
`kiota.records.JobRun`, an attempt as a `JobAttempt`; the rest as ids or plain values.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from kiota.db import Connection, Executor
from kiota.job_view import JobFilter, TickRun
from kiota.records import JobAttempt, JobRun, QueueDepthSample
from kiota.sql import load_queries

# A job's own log lines, as JSON (None: none to add).
Logs = list[dict[str, object]] | None

# A single statement may run on a borrowed connection (inside the caller's transaction) or on the pool.
# A job's history


async def record_job(db: Executor, job_id: str, function: str, deposit_id: uuid.UUID | None, *, reset: bool) -> None:
    """The job recorded as queued (once); `reset`: an existing one is queued again with its failures forgotten."""
    await db.execute(load_queries().insert_job, job_id, function, deposit_id, reset)


async def job_started(db: Executor, job_id: str, worker_id: str | None) -> JobRun | None:
    """One more run of the job, by `worker_id`, and its attempt row; None when no such job is recorded."""
    row = await db.fetchrow(load_queries().job_started, job_id, worker_id)
    return None if row is None else JobRun.from_row(row)


# Each end of a run closes its attempt and appends `logs` (the run's own log lines) in the same statement.


async def job_succeeded(db: Executor, job_id: str, logs: Logs, progress: dict[str, object] | None = None) -> bool:
    """The run succeeded; True when the job was queued again during it (not recorded: it must run again)."""
    return bool(await db.fetchval(load_queries().job_succeeded, job_id, logs, progress))


async def jobs_open_of_paid(db: Executor, job_ids: list[str]) -> list[str]:
    """Of these deposit jobs, those waiting for a later run whose deposits are completed."""
    return [row["id"] for row in await db.fetch(load_queries().jobs_open_of_paid, job_ids)]


async def jobs_paid_meanwhile(db: Executor, job_ids: list[str], logs: Logs) -> int:
    """These deposit jobs, taken off arq's queue, whose deposits are paid: succeeded, with `logs`; how many."""
    return int(await db.fetchval(load_queries().jobs_paid_meanwhile, job_ids, logs))


async def job_failed_once(db: Executor, job_id: str, error: str, retry_in: float, detail: str, logs: Logs) -> int:
    """One more failure, retried in `retry_in` seconds (`detail`: the attempt's error with its traceback);
    the failures so far (0 when no such job)."""
    failures: int | None = await db.fetchval(load_queries().job_failed_once, job_id, error, retry_in, detail, logs)
    return failures or 0


async def job_waiting(db: Executor, job_id: str, retry_in: float, logs: Logs) -> None:
    await db.execute(load_queries().job_waiting, job_id, retry_in, logs)


async def job_blocked(db: Executor, job_id: str, reason: str, recheck_in: float | None, logs: Logs) -> None:
    await db.execute(load_queries().job_blocked, job_id, reason, recheck_in, logs)


async def job_gave_up(db: Executor, job_id: str, error: str, detail: str, logs: Logs) -> None:
    await db.execute(load_queries().job_gave_up, job_id, error, detail, logs)


async def record_tick(
    db: Executor,
    tick: TickRun,
    *,
    error: str | None,
    progress: dict[str, object] | None,
    logs: Logs,
) -> None:
    """A cron tick that did real work, recorded as it ends: its job row and its one attempt."""
    await db.execute(
        load_queries().record_tick,
        tick.job_id,
        tick.function,
        tick.queue,
        tick.worker_id,
        tick.started_at,
        error,
        progress,
        logs,
    )


# What the jobs API reads


async def job_by_id(db: Executor, job_id: str) -> JobRun | None:
    row = await db.fetchrow(load_queries().job_by_id, job_id)
    return None if row is None else JobRun.from_row(row)


async def attempts_of_jobs(db: Executor, job_ids: list[str]) -> list[JobAttempt]:
    """The jobs' attempts, by job, first attempt first."""
    return [JobAttempt.from_row(row) for row in await db.fetch(load_queries().attempts_of_jobs, job_ids)]


async def find_jobs(db: Executor, found: JobFilter, limit: int, offset: int = 0) -> list[JobRun]:
    """The jobs that match, newest first (`offset` of them skipped: a page)."""
    rows = await db.fetch(
        load_queries().find_jobs,
        found.status,
        found.deferred,
        found.function,
        found.deposit_id,
        found.intent_id,
        found.queue,
        found.since,
        found.until,
        found.search or None,
        limit,
        offset,
    )
    return [JobRun.from_row(row) for row in rows]


async def existing_jobs(db: Executor, job_ids: list[str]) -> set[str]:
    """Which of these job ids are recorded."""
    return {row["id"] for row in await db.fetch(load_queries().existing_jobs, job_ids)}


# What the sweeper looks for


async def open_jobs_due(db: Executor, grace_seconds: float, limit: int) -> list[JobRun]:
    """Recorded work that should be in the queue now (oldest first): queued or retrying and due, blocked with
    a recheck due, or running without a word for `grace_seconds`."""
    return [JobRun.from_row(row) for row in await db.fetch(load_queries().open_jobs_due, grace_seconds, limit)]


async def jobs_running_by_worker(conn: Connection) -> dict[str, list[str]]:
    """The jobs recorded as running, by the worker that runs them."""
    return {row["worker_id"]: list(row["job_ids"]) for row in await conn.fetch(load_queries().running_jobs_by_worker)}


async def requeue_jobs_of_worker(conn: Connection, worker_id: str) -> list[str]:
    """The jobs recorded as running on `worker_id` (a dead worker) queued again; their ids."""
    return [row["id"] for row in await conn.fetch(load_queries().requeue_jobs_of_dead_worker, worker_id)]


async def deposits_due_for_query(db: Executor, limit: int) -> list[uuid.UUID]:
    """Pending deposits whose callback is late: due for an STK query."""
    return [row["id"] for row in await db.fetch(load_queries().deposits_due_for_query, limit)]


async def deposit_query_scheduled(db: Executor, deposit_id: uuid.UUID, wait_seconds: float) -> None:
    """The deposit's query job is on its way: not due again for `wait_seconds`."""
    await db.execute(load_queries().deposit_query_scheduled, deposit_id, wait_seconds)


async def unknown_pushes_to_review(db: Executor, after_seconds: float, reason: str) -> list[uuid.UUID]:
    """Pending deposits still without a CheckoutRequestID `after_seconds` after they were recorded, sent to
    review with `reason`; their ids."""
    rows = await db.fetch(load_queries().unknown_pushes_to_review, after_seconds, reason)
    return [row["id"] for row in rows]


# Maintenance runs and workers


async def maintenance_due(db: Executor, name: str, interval_seconds: float) -> bool:
    """Claim the maintenance run `name` if its last one is older than the interval; False: not due."""
    return await db.fetchval(load_queries().maintenance_due, name, interval_seconds) is not None


async def record_heartbeat(
    db: Executor, worker_id: str, host: str, pid: int, started_at: datetime, queues: list[str]
) -> None:
    await db.execute(load_queries().record_heartbeat, worker_id, host, pid, started_at, queues)


# The dashboard's reads (kiota/queue_stats.py) and an operator's actions (kiota/job_actions.py)


async def job_counts(db: Executor) -> list[tuple[str, str, bool, int]]:
    """(queue, stored status, latest attempt deferred, how many) for every such group of jobs."""
    rows = await db.fetch(load_queries().job_counts)
    return [(row["queue"], row["status"], row["deferred"], row["n"]) for row in rows]


async def attempt_minutes(db: Executor, since: datetime) -> list[tuple[str, datetime, int, int]]:
    """(queue, minute, attempts ended, of which failed) for every minute since `since` in which one ended."""
    rows = await db.fetch(load_queries().attempt_minutes, since)
    return [(row["queue"], row["minute"], row["ended"], row["failed"]) for row in rows]


async def record_depth_sample(db: Executor, queues: list[str]) -> None:
    """This minute's depth of `queues`, unless a worker sampled it already; old samples go."""
    await db.execute(load_queries().record_depth_sample, queues)


async def depth_samples(db: Executor, since: datetime) -> list[QueueDepthSample]:
    return [QueueDepthSample.from_row(row) for row in await db.fetch(load_queries().depth_samples, since)]


async def job_for_update(conn: Connection, job_id: str) -> JobRun | None:
    row = await conn.fetchrow(load_queries().job_for_update, job_id)
    return None if row is None else JobRun.from_row(row)


async def cancel_job(conn: Connection, job_id: str, reason: str) -> JobRun | None:
    """The job cancelled, if it was waiting to run (queued, retrying, blocked); else None."""
    row = await conn.fetchrow(load_queries().cancel_job, job_id, reason)
    return None if row is None else JobRun.from_row(row)


async def count_old_history(db: Executor, older_than_days: int) -> int:
    count: int = await db.fetchval(load_queries().count_old_history, older_than_days)
    return count


async def clean_history(conn: Connection, older_than_days: int, limit: int) -> tuple[int, int]:
    """Up to `limit` finished jobs that ended more than `older_than_days` ago deleted with their attempts,
    oldest first: (jobs, attempts)."""
    row = await conn.fetchrow(load_queries().clean_history, older_than_days, limit)
    assert row is not None
    return int(row["jobs"]), int(row["attempts"])
