"""Idempotency keys in PostgreSQL: a request's claim on its key, and the answer kept for its replays.

A key is scoped to (user, route, key). A claim's time is its token: only the claim that still
holds the key may complete or release it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kiota.db import Pool
from kiota.sql import load_queries


@dataclass(frozen=True, slots=True)
class Scope:
    user_id: str
    route: str
    key: str


@dataclass(frozen=True, slots=True)
class Stored:
    """What a key holds: the hash of the body that claimed it, and its answer once there is one."""

    request_hash: str
    status: int | None
    body: object


async def claim(pool: Pool, scope: Scope, request_hash: str, expiry_seconds: float) -> datetime | None:
    """The claim's token when this request owns the key and must run; None when the key was seen before.

    A claim never completed is taken over by the same body once it is older than `expiry_seconds`."""
    claimed: datetime | None = await pool.fetchval(
        load_queries().claim_idempotency_key, scope.user_id, scope.route, scope.key, request_hash, expiry_seconds
    )
    return claimed


async def complete(pool: Pool, scope: Scope, claimed: datetime, status: int, body: object) -> None:
    """Keep the answer for the replays (only while `claimed` still holds the key)."""
    await pool.execute(
        load_queries().complete_idempotency_key, scope.user_id, scope.route, scope.key, status, body, claimed
    )


async def release(pool: Pool, scope: Scope, claimed: datetime) -> None:
    """Free the key for a retry (only while `claimed` still holds it)."""
    await pool.execute(load_queries().release_idempotency_key, scope.user_id, scope.route, scope.key, claimed)


async def stored(pool: Pool, scope: Scope) -> Stored | None:
    row = await pool.fetchrow(load_queries().idempotency_key, scope.user_id, scope.route, scope.key)
    return None if row is None else Stored(row["request_hash"], row["response_status"], row["response_body"])
