"""The abuse limits' counters: the `limits` library's moving window on Redis, shared by every API process.

`admit(checks)` counts one request against each check (`kiota.ratelimits` says which apply) or
raises `RateLimited` with the seconds until there is room; a refused request is counted nowhere:
every check is tested before any is counted. Each count is one atomic Redis script, so concurrent
requests (from any process) can never together pass a limit. Two requests racing for the last
slot of a second check may leave the first check counted for the loser: the limit still holds.

Redis unreachable or slow (`timeout_seconds`): a check marked `OnOutage.REFUSE` raises
`LimiterUnavailable` (no STK push goes out unlimited); the others let the request through and say so
in a warning line, at most once per `OUTAGE_LOG_SECONDS`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import structlog
from limits import RateLimitItem
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import RedisError

from kiota.errors import LimiterUnavailable, RateLimited
from kiota.ratelimits import Check, OnOutage, retry_after_seconds

log = structlog.get_logger(__name__)

KEY_PREFIX = "kiota:limits"
OUTAGE_LOG_SECONDS = 30.0
_STORE_ERRORS = (StorageError, RedisError, OSError, TimeoutError)


class Limiter:
    def __init__(self, redis_url: str, *, timeout_seconds: float = 1.0, max_connections: int = 64) -> None:
        self._timeout = timeout_seconds
        # Our own pool, so that it can be closed, and bounded: a hung Redis must not pile up sockets.
        self._pool = BlockingConnectionPool.from_url(
            redis_url,
            max_connections=max_connections,
            timeout=timeout_seconds,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
        )
        storage = RedisStorage(
            "async+" + redis_url,
            implementation="redispy",
            key_prefix=KEY_PREFIX,
            wrap_exceptions=True,
            connection_pool=self._pool,  # type: ignore[arg-type]  # passed through to redis-py
        )
        self._window = MovingWindowRateLimiter(storage)
        self._outage_logged_at = -OUTAGE_LOG_SECONDS

    async def admit(self, checks: Sequence[Check]) -> None:
        if not checks:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._count(checks)
        except _STORE_ERRORS as exc:
            refusing = [check.name for check in checks if check.on_outage is OnOutage.REFUSE]
            if refusing:
                log.error("rate limiter unavailable: request refused", checks=refusing, error=type(exc).__name__)
                raise LimiterUnavailable("the request limits cannot be checked right now") from exc
            self._log_outage(checks, exc)

    async def _count(self, checks: Sequence[Check]) -> None:
        pairs = [(check, item) for check in checks for item in check.items]
        if len(pairs) > 1:  # test all first: a request refused by one limit is counted by none
            for check, item in pairs:
                if not await self._window.test(item, check.counter):
                    await self._refuse(check, item)
        for check, item in pairs:
            if not await self._window.hit(item, check.counter):
                await self._refuse(check, item)

    async def _refuse(self, check: Check, item: RateLimitItem) -> None:
        stats = await self._window.get_window_stats(item, check.counter)
        retry_after = retry_after_seconds(stats.reset_time, time.time())
        log.info("rate limited", check=check.name, limit=str(item), retry_after=retry_after)
        raise RateLimited(f"too many requests ({check.name.replace('_', ' ')}: {item})", retry_after)

    def _log_outage(self, checks: Sequence[Check], exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._outage_logged_at >= OUTAGE_LOG_SECONDS:
            self._outage_logged_at = now
            log.warning(
                "rate limiter unavailable: request allowed unlimited",
                checks=[check.name for check in checks],
                error=type(exc).__name__,
            )

    async def aclose(self) -> None:
        await self._pool.aclose()
