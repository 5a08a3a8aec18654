"""The durable job history in PostgreSQL (`jobs`): Redis carries only the job id.

Each job row names what it serves (a deposit), counts real failures (a worker
killed mid-job is not one), and says why it waits or is blocked, so an operator
can see and retry it without reading code or Redis.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import asyncpg
import structlog
from arq.connections import ArqRedis

from kiota.db import Connection
from kiota.sql import load_queries

log = structlog.get_logger(__name__)

MAX_BACKOFF_SECONDS = 60.0


def backoff_seconds(failures: int, base: float = 1.0, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: base·2^(n-1), capped, times a random 0.5-1.5."""
    raw = min(MAX_BACKOFF_SECONDS, base * float(2 ** max(failures - 1, 0)))
    jitter: float = (rng or random).random()
    return raw * (0.5 + jitter)


async def record_job(
    conn: Connection | asyncpg.Pool, job_id: str, function: str, deposit_id: uuid.UUID | None, *, reset: bool = False
) -> None:
    await conn.execute(load_queries().insert_job, job_id, function, deposit_id, reset)


async def enqueue(queue: ArqRedis, function: str, job_id: str, *args: Any) -> bool:
    """Tell Redis about a job already recorded in PostgreSQL. Failing here loses nothing:
    the sweeper re-enqueues recorded work that Redis never heard of."""
    try:
        await queue.enqueue_job(function, *args, _job_id=job_id)
    except Exception as exc:
        log.warning("enqueue failed; the sweeper will retry", job_id=job_id, error=f"{type(exc).__name__}: {exc}")
        return False
    return True


class JobHistory:
    def __init__(self, pool: asyncpg.Pool, job_id: str, worker_id: str | None = None) -> None:
        self._pool = pool
        self.job_id = job_id
        self.worker_id = worker_id

    async def started(self) -> int:
        """Mark the run (and which worker runs it); returns the failures so far."""
        row = await self._pool.fetchrow(load_queries().job_started, self.job_id, self.worker_id)
        return int(row["failures"]) if row else 0

    async def succeeded(self) -> None:
        await self._pool.execute(load_queries().job_succeeded, self.job_id)

    async def failed_once(self, error: str, retry_in: float) -> int:
        failures = await self._pool.fetchval(load_queries().job_failed_once, self.job_id, error[:2000], retry_in)
        return int(failures or 0)

    async def waiting(self, retry_in: float) -> None:
        await self._pool.execute(load_queries().job_waiting, self.job_id, retry_in)

    async def blocked(self, reason: str, recheck_in: float | None = None) -> None:
        await self._pool.execute(load_queries().job_blocked, self.job_id, reason, recheck_in)

    async def gave_up(self, error: str) -> None:
        await self._pool.execute(load_queries().job_gave_up, self.job_id, error[:2000])
