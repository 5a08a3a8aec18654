"""What an operator does to jobs: retry one or every one a filter matches, cancel one waiting, clean old history.

Each action is recorded in `admin_actions` (who, what, before, after), on the job it changed (`job`, its
id) or on the history (`jobs`) for a clean; the dashboard and, later, `kiota ops` call these.

Money comes first:
- A deposit's completion job is retried through `kiota.ops.retry_deposit`, with its refusals (a payout the
  chain may still mine, a success M-Pesa never confirmed, a deposit with nothing to retry).
- A cancelled money job never drops a deposit: in the cancel's transaction the deposit goes to review
  ("… cancelled by <operator>") as a crashed job's would (`kiota.payouts.abandon_in`: a payout holding a
  nonce is cancelled by the lane, never signed twice). The job is stored `cancelled`, which the sweeper
  never re-enqueues, and a run that raced the cancel changes neither the job's row (its updates skip a
  cancelled job) nor the money (the lane pays only a processing deposit).
- The clean deletes finished job rows and their attempts only: never the ledger, callbacks, payouts,
  deposits or admin actions.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable

import structlog
from arq.connections import ArqRedis

from kiota.db import Executor, Pool
from kiota.errors import KiotaError
from kiota.job_history import enqueue, record_job
from kiota.job_names import ARQ_DEFAULT_QUEUE, JobName, arq_queue_of
from kiota.job_view import JobFilter, JobStatus, shown_status
from kiota.operators import Admin, record_action
from kiota.ops import CannotRetry, retry_deposit
from kiota.payouts import abandon_in
from kiota.records import JobRun
from kiota.store import jobs as store
from kiota.store import ops as ops_store
from kiota.store import payouts as payout_store
from kiota.sweeper import IN_PROGRESS_KEY_PREFIX, JOB_KEY_PREFIX

log = structlog.get_logger(__name__)

RETRYABLE: frozenset[JobStatus] = frozenset({"failed", "cancelled"})
CANCELLABLE = frozenset({"queued", "retrying", "blocked"})  # stored: waiting to run (deferred is 'retrying')
BATCH_LIMIT = 500  # jobs a batch retry takes at most; the notice says when more matched
CLEAN_BATCH = 1000  # jobs a clean deletes per transaction
JOB = "job"
JOBS = "jobs"


class CannotCancel(KiotaError):
    """The job is not waiting to run: nothing to cancel."""


class CannotClean(KiotaError):
    """The clean's age is refused."""


def _status(job: JobRun) -> JobStatus:
    return shown_status(job.status, job.last_outcome)


async def _deposit_status(conn: Executor, deposit_id: uuid.UUID | None) -> str | None:
    return None if deposit_id is None else await payout_store.deposit_status(conn, deposit_id)


async def retry_job(pool: Pool, queue: ArqRedis, job_id: str, admin: Admin, *, batch: bool = False) -> str:
    """Run a failed or cancelled job again; what was done, or CannotRetry saying why not. A deposit's
    completion goes through `retry_deposit` (its refusals kept); an STK query is queued again."""
    job = await store.job_by_id(pool, job_id)
    if job is None:
        raise CannotRetry(f"no job {job_id}")
    status = _status(job)
    if status not in RETRYABLE:
        raise CannotRetry(f"the job is {status}: only a failed or cancelled job is retried")
    if job.deposit_id is None or job.function not in (JobName.COMPLETE_MPESA_DEPOSIT, JobName.QUERY_MPESA_DEPOSIT):
        raise CannotRetry(f"{job.function} runs again on its own schedule: there is nothing to retry")
    before = {"status": status, "deposit_status": await _deposit_status(pool, job.deposit_id)}
    if job.function == JobName.COMPLETE_MPESA_DEPOSIT:
        result = await retry_deposit(pool, queue, job.deposit_id, admin.name)
        enqueued, said = result.enqueued, "deposit completion retried"
        if not result.confirmed:
            said += " (its M-Pesa success is not confirmed: the STK query is asked again first)"
    else:
        async with pool.acquire() as conn, conn.transaction():
            await record_job(conn, job_id, job.function, job.deposit_id, reset=True)
        enqueued = await enqueue(queue, job.function, job_id, str(job.deposit_id))
        said = "STK query queued again"
    after = {"status": "queued", "deposit_status": await _deposit_status(pool, job.deposit_id), "enqueued": enqueued}
    await record_action(pool, admin, "retry_job", JOB, job_id, before=before, after={**after, "batch": batch})
    log.info("operator retried a job", job_id=job_id, by=admin.name, batch=batch)
    return said


@dataclasses.dataclass(frozen=True, slots=True)
class BatchRetry:
    """What a retry over a filter did: the jobs retried, those refused (id, why), and whether more matched."""

    retried: list[str]
    refused: list[tuple[str, str]]
    more: bool


