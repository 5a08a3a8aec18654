"""M-Pesa deposits: initiate (STK push), ingest Daraja's callback, and read them back.

Everything a callback changes happens in one PostgreSQL transaction: the raw
callback, the deposit's move, the journal entry for shillings received, and the
job row for the completion. Redis is told afterwards (`complete_job_id`), and a
sweeper re-enqueues whatever it never heard of.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import structlog

from kiota import ledger
from kiota.daraja import DarajaClient
from kiota.db import Connection
from kiota.errors import DarajaRefused, DarajaUncertain
from kiota.ledger_store import post_entry
from kiota.money import format_rate, format_usdc, kes_to_usdc
from kiota.mpesa import Action, DepositView, MalformedCallback, StkCallback, decide, mask_phone, parse_callback
from kiota.sql import load_queries

log = structlog.get_logger(__name__)

COMPLETE_FUNCTION = "complete_mpesa_deposit"
ACCOUNT_REFERENCE = "Kiota"
TRANSACTION_DESC = "Kiota savings"


def readable(raw: bytes) -> str:
    """A text copy of a body for people (raw_bytes keeps it exactly): no NUL, no invalid UTF-8."""
    return raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def complete_job_id(deposit_id: uuid.UUID | str) -> str:
    return f"{COMPLETE_FUNCTION}:{deposit_id}"


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
) -> InitiateResult:
    """Record the deposit with its quote, then push. `phone` and `amount_kes` are already valid."""
    q = load_queries()
    quote = kes_to_usdc(amount_kes, kes_per_usd)
    deposit_id = uuid.uuid4()
    await pool.execute(
        q.insert_deposit, deposit_id, user_id, amount_kes, kes_per_usd, quote.amount_usdc_micro, mask_phone(phone)
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
        await pool.execute(q.deposit_push_refused, deposit_id, exc.code, exc.message)
        bound.info("stk push refused", code=exc.code)
        return InitiateResult(502, {"detail": exc.message, "code": exc.code, "deposit_id": str(deposit_id)})
    except DarajaUncertain as exc:
        # The prompt may have reached the phone: never push again; a person matches the callback.
        reason = f"M-Pesa did not confirm the push ({exc.message}); a payment prompt may still reach the phone"
        await pool.execute(q.deposit_to_review, deposit_id, reason)
        bound.warning("stk push outcome unknown", error=exc.message)
        return InitiateResult(504, {"detail": reason, "deposit_id": str(deposit_id)})
    try:
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


@dataclass(frozen=True, slots=True)
class CallbackResult:
    callback_id: int
    disposition: str
    deposit_id: str | None
    enqueue_job_id: str | None


async def record_malformed(pool: asyncpg.Pool, raw: bytes, remote_addr: str | None, error: str) -> int:
    callback_id: int = await pool.fetchval(
        load_queries().insert_callback,
        remote_addr, readable(raw), error, None, None, None, None, None, None, None, None, "malformed", raw,
    )  # fmt: skip
    return callback_id


async def ingest_callback(pool: asyncpg.Pool, raw: bytes, remote_addr: str | None) -> CallbackResult:
    """Parse, record and apply one callback in a single transaction. Raises MalformedCallback (after
    recording the raw body) when the shape is wrong."""
    try:
        callback = parse_callback(raw)
    except MalformedCallback as exc:
        await record_malformed(pool, raw, remote_addr, str(exc))
        raise
    async with pool.acquire() as conn, conn.transaction():
        return await _apply(conn, callback, raw, remote_addr)


async def _apply(conn: Connection, cb: StkCallback, raw: bytes, remote_addr: str | None) -> CallbackResult:
    q = load_queries()
    callback_id: int = await conn.fetchval(
        q.insert_callback,
        remote_addr, readable(raw), None, cb.checkout_request_id, cb.merchant_request_id, cb.result_code,
        cb.result_desc, cb.amount_kes, cb.receipt, cb.transaction_at, cb.phone_masked, "duplicate", raw,
    )  # fmt: skip
    await conn.execute(q.lock_checkout, cb.checkout_request_id)
    row = await conn.fetchrow(q.deposit_for_update_by_checkout, cb.checkout_request_id)
    view = (
        None
        if row is None
        else DepositView(
            row["status"], row["amount_kes"], row["mpesa_receipt"], row["failure_code"], row["received_kes"]
        )
    )
    decision = decide(view, cb)
    deposit_id = None if row is None else row["id"]
    if decision.action in (Action.SUCCEED, Action.ATTACH_RECEIPT) and await _receipt_taken(conn, cb.receipt):
        decision = decision.__class__(
            Action.REVIEW, "this M-Pesa receipt was already used by another deposit", "needs_review"
        )
    enqueue: str | None = None
    disposition = "duplicate"
    if decision.action is Action.SUCCEED:
        assert cb.amount_kes is not None and deposit_id is not None
        await conn.execute(q.deposit_succeeded, deposit_id, cb.receipt, cb.amount_kes, cb.transaction_at)
        await post_entry(conn, ledger.mpesa_received(str(deposit_id), cb.amount_kes))
        enqueue = await conn.fetchval(q.insert_job, complete_job_id(deposit_id), COMPLETE_FUNCTION, deposit_id, False)
        enqueue = enqueue or complete_job_id(deposit_id)
        disposition = "succeeded"
    elif decision.action is Action.ATTACH_RECEIPT:
        await conn.execute(q.deposit_attach_receipt, deposit_id, cb.receipt, cb.transaction_at)
    elif decision.action is Action.FAIL:
        await conn.execute(q.deposit_failed, deposit_id, str(cb.result_code), decision.reason)
        disposition = "failed"
    elif decision.action is Action.REVIEW:
        await _to_review(conn, cb, callback_id, deposit_id, decision.reason or "review", decision.deposit_status)
        disposition = "review"
    elif decision.action is Action.NOTE_FAILURE:
        disposition = "unknown_failure" if row is None else "review"
        if decision.reason and deposit_id is not None:
            await conn.execute(
                q.insert_review_item,
                "contradiction",
                f"callback:{callback_id}",
                deposit_id,
                callback_id,
                None,
                decision.reason,
            )
    await conn.execute(q.callback_disposition, callback_id, disposition, deposit_id)
    log.info(
        "mpesa callback applied",
        callback_id=callback_id,
        disposition=disposition,
        deposit_id=str(deposit_id) if deposit_id else None,
        checkout_request_id=cb.checkout_request_id,
        result_code=cb.result_code,
    )
    return CallbackResult(callback_id, disposition, str(deposit_id) if deposit_id else None, enqueue)


async def _receipt_taken(conn: Connection, receipt: str | None) -> bool:
    return receipt is not None and bool(await conn.fetchval(load_queries().receipt_taken, receipt))


async def _to_review(
    conn: Connection,
    cb: StkCallback,
    callback_id: int,
    deposit_id: uuid.UUID | None,
    reason: str,
    new_status: str | None,
) -> None:
    """Money arrived that we will not credit automatically: book it to suspense and list it."""
    q = load_queries()
    key = f"receipt:{cb.receipt}" if cb.receipt else f"callback:{callback_id}"
    if cb.succeeded and cb.amount_kes:
        await post_entry(conn, ledger.mpesa_unmatched(key, cb.amount_kes))
    await conn.execute(q.insert_review_item, "mpesa_callback", key, deposit_id, callback_id, cb.amount_kes, reason)
    if new_status == "needs_review" and deposit_id is not None:
        await conn.execute(q.deposit_to_review, deposit_id, reason)


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
        # In review, the reason a person must look; otherwise why it failed (None when it did not).
        "failure_reason": row["review_reason"] if row["status"] == "needs_review" else row["failure_reason"],
        "created_at": row["created_at"].isoformat(),
        "completed_at": row["completed_at"].isoformat() if row["completed_at"] else None,
    }
