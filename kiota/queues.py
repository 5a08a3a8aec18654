"""The named queues as operators see them: pause and resume (each change recorded in `admin_actions`), which
workers consume which queue, and the counts of `GET /api/v1/admin/stats`.

arq has no priorities: separate queues, each with its own workers and concurrency, are how payouts never
wait behind a chain scan. A pause is recorded in PostgreSQL (`queue_states`) and mirrored to one Redis key
per queue, which every queue worker reads before it takes jobs (`jobs/worker.py`): a paused queue's jobs
stay queued, none lost, and run once it is resumed. Workers re-assert the mirror from PostgreSQL at start
and on each heartbeat, so a Redis wipe cannot silently resume a queue.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from arq.connections import ArqRedis
from redis.asyncio import Redis

from kiota.db import Pool
from kiota.errors import InvalidInput
from kiota.job_names import Queue
from kiota.job_view import shown_status
from kiota.operators import Admin, record_action
from kiota.ops import as_admin
from kiota.records import QueueState, WorkerHeartbeat
from kiota.store import queues as store
from kiota.sweeper import worker_is_dead

log = structlog.get_logger(__name__)

PAUSED_KEY_PREFIX = "kiota:queue-paused:"
# A worker's heartbeat comes every HEARTBEAT_SECONDS (jobs/worker.py); three missed and it is not counted.
HEARTBEAT_SECONDS = 30.0
LIVE_WITHIN_SECONDS = 3 * HEARTBEAT_SECONDS
# The per-queue counts of the stats, the contract's words (kiota/job_view.py) and whether the queue is paused.
COUNTED = ("queued", "active", "deferred", "retrying", "blocked", "succeeded", "failed")

AnyRedis = Redis | ArqRedis


def queue_named(name: str) -> Queue:
    """The queue an operator named; InvalidInput for any other name."""
    try:
        return Queue(name)
    except ValueError:
        raise InvalidInput(f"no queue {name!r}: the queues are {', '.join(Queue)}") from None


def paused_key(queue: Queue) -> str:
    return PAUSED_KEY_PREFIX + queue.value


async def paused_in_redis(redis: AnyRedis, queue: Queue) -> bool:
    """What the workers read before taking jobs: the Redis mirror of the pause."""
    return bool(await redis.exists(paused_key(queue)))


async def _mirror(redis: AnyRedis, queue: Queue, paused: bool) -> bool:
    """Redis told; False if it could not be (the workers re-assert it from PostgreSQL on their heartbeat)."""
    try:
        if paused:
            await redis.set(paused_key(queue), b"1")
        else:
            await redis.delete(paused_key(queue))
    except Exception as exc:
        log.warning("queue pause not mirrored to Redis; workers re-assert it", queue=queue.value, error=str(exc))
        return False
    return True


async def _set_paused(pool: Pool, redis: AnyRedis, queue: str, paused: bool, by: str | Admin) -> QueueState:
    named, admin = queue_named(queue), as_admin(by)
    async with pool.acquire() as conn, conn.transaction():
        before = await store.queue_state_for_update(conn, named.value)
        after = await store.set_paused(conn, named.value, paused, admin.name)
        await record_action(
            conn,
            admin,
            "pause_queue" if paused else "resume_queue",
            "queue",
            named.value,
            before={"paused": before.paused},
            after={"paused": after.paused},
        )
    await _mirror(redis, named, paused)
    log.warning("queue " + ("paused" if paused else "resumed"), queue=named.value, by=admin.name)
    return after


async def pause(pool: Pool, redis: AnyRedis, queue: str, by: str | Admin) -> QueueState:
    """Hold `queue`'s jobs: workers take none of them from their next poll on; running ones finish."""
    return await _set_paused(pool, redis, queue, True, by)


async def resume(pool: Pool, redis: AnyRedis, queue: str, by: str | Admin) -> QueueState:
    """Let `queue`'s workers take its jobs again, the held ones first (they keep their place)."""
    return await _set_paused(pool, redis, queue, False, by)


async def paused(pool: Pool) -> dict[str, bool]:
    """Each queue's pause, as PostgreSQL records it."""
    return {state.queue: state.paused for state in await store.queue_states(pool)}


async def mirror_pauses(pool: Pool, redis: AnyRedis) -> dict[str, bool]:
    """Redis told every queue's pause from PostgreSQL (a worker's start and heartbeat)."""
    states = await paused(pool)
    for name, is_paused in states.items():
        await _mirror(redis, Queue(name), is_paused)
    return states


async def live_workers(pool: Pool) -> list[WorkerHeartbeat]:
    """Workers with a recent heartbeat whose liveness lock is still held (a killed one's is free at once)."""
    recent = await store.recent_workers(pool, LIVE_WITHIN_SECONDS)
    async with pool.acquire() as conn:
        return [worker for worker in recent if not await worker_is_dead(conn, worker.worker_id)]


async def consumers(pool: Pool, queues: list[Queue]) -> dict[Queue, int]:
    """How many live workers consume each of `queues` (`kiota worker --check`)."""
    workers = await live_workers(pool)
    return {queue: sum(queue.value in worker.queues for worker in workers) for queue in queues}


@dataclass(frozen=True, slots=True)
class Stats:
    """`GET /api/v1/admin/stats`: per queue its jobs by status and whether it is paused; deposits and intents by
    status; the live workers and their queues."""

    queues: dict[str, dict[str, int | bool]]
    deposits: dict[str, int]
    intents: dict[str, int]
    workers: list[WorkerHeartbeat]


def queue_counts(rows: list[tuple[str, str, bool, int]], pauses: dict[str, bool]) -> dict[str, dict[str, int | bool]]:
    """Per queue, its jobs by the contract's status (every status present, 0 when none) and its pause."""
    counts: dict[str, dict[str, int | bool]] = {
        q.value: {**dict.fromkeys(COUNTED, 0), "paused": pauses.get(q.value, False)} for q in Queue
    }
    for queue, stored, waiting, n in rows:
        status = shown_status(stored, "deferred" if waiting else None)
        if status in COUNTED and queue in counts:
            counts[queue][status] = int(counts[queue][status]) + n
    return counts


async def stats(pool: Pool) -> Stats:
    return Stats(
        queues=queue_counts(await store.job_counts(pool), await paused(pool)),
        deposits=await store.deposit_counts(pool),
        intents=await store.intent_counts(pool),
        workers=await live_workers(pool),
    )
