"""Named queues in PostgreSQL: whether each is paused, the workers that consume them, and the counts of
jobs, deposits and intents that the operators' stats show.

Owns the named queries of `sql/queries/queues.sql` and, for the workers' registry, the reads of
`sql/queries/workers.sql` (the heartbeat itself is written by `kiota/store/jobs.py`).
"""

from __future__ import annotations

from kiota.db import Connection, Executor
from kiota.records import QueueState, WorkerHeartbeat
from kiota.sql import load_queries


async def queue_states(db: Executor) -> list[QueueState]:
    return [QueueState.from_row(row) for row in await db.fetch(load_queries().queue_states)]


async def queue_state_for_update(conn: Connection, queue: str) -> QueueState:
    row = await conn.fetchrow(load_queries().queue_state_for_update, queue)
    assert row is not None, f"migration 0015 seeds every queue's row; no {queue!r}"
    return QueueState.from_row(row)


async def set_paused(conn: Connection, queue: str, paused: bool, by: str) -> QueueState:
    row = await conn.fetchrow(load_queries().queue_set_paused, queue, paused, by)
    assert row is not None
    return QueueState.from_row(row)


async def job_counts(db: Executor) -> list[tuple[str, str, bool, int]]:
    """(queue, stored status, only waiting, count) for each group that has jobs."""
    rows = await db.fetch(load_queries().job_counts_by_queue)
    return [(row["queue"], row["status"], row["deferred"], row["n"]) for row in rows]


async def deposit_counts(db: Executor) -> dict[str, int]:
    return {row["status"]: row["n"] for row in await db.fetch(load_queries().deposit_counts_by_status)}


async def intent_counts(db: Executor) -> dict[str, int]:
    return {row["status"]: row["n"] for row in await db.fetch(load_queries().intent_counts_by_status)}


async def recent_workers(db: Executor, within_seconds: float) -> list[WorkerHeartbeat]:
    rows = await db.fetch(load_queries().recent_workers, within_seconds)
    return [WorkerHeartbeat.from_row(row) for row in rows]


async def forget_worker(db: Executor, worker_id: str) -> None:
    await db.execute(load_queries().forget_worker, worker_id)
