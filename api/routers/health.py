"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import ResourcesDep
from api.schemas import EDGE, READY, HealthOut, ReadyOut
from kiota.db import ping

router = APIRouter(tags=["operations"])
READY_TIMEOUT_SECONDS = 2.0


@router.get("/health", response_model=HealthOut, responses=EDGE)
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health/ready", response_model=ReadyOut, responses=READY)
async def ready(resources: ResourcesDep) -> JSONResponse:
    checks = {
        "postgres": await _check(ping(resources.pool)),
        "redis": await _check(resources.queue.ping()),
    }
    ok = all(value == "ok" for value in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", **checks}, status_code=200 if ok else 503)


async def _check(probe: Awaitable[object]) -> str:
    try:
        await asyncio.wait_for(probe, READY_TIMEOUT_SECONDS)
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"
