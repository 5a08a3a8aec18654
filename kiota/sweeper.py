"""The sweeper: nothing that PostgreSQL recorded is lost when Redis or a worker is.

Each tick (a unique arq cron, and once at every worker start):
1. jobs marked running by a worker that has died (its liveness lock is free) are
   released: arq's in-progress key is deleted so the job runs again now, not when
   the key expires;
2. every `SWEEP_SECONDS`, jobs recorded as queued or retrying whose time has come
   and that Redis does not hold (a flush, a restart, a crash between commit and
   enqueue) are enqueued again;
3. pending deposits whose callback has not come are dispatched to the STK query;
4. pending deposits whose push never got a CheckoutRequestID (the request ended between the
   insert and Daraja's answer) go to review after `UNKNOWN_PUSH_AFTER_SECONDS`: nothing can be
   asked about them, and they are never pending forever.

arq refuses a job id while the job or its result exists; results are not kept
(keep_result=0), so only a job Redis still holds is refused, which is the point.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import structlog
from arq.connections import ArqRedis

from kiota.db import Connection, Pool, advisory_unlock, try_advisory_lock
from kiota.job_history import enqueue, record_job
from kiota.job_names import JobName, MaintenanceRun
from kiota.store import jobs as store

log = structlog.get_logger(__name__)

JOB_KEY_PREFIX = "arq:job:"
IN_PROGRESS_KEY_PREFIX = "arq:in-progress:"
ORPHAN_GRACE_SECONDS = 2.0  # a job committed this recently may still be on its way to Redis
# A push gets Daraja's answer within its 8 s budget (the API answers within 10 s): a pending deposit
# without a CheckoutRequestID after two minutes lost its push's answer for good.
UNKNOWN_PUSH_AFTER_SECONDS = 120.0
UNKNOWN_PUSH_REASON = (
    "the STK push's outcome is unknown: the request ended (cancelled, or its process died) before M-Pesa "
    "answered, so there is no CheckoutRequestID to ask about. A payment prompt may have reached the phone: "
    "match this deposit with the success callbacks listed for review (kiota ops review) before crediting it"
)
BATCH = 500


def worker_lock_key(worker_id: str) -> int:
    digest = hashlib.sha256(f"kiota-worker:{worker_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def query_job_id(deposit_id: object) -> str:
    return JobName.QUERY_MPESA_DEPOSIT.job_id(deposit_id)


@dataclass(frozen=True, slots=True)
class SweepReport:
    recovered: int = 0
    reenqueued: int = 0
    queries: int = 0
    unknown_pushes: int = 0


async def worker_is_dead(conn: Connection, worker_id: str) -> bool:
    """A live worker holds its lock on its own connection; if we can take it, the worker is gone."""
    key = worker_lock_key(worker_id)
    if await try_advisory_lock(conn, key):
        await advisory_unlock(conn, key)
        return True
    return False


async def recover_dead_workers(pool: Pool, queue: ArqRedis) -> int:
    recovered = 0
    async with pool.acquire() as conn:
        for worker_id, job_ids in (await store.jobs_running_by_worker(conn)).items():
            if not await worker_is_dead(conn, worker_id):
                continue
            for job_id in await store.requeue_jobs_of_worker(conn, worker_id):
                await queue.delete(IN_PROGRESS_KEY_PREFIX + job_id)
                recovered += 1
            log.warning("jobs of a dead worker released", worker_id=worker_id, jobs=len(job_ids))
    return recovered


async def reenqueue_orphans(pool: Pool, queue: ArqRedis, grace_seconds: float = ORPHAN_GRACE_SECONDS) -> int:
    """A duplicate enqueue is harmless (arq refuses a job id it holds; jobs are idempotent), so the
    grace only saves work; at a worker's start it is zero."""
    count = 0
    for job in await store.open_jobs_due(pool, grace_seconds, BATCH):
        if await queue.exists(JOB_KEY_PREFIX + job.id, IN_PROGRESS_KEY_PREFIX + job.id):
            continue
        if await enqueue(queue, job.function, job.id, str(job.deposit_id)):
            count += 1
            log.info("re-enqueued work Redis did not hold", job_id=job.id, function=job.function)
    return count


async def dispatch_queries(pool: Pool, queue: ArqRedis, job_wait_seconds: float) -> int:
    """Send pending deposits whose callback is late to the STK query job."""
    deposit_ids = await store.deposits_due_for_query(pool, BATCH)
    for deposit_id in deposit_ids:
        job_id = query_job_id(deposit_id)
        async with pool.acquire() as conn, conn.transaction():
            await record_job(conn, job_id, JobName.QUERY_MPESA_DEPOSIT, deposit_id, reset=True)
            await store.deposit_query_scheduled(conn, deposit_id, job_wait_seconds)
        await enqueue(queue, JobName.QUERY_MPESA_DEPOSIT, job_id, str(deposit_id))
    return len(deposit_ids)


async def sweep(pool: Pool, queue: ArqRedis, sweep_seconds: float, *, force: bool = False) -> SweepReport:
    recovered = await recover_dead_workers(pool, queue)
    due = force or await store.maintenance_due(pool, MaintenanceRun.REENQUEUE_ORPHANS, sweep_seconds)
    reenqueued = await reenqueue_orphans(pool, queue, 0 if force else ORPHAN_GRACE_SECONDS) if due else 0
    queries = await dispatch_queries(pool, queue, job_wait_seconds=60)
    unknown = await review_unknown_pushes(pool)
    return SweepReport(recovered, reenqueued, queries, unknown)


async def review_unknown_pushes(pool: Pool, after_seconds: float = UNKNOWN_PUSH_AFTER_SECONDS) -> int:
    """Pending deposits whose push has no CheckoutRequestID after `after_seconds`: to review."""
    deposit_ids = await store.unknown_pushes_to_review(pool, after_seconds, UNKNOWN_PUSH_REASON)
    for deposit_id in deposit_ids:
        log.warning("deposit sent to review: its push's outcome is unknown", deposit_id=str(deposit_id))
    return len(deposit_ids)
