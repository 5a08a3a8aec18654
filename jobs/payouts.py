"""The M-Pesa deposit jobs: unpack `ctx`, confirm and pay through `kiota/`, keep the job history.

`complete_mpesa_deposit` runs once a deposit is paid in M-Pesa; what it does after a run
(retry, wait, block, give up) is `kiota.payout_policy.next_step`'s answer, carried out here.
`query_mpesa_deposit` asks Daraja about a deposit whose callback is late.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from functools import partial
from typing import Any

import structlog
from arq import Retry

from jobs.context import WorkerContext, running_job_id
from kiota.confirm import Verdict, confirm_success
from kiota.db import MAY_PASS
from kiota.errors import ChainUnavailable
from kiota.job_history import JobHistory, backoff_seconds, enqueue, finish_paid_jobs
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
from kiota.payouts import PayoutResult, abandon, pay_deposit
from kiota.payouts.lanes import choose_lane
from kiota.store.deposits import processing_since

log = structlog.get_logger(__name__)

NEEDS_REVIEW = "needs_review"
RUN_AGAIN_SECONDS = 0.1
# Failures that may pass: the RPC, the database connection, the network.
TRANSIENT = (ChainUnavailable, *MAY_PASS, OSError, TimeoutError)


async def complete_mpesa_deposit(ctx: dict[str, Any], deposit_id: str) -> str:
    """Confirm the deposit with M-Pesa and pay it out; what follows a run is `kiota.payout_policy`'s answer."""
    deps = WorkerContext.of(ctx)
    deposit = uuid.UUID(deposit_id)
    history = JobHistory(deps.pool, running_job_id(ctx), deps.worker_id)
    structlog.contextvars.bind_contextvars(deposit_id=deposit_id)
    try:
        failures = await history.started()
        # M-Pesa confirms the success first (kiota/confirm.py); the lane signs only confirmed deposits.
        confirmation = await confirm_success(
            deps.pool,
            deps.daraja,
            deposit,
            required=deps.settings.mpesa_confirm_success == "on",
            timing=deps.confirm_timing,
        )
        outcome: RunResult = confirmation
        if confirmation.verdict in (Verdict.CONFIRMED, Verdict.NOT_NEEDED):
            # Several treasuries: the lane of the deposit's slot (or of its signed payout) pays it.
            lane = await choose_lane(deps.pool, deps.signers(), deposit)
            if isinstance(lane, PayoutResult):
                outcome = lane
            else:  # if this run owns the lane, the deposits its turn pays have their waiting jobs finished
                paid = partial(finish_paid_jobs, queue=deps.queue, paid_by=history.job_id)
                outcome = await pay_deposit(deps.pool, lane, deposit, deps.lane, paid)
    except TRANSIENT as exc:
        error = f"{type(exc).__name__}: {exc}"
        # If PostgreSQL itself is down, nothing can be counted: this raises, and the worker's
        # outage handling (jobs/outages.py) waits for it and runs the job again.
        failures = await history.failed_once(error, backoff_seconds(1, deps.backoff_base_seconds), cause=exc)
        step = next_step(failures, await processing_since(deps.pool, deposit), Failed(error), now=datetime.now(UTC))
        return await _carry_out(step, deps, history, deposit, cause=exc)
    except Exception as exc:
        # A bug, not the weather: put the deposit where operators look, then let arq fail the job.
        error = f"{type(exc).__name__}: {exc}"
        log.exception("payout job crashed")  # first: the job history keeps the lines logged before its end
        await history.gave_up(error, cause=exc)
        await abandon(deps.pool, deposit, f"payout job crashed: {error}")
        raise
    since = await processing_since(deps.pool, deposit) if asks_since(outcome) else None
    return await _carry_out(next_step(failures, since, outcome, now=datetime.now(UTC)), deps, history, deposit)


async def _carry_out(
    step: Step, deps: WorkerContext, history: JobHistory, deposit: uuid.UUID, cause: BaseException | None = None
) -> str:
    """Do what the policy said: record it in the job history, and return or raise for arq."""
    match step:
        case Done(result):
            if await history.succeeded():  # an operator's retry came during this run: it runs again now
                raise Retry(defer=RUN_AGAIN_SECONDS)
            return result
        case WaitAgain(seconds):  # not a failure
            await history.waiting(seconds)
            raise Retry(defer=seconds)
        case BackOff(failures, error):
            retry_in = backoff_seconds(failures, deps.backoff_base_seconds)
            log.warning("payout failed; retrying", failures=failures, retry_in=round(retry_in, 2), error=error)
            raise Retry(defer=retry_in) from cause
        # (Each line is logged before the history's record, which keeps the job's lines so far.)
        case Blocked(reason, recheck_in):
            log.warning("payout blocked", reason=reason)
            await history.blocked(reason, recheck_in)
            return "blocked"
        case TooManyFailures(failures, error):
            await abandon(deps.pool, deposit, step.reason)
            log.error("deposit moved to review after repeated payout failures", failures=failures, error=error)
            await history.gave_up(error)
            return NEEDS_REVIEW
        case NotSettled(detail):  # e.g. a payout that never gets mined
            await abandon(deps.pool, deposit, step.reason)
            log.error("deposit moved to review: payout not settled in time", detail=detail)
            await history.gave_up(step.reason)
            return NEEDS_REVIEW
        case Unconfirmed(detail):  # the confirmation put it in review
            await history.gave_up(detail)
            return NEEDS_REVIEW


async def query_mpesa_deposit(ctx: dict[str, Any], deposit_id: str) -> str:
    """A pending deposit's callback is late: ask Daraja."""
    deps = WorkerContext.of(ctx)
    history = JobHistory(deps.pool, running_job_id(ctx), deps.worker_id)
    structlog.contextvars.bind_contextvars(deposit_id=deposit_id)
    await history.started()
    outcome = await query_deposit(deps.pool, deps.daraja, uuid.UUID(deposit_id), deps.query_backoff_seconds)
    if outcome.enqueue_job_id:
        await enqueue(deps.queue, JobName.COMPLETE_MPESA_DEPOSIT, outcome.enqueue_job_id, deposit_id)
    if await history.succeeded():  # the sweeper queued it again during this run: it asks again now
        raise Retry(defer=RUN_AGAIN_SECONDS)
    return outcome.action
