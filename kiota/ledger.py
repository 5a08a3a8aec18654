"""Double-entry rules, pure: what each money movement posts, and the checks.

Every movement is one balanced journal entry: positive integer amounts in the
asset's smallest unit, a direction each, and debits equal credits per asset. The
database enforces the same invariants again (sql/migrations/0001); this module
lets the code refuse a bad entry before it gets that far, and names the postings
of each business event in one place.

Accounts are named by code: `user:<user id>:<asset>` or a system account such as
`treasury:USDC` (seeded by the first migration).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum

from kiota.errors import LedgerError

ASSETS = frozenset({"KES", "USDC"})
USER_ASSETS = ("USDC",)  # what a portfolio holds; shillings are converted on arrival

TREASURY_USDC = "treasury:USDC"
CUSTODY_USDC = "custody:USDC"
MPESA_FLOAT_KES = "mpesa_float:KES"
CUSTOMER_PENDING_KES = "customer_pending:KES"
FX_KES = "fx:KES"
FX_USDC = "fx:USDC"
SUSPENSE_KES = "suspense:KES"
SUSPENSE_USDC = "suspense:USDC"
WRITTEN_OFF = {"KES": "written_off:KES", "USDC": "written_off:USDC"}


class Direction(StrEnum):
    DEBIT = "D"
    CREDIT = "C"


def user_account(user_id: str, asset: str) -> str:
    return f"user:{user_id}:{asset}"


@dataclass(frozen=True, slots=True)
class Posting:
    account: str
    asset: str
    direction: Direction
    amount: int


@dataclass(frozen=True, slots=True)
class Entry:
    """A journal entry; `key` is its idempotency key, saved with it and reused on retry."""

    key: str
    kind: str
    postings: tuple[Posting, ...]
    memo: str | None = None

    def __post_init__(self) -> None:
        check_balanced(self.postings)
        if not self.key:
            raise LedgerError("an entry needs an idempotency key")


def check_balanced(postings: tuple[Posting, ...]) -> None:
    if len(postings) < 2:
        raise LedgerError("an entry needs at least two postings")
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for posting in postings:
        if posting.asset not in ASSETS:
            raise LedgerError(f"unknown asset {posting.asset!r}")
        if isinstance(posting.amount, bool) or not isinstance(posting.amount, int) or posting.amount <= 0:
            raise LedgerError(f"posting amounts are positive integers, got {posting.amount!r}")
        totals[posting.asset][0 if posting.direction is Direction.DEBIT else 1] += posting.amount
    off = sorted(asset for asset, (debit, credit) in totals.items() if debit != credit)
    if off:
        raise LedgerError(f"entry does not balance in {', '.join(off)}")


def transfer(debit: str, credit: str, asset: str, amount: int) -> tuple[Posting, Posting]:
    """One leg: `amount` moves out of `credit` into `debit` (both in one asset)."""
    return (
        Posting(debit, asset, Direction.DEBIT, amount),
        Posting(credit, asset, Direction.CREDIT, amount),
    )


def mpesa_received(deposit_id: str, amount_kes: int) -> Entry:
    """A callback said the customer paid: shillings sit in our float, owed to the customer."""
    return Entry(
        key=f"mpesa:{deposit_id}:received",
        kind="mpesa_received",
        postings=transfer(MPESA_FLOAT_KES, CUSTOMER_PENDING_KES, "KES", amount_kes),
    )


def mpesa_unmatched(callback_key: str, amount_kes: int) -> Entry:
    """Money arrived whose owner is unclear: held in suspense for review, never credited."""
    return Entry(
        key=f"mpesa:{callback_key}:suspense",
        kind="mpesa_suspense",
        postings=transfer(MPESA_FLOAT_KES, SUSPENSE_KES, "KES", amount_kes),
    )


def mpesa_converted_and_paid(deposit_id: str, user_id: str, amount_kes: int, amount_usdc_micro: int) -> Entry:
    """The completion of an M-Pesa deposit, in one entry.

    The FX desk buys the customer's shillings and sells them USDC at the quote
    (rounded down: what rounding kept stays with the desk); the USDC leaves the
    treasury wallet for the user's own deposit address (custody) on-chain.
    """
    postings = (
        *transfer(CUSTOMER_PENDING_KES, FX_KES, "KES", amount_kes),
        *transfer(FX_USDC, user_account(user_id, "USDC"), "USDC", amount_usdc_micro),
        *transfer(CUSTODY_USDC, TREASURY_USDC, "USDC", amount_usdc_micro),
    )
    return Entry(key=f"mpesa:{deposit_id}:completed", kind="mpesa_completed", postings=postings)


def usdc_received(chain_id: int, tx_hash: str, log_index: int, user_id: str, amount_micro: int) -> Entry:
    """A confirmed USDC Transfer to a user's deposit address, keyed by its log where it was credited.

    A reorg may later move the log to another index; the transfer stays one row (kiota/usdc.py, `TransferKey`)
    that keeps this key, and a row is credited once, so the key's index is never the way in to a second credit.
    """
    return Entry(
        key=f"usdc:{chain_id}:{tx_hash.lower()}:{log_index}",
        kind="usdc_received",
        postings=transfer(CUSTODY_USDC, user_account(user_id, "USDC"), "USDC", amount_micro),
    )


def usdc_reversed(credit_key: str, user_id: str, amount_micro: int) -> Entry:
    """A credited USDC deposit whose log a reorg removed: the user's credit is taken back into suspense.

    Keyed by the credit's own entry key (`usdc_received`'s, kept with the transfer): the log may have moved
    to another index since, and one credit is reversed once.

    Custody keeps the debit of the first entry: whether the USDC comes back (its log may reappear) or is
    written off is for a person to decide, moving it out of suspense with an entry of their own.
    """
    return Entry(
        key=f"{credit_key}:reversed",
        kind="usdc_reversed",
        postings=transfer(user_account(user_id, "USDC"), SUSPENSE_USDC, "USDC", amount_micro),
    )


def review_credit(money_key: str, held_in: str, user_id: str, amount_micro: int) -> Entry:
    """Two operators resolved a review item by crediting a user the USDC it holds (in suspense, or at a
    deposit address and never booked: then custody is debited, as a deposit's credit does).

    Keyed by the money under review (kiota/review_rules.py `money_key`): one entry resolves it, whatever the
    action and however many items list it, so it is credited or written off once.
    """
    return Entry(
        key=f"{money_key}:resolved",
        kind="review_credit",
        postings=transfer(held_in, user_account(user_id, "USDC"), "USDC", amount_micro),
    )


def review_write_off(money_key: str, held_in: str, asset: str, amount: int, *, gone: bool = False) -> Entry:
    """Two operators resolved a review item by writing off the money suspense holds for it: nobody will claim it.
    The same key as `review_credit`: money is credited or written off, never both.

    USDC that is `gone` (a reorg removed its transfer, which never came back: `usdc_reversed`) was never ours to
    hold: its deposit's entry debited custody for USDC the chain does not have. Writing it off then takes it out
    of custody (suspense is debited, custody credited) so that custody is again what the deposit addresses hold.
    USDC still on chain, and shillings, go to `written_off:<asset>`: the money is ours, and nobody claims it.
    """
    if gone and asset != "USDC":
        raise LedgerError("only USDC a reorg took away is gone from custody")
    return Entry(
        key=f"{money_key}:resolved",
        kind="review_write_off",
        postings=transfer(held_in, CUSTODY_USDC if gone else WRITTEN_OFF[asset], asset, amount),
        memo="the USDC is not on chain: out of custody" if gone else None,
    )
