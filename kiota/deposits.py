"""M-Pesa deposits: initiate one (record it with its quote, then the STK push), answered as `Pushed`,
`Refused` or `Uncertain`; the API says what each means in HTTP. The rows are `kiota.store.deposits`'s.

Daraja's callbacks are recorded and applied in `kiota.callbacks`: the raw callback,
the deposit's move, the journal entry for shillings received and the job row for the
completion commit together; Redis is told afterwards (`complete_job_id`), and a
sweeper re-enqueues whatever it never heard of.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

import structlog

from kiota.daraja import DarajaClient, PushAccepted
from kiota.db import Executor, Pool
from kiota.errors import DarajaRefused, DarajaUncertain, RateLimited
from kiota.job_names import JobName
from kiota.money import kes_to_usdc
from kiota.mpesa import mask_phone
from kiota.ratelimits import PENDING_DEPOSITS_PER_USER, PENDING_RETRY_AFTER_SECONDS
from kiota.records import Deposit
from kiota.store import deposits as store
from kiota.store import jobs as jobs_store

log = structlog.get_logger(__name__)

PUSH_CANCELLED_REASON = (
    "the request was cancelled before M-Pesa answered the STK push; a payment prompt may still reach the phone: "
    "match this deposit with the success callbacks listed for review (kiota ops review) before crediting it"
)
PUSH_OUTCOME_UNKNOWN = (
    "a payment prompt for this request may already have reached the phone, so it is not sent again; "
    "the payment will be reviewed"
)
PUSH_NOT_RECORDED = "the payment prompt was sent but could not be recorded; do not retry: the payment will be reviewed"
ALREADY_SENT = "The payment prompt was already sent to your phone."
ACCOUNT_REFERENCE = "Kiota"
TRANSACTION_DESC = "Kiota savings"


def complete_job_id(deposit_id: uuid.UUID | str) -> str:
    return JobName.COMPLETE_MPESA_DEPOSIT.job_id(deposit_id)


async def completion_job_ids(db: Executor, deposit_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The completion job of each deposit that has one (recorded once a callback or query said "paid")."""
    wanted = {complete_job_id(deposit_id): deposit_id for deposit_id in deposit_ids}
    return {wanted[job_id]: job_id for job_id in await jobs_store.existing_jobs(db, list(wanted))}


class TooManyPending(RateLimited):
    """The user already has the most deposits waiting for M-Pesa that one may have."""


@dataclass(frozen=True, slots=True)
class Pushed:
    """The payment prompt is on its way to the phone (for a request made again: the first request sent it).

    The deposit is pending, its rate and USDC amount (micro-units) fixed now."""

    deposit_id: uuid.UUID
    checkout_request_id: str
    customer_message: str
    kes_per_usd: Decimal
    amount_usdc: int


@dataclass(frozen=True, slots=True)
class Refused:
    """Daraja refused the push (`message` is its own text): nothing reached the phone; the deposit is failed."""

    deposit_id: uuid.UUID
    code: str | None
    message: str


@dataclass(frozen=True, slots=True)
class Uncertain:
    """The push may have reached the phone: it is never sent again, and the payment goes to a person."""

    deposit_id: uuid.UUID
    reason: str


Initiated = Pushed | Refused | Uncertain