async def retry_matching(pool: Pool, queue: ArqRedis, found: JobFilter, admin: Admin) -> BatchRetry:
    """Retry every job the filter matches (up to BATCH_LIMIT, newest first), each as `retry_job` would,
    each recorded; a refusal is reported with its reason and stops nothing else."""
    jobs = await store.find_jobs(pool, found, BATCH_LIMIT + 1)
    retried: list[str] = []
    refused: list[tuple[str, str]] = []
    for job in jobs[:BATCH_LIMIT]:
        try:
            await retry_job(pool, queue, job.id, admin, batch=True)
        except CannotRetry as exc:
            refused.append((job.id, str(exc)))
        else:
            retried.append(job.id)
    return BatchRetry(retried, refused, len(jobs) > BATCH_LIMIT)


async def cancel_job(pool: Pool, queue: ArqRedis, job_id: str, admin: Admin) -> JobRun:
    """Cancel a job waiting to run: stored `cancelled`, its deposit (if any) to review, gone from Redis.
    Returns the cancelled job; CannotCancel when it is not waiting."""
    reason = f"cancelled by {admin.name}"
    first = await store.job_by_id(pool, job_id)
    if first is None:
        raise CannotCancel(f"no job {job_id}")
    async with pool.acquire() as conn, conn.transaction():
        if first.deposit_id is not None:  # the deposit first, as the callbacks and the lane lock it
            await ops_store.deposit_for_retry(conn, first.deposit_id)
        job = await store.job_for_update(conn, job_id)
        if job is not None and job.function == JobName.QUERY_MPESA_DEPOSIT:
            # Its deposit is unpaid as far as we know: the query is how we learn whether the customer paid, and
            # a payment that arrives after its deposit left `pending` would be held in suspense.
            raise CannotCancel(
                "an STK query is how we learn whether the customer paid: it is not cancelled "
                "(pause the payouts queue to hold it)"
            )
        if job is None or job.status not in CANCELLABLE:
            status = "gone" if job is None else _status(job)
            raise CannotCancel(
                f"the job is {status}: only a job waiting to run (queued, deferred, retrying, blocked) is cancelled"
            )
        before = {"status": _status(job), "deposit_status": await _deposit_status(conn, job.deposit_id)}
        cancelled = await store.cancel_job(conn, job_id, reason)
        assert cancelled is not None  # locked and waiting, above
        if job.deposit_id is not None:
            await abandon_in(conn, job.deposit_id, f"{job.function} job {reason}: an operator decides what follows")
        after = {"status": "cancelled", "deposit_status": await _deposit_status(conn, job.deposit_id)}
        await record_action(conn, admin, "cancel_job", JOB, job_id, before=before, after=after)
    await _forget_in_redis(queue, job)
    log.warning("operator cancelled a job", job_id=job_id, by=admin.name, deposit_id=str(job.deposit_id))
    return cancelled


async def _forget_in_redis(queue: ArqRedis, job: JobRun) -> None:
    """Out of its queue (and arq's old default one, where an earlier release put it), and its data deleted: a
    worker that pops it anyway finds no job and drops it (arq's "job expired")."""
    job_id = job.id
    await queue.zrem(arq_queue_of(job.function), job_id)
    await queue.zrem(ARQ_DEFAULT_QUEUE, job_id)
    await queue.delete(JOB_KEY_PREFIX + job_id)
    if await queue.exists(IN_PROGRESS_KEY_PREFIX + job_id):
        log.warning("a cancelled job was already taken by a worker: its run changes nothing", job_id=job_id)


async def clean_history(
    pool: Pool,
    older_than_days: int,
    admin: Admin,
    *,
    batch: int = CLEAN_BATCH,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Delete finished jobs (succeeded, failed, cancelled) that ended more than `older_than_days` ago, with
    their attempts; (jobs, attempts) deleted. Refuses fewer than one day: today's history explains today.
    Deleted `batch` jobs a transaction, oldest first, so a large clean neither holds locks for long nor
    starts again from nothing if it is stopped; `on_progress(done, total)` after each. Recorded once, with
    the totals, when it ends."""
    if older_than_days < 1:
        raise CannotClean("history is cleaned only when older than at least 1 day")
    total = await store.count_old_history(pool, older_than_days)
    jobs = attempts = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            deleted, their_attempts = await store.clean_history(conn, older_than_days, batch)
        jobs, attempts = jobs + deleted, attempts + their_attempts
        if on_progress is not None:
            on_progress(jobs, max(total, jobs))
        if deleted < batch:
            break
    await record_action(
        pool,
        admin,
        "clean_history",
        JOBS,
        before={"older_than_days": older_than_days, "matching": total},
        after={"jobs_deleted": jobs, "attempts_deleted": attempts},
    )
    log.warning("operator cleaned the job history", by=admin.name, older_than_days=older_than_days, jobs=jobs)
    return jobs, attempts
