"""Redis/arq adapter: the job queue, JSON-serialised on both sides.

arq's default serializer is pickle, which would let anyone able to write to
Redis run code on a worker; jobs here carry only ids and plain values, so JSON.
Redis is a queue, never a record: whatever a job does is recorded in PostgreSQL
first, and a sweeper re-enqueues what Redis lost.
"""

from __future__ import annotations

import json
from typing import Any

from arq.connections import ArqRedis, RedisSettings
from arq.constants import job_key_prefix
from redis.asyncio import ConnectionPool

from kiota.job_names import ARQ_DEFAULT_QUEUE, arq_queue_of


def serialize_job(job: dict[str, Any]) -> bytes:
    return json.dumps(job, separators=(",", ":"), default=_refuse).encode()


def deserialize_job(raw: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(raw)
    return value


def _refuse(value: object) -> Any:
    raise TypeError(f"job arguments must be JSON values, got {type(value).__name__}")


def redis_settings(url: str) -> RedisSettings:
    return RedisSettings.from_dsn(url)


def create_queue(url: str) -> ArqRedis:
    """A queue client that connects on first use, so the API starts even while Redis is down
    (and `/health/ready` says so) instead of failing its start-up."""
    pool = ConnectionPool.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    return ArqRedis(pool, job_serializer=serialize_job, job_deserializer=deserialize_job)


async def adopt_default_queue(queue: ArqRedis) -> int:
    """Move the jobs left in arq's default queue (`arq:queue`, where every job went before the queues were
    named) to their own queues, each keeping its score (its place and its due time). A deploy loses none:
    the sweeper would skip them, as Redis still holds their job keys. Returns how many moved."""
    moved = 0
    for raw_id, score in await queue.zrange(ARQ_DEFAULT_QUEUE, 0, -1, withscores=True):
        job_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
        data = await queue.get(job_key_prefix + job_id)
        if data is None:
            continue  # finished or expired: arq drops it from whichever queue holds it
        target = arq_queue_of(str(deserialize_job(data).get("f", "")))
        if target == ARQ_DEFAULT_QUEUE:
            continue  # not one of ours
        async with queue.pipeline(transaction=True) as tr:
            tr.zadd(target, {job_id: score}, nx=True)
            tr.zrem(ARQ_DEFAULT_QUEUE, job_id)
            await tr.execute()
        moved += 1
    return moved
