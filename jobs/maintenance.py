"""The worker's housekeeping: the sweeper's tick and the lane's upkeep on crons, and the heartbeat (with
the queues' depth)."""

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
from kiota.payouts import fill_abandoned_nonces, recheck_settled_payouts, settle_stranded_payouts
from kiota.queue_stats import sample_depth
from kiota.queues import mirror_pauses
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
    return f"recovered={report.recovered} reenqueued={report.reenqueued} queries={report.queries}"


async def lane_upkeep_tick(ctx: dict[str, Any]) -> None:
    """The payout lane's upkeep when no payout comes (queue `payouts`: it signs, so it needs the treasury key):
    abandoned nonces filled, settled payouts re-checked, payouts left unsettled long ago sent again and settled.
    The lane's own turns do all three too."""
    deps = WorkerContext.of(ctx)
    for treasury in deps.signers():  # each treasury's lane
        try:
            await fill_abandoned_nonces(deps.pool, treasury, deps.lane)
        except ChainUnavailable as exc:
            log.warning("nonce filler could not reach the chain; next tick tries again", error=str(exc))
        try:
            await recheck_settled_payouts(deps.pool, treasury, deps.lane)
        except ChainUnavailable as exc:
            log.warning("settled payouts could not be re-checked; next tick tries again", error=str(exc))
        try:
            await settle_stranded_payouts(deps.pool, treasury, deps.lane)
        except ChainUnavailable as exc:
            log.warning("stranded payouts could not be settled; next tick tries again", error=str(exc))


async def heartbeat(ctx: dict[str, Any]) -> None:
    """Say in PostgreSQL that this worker is alive and which queues it consumes (`kiota worker --check`,
    the stats), and tell Redis each queue's pause again from PostgreSQL (a Redis wipe must not resume one)."""
    deps = WorkerContext.of(ctx)
    await deps.liveness.hold(deps.pool)
    queues = [queue.value for queue in deps.settings.queues]
    await record_heartbeat(deps.pool, deps.worker_id, socket.gethostname(), os.getpid(), deps.started_at, queues)
    await mirror_pauses(deps.pool, deps.queue)
    await sample_depth(deps.pool)  # the dashboard's depth charts: the first worker of a minute writes it
