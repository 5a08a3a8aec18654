"""Which actions resolve a review item, and where its money sits: pure tables."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from kiota import ledger
from kiota.errors import LedgerError
from kiota.records import ReviewItem
from kiota.review_rules import Held, Resolution, held_by, money_key, resolutions, usdc_here

DEPOSIT = uuid.uuid4()


def item(
    kind: str,
    *,
    kes: int | None = None,
    usdc: int | None = None,
    deposit: bool = False,
    transfer: int | None = None,
    status: str = "open",
) -> ReviewItem:
    return ReviewItem(
        id=7, kind=kind, dedupe_key=f"k:{kind}", deposit_id=DEPOSIT if deposit else None, callback_id=None,
        amount_kes=kes, reason="why", status=status, created_at=datetime.now(UTC), resolved_at=None,
        resolution=None, chain_transfer_id=transfer, amount_usdc_micro=usdc,
    )  # fmt: skip


C, W, CONFIRM, RETRY = Resolution.CREDIT_USER, Resolution.WRITE_OFF, Resolution.CONFIRM_DEPOSIT, Resolution.RETRY


ON, GONE = True, False  # whether the item's USDC is on chain now (`usdc_here`)


@pytest.mark.parametrize(
    ("review", "deposit_status", "confirmed", "on_chain", "held", "actions"),
    [
        (item("usdc_reversed", usdc=5, transfer=3), None, False, ON, Held(ledger.SUSPENSE_USDC, "USDC", 5), (C, W)),
        (item("usdc_reappeared", usdc=5, transfer=3), None, False, ON, Held(ledger.SUSPENSE_USDC, "USDC", 5), (C, W)),
        # Reversed and never back: money that never arrived is not credited, only written off (out of custody).
        (item("usdc_reversed", usdc=5, transfer=3), None, False, GONE, Held(ledger.SUSPENSE_USDC, "USDC", 5), (W,)),
        (item("usdc_reappeared", usdc=5, transfer=3), None, False, GONE, Held(ledger.SUSPENSE_USDC, "USDC", 5), (W,)),
        (item("usdc_too_large", usdc=9, transfer=4), None, False, ON, Held(ledger.CUSTODY_USDC, "USDC", 9), (C,)),
        (item("usdc_credit_failed", usdc=9, transfer=4), None, False, ON, Held(ledger.CUSTODY_USDC, "USDC", 9), (C,)),
        # Never booked, and its block reorged away: nothing to credit until its log is back, confirmed.
        (item("usdc_too_large", usdc=9, transfer=4), None, False, GONE, Held(ledger.CUSTODY_USDC, "USDC", 9), ()),
        (item("usdc_credit_failed", usdc=9, transfer=4), None, False, GONE, Held(ledger.CUSTODY_USDC, "USDC", 9), ()),
        (item("mpesa_callback", kes=1500), None, False, GONE, Held(ledger.SUSPENSE_KES, "KES", 1500), (W,)),
        (
            item("mpesa_callback", kes=1500, deposit=True),
            "needs_review",
            False,
            GONE,
            Held(ledger.SUSPENSE_KES, "KES", 1500),
            (W,),
        ),
        (item("mpesa_callback"), None, False, GONE, None, ()),  # a failure: no money
        (item("contradiction"), None, False, GONE, None, ()),
        (item("unconfirmed_success", kes=1295, deposit=True), "needs_review", False, GONE, None, (CONFIRM, RETRY)),
        (item("unconfirmed_success", kes=1295, deposit=True), "needs_review", True, GONE, None, (RETRY,)),
        (item("unconfirmed_success", kes=1295, deposit=True), "processing", False, GONE, None, ()),
        (item("payout_lost", deposit=True), "needs_review", False, GONE, None, (CONFIRM, RETRY)),
        (item("usdc_reversed", usdc=5, status="resolved"), None, False, ON, Held(ledger.SUSPENSE_USDC, "USDC", 5), ()),
        (item("usdc_reversed", usdc=0), None, False, ON, None, ()),
    ],
)
def test_what_resolves_an_item(
    review: ReviewItem,
    deposit_status: str | None,
    confirmed: bool,
    on_chain: bool,
    held: Held | None,
    actions: tuple[Resolution, ...],
) -> None:
    assert held_by(review) == held
    assert resolutions(review, deposit_status, confirmed, usdc_on_chain=on_chain) == actions


@pytest.mark.parametrize(
    ("kind", "status", "missing", "here"),
    [
        ("usdc_reversed", "reversed", False, True),  # reversed, then confirmed on chain again
        ("usdc_reappeared", "reversed", False, True),
        ("usdc_reversed", "reversed", True, False),  # reversed and not back
        ("usdc_reappeared", "reversed", True, False),  # back once, gone again
        ("usdc_reversed", "credited", False, False),  # not what a reversed item's money is
        ("usdc_too_large", "review", False, True),
        ("usdc_credit_failed", "review", False, True),
        ("usdc_too_large", "review", True, False),  # its block reorged away
        ("usdc_too_large", "orphaned", False, False),
        ("usdc_credit_failed", "credited", False, False),  # credited since: crediting again would be twice
        ("usdc_too_large", None, False, False),  # no transfer row
        ("mpesa_callback", "review", False, False),
    ],
)
def test_usdc_is_here_only_while_its_transfer_waits_and_is_on_chain(
    kind: str, status: str | None, missing: bool, here: bool
) -> None:
    assert usdc_here(item(kind, usdc=5, transfer=3), status, missing) is here


def test_the_money_of_one_transfer_has_one_key_whatever_item_lists_it() -> None:
    assert money_key(item("usdc_reversed", usdc=5, transfer=3)) == money_key(
        item("usdc_reappeared", usdc=5, transfer=3)
    )
    assert money_key(item("mpesa_callback", kes=1)) == "review:item:7"


def test_resolving_entries_balance_and_share_their_key() -> None:
    credit = ledger.review_credit("review:transfer:3", ledger.SUSPENSE_USDC, "amani", 5)
    write_off = ledger.review_write_off("review:transfer:3", ledger.SUSPENSE_USDC, "USDC", 5)
    assert credit.key == write_off.key  # credited or written off, never both
    assert {p.account for p in credit.postings} == {ledger.SUSPENSE_USDC, "user:amani:USDC"}
    assert {p.account for p in write_off.postings} == {ledger.SUSPENSE_USDC, "written_off:USDC"}
    gone = ledger.review_write_off("review:transfer:3", ledger.SUSPENSE_USDC, "USDC", 5, gone=True)
    assert gone.key == credit.key
    assert {(p.account, p.direction) for p in gone.postings} == {
        (ledger.SUSPENSE_USDC, ledger.Direction.DEBIT),
        (ledger.CUSTODY_USDC, ledger.Direction.CREDIT),  # custody down to what the chain holds
    }
    with pytest.raises(LedgerError):
        ledger.review_write_off("review:item:1", ledger.SUSPENSE_KES, "KES", 5, gone=True)
    with pytest.raises(LedgerError):
        ledger.review_write_off("review:item:1", ledger.SUSPENSE_KES, "KES", 0)
