"""The app's one Daraja OAuth token, shared in Redis by every process of the app.

Daraja keeps ONE valid token per app: fetching a new one voids the previous. So the API and every worker
take the token from Redis, and a lock key lets one process at a time fetch the next one (see
`DarajaClient._shared_token`, which drives it).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Final

from redis.asyncio import Redis

# Deletes the refresh lock only if this process still holds it (it may have expired and passed on).
_RELEASE_IF_OURS: Final = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class SharedToken:
    """The app's one valid token in Redis, for every process of the app. Only a cache: lost (a Redis
    restart), it is fetched again. It expires from Redis when it is due for refresh; then one process
    (a lock key) fetches the new one and the others wait for it. A Redis failure is never a failed
    Daraja call: the client then falls back to its own process's token."""

    def __init__(self, redis: Redis, consumer_key: str) -> None:
        digest = hashlib.sha256(consumer_key.encode()).hexdigest()[:16]  # one token per Daraja app
        self._redis = redis
        self._key = f"kiota:daraja:token:{digest}"
        self._lock_key = f"{self._key}:refreshing"

    async def get(self) -> str | None:
        value = await self._redis.get(self._key)
        return value.decode() if isinstance(value, bytes) else value

    async def put(self, value: str, ttl_seconds: float) -> None:
        if ttl_seconds > 0:
            await self._redis.set(self._key, value, px=max(int(ttl_seconds * 1000), 1))

    async def lock(self, seconds: float) -> str | None:
        """Take the refresh lock for `seconds` at most; its owner id, or None when another holds it."""
        owner = uuid.uuid4().hex
        taken = await self._redis.set(self._lock_key, owner, nx=True, px=max(int(seconds * 1000), 1))
        return owner if taken else None

    async def unlock(self, owner: str) -> None:
        await self._redis.eval(_RELEASE_IF_OURS, 1, self._lock_key, owner)  # type: ignore[misc]
