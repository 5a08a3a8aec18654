"""The chain job: the USDC ingester's rounds (`kiota/ingester.py`), on a cron."""

from __future__ import annotations

from typing import Any

from jobs.context import WorkerContext
from kiota.ingester import scan_round
from kiota.job_names import MaintenanceRun
from kiota.store.jobs import maintenance_due


async def scan_chain_tick(ctx: dict[str, Any]) -> str:
    """One ingester round when INTENT_POLL_SECONDS have passed (a unique cron ticks every second)."""
    deps = WorkerContext.of(ctx)
    if not await maintenance_due(deps.pool, MaintenanceRun.SCAN_CHAIN, deps.settings.intent_poll_seconds - 0.5):
        return "not due"
    report = await scan_round(deps.pool, deps.chain_reader, deps.scan_config)
    if report is None:
        return "node lagging"
    return f"blocks {report.start}-{report.end} matched={report.matched} credited={report.credited}"
