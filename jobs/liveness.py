"""This worker's liveness lock: a PostgreSQL session lock held for the worker's whole life.

When the process dies, PostgreSQL frees the lock, and the sweeper (`kiota/sweeper.py`) knows
this worker's running jobs are orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from kiota.db import Pool, try_advisory_lock
from kiota.sweeper import worker_lock_key

log = structlog.get_logger(__name__)


@dataclass(eq=False)
class Liveness:
    """The lock and the connection that holds it, one object for the worker's life. Each job gets
    a copy of `ctx`, so the connection is kept here: put in a job's `ctx` itself, a connection
    taken again would be lost with the copy (and its session leaked)."""

    worker_id: str
    key: int
    conn: PoolConnectionProxy | None = None  # borrowed from the pool for the worker's life
    guard: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def of_worker(cls, worker_id: str) -> Liveness:
        return cls(worker_id, worker_lock_key(worker_id))

    async def hold(self, pool: Pool) -> None:
        """Hold the lock; take it again on a new connection if PostgreSQL restarted under us
        (the sweeper would otherwise think this worker dead)."""
        async with self.guard:  # jobs start concurrently: one of them re-takes the lock, the others wait
            current = self.conn
            if current is None or _closed(current):
                if current is not None:
                    with contextlib.suppress(Exception):
                        await pool.release(current)
                    self.conn = None
                self.conn = await _take_lock(pool, self.key)
                if current is not None:  # PostgreSQL restarted (its outage, if seen, is logged once by jobs/outages.py)
                    log.info("liveness lock taken again after a lost database connection", worker_id=self.worker_id)

    async def release(self, pool: Pool) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):  # the connection may have died with PostgreSQL
                await pool.release(self.conn)


def _closed(conn: PoolConnectionProxy) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:  # the pool took the dead connection back
        return True


async def _take_lock(pool: Pool, key: int) -> PoolConnectionProxy:
    conn = await pool.acquire()
    try:
        locked = await try_advisory_lock(conn, key)
    except BaseException:  # PostgreSQL went away between the two: a connection kept would be leaked
        with contextlib.suppress(Exception):
            await pool.release(conn)
        raise
    if not locked:
        await pool.release(conn)
        raise RuntimeError("another session holds this worker's liveness lock")
    return conn
