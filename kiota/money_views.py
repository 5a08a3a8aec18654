"""The dashboard's money views, read from PostgreSQL: the search, and one deposit's or intent's whole page
(its timeline, its open review items with what resolves each, and the proposals waiting on them).

Read-only: what changes money goes through kiota/review_actions.py and kiota/ops.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from kiota.chain_rpc import ChainReader
from kiota.db import Pool
from kiota.errors import ChainUnavailable, InvalidInput
from kiota.paybill import Report, Statement, match, parse_statement, period
from kiota.reconcile import Difference, reconcile
from kiota.records import AdminAction, Deposit, Intent, MoneyProposal, ReviewItem, Transfer
from kiota.review_rules import Resolution, money_key, resolutions, usdc_here
from kiota.search import parse
from kiota.store import proposals as proposal_store
from kiota.store import timeline as store
from kiota.store.payouts import treasury_addresses
from kiota.store.timeline import FlaggedTransfer, SearchHit
from kiota.timeline import Event, Story, deposit_timeline, intent_timeline


@dataclass(frozen=True, slots=True)
class OpenItem:
    """An open review item and the actions that resolve it."""

    item: ReviewItem
    actions: tuple[Resolution, ...]


@dataclass(frozen=True, slots=True)
class ReviewEntry:
    """A row of the review page: the item, what resolves it, whose money it is, and its live proposal."""

    item: ReviewItem
    actions: tuple[Resolution, ...]
    user_id: str | None
    intent_id: uuid.UUID | None
    proposal: MoneyProposal | None


@dataclass(frozen=True, slots=True)
class ReviewPage:
    entries: list[ReviewEntry]
    proposals: list[MoneyProposal]  # every live proposal (a deposit's confirmation may have no item)
    recent: list[AdminAction]


@dataclass(frozen=True, slots=True)
class DepositPage:
    deposit: Deposit
    events: list[Event]
    open_items: list[OpenItem]
    proposals: list[MoneyProposal]


@dataclass(frozen=True, slots=True)
class IntentPage:
    intent: Intent
    events: list[Event]
    open_items: list[OpenItem]
    proposals: list[MoneyProposal]


async def search(pool: Pool, query: str) -> list[SearchHit]:
    terms = parse(query)
    if terms is None:
        return []
    return await store.search(pool, terms.text, terms.as_uuid, terms.last_digits, terms.phone_masked)


async def review_page(pool: Pool) -> ReviewPage:
    proposals = await proposal_store.open_proposals(pool)
    by_item = {p.review_item_id: p for p in proposals if p.review_item_id is not None}
    by_deposit = {p.deposit_id: p for p in proposals if p.deposit_id is not None}
    entries = [
        ReviewEntry(
            row.item,
            resolutions(
                row.item,
                row.deposit_status,
                row.deposit_confirmed,
                usdc_on_chain=usdc_here(row.item, row.transfer_status, row.transfer_missing),
            ),
            row.user_id,
            row.intent_id,
            by_item.get(row.item.id) or (by_deposit.get(row.item.deposit_id) if row.item.deposit_id else None),
        )
        for row in await store.open_reviews(pool)
    ]
    return ReviewPage(entries, proposals, await store.money_actions(pool))


async def deposit_page(pool: Pool, deposit_id: uuid.UUID) -> DepositPage | None:
    deposit = await store.deposit(pool, deposit_id)
    if deposit is None:
        return None
    receipt_keys = [f"receipt:{deposit.mpesa_receipt}"] if deposit.mpesa_receipt else []
    reviews = await store.review_items(pool, deposit_id, [], receipt_keys)
    callbacks = await store.callbacks(pool, deposit_id, deposit.checkout_request_id, deposit.mpesa_receipt)
    jobs = await store.jobs(pool, deposit_id, None)
    payouts = await store.payouts(pool, deposit_id)
    story = Story(
        jobs=jobs,
        attempts=await store.job_attempts(pool, [job.id for job in jobs]),
        entries=await store.entries(
            pool, _resolved_keys(reviews), [f"mpesa:{deposit_id}:", *map(_prefix, receipt_keys)]
        ),
        reviews=reviews,
        actions=await store.actions(pool, str(deposit_id), [r.id for r in reviews]),
        callbacks=callbacks,
        payouts=payouts,
        payout_attempts=await store.payout_attempts(pool, [p.id for p in payouts]),
    )
    confirmed = deposit.confirmed_at is not None
    return DepositPage(
        deposit,
        deposit_timeline(deposit, story),
        _open(reviews, deposit.status, confirmed),
        await proposal_store.proposals_of(pool, [r.id for r in reviews], deposit_id),
    )


async def intent_page(pool: Pool, intent_id: uuid.UUID) -> IntentPage | None:
    intent = await store.intent(pool, intent_id)
    if intent is None:
        return None
    transfers = await store.transfers(pool, intent_id, intent.transfer_id)
    transfer_ids = [t.id for t in transfers]
    reviews = await store.review_items(pool, None, transfer_ids, [])
    credit_keys = [t.credit_key for t in transfers if t.credit_key]
    jobs = await store.jobs(pool, None, intent_id)
    story = Story(
        jobs=jobs,
        attempts=await store.job_attempts(pool, [job.id for job in jobs]),
        entries=await store.entries(
            pool, [*credit_keys, *(f"{k}:reversed" for k in credit_keys), *_resolved_keys(reviews)], []
        ),
        reviews=reviews,
        actions=await store.actions(pool, str(intent_id), [r.id for r in reviews]),
        transfers=transfers,
    )
    return IntentPage(
        intent,
        intent_timeline(intent, story),
        _open(reviews, None, False, {t.id: t for t in transfers}),
        await proposal_store.proposals_of(pool, [r.id for r in reviews], None),
    )


def _resolved_keys(reviews: list[ReviewItem]) -> list[str]:
    """The entries two operators booked to resolve these items (kiota/review_actions.py)."""
    return [f"{money_key(r)}:resolved" for r in reviews]


def _prefix(key: str) -> str:
    """A callback's suspense entry is keyed `mpesa:<receipt key>:suspense` (kiota/ledger.py `mpesa_unmatched`)."""
    return f"mpesa:{key}:"


