"""A success callback is believed only when Daraja's STK query confirms it (MPESA_CONFIRM_SUCCESS).

Callbacks carry no signature: anyone who learns the callback URL can post a ResultCode 0 for a
push the customer cancelled. So before a deposit's payout is signed, its completion job asks the
STK query about its CheckoutRequestID (`confirm_success`), once per deposit:

- ResultCode 0: confirmed (`confirmed_at`, `confirmed_by = 'stk_query'`); the payout may be signed.
- "Still processing" (500.001.1001 or ResultCode 4999, as right after a callback) or Daraja
  unreachable: asked again with backoff.
- Anything else (e.g. 1032, or Daraja refusing the CheckoutRequestID), or no confirmation within
  `CONFIRM_BOUND` (15 minutes) of the first question: `needs_review`, unpaid, with both answers
  kept (the callback's, from `mpesa_callbacks`, and the query's) and a review item. Never
  `failed`: the sandbox has answered FAILED for pushes that were paid, so a query never
  downgrades a success; a person looks at the M-Pesa statement (`kiota ops confirm`).

A deposit the STK query itself made processing (a lost callback, `kiota.lost_callbacks`) is
confirmed by that same answer, in the transaction that books it (`kiota.store.callbacks.apply`).
With MPESA_CONFIRM_SUCCESS=off the job marks its deposit confirmed by the setting, so the payout
lane keeps one rule: it signs only confirmed deposits, its own and every companion it pays in
the same turn (`deposits_awaiting_payout`).

`judge` is the rule, pure; `confirm_success` carries it out.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

import structlog

from kiota.daraja import DarajaClient
from kiota.db import Pool
from kiota.errors import DarajaError, DarajaRefused
from kiota.records import Deposit
from kiota.store import confirm as store

log = structlog.get_logger(__name__)

# A real success is confirmed by the query within seconds to minutes of its callback; a quarter of an
# hour without a "0" is a question for a person, not for more queries.
CONFIRM_BOUND = timedelta(minutes=15)
CONFIRMED_BY_QUERY = "stk_query"
CONFIRMED_BY_SETTING = "setting"
# OAuth refusals are about our credentials, not about the payment: ask again (the bound still ends it).
_OUR_CREDENTIALS = ("400.008.", "404.001.03")


class Verdict(StrEnum):
    CONFIRMED = "confirmed"  # the payout may be signed
    WAIT = "wait"  # ask again later
    REVIEW = "review"  # a person must look; nothing is paid
    NOT_NEEDED = "not_needed"  # the deposit is not a processing, unconfirmed one (confirmed, paid, in review…)


class AnswerKind(StrEnum):
    RESULT = "result"  # a ResultCode
    PENDING = "pending"  # still being processed
    UNREACHABLE = "unreachable"  # no usable answer (network, busy, our token)
    REFUSED = "refused"  # Daraja refused the question (e.g. an unknown CheckoutRequestID)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the STK query said, as the rule needs it and as operators read it (`text`)."""

    kind: AnswerKind
    result_code: int | None = None
    description: str = ""

    @property
    def text(self) -> str:
        if self.kind is AnswerKind.RESULT:
            return f"ResultCode {self.result_code} ({self.description})"[:500]
        return f"{self.kind.value}: {self.description}"[:500]


def judge(answer: Answer, waited: timedelta, bound: timedelta = CONFIRM_BOUND) -> Verdict:
    """The rule: only ResultCode 0 confirms; waiting ends at the bound; every other answer is a review."""
    if answer.kind is AnswerKind.RESULT and answer.result_code == 0:
        return Verdict.CONFIRMED
    if answer.kind in (AnswerKind.PENDING, AnswerKind.UNREACHABLE):
        return Verdict.WAIT if waited < bound else Verdict.REVIEW
    return Verdict.REVIEW


@dataclass(frozen=True, slots=True)
class ConfirmTiming:
    """How often the query is asked again; tests shorten it (`jobs.context.WorkerTuning`)."""

    backoff_base_seconds: float = 2.0
    backoff_max_seconds: float = 60.0
    bound: timedelta = CONFIRM_BOUND

    def backoff(self, attempts: int, rng: random.Random | None = None) -> float:
        """base·2^(n-1), capped, times a random 0.5-1.5 (the jobs' rule)."""
        raw = min(self.backoff_max_seconds, self.backoff_base_seconds * float(2 ** min(max(attempts - 1, 0), 16)))
        return raw * (0.5 + (rng or random).random())


@dataclass(frozen=True, slots=True)
class Confirmation:
    verdict: Verdict
    detail: str = ""
    retry_in: float = 0.0


