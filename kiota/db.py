"""PostgreSQL adapter: the pool, codecs, and driver errors translated at the boundary."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection as our code receives it: direct, or borrowed from a pool.
Connection = asyncpg.Connection | PoolConnectionProxy
# The pool, named here so that the layers above the store never import the driver.
Pool = asyncpg.Pool
# What a store function runs a statement on: the caller's connection (inside its transaction),
# or the pool for a statement on its own.
Executor = Connection | Pool


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects; money never travels as a float, so the
    # encoder is plain json and callers pass strings/integers.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


# Backends (by server pid) whose session a borrower has given state that must not outlive its loan: a session
# advisory lock, a session setting. asyncpg resets every released connection with one more round trip
# (`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`): ~14 per M-Pesa deposit in B7, a fifth
# of all statements. Here only a connection marked by `keeps_session_state` gets that reset; the others hold no
# such state (no LISTEN, no cursor outside a transaction, no session SET or lock but through this module's
# callers). An open transaction is rolled back on every release, as before (asyncpg's `_reset`). The count is of
# statements that may have given state; one known to have given none (a lock not granted) takes its mark back.
_SESSION_STATE: Counter[int] = Counter()


def keeps_session_state(conn: Connection) -> None:
    """Say, before sending it, that a statement gives `conn`'s session state (a session lock, a setting): the
    pool then resets the connection in full when it is released, whatever happened in between."""
    _SESSION_STATE[conn.get_server_pid()] += 1


def _gave_no_state(conn: Connection) -> None:
    """The statement marked last by `keeps_session_state` is known to have given no state: its mark goes."""
    pid = conn.get_server_pid()
    _SESSION_STATE[pid] -= 1
    if _SESSION_STATE[pid] <= 0:
        del _SESSION_STATE[pid]


async def _reset_on_release(conn: asyncpg.Connection) -> None:
    """The pool's reset: asyncpg's full reset for a connection marked by `keeps_session_state`, else nothing.
    (A pid left marked by a connection that died costs its successor one reset, never a skipped one.)"""
    pid = conn.get_server_pid()
    if pid in _SESSION_STATE:
        await conn.execute(conn.get_reset_query())
        del _SESSION_STATE[pid]


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_reset_on_release,
        command_timeout=30,
    )
    assert pool is not None
    return pool


# Errors that can only mean the connection to PostgreSQL was lost (the server went away or is
# restarting), as opposed to an error in what was asked of it.
CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
)
# Errors that say PostgreSQL cannot answer right now (down, restarting, or a connection unusable), which
# an edge answers with "try again" rather than as a fault of the request.
UNAVAILABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.InternalClientError,
)
# Errors after which the same work may succeed if run again: the above, the server shutting down or
# restarting, and a serialization failure or deadlock. InternalClientError is asyncpg's protocol state
# machine lost, which a server shutting down causes: it sends an unsolicited FATAL error to each idle
# connection, which asyncpg, idle, cannot place; the connection is left consuming an error, and the next
# statement on it raises "cannot switch to state …; another operation (2) is in progress" (seen on a
# lane waiter's connection, held idle between polls, when PostgreSQL restarted). That connection is
# unusable; the pool drops it, and the same work passes on another.
MAY_PASS = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.OperatorInterventionError,
    asyncpg.TransactionRollbackError,
)
# asyncpg's own state errors, which a connection dying under an operation can also surface as.
_DRIVER_CONFUSED = (asyncpg.InterfaceError, asyncpg.InternalClientError)


def connection_lost(exc: BaseException) -> bool:
    """Whether `exc` says the connection to PostgreSQL was lost: one of CONNECTION_LOST, or asyncpg
    confused while handling one (e.g. a failure recorded on a connection that is dying)."""
    if isinstance(exc, CONNECTION_LOST):
        return True
    if isinstance(exc, _DRIVER_CONFUSED):
        link = exc.__cause__ or exc.__context__
        for _ in range(5):  # a few links are enough
            if link is None:
                break
            if isinstance(link, CONNECTION_LOST):
                return True
            link = link.__cause__ or link.__context__
    return False


async def close_pool(pool: Pool, seconds: float = 10.0) -> None:
    """Close gracefully, or terminate: after a database restart a dead connection can keep
    `close()` waiting for ever, and a process must still be able to stop."""
    try:
        await asyncio.wait_for(pool.close(), seconds)
    except TimeoutError:
        pool.terminate()


async def ping(pool: Pool) -> None:
    """One round trip, for readiness: raises if PostgreSQL does not answer."""
    await pool.fetchval("SELECT 1")


async def try_advisory_lock(conn: Connection, key: int) -> bool:
    """A session-level advisory lock, freed by `advisory_unlock`, when the connection dies, or when a pool
    connection is released (`keeps_session_state`)."""
    keeps_session_state(conn)
    locked = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))
    if not locked:  # most jobs that find their lane owned: no reset for them
        _gave_no_state(conn)
    return locked


async def advisory_unlock(conn: Connection, key: int) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", key)
