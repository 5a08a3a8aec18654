"""Domain errors to HTTP answers: the only place status codes meet errors."""

from __future__ import annotations

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from kiota import db
from kiota.errors import (
    AuthError,
    CallbackNotRecorded,
    IdempotencyConflict,
    InvalidInput,
    KiotaError,
    LimiterUnavailable,
    RateLimited,
)

log = structlog.get_logger(__name__)

_STATUS: dict[type[KiotaError], int] = {
    InvalidInput: 422,
    AuthError: 401,
    IdempotencyConflict: 409,
    CallbackNotRecorded: 503,  # not committed (or not surely): Daraja may send it again
    RateLimited: 429,
    LimiterUnavailable: 503,  # the limits cannot be checked: nothing that needs them is done
}


def status_for(exc: KiotaError) -> int:
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500


async def _kiota_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, KiotaError)
    status = status_for(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(exc.retry_after_seconds)}
    if status >= 500:
        log.error("request failed", error=type(exc).__name__, message=str(exc))
        detail = "temporarily unavailable, try again" if status == 503 else "internal error"
        return JSONResponse({"detail": detail}, status_code=status)
    log.info("request refused", status=status, error=type(exc).__name__, message=str(exc))
    return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's default echoes the refused input, which may not even be JSON (NaN): say what, not echo it."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(error.get("loc", ())), "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))}
        for error in exc.errors()
    ]
    log.info("request refused", status=422, errors=len(errors))
    return JSONResponse({"detail": errors}, status_code=422)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    # PostgreSQL (or the network to it) is down: say so, never a false success.
    log.error("dependency unavailable", error=f"{type(exc).__name__}: {exc}")
    return JSONResponse({"detail": "temporarily unavailable, try again"}, status_code=503)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", error=type(exc).__name__)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(KiotaError, _kiota_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    for unavailable in (*db.UNAVAILABLE, OSError, TimeoutError):
        app.add_exception_handler(unavailable, _unavailable)
    app.add_exception_handler(Exception, _unexpected)
