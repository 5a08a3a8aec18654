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
from redis.asyncio import ConnectionPool


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
