"""The worker's housekeeping on crons: the sweeper's tick and the heartbeat."""

from __future__ import annotations

import os
import socket
from typing import Any

import structlog

from jobs.context import WorkerContext
from kiota.errors import ChainUnavailable
from kiota.payouts import fill_abandoned_nonces, recheck_settled_payouts
from kiota.store.jobs import record_heartbeat
from kiota.sweeper import sweep

log = structlog.get_logger(__name__)


async def sweep_tick(ctx: dict[str, Any]) -> str:
    deps = WorkerContext.of(ctx)
    report = await sweep(deps.pool, deps.queue, deps.settings.sweep_seconds)
    try:  # abandoned nonces are filled by the lane's next owner; this is for when no payout comes
        await fill_abandoned_nonces(deps.pool, deps.treasury, deps.lane)
    except ChainUnavailable as exc:
        log.warning("nonce filler could not reach the chain; next sweep tries again", error=str(exc))
    try:  # settled payouts are re-checked by the lane's turns too; this is for when none comes
        await recheck_settled_payouts(deps.pool, deps.treasury, deps.lane)
    except ChainUnavailable as exc:
        log.warning("settled payouts could not be re-checked; next sweep tries again", error=str(exc))
    return f"recovered={report.recovered} reenqueued={report.reenqueued} queries={report.queries}"


async def heartbeat(ctx: dict[str, Any]) -> None:
    """Say in PostgreSQL that this worker is alive (the dashboard lists workers from it)."""
    deps = WorkerContext.of(ctx)
    await deps.liveness.hold(deps.pool)
    await record_heartbeat(deps.pool, deps.worker_id, socket.gethostname(), os.getpid(), deps.started_at)
