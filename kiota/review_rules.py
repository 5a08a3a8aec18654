"""What resolves a review item, pure: where its money sits, and which actions a person may take on it.

A review item is money or an event nobody could settle automatically (kiota/mpesa_answers.py,
kiota/ingester.py, kiota/confirm.py, kiota/payouts/settlement.py). Some hold money: shillings booked to
suspense (a callback whose owner or amount is unclear), USDC taken back into suspense (a reorg reversed its
credit), or USDC that reached a deposit address and was never booked (too large to credit automatically).
Those are resolved by crediting a user or writing the money off, each proposed by one operator and approved
by another (kiota/review_actions.py). A deposit's own item is resolved by confirming or retrying the deposit.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kiota.ledger import CUSTODY_USDC, SUSPENSE_KES, SUSPENSE_USDC
from kiota.records import ReviewItem


class Resolution(StrEnum):
    """An action that resolves a review item; the first three move money and need two people."""

    CONFIRM_DEPOSIT = "confirm_deposit"  # the payment is on the M-Pesa statement: confirm it, then pay it out
    CREDIT_USER = "credit_user"  # the money held for the item goes to a user
    WRITE_OFF = "write_off"  # the money held for the item leaves suspense for good
    RETRY = "retry"  # run a deposit's completion again (kiota/ops.py `retry_deposit`)


MONEY_ACTIONS = frozenset({Resolution.CONFIRM_DEPOSIT, Resolution.CREDIT_USER, Resolution.WRITE_OFF})

# USDC a reorg took back from a user into suspense (kiota/ledger.py `usdc_reversed`), again on chain or not.
_USDC_SUSPENSE_KINDS = frozenset({"usdc_reversed", "usdc_reappeared"})
# USDC at a deposit address that was never booked (kiota/ingester.py: listed instead of credited).
_USDC_UNBOOKED_KINDS = frozenset({"usdc_too_large", "usdc_credit_failed"})
# A deposit whose M-Pesa success was received and is waiting for a person.
_DEPOSIT_KINDS = frozenset({"unconfirmed_success", "payout_lost"})


@dataclass(frozen=True, slots=True)
class Held:
    """The money a review item holds: the account it sits in, its asset, and how much (smallest unit)."""

    account: str
    asset: str
    amount: int


def held_by(item: ReviewItem) -> Held | None:
    """Where the item's money sits in the ledger, or None when it holds none of its own."""
    if item.kind in _USDC_SUSPENSE_KINDS and item.amount_usdc_micro:
        return Held(SUSPENSE_USDC, "USDC", item.amount_usdc_micro)
    if item.kind in _USDC_UNBOOKED_KINDS and item.amount_usdc_micro:
        return Held(CUSTODY_USDC, "USDC", item.amount_usdc_micro)
    if item.kind == "mpesa_callback" and item.amount_kes:
        return Held(SUSPENSE_KES, "KES", item.amount_kes)
    return None


# The transfer's status while its USDC waits for a person, by the kind of item that holds it.
_HELD_STATUS = {**dict.fromkeys(_USDC_SUSPENSE_KINDS, "reversed"), **dict.fromkeys(_USDC_UNBOOKED_KINDS, "review")}


def usdc_here(item: ReviewItem, transfer_status: str | None, missing: bool) -> bool:
    """Whether the USDC a transfer's item is about is at the deposit address now, as the scanner last saw it:
    the transfer still waits for a person (reversed, or in review and never booked) and its log is on chain,
    confirmed (`chain_transfers.missing_since` is NULL, kept by kiota/ingester.py every round). Only such USDC
    may be credited to a user: a reversed transfer that never came back, or one in review whose block a reorg
    took away, is money that never arrived."""
    expected = _HELD_STATUS.get(item.kind)
    return expected is not None and transfer_status == expected and not missing


def money_key(item: ReviewItem) -> str:
    """What names the money under review: a transfer's row (a reversed credit and its reappearance are two items
    for one transfer's USDC), else the item itself. The resolving entry's key (kiota/ledger.py `review_credit`)."""
    if item.chain_transfer_id is not None:
        return f"review:transfer:{item.chain_transfer_id}"
    return f"review:item:{item.id}"


def resolutions(
    item: ReviewItem, deposit_status: str | None, deposit_confirmed: bool, *, usdc_on_chain: bool = False
) -> tuple[Resolution, ...]:
    """What resolves an open item. Shillings in suspense are only written off here: paying them to a user
    takes a deposit (a quote and a payout), not a journal entry. USDC is credited only while it is on chain
    (`usdc_on_chain`, from `usdc_here`): USDC never booked is then credited, not written off (there is nothing in
    suspense to write off), and while it is gone it waits for its log to come back. USDC in suspense whose
    transfer is gone is only written off (`kiota/ledger.py` `review_write_off` then takes it out of custody)."""
    if item.status != "open":
        return ()
    held = held_by(item)
    if held is not None:
        if held.account == CUSTODY_USDC:
            return (Resolution.CREDIT_USER,) if usdc_on_chain else ()
        if held.asset == "USDC":
            return (Resolution.CREDIT_USER, Resolution.WRITE_OFF) if usdc_on_chain else (Resolution.WRITE_OFF,)
        return (Resolution.WRITE_OFF,)
    if item.deposit_id is not None and item.kind in _DEPOSIT_KINDS and deposit_status == "needs_review":
        return (Resolution.RETRY,) if deposit_confirmed else (Resolution.CONFIRM_DEPOSIT, Resolution.RETRY)
    return ()