def _open(
    reviews: list[ReviewItem],
    deposit_status: str | None,
    confirmed: bool,
    transfers: Mapping[int, Transfer] | None = None,
) -> list[OpenItem]:
    """The open items and what resolves each; an item's USDC is credited only while its transfer is on chain."""
    return [
        OpenItem(r, resolutions(r, deposit_status, confirmed, usdc_on_chain=_on_chain(r, transfers or {})))
        for r in reviews
        if r.status == "open"
    ]


def _on_chain(item: ReviewItem, transfers: Mapping[int, Transfer]) -> bool:
    transfer = transfers.get(item.chain_transfer_id) if item.chain_transfer_id is not None else None
    return transfer is not None and usdc_here(item, transfer.status, transfer.missing_since is not None)


# The flags kiota/usdc.py gives a transfer (`credit_for`, `payment_flags`): BTCPay's exceptions.
TRANSFER_FLAGS = ("late", "unsolicited", "underpaid", "overpaid")
RECONCILE_SECONDS = 20.0


async def flagged_transfers(pool: Pool, flag: str | None) -> list[FlaggedTransfer]:
    if flag is not None and flag not in TRANSFER_FLAGS:
        raise InvalidInput(f"a flag is one of {', '.join(TRANSFER_FLAGS)}")
    return await store.flagged_transfers(pool, flag)


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The ledger against the chain; `error` says why the chain could not be read (the ledger side still shows)."""

    differences: list[Difference]
    lines: list[str]
    balances: list[tuple[str, str, int]]
    treasury: str | None
    error: str | None


async def reconciliation(pool: Pool, rpc_url: str, token: str, chain_id: int) -> Reconciliation:
    """`kiota reconcile` on request (kiota/reconcile.py), bounded in time; an unreachable node is said, not raised."""
    treasuries = await treasury_addresses(pool)  # every treasury that ever signed a payout
    treasury = ", ".join(treasuries) or None
    balances = await store.system_balances(pool)
    reader = ChainReader(rpc_url)
    try:
        async with asyncio.timeout(RECONCILE_SECONDS):
            differences, lines = await reconcile(pool, reader, token, treasuries, chain_id=chain_id)
    except (ChainUnavailable, TimeoutError) as exc:
        said = str(exc) or f"no answer within {RECONCILE_SECONDS:.0f}s"
        return Reconciliation([], [], balances, treasury, f"the chain's RPC (BASE_RPC_URL) did not answer: {said}")
    finally:
        await reader.aclose()
    return Reconciliation(differences, lines, balances, treasury, None)


async def paybill_report(pool: Pool, data: bytes) -> tuple[Statement, Report]:
    """An uploaded M-Pesa statement matched to our deposits (StatementRefused when it cannot be read)."""
    statement = parse_statement(data)
    receipts = [line.receipt for line in statement.lines]
    start, end = period(statement.lines)
    by_receipt = await store.paid_deposits_by_receipts(pool, receipts)
    # A statement's times are whole seconds; M-Pesa's own time for a payment may fall a moment outside them.
    in_period = await store.paid_deposits_between(pool, start, end + timedelta(seconds=1))
    return statement, match(statement, by_receipt, in_period)
