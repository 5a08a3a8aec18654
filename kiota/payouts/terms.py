"""The payout lane's terms: its tuning, what one run comes to, its errors, and the items a turn passes on.

Shared by every step of the lane (kiota/payouts/lane.py, attempts.py, settlement.py, filler.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kiota.errors import KiotaError
from kiota.records import Payout
from kiota.store.payouts import Payee
from kiota.treasury import SignedTx

REPLACE_AFTER_BLOCKS = 3
# A nonce used by a transaction none of whose receipts we can find is called "not ours" only after
# this long: a load-balanced provider may answer the nonce from a node ahead of the receipt's.
NOT_OURS_AFTER = 600.0
# A blocked job looks again by itself: a cap frees as its window slides; a guard that an
# operator released is noticed even if the release raced the block.
CAP_RECHECK_SECONDS = 60.0
GUARD_RECHECK_SECONDS = 300.0


class PayoutOutcome(StrEnum):
    """Where one run of a deposit's payout job left it."""

    COMPLETED = "completed"  # paid and credited (now or before)
    NOTHING_TO_DO = "nothing_to_do"  # the deposit is not waiting for a payout
    BLOCKED = "blocked"  # a guard stops it; an operator's action re-enqueues it
    WAITING = "waiting"  # the transaction is not mined yet, or the lane is busy: run again soon
    REVIEW = "review"  # a person must look (over the maximum, reverted)


@dataclass(frozen=True, slots=True)
class PayoutResult:
    outcome: PayoutOutcome
    detail: str = ""
    recheck_in: float | None = None


def not_processing(status: str | None, tx_hash: str | None = None) -> PayoutResult:
    """A deposit that is not (or no longer) processing, as its job's run ends: paid (`tx_hash`), or someone
    else's business now (in review, failed), or no such deposit (`status` None)."""
    if status is None:
        return PayoutResult(PayoutOutcome.NOTHING_TO_DO, "no such deposit")
    if status == "completed":
        return PayoutResult(PayoutOutcome.COMPLETED, tx_hash or "")
    return PayoutResult(PayoutOutcome.NOTHING_TO_DO, f"deposit is {status}")


# Payouts signed and not yet settled, per treasury, at most (PAYOUT_MAX_IN_FLIGHT; kiota/settings.py says why 128).
MAX_IN_FLIGHT = 128


@dataclass(slots=True)
class LaneConfig:
    """The lane owner's pipeline: it signs and sends the next nonces while earlier ones wait for their block, up
    to `max_in_flight` unsettled, for `drain_seconds`; then it settles what is in flight for `watch_seconds` at
    most before it hands the lane over. The two together stay well inside arq's job timeout
    (jobs/worker.py JOB_TIMEOUT_SECONDS; a unit test holds them to it)."""

    poll_seconds: float = 0.05  # how often the owner looks for a new block
    watch_seconds: float = 12.0  # after the drain, how long the owner waits for what is in flight to be mined
    lock_wait_seconds: float = 5.0  # a job's wait for an owned lane (on slow blocks, not for a new deposit: lane.py)
    replace_after_blocks: int = REPLACE_AFTER_BLOCKS
    max_in_flight: int = MAX_IN_FLIGHT  # signed, unsettled payouts at most, the owner's own included
    drain_seconds: float = 10.0  # how long the owner goes on signing for the deposits that wait
    confirmations_required: int = 2  # a settled payout is final at this many (DEPOSIT_CONFIRMATIONS_REQUIRED)


class NonceTaken(KiotaError):
    """The payout's nonce was mined by a transaction that is none of its attempts."""


@dataclass(frozen=True, slots=True)
class LaneItem:
    """A deposit in a turn of the lane, with its live payout."""

    payee: Payee
    payout: Payout


@dataclass(frozen=True, slots=True)
class SignedItem:
    """A signed payout in a turn of the lane: its deposit, its row, and its newest stored transaction."""

    payee: Payee
    payout: Payout
    signed: SignedTx
