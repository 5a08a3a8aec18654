"""The chain job: the USDC ingester's rounds (`kiota/ingester.py`), on a cron."""

from __future__ import annotations

from typing import Any

from jobs.context import WorkerContext, running_job_id
from kiota.ingester import round_progress, scan_round
from kiota.job_history import recorded_tick
from kiota.job_names import MaintenanceRun, Queue
from kiota.store.jobs import maintenance_due


async def scan_chain_tick(ctx: dict[str, Any]) -> str:
    """One ingester round when INTENT_POLL_SECONDS have passed (a unique cron ticks every second); a round
    is recorded in the job history (queue `chain`, its blocks done of total), a tick not due is not."""
    deps = WorkerContext.of(ctx)
    if not await maintenance_due(deps.pool, MaintenanceRun.SCAN_CHAIN, deps.settings.intent_poll_seconds - 0.5):
        return "not due"
    async with recorded_tick(
        deps.pool, running_job_id(ctx), scan_chain_tick.__name__, Queue.CHAIN, deps.worker_id
    ) as tick:
        report = await scan_round(deps.pool, deps.chain_reader, deps.scan_config)
        if report is None:
            return "node lagging"
        tick.progress = round_progress(report)
    return f"blocks {report.start}-{report.end} matched={report.matched} credited={report.credited}"