async def ask(daraja: DarajaClient, checkout_request_id: str) -> Answer:
    """The STK query's answer for a CheckoutRequestID; never raises for Daraja's sake."""
    try:
        result = await daraja.stk_query(checkout_request_id)
    except DarajaRefused as exc:
        if exc.code is not None and exc.code.startswith(_OUR_CREDENTIALS):
            return Answer(AnswerKind.UNREACHABLE, None, f"{exc.code} {exc.message}")
        return Answer(AnswerKind.REFUSED, None, f"{exc.code or exc.http_status} {exc.message}")
    except DarajaError as exc:
        return Answer(AnswerKind.UNREACHABLE, None, exc.message)
    if result.status == "pending" or result.result_code is None:
        return Answer(AnswerKind.PENDING, None, result.result_desc or "being processed")
    return Answer(AnswerKind.RESULT, result.result_code, result.result_desc or "")


async def confirm_success(
    pool: Pool,
    daraja: DarajaClient | None,
    deposit_id: uuid.UUID,
    *,
    required: bool = True,
    timing: ConfirmTiming | None = None,
) -> Confirmation:
    """Confirm a processing deposit's success before its payout is signed (see the module's docstring).

    `required` is MPESA_CONFIRM_SUCCESS=on; off, the deposit is marked confirmed by the setting."""
    timing = timing or ConfirmTiming()
    if not required:
        done = await store.confirmed(pool, deposit_id, CONFIRMED_BY_SETTING, "MPESA_CONFIRM_SUCCESS=off", 0)
        return Confirmation(Verdict.CONFIRMED if done else Verdict.NOT_NEEDED, "confirmed by the setting")
    claim = await store.claim(pool, deposit_id)
    if claim is None:  # confirmed already (or paid, failed, in review): the payout lane decides
        return Confirmation(Verdict.NOT_NEEDED)
    checkout = claim.deposit.checkout_request_id
    bound = log.bind(deposit_id=str(deposit_id), checkout_request_id=checkout)
    if checkout is None:  # cannot happen for a callback's success; never pay a guess
        answer = Answer(AnswerKind.REFUSED, None, "the deposit has no CheckoutRequestID to ask about")
    else:
        assert daraja is not None, "confirming a success needs the Daraja client"
        answer = await ask(daraja, checkout)
    verdict = judge(answer, claim.waited, timing.bound)
    if verdict is Verdict.CONFIRMED:
        if not await store.confirmed(pool, deposit_id, CONFIRMED_BY_QUERY, answer.text, 1):
            return Confirmation(Verdict.NOT_NEEDED)  # it left processing (or was confirmed) meanwhile
        if claim.under_review:  # an operator's retry of a refused success, now confirmed
            await store.resolve_review(pool, deposit_id, f"confirmed by the STK query: {answer.text}")
        bound.info("success confirmed by the stk query", answer=answer.text)
        return Confirmation(Verdict.CONFIRMED, answer.text)
    if verdict is Verdict.WAIT:
        attempts = await store.ask_again(pool, deposit_id, answer.text)
        if attempts is None:
            return Confirmation(Verdict.NOT_NEEDED)
        retry_in = timing.backoff(attempts)
        bound.info("success not confirmed yet; asking again", answer=answer.text, retry_in=round(retry_in, 2))
        return Confirmation(Verdict.WAIT, answer.text, retry_in)
    reason = await _to_review(pool, claim.deposit, answer, timing)
    return Confirmation(Verdict.REVIEW if reason else Verdict.NOT_NEEDED, reason or "")


async def _to_review(pool: Pool, deposit: Deposit, answer: Answer, timing: ConfirmTiming) -> str | None:
    """The deposit goes to review with both answers; None if it had left processing meanwhile."""
    callbacks = []
    if deposit.checkout_request_id is not None:
        callbacks = await store.success_callbacks(pool, deposit.checkout_request_id)
    said = "; ".join(
        f"ResultCode {c.result_code}, {c.amount_kes} KES, receipt {c.mpesa_receipt}, "
        f"from {c.remote_addr} at {c.received_at.isoformat()}"
        for c in callbacks
    )
    why = (
        f"no confirmation within {int(timing.bound.total_seconds() // 60)} minutes"
        if answer.kind in (AnswerKind.PENDING, AnswerKind.UNREACHABLE)
        else "M-Pesa did not confirm it"
    )
    reason = (
        f"success callback not confirmed by the STK query ({why}): callback said {said or 'success'}; "
        f"STK query said {answer.text}. Nothing was paid; check the M-Pesa statement, then "
        f"`kiota ops confirm` (paid) or leave it unpaid"
    )[:1000]
    async with pool.acquire() as conn, conn.transaction():
        if not await store.to_review(conn, deposit.id, reason, answer.text):
            return None
        await store.open_review(conn, deposit.id, deposit.received_kes, reason)
    log.warning(
        "success callback not confirmed: deposit sent to review, unpaid",
        deposit_id=str(deposit.id),
        checkout_request_id=deposit.checkout_request_id,
        answer=answer.text,
    )
    return reason
