"""Request context, the access log (with the callback token redacted) and the request duration metric."""

from __future__ import annotations

import time
import uuid

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiota import metrics
from kiota.logging import redact_path

log = structlog.get_logger("kiota.access")


class RequestContextMiddleware:
    """Binds a request id to every log line of the request, writes one access line and counts the
    request's duration (`kiota_http_request_duration_seconds`) in this process's tally.

    A plain ASGI middleware (not BaseHTTPMiddleware): it adds no task per request
    on the callback ingest path.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - started
            metrics.tally.observe(
                metrics.HTTP_DURATION, duration, _route_template(scope), scope["method"], metrics.status_class(status)
            )
            log.info(
                "http request",
                method=scope["method"],
                path=redact_path(scope["path"]),
                status=status,
                duration_ms=round(duration * 1000, 2),
            )
            structlog.contextvars.clear_contextvars()


def _route_template(scope: Scope) -> str:
    """The matched route's template ("/api/v1/deposits/{deposit_id}"), never the raw path: the callback's
    path carries its secret token, and raw paths (ids, scanners' guesses) would make a label without bound.
    Rebuilt from the path and its parameters (each parameter's segment named), because an included
    router's route knows only its own part of the path. No route matched: `unmatched`."""
    if scope.get("route") is None:
        return "unmatched"
    segments = scope["path"].split("/")
    for name, value in (scope.get("path_params") or {}).items():
        segments = [f"{{{name}}}" if segment == str(value) else segment for segment in segments]
    return "/".join(segments)


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            if 0 < len(text) <= 64 and text.replace("-", "").isalnum():
                return text
    return None