async def initiate(
    pool: Pool,
    daraja: DarajaClient,
    *,
    user_id: str,
    amount_kes: int,
    phone: str,
    kes_per_usd: Decimal,
    callback_url: str,
    query_after_seconds: int,
    admit: Callable[[], Awaitable[None]],
    request_key: str | None = None,
) -> Initiated:
    """Record the deposit with its quote, then push. `phone` and `amount_kes` are already valid.

    `admit` counts the push against the request limits (or raises): it runs after the pending
    cap is checked and before the deposit is recorded, so a refused request leaves no row and
    pushes nothing, and a request refused by the cap is not counted.

    `request_key` is the app's Idempotency-Key, saved with the deposit before the push: a request
    with a key that already made a deposit answers from that deposit and never pushes again (its
    first process may have died after the push); only a push Daraja refused may be tried again.
    """
    quote = kes_to_usdc(amount_kes, kes_per_usd)
    deposit_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        # The user's row lock makes two concurrent initiates count one after the other.
        await store.lock_user_deposits(conn, user_id)
        if request_key is not None:
            earlier = await store.deposit_of_request(conn, user_id, request_key)
            if earlier is not None and not await store.forget_request_key(conn, earlier.id):
                return _initiated_before(earlier)
        if await store.pending_deposits_of_user(conn, user_id) >= PENDING_DEPOSITS_PER_USER:
            raise TooManyPending(
                f"at most {PENDING_DEPOSITS_PER_USER} deposits may wait for M-Pesa at once; "
                "complete or cancel one on your phone first",
                PENDING_RETRY_AFTER_SECONDS,
            )
        await admit()
        await store.insert_deposit(
            conn,
            deposit_id,
            user_id=user_id,
            amount_kes=amount_kes,
            kes_per_usd=kes_per_usd,
            amount_usdc=quote.amount_usdc_micro,
            phone_masked=mask_phone(phone),
            request_key=request_key,
        )
    bound = log.bind(deposit_id=str(deposit_id), phone=mask_phone(phone), amount_kes=amount_kes)
    try:
        accepted = await daraja.stk_push(
            amount_kes=amount_kes,
            phone=phone,
            callback_url=callback_url,
            account_reference=ACCOUNT_REFERENCE,
            description=TRANSACTION_DESC,
        )
    except DarajaRefused as exc:
        await store.deposit_push_refused(pool, deposit_id, exc.code, exc.message)
        bound.info("stk push refused", code=exc.code)
        return Refused(deposit_id, exc.code, exc.message)
    except DarajaUncertain as exc:
        # The prompt may have reached the phone: never push again; a person matches the callback.
        reason = f"M-Pesa did not confirm the push ({exc.message}); a payment prompt may still reach the phone"
        await store.deposit_to_review(pool, deposit_id, reason)
        bound.warning("stk push outcome unknown", error=exc.message)
        return Uncertain(deposit_id, reason)
    except asyncio.CancelledError:
        # The request ended while the push was out (a client gone, a server stopping): it may have reached
        # the phone. Say so before the cancellation goes on; the sweeper catches what this cannot write.
        await _finish_despite_cancel(store.deposit_to_review(pool, deposit_id, PUSH_CANCELLED_REASON))
        bound.warning("stk push outcome unknown: the request was cancelled")
        raise
    try:
        await _record_push(pool, deposit_id, accepted, query_after_seconds)
    except asyncio.CancelledError:
        # Accepted, so its callback will come: record it (shielded) so that the callback finds its deposit.
        await _finish_despite_cancel(_record_push(pool, deposit_id, accepted, query_after_seconds))
        bound.warning("request cancelled after the stk push was accepted", checkout=accepted.checkout_request_id)
        raise
    except Exception as exc:
        # The push reached the phone but we could not record it: answer "unknown" (kept for the
        # Idempotency-Key), so a retry never pushes twice; its callback goes to review.
        bound.error(
            "stk push accepted but not recorded",
            error=f"{type(exc).__name__}: {exc}",
            checkout_request_id=accepted.checkout_request_id,
        )
        return Uncertain(deposit_id, PUSH_NOT_RECORDED)
    bound.info("stk push accepted", checkout_request_id=accepted.checkout_request_id)
    return Pushed(
        deposit_id, accepted.checkout_request_id, accepted.customer_message, kes_per_usd, quote.amount_usdc_micro
    )


def _initiated_before(earlier: Deposit) -> Initiated:
    """The result for a request whose Idempotency-Key already made this deposit: never a second push."""
    if earlier.checkout_request_id is None:  # the push's outcome was never recorded: it may have gone out
        return Uncertain(earlier.id, PUSH_OUTCOME_UNKNOWN)
    # Pending, as the first answer said (a replay says the same); the app reads the deposit for news.
    return Pushed(earlier.id, earlier.checkout_request_id, ALREADY_SENT, earlier.kes_per_usd, earlier.amount_usdc)


async def _record_push(pool: Pool, deposit_id: uuid.UUID, accepted: PushAccepted, query_after_seconds: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await store.lock_checkout(conn, accepted.checkout_request_id)
        await store.deposit_pushed(
            conn, deposit_id, accepted.checkout_request_id, accepted.merchant_request_id, float(query_after_seconds)
        )
        # A callback faster than this answer found no deposit and went to review; never guess.
        if await store.early_callbacks(conn, accepted.checkout_request_id):
            await store.deposit_to_review(conn, deposit_id, "a callback arrived before the push was recorded")


async def _finish_despite_cancel(work: Awaitable[object]) -> None:
    """Run `work` to its end although the caller is being cancelled (a second cancellation leaves it
    running on its own). A failure is logged, not raised: the cancellation is what the caller re-raises."""
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        pass
    except Exception as exc:
        log.error("could not record a cancelled push; the sweeper will", error=f"{type(exc).__name__}: {exc}")
