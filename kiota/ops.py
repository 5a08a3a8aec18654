"""What an operator does without reading code: find stuck deposits, retry them, flip the guards (each
change of the guards recorded in `admin_actions`, before and after, with who made it).

The CLI (`kiota ops …`) and, later, the dashboard call these.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from arq.connections import ArqRedis

from kiota.db import Connection, Pool
from kiota.deposits import complete_job_id
from kiota.errors import InvalidInput, KiotaError
from kiota.job_history import enqueue, record_job
from kiota.job_names import JobName
from kiota.operators import Admin, record_action
from kiota.records import Guards, ReviewItem
from kiota.store import ops as store
from kiota.store import payouts as payout_store
from kiota.store.confirm import resolve_review
from kiota.store.ops import StuckDeposit
from kiota.store.payouts import TreasuryLane

log = structlog.get_logger(__name__)


class CannotRetry(KiotaError):
    """The deposit is not in a state a retry can help."""


@dataclass(frozen=True, slots=True)
class RetryResult:
    deposit_id: str
    job_id: str
    enqueued: bool
    confirmed: bool = True  # False: its M-Pesa success is not confirmed, and the STK query is asked again


async def retry_deposit(pool: Pool, queue: ArqRedis, deposit_id: uuid.UUID, by: str | Admin) -> RetryResult:
    """Run a deposit's completion again: one in review goes back to processing (with a fresh
    count of failures and a fresh 30-minute window); one still processing is re-enqueued.
    A success M-Pesa has not confirmed is never paid by a retry: its job asks the STK query
    again (with a fresh bound) and sends it back to review if the answer is still not 0.
    A deposit whose payout may still be mined (given up on, and its nonce not yet decided at the
    required confirmations: kiota/payouts/filler.py) is refused: a second payout could pay it twice."""
    async with pool.acquire() as conn, conn.transaction():
        deposit = await store.deposit_for_retry(conn, deposit_id)
        if deposit is None:
            raise CannotRetry(f"no deposit {deposit_id}")
        in_flight = await payout_store.payout_in_flight_of_deposit(conn, deposit_id)
        if deposit.status == "needs_review" and in_flight is not None:
            raise CannotRetry(
                f"the deposit's payout {in_flight.id} (nonce {in_flight.nonce}) is {in_flight.status}: "
                "the chain has not yet decided it at DEPOSIT_CONFIRMATIONS_REQUIRED confirmations, and a reorg "
                "could still mine it, so a new payout could pay twice. The lane decides it by itself (its nonce "
                "filled: payout cancelled, retry then; or mined after all: deposit completed); retry in a minute."
            )
        if deposit.status == "needs_review":
            if not await store.retry_from_review(conn, deposit_id):
                raise CannotRetry("only a paid deposit (with an M-Pesa receipt) that was not paid out can be retried")
        elif deposit.status != "processing":
            raise CannotRetry(f"the deposit is {deposit.status}; there is nothing to retry")
        job_id = await _restart_job(conn, deposit_id)
        admin = as_admin(by)
        await record_action(
            conn, admin, "retry_deposit", "deposit", str(deposit_id), before={"status": deposit.status},
            after={"status": "processing", "job_id": job_id},
        )  # fmt: skip
    enqueued = await enqueue(queue, JobName.COMPLETE_MPESA_DEPOSIT, job_id, str(deposit_id))
    log.info("operator retried a deposit", deposit_id=str(deposit_id), by=admin.name)
    return RetryResult(str(deposit_id), job_id, enqueued, deposit.confirmed_at is not None)


async def confirm_in(conn: Connection, deposit_id: uuid.UUID, by: str, note: str = "") -> str:
    """An operator found the payment on the M-Pesa statement: the deposit's success is confirmed by them
    (recorded with their name and note, in place of the STK query's 0), and its completion is set to run again,
    from review if it was there; returns the job to enqueue once the caller's transaction commits. Only money
    received for this deposit and never paid out, once. Two people decide it (kiota/review_actions.py)."""
    who = f"operator:{by}"
    said = f"checked on the M-Pesa statement by {by}" + (f": {note}" if note else "")
    deposit = await store.deposit_for_retry(conn, deposit_id)
    if deposit is None:
        raise CannotRetry(f"no deposit {deposit_id}")
    if deposit.confirmed_at is not None:
        raise CannotRetry("the deposit is confirmed already; `kiota ops retry` runs its completion again")
    status = await store.confirmed_by_operator(conn, deposit_id, who, said[:500])
    if status is None:
        raise CannotRetry(
            f"the deposit is {deposit.status}: only a success received for it (processing or in review) "
            "and never paid out can be confirmed"
        )
    if status == "needs_review" and not await store.retry_from_review(conn, deposit_id):
        raise CannotRetry("the deposit has an open review of its callbacks (kiota ops review): resolve that first")
    await resolve_review(conn, deposit_id, f"confirmed by operator {by}: {note}"[:1000])
    log.warning("operator confirmed an M-Pesa payment by hand", deposit_id=str(deposit_id), by=by, note=note)
    return await _restart_job(conn, deposit_id)


async def _restart_job(conn: Connection, deposit_id: uuid.UUID) -> str:
    job_id = complete_job_id(deposit_id)
    await record_job(conn, job_id, JobName.COMPLETE_MPESA_DEPOSIT, deposit_id, reset=True)
    return job_id


async def release_blocked(pool: Pool, queue: ArqRedis) -> int:
    """Re-enqueue every blocked job (after a guard was released)."""
    jobs = await store.blocked_jobs(pool)
    for job in jobs:
        await store.requeue_blocked_job(pool, job.id)
        await enqueue(queue, job.function, job.id, str(job.deposit_id))
    return len(jobs)


TREASURY_LANE = "treasury_lane"  # the target of a treasury lane's resume in the record of actions

GuardChange = Callable[[Connection], Awaitable[None]]


def as_admin(by: str | Admin) -> Admin:
    """A name alone is someone at the shell (`kiota ops`): an operator."""
    return by if isinstance(by, Admin) else Admin(by, "operator")


def _guard_values(guards: Guards) -> dict[str, object]:
    return {
        "kill_switch": guards.kill_switch,
        "lane_paused": guards.lane_paused,
        "pause_reason": guards.pause_reason,
        "per_deposit_max_micro": guards.per_deposit_max_micro,
        "hourly_cap_micro": guards.hourly_cap_micro,
        "daily_cap_micro": guards.daily_cap_micro,
    }


async def _change_guards(pool: Pool, admin: Admin, action: str, change: GuardChange) -> None:
    """The guards changed and the change recorded (before and after), in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        before = await payout_store.guards_for_update(conn)
        await change(conn)
        after = await payout_store.guards(conn)
        await record_action(
            conn, admin, action, "payout_guards", before=_guard_values(before), after=_guard_values(after)
        )


async def set_kill_switch(pool: Pool, queue: ArqRedis, on: bool, by: str | Admin) -> int:
    admin = as_admin(by)
    await _change_guards(pool, admin, "kill_switch", lambda conn: payout_store.set_kill_switch(conn, on, admin.name))
    log.warning("payout kill switch " + ("ON" if on else "off"), by=admin.name)
    return 0 if on else await release_blocked(pool, queue)


async def resume_lane(pool: Pool, queue: ArqRedis, by: str | Admin, treasury: str | None = None) -> int:
    """Resume the payout lanes: every one (the global pause and each treasury's), or with `treasury` only that
    treasury's lane (its shortfall refilled). Blocked jobs are released either way; the number released."""
    admin = as_admin(by)
    if treasury is None:
        await _change_guards(pool, admin, "resume_lane", lambda conn: payout_store.resume_lane(conn, admin.name))
    async with pool.acquire() as conn, conn.transaction():
        resumed = await payout_store.resume_treasuries(conn, treasury, admin.name)
        if treasury is not None and not resumed:  # a mistyped address must not read as "resumed"
            raise InvalidInput(f"no paused lane of treasury {treasury}")
        for address in resumed:
            await record_action(
                conn, admin, "resume_lane", TREASURY_LANE, address, before={"paused": True}, after={"paused": False}
            )
    log.warning("payout lane resumed", by=admin.name, treasury=treasury or "all")
    return await release_blocked(pool, queue)


async def treasury_lanes(pool: Pool) -> list[TreasuryLane]:
    """Every treasury known here (it signed a payout, or its lane was paused) and whether its lane is paused."""
    return await payout_store.treasury_lanes(pool)


async def set_limits(
    pool: Pool, per_deposit: int | None, hourly: int | None, daily: int | None, by: str | Admin
) -> None:
    """The payout limits in USDC micro-units; None leaves one as it is."""
    admin = as_admin(by)
    await _change_guards(
        pool, admin, "set_limits", lambda conn: payout_store.set_limits(conn, per_deposit, hourly, daily, admin.name)
    )


async def guards(pool: Pool) -> Guards:
    return await payout_store.guards(pool)


async def stuck_deposits(pool: Pool, older_than_seconds: float = 600) -> list[StuckDeposit]:
    return await store.stuck_deposits(pool, older_than_seconds)


async def open_reviews(pool: Pool) -> list[ReviewItem]:
    return await store.open_review_items(pool)
