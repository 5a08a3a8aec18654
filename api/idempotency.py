"""Idempotency-Key for the app's POSTs, as one reusable dependency.

Scoped to (user, route, key). The first request claims the key in PostgreSQL and
runs; its answer (status and body) is stored and replayed to every later request
with the same key and the same body. Another body → 409; a request while the
first is still running → 409. A first attempt that raised or answered 5xx
releases the key so that a retry can run; 2xx and 4xx answers are kept, and so
is a 504: it means "the outcome is unknown" (e.g. an STK push that may have
reached the phone), and a retry must never repeat what may have happened.

A claim whose process died mid-request would hold its key "in flight" for ever: after
`IN_FLIGHT_EXPIRY_SECONDS` (well beyond the longest request: initiate answers within 10 s)
a retry with the same body takes it over and runs. The claim's time is its token, so a
request that outlived its claim can neither complete nor release its successor's.

Usage in a router:

    async def create(body: Body, user: CurrentUser, idem: IdempotencyDep) -> Response:
        return await idem.run(lambda: answer(...))   # answer returns (status, json)

The keys' SQL is `kiota.store.idempotency`'s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse, Response

from api.deps import CurrentUser, PoolDep
from kiota.db import Pool
from kiota.errors import IdempotencyConflict, InvalidInput
from kiota.store import idempotency as store

MAX_KEY_LENGTH = 255
IN_FLIGHT_EXPIRY_SECONDS = 60
KEEP_UNKNOWN_OUTCOME = 504
Answer = tuple[int, object]  # a status and its JSON body


def request_hash(raw_body: bytes) -> str:
    """Hash of the body's meaning: key order and white space do not make another body."""
    try:
        canonical = json.dumps(json.loads(raw_body or b"null"), sort_keys=True, separators=(",", ":"))
    except ValueError:
        canonical = raw_body.decode("latin-1")
    return hashlib.sha256(canonical.encode()).hexdigest()


class Idempotency:
    def __init__(self, pool: Pool, user_id: str, route: str, key: str | None, body_hash: str) -> None:
        self._pool = pool
        self._scope = None if key is None else store.Scope(user_id, route, key)
        self._hash = body_hash

    @property
    def key(self) -> str | None:
        """The request's Idempotency-Key (a service may save it with what the request creates)."""
        return None if self._scope is None else self._scope.key

    async def run(self, handler: Callable[[], Awaitable[Answer]]) -> Response:
        if self._scope is None:
            status, body = await handler()
            return JSONResponse(body, status_code=status)
        claimed = await store.claim(self._pool, self._scope, self._hash, float(IN_FLIGHT_EXPIRY_SECONDS))
        if claimed is None:
            return await self._replay(self._scope)
        try:
            status, body = await handler()
        except BaseException:
            await store.release(self._pool, self._scope, claimed)
            raise
        if status >= 500 and status != KEEP_UNKNOWN_OUTCOME:
            await store.release(self._pool, self._scope, claimed)
        else:
            await store.complete(self._pool, self._scope, claimed, status, body)
        return JSONResponse(body, status_code=status)

    async def _replay(self, scope: store.Scope) -> Response:
        stored = await store.stored(self._pool, scope)
        if stored is None:  # released between our claim and this read: the first attempt failed
            raise IdempotencyConflict("the first request with this Idempotency-Key failed; retry")
        if stored.request_hash != self._hash:
            raise IdempotencyConflict("this Idempotency-Key was used with another request body")
        if stored.status is None:
            raise IdempotencyConflict(
                "a request with this Idempotency-Key is still in flight "
                f"(if it died, the key is free again {IN_FLIGHT_EXPIRY_SECONDS} s after it started)"
            )
        return JSONResponse(stored.body, status_code=stored.status, headers={"Idempotent-Replayed": "true"})


async def get_idempotency(
    request: Request,
    user: CurrentUser,
    pool: PoolDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Idempotency:
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_KEY_LENGTH:
        raise InvalidInput(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
    route = getattr(request.scope.get("route"), "path", request.url.path)
    return Idempotency(pool, user.id, route, idempotency_key, request_hash(await request.body()))


IdempotencyDep = Annotated[Idempotency, Depends(get_idempotency)]
