"""The one body-size rule of every route: more than 64 KiB is answered 413, before anything else reads it
(4 MiB for the one upload, an M-Pesa statement to `/admin/paybill`).

A plain ASGI middleware (not BaseHTTPMiddleware). It runs before routing, authentication and the
handlers: a declared Content-Length over the limit is refused without reading a byte; otherwise
the body is read here, counting real bytes whatever the header said (chunked, or a Content-Length
that lies), and refused as soon as it passes the limit, the rest left unread. A body within the
limit is handed to the app as one message, so no handler can read more than the limit.

The 413 keeps the connection open: a client still sending gets its answer intact (closing a socket
with unread bytes resets it, and the answer with it); the server discards what it still receives.
"""

from __future__ import annotations

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.asgi import send_json

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024
# The one larger body: an M-Pesa statement (a month of a busy paybill), uploaded by an operator to the dashboard.
PAYBILL_STATEMENT_PATH = "/admin/paybill"
MAX_STATEMENT_BYTES = 4 * 1024 * 1024


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, larger: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.larger = {PAYBILL_STATEMENT_PATH: MAX_STATEMENT_BYTES} if larger is None else larger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope.get("path", ""), self.max_bytes)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(send, limit, declared=declared)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: nobody is left to answer
                return
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(send, limit, declared=declared)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> Message:
            nonlocal body
            if body is not None:
                message, body = body, None
                return message
            return await receive()  # after the body: http.disconnect when the client goes

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, limit: int, *, declared: int | None) -> None:
        log.warning("request body too large", limit=limit, content_length=declared)
        await send_json(send, 413, {"detail": f"request body larger than {limit} bytes"})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            text = value.strip()
            if not text or not all(0x30 <= c <= 0x39 for c in text):
                return None  # malformed: the server refuses it, or the real bytes are counted
            return int(text[:20])  # 20 digits already say "too large"; int() of 5,000 would raise
    return None
