"""The worker's housekeeping on crons: the sweeper's tick and the heartbeat (with the queues' depth)."""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Any

import structlog

from jobs.context import WorkerContext, running_job_id
from kiota.errors import ChainUnavailable
from kiota.job_history import recorded_tick
from kiota.job_names import Queue
from kiota.payouts import fill_abandoned_nonces, recheck_settled_payouts
from kiota.queue_stats import sample_depth
from kiota.store.jobs import record_heartbeat
from kiota.sweeper import sweep

log = structlog.get_logger(__name__)


async def sweep_tick(ctx: dict[str, Any]) -> str:
    """The sweeper's look, recorded in the job history (queue `maintenance`) when it found work."""
    deps = WorkerContext.of(ctx)
    job_id = running_job_id(ctx)
    async with recorded_tick(deps.pool, job_id, sweep_tick.__name__, Queue.MAINTENANCE, deps.worker_id) as tick:
        report = await sweep(deps.pool, deps.queue, deps.settings.sweep_seconds)
        tick.progress = dataclasses.asdict(report)
        # Every 5 s: a look that found nothing is not worth a row (a failed one always is).
        tick.worth_recording = report.recovered + report.reenqueued + report.queries > 0
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
    """Say in PostgreSQL that this worker is alive (the dashboard lists workers from it), and sample the
    queues' depth for the dashboard's charts (the first worker of a minute writes it)."""
    deps = WorkerContext.of(ctx)
    await deps.liveness.hold(deps.pool)
    await record_heartbeat(deps.pool, deps.worker_id, socket.gethostname(), os.getpid(), deps.started_at)
    await sample_depth(deps.pool)
