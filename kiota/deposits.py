"""M-Pesa deposits: initiate (STK push) and read them back.

Daraja's callbacks are recorded and applied in `kiota.callbacks`: the raw callback,
the deposit's move, the journal entry for shillings received and the job row for the
completion commit together; Redis is told afterwards (`complete_job_id`), and a
sweeper re-enqueues whatever it never heard of.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import structlog

from kiota.daraja import DarajaClient, PushAccepted
from kiota.errors import DarajaRefused, DarajaUncertain, RateLimited
from kiota.job_names import JobName
from kiota.money import format_rate, format_usdc, kes_to_usdc
from kiota.mpesa import mask_phone, user_failure_reason
from kiota.ratelimits import PENDING_DEPOSITS_PER_USER, PENDING_RETRY_AFTER_SECONDS
from kiota.sql import load_queries

log = structlog.get_logger(__name__)

PUSH_CANCELLED_REASON = (
    "the request was cancelled before M-Pesa answered the STK push; a payment prompt may still reach the phone: "
    "match this deposit with the success callbacks listed for review (kiota ops review) before crediting it"
)
PUSH_OUTCOME_UNKNOWN = (
    "a payment prompt for this request may already have reached the phone, so it is not sent again; "
    "the payment will be reviewed"
)
ACCOUNT_REFERENCE = "Kiota"
TRANSACTION_DESC = "Kiota savings"


def complete_job_id(deposit_id: uuid.UUID | str) -> str:
    return JobName.COMPLETE_MPESA_DEPOSIT.job_id(deposit_id)


async def processing_since(pool: asyncpg.Pool, deposit_id: uuid.UUID) -> datetime | None:
    """When the deposit began processing (M-Pesa said paid); None if it never did."""
    since: datetime | None = await pool.fetchval(load_queries().deposit_processing_since, deposit_id)
    return since


class TooManyPending(RateLimited):
    """The user already has the most deposits waiting for M-Pesa that one may have."""


@dataclass(frozen=True, slots=True)
class InitiateResult:
    status_code: int
    body: dict[str, Any]


async def initiate(
    pool: asyncpg.Pool,
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
) -> InitiateResult:
    """Record the deposit with its quote, then push. `phone` and `amount_kes` are already valid.

    `admit` counts the push against the request limits (or raises): it runs after the pending
    cap is checked and before the deposit is recorded, so a refused request leaves no row and
    pushes nothing, and a request refused by the cap is not counted.

    `request_key` is the app's Idempotency-Key, saved with the deposit before the push: a request
    with a key that already made a deposit answers from that deposit and never pushes again (its
    first process may have died after the push); only a push Daraja refused may be tried again.
    """
    q = load_queries()
    quote = kes_to_usdc(amount_kes, kes_per_usd)
    deposit_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        # The user's row lock makes two concurrent initiates count one after the other.
        await conn.execute(q.lock_user_deposits, user_id)
        if request_key is not None:
            earlier = await conn.fetchrow(q.deposit_of_request, user_id, request_key)
            if earlier is not None and not await conn.fetchval(q.forget_request_key, earlier["id"]):
                return _answer_again(earlier)
        if await conn.fetchval(q.pending_deposits_of_user, user_id) >= PENDING_DEPOSITS_PER_USER:
            raise TooManyPending(
                f"at most {PENDING_DEPOSITS_PER_USER} deposits may wait for M-Pesa at once; "
                "complete or cancel one on your phone first",
                PENDING_RETRY_AFTER_SECONDS,
            )
        await admit()
        await conn.execute(
            q.insert_deposit,
            deposit_id, user_id, amount_kes, kes_per_usd, quote.amount_usdc_micro, mask_phone(phone), request_key,
        )  # fmt: skip
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
        await pool.execute(q.deposit_push_refused, deposit_id, exc.code, exc.message)
        bound.info("stk push refused", code=exc.code)
        return InitiateResult(502, {"detail": exc.message, "code": exc.code, "deposit_id": str(deposit_id)})
    except DarajaUncertain as exc:
        # The prompt may have reached the phone: never push again; a person matches the callback.
        reason = f"M-Pesa did not confirm the push ({exc.message}); a payment prompt may still reach the phone"
        await pool.execute(q.deposit_to_review, deposit_id, reason)
        bound.warning("stk push outcome unknown", error=exc.message)
        return InitiateResult(504, {"detail": reason, "deposit_id": str(deposit_id)})
    except asyncio.CancelledError:
        # The request ended while the push was out (a client gone, a server stopping): it may have reached
        # the phone. Say so before the cancellation goes on; the sweeper catches what this cannot write.
        await _finish_despite_cancel(pool.execute(q.deposit_to_review, deposit_id, PUSH_CANCELLED_REASON))
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
        return InitiateResult(
            504,
            {
                "detail": "the payment prompt was sent but could not be recorded; "
                "do not retry: the payment will be reviewed",
                "deposit_id": str(deposit_id),
            },
        )
    bound.info("stk push accepted", checkout_request_id=accepted.checkout_request_id)
    return InitiateResult(
        202,
        {
            "deposit_id": str(deposit_id),
            "status": "pending",
            "checkout_request_id": accepted.checkout_request_id,
            "customer_message": accepted.customer_message,
            "kes_per_usd": format_rate(kes_per_usd),
            "amount_usdc": format_usdc(quote.amount_usdc_micro),
        },
    )


def _answer_again(earlier: asyncpg.Record) -> InitiateResult:
    """The answer for a request whose Idempotency-Key already made this deposit: never a second push."""
    if earlier["checkout_request_id"] is None:  # the push's outcome was never recorded: it may have gone out
        return InitiateResult(504, {"detail": PUSH_OUTCOME_UNKNOWN, "deposit_id": str(earlier["id"])})
    return InitiateResult(
        202,
        {
            "deposit_id": str(earlier["id"]),
            "status": "pending",  # as the first answer said (a replay says the same); GET the deposit for news
            "checkout_request_id": earlier["checkout_request_id"],
            "customer_message": "The payment prompt was already sent to your phone.",
            "kes_per_usd": format_rate(earlier["kes_per_usd"]),
            "amount_usdc": format_usdc(earlier["amount_usdc"]),
        },
    )


async def _record_push(
    pool: asyncpg.Pool, deposit_id: uuid.UUID, accepted: PushAccepted, query_after_seconds: int
) -> None:
    q = load_queries()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(q.lock_checkout, accepted.checkout_request_id)
        await conn.execute(
            q.deposit_pushed,
            deposit_id,
            accepted.checkout_request_id,
            accepted.merchant_request_id,
            float(query_after_seconds),
        )
        # A callback faster than this answer found no deposit and went to review; never guess.
        if await conn.fetchval(q.early_callbacks, accepted.checkout_request_id):
            await conn.execute(q.deposit_to_review, deposit_id, "a callback arrived before the push was recorded")


async def _finish_despite_cancel(work: Coroutine[Any, Any, object]) -> None:
    """Run `work` to its end although the caller is being cancelled (a second cancellation leaves it
    running on its own). A failure is logged, not raised: the cancellation is what the caller re-raises."""
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        pass
    except Exception as exc:
        log.error("could not record a cancelled push; the sweeper will", error=f"{type(exc).__name__}: {exc}")


def deposit_out(row: asyncpg.Record) -> dict[str, Any]:
    """A deposit row in the contract's shape."""
    return {
        "deposit_id": str(row["id"]),
        "kind": row["kind"],
        "status": row["status"],
        "amount_kes": row["amount_kes"],
        "amount_usdc": format_usdc(row["amount_usdc"]),
        "kes_per_usd": format_rate(row["kes_per_usd"]),
        "mpesa_receipt": row["mpesa_receipt"],
        "tx_hash": row["tx_hash"],
        # Written for the user; the operators' reasons stay in review_reason / failure_reason.
        "failure_reason": user_failure_reason(row["status"], row["failure_code"]),
        "created_at": row["created_at"].isoformat(),
        "completed_at": row["completed_at"].isoformat() if row["completed_at"] else None,
    }
