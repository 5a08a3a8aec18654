"""M-Pesa jobs: unpack `ctx`, call the payout lane, keep the job history."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from arq import Retry

from kiota.confirm import Verdict, confirm_success
from kiota.deposits import processing_since
from kiota.errors import ChainUnavailable
from kiota.ingester import scan_round
from kiota.job_history import JobHistory, backoff_seconds, enqueue
from kiota.job_names import JobName
from kiota.lost_callbacks import query_deposit
from kiota.payout_policy import (
    BackOff,
    Blocked,
    Done,
    Failed,
    NotSettled,
    RunResult,
    Step,
    TooManyFailures,
    Unconfirmed,
    WaitAgain,
    asks_since,
    next_step,
)
from kiota.payouts import abandon, fill_abandoned_nonces, pay_deposit, recheck_settled_payouts
from kiota.sql import load_queries
from kiota.sweeper import sweep

log = structlog.get_logger(__name__)

NEEDS_REVIEW = "needs_review"
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
    """Confirm the deposit with M-Pesa and pay it out; what follows a run is `kiota.payout_policy`'s answer."""
    pool: asyncpg.Pool = ctx["pool"]
    deposit = uuid.UUID(deposit_id)
    history = JobHistory(pool, ctx["job_id"], ctx.get("worker_id"))
    structlog.contextvars.bind_contextvars(deposit_id=deposit_id)
    try:
        failures = await history.started()
        # M-Pesa confirms the success first (kiota/confirm.py); the lane signs only confirmed deposits.
        confirmation = await confirm_success(
            pool,
            ctx["daraja"],
            deposit,
            required=ctx["settings"].mpesa_confirm_success == "on",
            timing=ctx["confirm_timing"],
        )
        outcome: RunResult = confirmation
        if confirmation.verdict in (Verdict.CONFIRMED, Verdict.NOT_NEEDED):
            outcome = await pay_deposit(pool, ctx["treasury"], deposit, ctx["lane_config"])
    except TRANSIENT as exc:
        error = f"{type(exc).__name__}: {exc}"
        # If PostgreSQL itself is down, nothing can be counted: this raises, and the worker's
        # outage handling (jobs/outages.py) waits for it and runs the job again.
        failures = await history.failed_once(error, backoff_seconds(1, ctx["backoff_base_seconds"]))
        step = next_step(failures, await processing_since(pool, deposit), Failed(error), now=datetime.now(UTC))
        return await _carry_out(step, ctx, history, deposit, cause=exc)
    except Exception as exc:
        # A bug, not the weather: put the deposit where operators look, then let arq fail the job.
        error = f"{type(exc).__name__}: {exc}"
        await history.gave_up(error)
        await abandon(pool, deposit, f"payout job crashed: {error}")
        log.exception("payout job crashed")
        raise
    since = await processing_since(pool, deposit) if asks_since(outcome) else None
    return await _carry_out(next_step(failures, since, outcome, now=datetime.now(UTC)), ctx, history, deposit)


async def _carry_out(
    step: Step, ctx: dict[str, Any], history: JobHistory, deposit: uuid.UUID, cause: BaseException | None = None
) -> str:
    """Do what the policy said: record it in the job history, and return or raise for arq."""
    match step:
        case Done(result):
            await history.succeeded()
            return result
        case WaitAgain(seconds):  # not a failure
            await history.waiting(seconds)
            raise Retry(defer=seconds)
        case BackOff(failures, error):
            retry_in = backoff_seconds(failures, ctx["backoff_base_seconds"])
            log.warning("payout failed; retrying", failures=failures, retry_in=round(retry_in, 2), error=error)
            raise Retry(defer=retry_in) from cause
        case Blocked(reason, recheck_in):
            await history.blocked(reason, recheck_in)
            log.warning("payout blocked", reason=reason)
            return "blocked"
        case TooManyFailures(failures, error):
            await abandon(ctx["pool"], deposit, step.reason)
            await history.gave_up(error)
            log.error("deposit moved to review after repeated payout failures", failures=failures, error=error)
            return NEEDS_REVIEW
        case NotSettled(detail):  # e.g. a payout that never gets mined
            await abandon(ctx["pool"], deposit, step.reason)
            await history.gave_up(step.reason)
            log.error("deposit moved to review: payout not settled in time", detail=detail)
            return NEEDS_REVIEW
        case Unconfirmed(detail):  # the confirmation put it in review
            await history.gave_up(detail)
            return NEEDS_REVIEW


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
