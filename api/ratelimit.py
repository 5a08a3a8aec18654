"""The abuse limits at the HTTP edge: the per-address limit of every route, and the routes' own.

`ClientRateLimitMiddleware` (plain ASGI, before routing, authentication and the body) counts every
request but Safaricom's webhook against `LIMIT_PER_IP`, keyed by the client's address as our trusted
proxies report it. Over it: 429 with Retry-After, nothing read or done. Redis down: let through
(`kiota.limiter` logs it).

The routes' limits (`RouteLimits`) run inside the Idempotency-Key flow (`api.idempotency`): a replay
of a stored answer, or a 409, runs no handler, so it is neither refused nor counted; a refused
request releases its key, so the same key may be used again once there is room.
`RateLimited` → 429 and `LimiterUnavailable` → 503 are mapped in `api.errors`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends
from starlette.types import ASGIApp, Receive, Scope, Send

from api.asgi import send_json
from api.client_address import scope_client_address
from api.deps import ResourcesDep
from kiota.errors import RateLimited
from kiota.ratelimits import initiate_checks, intent_checks, request_checks

if TYPE_CHECKING:
    from api.app import Resources


class ClientRateLimitMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        resources: Resources | None = getattr(scope["app"].state, "resources", None) if "app" in scope else None
        if scope["type"] != "http" or resources is None:
            await self.app(scope, receive, send)
            return
        address = scope_client_address(scope, resources.trusted_proxies)
        try:
            await resources.limiter.admit(request_checks(resources.limit_policy, scope["path"], address))
        except RateLimited as exc:
            await _too_many(send, str(exc), exc.retry_after_seconds)
            return
        await self.app(scope, receive, send)


async def _too_many(send: Send, detail: str, retry_after: int) -> None:
    await send_json(send, 429, {"detail": detail}, [(b"retry-after", str(retry_after).encode())])


class RouteLimits:
    """The limits of the app's POSTs, as callables to run where the work starts."""

    def __init__(self, resources: Resources) -> None:
        self._resources = resources

    def initiate(self, user_id: str, phone: str) -> Callable[[], Awaitable[None]]:
        checks = initiate_checks(self._resources.limit_policy, user_id, phone)
        return lambda: self._resources.limiter.admit(checks)

    async def intent(self, user_id: str) -> None:
        await self._resources.limiter.admit(intent_checks(self._resources.limit_policy, user_id))


async def get_route_limits(resources: ResourcesDep) -> RouteLimits:
    return RouteLimits(resources)


RouteLimitsDep = Annotated[RouteLimits, Depends(get_route_limits)]
