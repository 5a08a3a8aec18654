"""M-Pesa jobs: unpack `ctx`, call the payout lane, keep the job history."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog
from arq import Retry

from kiota.confirm import Verdict, confirm_success
from kiota.errors import ChainUnavailable
from kiota.ingester import scan_round
from kiota.job_history import JobHistory, backoff_seconds, enqueue
from kiota.job_names import JobName
from kiota.lost_callbacks import query_deposit
from kiota.payouts import Outcome, abandon, fill_abandoned_nonces, pay_deposit, recheck_settled_payouts
from kiota.sql import load_queries
from kiota.sweeper import sweep

log = structlog.get_logger(__name__)

MAX_FAILURES = 5
MAX_TRYING = timedelta(minutes=30)
WAITING_RETRY_SECONDS = 1.0
# Failures that may pass: the RPC, the database connection, the network.
TRANSIENT = (
    ChainUnavailable,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,  # e.g. the database shutting down or restarting
    asyncpg.TransactionRollbackError,  # serialization failures and deadlocks
    OSError,
    TimeoutError,
)


async def complete_mpesa_deposit(ctx: dict[str, Any], deposit_id: str) -> str:
    pool: asyncpg.Pool = ctx["pool"]
    history = JobHistory(pool, ctx["job_id"], ctx.get("worker_id"))
    structlog.contextvars.bind_contextvars(deposit_id=deposit_id)
    try:
        await history.started()
        # M-Pesa confirms the success first (kiota/confirm.py); the lane signs only confirmed deposits.
        confirmation = await confirm_success(
            pool,
            ctx["daraja"],
            uuid.UUID(deposit_id),
            required=ctx["settings"].mpesa_confirm_success == "on",
            timing=ctx["confirm_timing"],
        )
        result = None
        if confirmation.verdict in (Verdict.CONFIRMED, Verdict.NOT_NEEDED):
            result = await pay_deposit(pool, ctx["treasury"], uuid.UUID(deposit_id), ctx["lane_config"])
    except TRANSIENT as exc:
        error = f"{type(exc).__name__}: {exc}"
        retry_in = backoff_seconds(1, ctx["backoff_base_seconds"])
        # If PostgreSQL itself is down, nothing can be counted: this raises, and the worker's
        # outage handling (jobs/outages.py) waits for it and runs the job again.
        failures = await history.failed_once(error, retry_in)
        if failures >= MAX_FAILURES or await _tried_too_long(pool, deposit_id):
            reason = f"payout failed {failures} times; last error: {error}"
            await abandon(pool, uuid.UUID(deposit_id), reason)
            await history.gave_up(error)
            log.error("deposit moved to review after repeated payout failures", failures=failures, error=error)
            return "needs_review"
        retry_in = backoff_seconds(failures, ctx["backoff_base_seconds"])
        log.warning("payout failed; retrying", failures=failures, retry_in=round(retry_in, 2), error=error)
        raise Retry(defer=retry_in) from exc
    except Exception as exc:
        # A bug, not the weather: put the deposit where operators look, then let arq fail the job.
        error = f"{type(exc).__name__}: {exc}"
        await history.gave_up(error)
        await abandon(pool, uuid.UUID(deposit_id), f"payout job crashed: {error}")
        log.exception("payout job crashed")
        raise
    if confirmation.verdict is Verdict.WAIT:  # "still processing", or Daraja unreachable: not a failure
        await history.waiting(confirmation.retry_in)
        raise Retry(defer=confirmation.retry_in)
    if confirmation.verdict is Verdict.REVIEW:
        await history.gave_up(confirmation.detail)
        return "needs_review"
    assert result is not None
    if result.outcome is Outcome.WAITING:
        if await _tried_too_long(pool, deposit_id):  # e.g. a payout that never gets mined
            reason = f"payout not settled within 30 minutes: {result.detail}"
            await abandon(pool, uuid.UUID(deposit_id), reason)
            await history.gave_up(reason)
            log.error("deposit moved to review: payout not settled in time", detail=result.detail)
            return "needs_review"
        await history.waiting(WAITING_RETRY_SECONDS)
        raise Retry(defer=WAITING_RETRY_SECONDS)
    if result.outcome is Outcome.BLOCKED:
        await history.blocked(result.detail, result.recheck_in)
        log.warning("payout blocked", reason=result.detail)
        return "blocked"
    await history.succeeded()
    return result.outcome.value


async def _tried_too_long(pool: asyncpg.Pool, deposit_id: str) -> bool:
    since = await pool.fetchval(load_queries().deposit_processing_since, uuid.UUID(deposit_id))
    return since is not None and datetime.now(UTC) - since > MAX_TRYING


async def query_mpesa_deposit(ctx: dict[str, Any], deposit_id: str) -> str:
    """A pending deposit's callback is late: ask Daraja."""
    pool: asyncpg.Pool = ctx["pool"]
    history = JobHistory(pool, ctx["job_id"], ctx.get("worker_id"))
    structlog.contextvars.bind_contextvars(deposit_id=deposit_id)
    await history.started()
    outcome = await query_deposit(pool, ctx["daraja"], uuid.UUID(deposit_id), ctx["query_backoff_seconds"])
    if outcome.enqueue_job_id:
        await enqueue(ctx["redis"], JobName.COMPLETE_MPESA_DEPOSIT, outcome.enqueue_job_id, deposit_id)
    await history.succeeded()
    return outcome.action


async def scan_chain_tick(ctx: dict[str, Any]) -> str:
    """One ingester round when INTENT_POLL_SECONDS have passed (a unique cron ticks every second)."""
    settings = ctx["settings"]
    pool: asyncpg.Pool = ctx["pool"]
    if not await pool.fetchval(load_queries().maintenance_due, "scan_chain", settings.intent_poll_seconds - 0.5):
        return "not due"
    report = await scan_round(pool, ctx["chain_reader"], ctx["scan_config"])
    if report is None:
        return "node lagging"
    return f"blocks {report.start}-{report.end} matched={report.matched} credited={report.credited}"


async def sweep_tick(ctx: dict[str, Any]) -> str:
    report = await sweep(ctx["pool"], ctx["redis"], ctx["settings"].sweep_seconds)
    try:  # abandoned nonces are filled by the lane's next owner; this is for when no payout comes
        await fill_abandoned_nonces(ctx["pool"], ctx["treasury"], ctx["lane_config"])
    except ChainUnavailable as exc:
        log.warning("nonce filler could not reach the chain; next sweep tries again", error=str(exc))
    try:  # settled payouts are re-checked by the lane's turns too; this is for when none comes
        await recheck_settled_payouts(ctx["pool"], ctx["treasury"], ctx["lane_config"])
    except ChainUnavailable as exc:
        log.warning("settled payouts could not be re-checked; next sweep tries again", error=str(exc))
    return f"recovered={report.recovered} reenqueued={report.reenqueued} queries={report.queries}"
