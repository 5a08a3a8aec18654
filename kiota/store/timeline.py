"""What the dashboard's money views read (kiota/money_views.py): the search, and every row that makes a
deposit's or an intent's timeline.

Owns the named queries of `sql/queries/timeline.sql`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from datetime import datetime

from kiota.db import Executor
from kiota.paybill import PaidDeposit
from kiota.records import (
    AdminAction,
    Attempt,
    Callback,
    Deposit,
    Intent,
    JobAttempt,
    JobRun,
    Payout,
    Record,
    ReviewItem,
    Transfer,
)
from kiota.sql import load_queries


@dataclasses.dataclass(frozen=True, slots=True)
class SearchHit(Record):
    """A deposit, an intent or an unsolicited transfer a search names."""

    kind: str
    id: str
    user_id: str
    status: str
    amount: int | None
    asset: str
    phone_masked: str | None
    at: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class JournalLine(Record):
    """A journal entry with its postings written out (`account D|C amount, …`)."""

    id: int
    idempotency_key: str
    kind: str
    memo: str | None
    created_at: datetime
    postings: str


async def search(
    db: Executor, text: str, as_uuid: uuid.UUID | None, last_digits: str | None, phone_masked: str | None
) -> list[SearchHit]:
    rows = await db.fetch(load_queries().search_money, text, as_uuid, last_digits, phone_masked)
    return [SearchHit.from_row(row) for row in rows]


async def deposit(db: Executor, deposit_id: uuid.UUID) -> Deposit | None:
    row = await db.fetchrow(load_queries().timeline_deposit, deposit_id)
    return None if row is None else Deposit.from_row(row)


async def intent(db: Executor, intent_id: uuid.UUID) -> Intent | None:
    row = await db.fetchrow(load_queries().timeline_intent, intent_id)
    return None if row is None else Intent.from_row(row)


async def callbacks(db: Executor, deposit_id: uuid.UUID, checkout: str | None, receipt: str | None) -> list[Callback]:
    rows = await db.fetch(load_queries().timeline_callbacks, deposit_id, checkout, receipt)
    return [Callback.from_row(row) for row in rows]


async def jobs(db: Executor, deposit_id: uuid.UUID | None, intent_id: uuid.UUID | None) -> list[JobRun]:
    return [JobRun.from_row(row) for row in await db.fetch(load_queries().timeline_jobs, deposit_id, intent_id)]


async def job_attempts(db: Executor, job_ids: Sequence[str]) -> list[JobAttempt]:
    rows = await db.fetch(load_queries().timeline_job_attempts, list(job_ids))
    return [JobAttempt.from_row(row) for row in rows]


async def payouts(db: Executor, deposit_id: uuid.UUID) -> list[Payout]:
    return [Payout.from_row(row) for row in await db.fetch(load_queries().timeline_payouts, deposit_id)]


async def payout_attempts(db: Executor, payout_ids: Sequence[int]) -> list[Attempt]:
    rows = await db.fetch(load_queries().timeline_payout_attempts, list(payout_ids))
    return [Attempt.from_row(row) for row in rows]


async def entries(db: Executor, keys: Sequence[str], prefixes: Sequence[str]) -> list[JournalLine]:
    """Entries by exact key, or by key prefix (`mpesa:<deposit id>:` matches each of that deposit's)."""
    patterns = [prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%" for prefix in prefixes]
    rows = await db.fetch(load_queries().timeline_entries, list(keys), patterns)
    return [JournalLine.from_row(row) for row in rows]


async def review_items(
    db: Executor, deposit_id: uuid.UUID | None, transfer_ids: Sequence[int], dedupe_keys: Sequence[str]
) -> list[ReviewItem]:
    rows = await db.fetch(load_queries().timeline_review_items, deposit_id, list(transfer_ids), list(dedupe_keys))
    return [ReviewItem.from_row(row) for row in rows]


async def actions(db: Executor, target_id: str, review_item_ids: Sequence[int]) -> list[AdminAction]:
    rows = await db.fetch(load_queries().timeline_actions, target_id, [str(i) for i in review_item_ids])
    return [AdminAction.from_row(row) for row in rows]


async def transfers(db: Executor, intent_id: uuid.UUID, transfer_id: int | None) -> list[Transfer]:
    return [Transfer.from_row(row) for row in await db.fetch(load_queries().timeline_transfers, intent_id, transfer_id)]


@dataclasses.dataclass(frozen=True, slots=True)
class ReviewRow:
    """An open review item with its deposit's state and the user (and intent) its transfer reached."""

    item: ReviewItem
    deposit_status: str | None
    deposit_confirmed: bool
    user_id: str | None
    intent_id: uuid.UUID | None
    transfer_status: str | None = None
    transfer_missing: bool = False


async def open_reviews(db: Executor) -> list[ReviewRow]:
    rows = await db.fetch(load_queries().review_open)
    return [
        ReviewRow(
            ReviewItem.from_row(row),
            row["deposit_status"],
            bool(row["deposit_confirmed"]),
            row["deposit_user"] or row["transfer_user"],
            row["transfer_intent"],
            row["transfer_status"],
            bool(row["transfer_missing"]),
        )
        for row in rows
    ]


async def money_actions(db: Executor, limit: int = 50) -> list[AdminAction]:
    """The latest proposals, approvals, rejections and withdrawals, newest first."""
    return [AdminAction.from_row(row) for row in await db.fetch(load_queries().money_actions_recent, limit)]


@dataclasses.dataclass(frozen=True, slots=True)
class FlaggedTransfer:
    """A transfer shown as an exception, with its intent's state and its latest review item."""

    transfer: Transfer
    intent_status: str | None
    expected_amount_usdc: int | None
    review_item_id: int | None
    review_status: str | None


async def flagged_transfers(db: Executor, flag: str | None, limit: int = 200) -> list[FlaggedTransfer]:
    rows = await db.fetch(load_queries().flagged_transfers, flag, limit)
    return [
        FlaggedTransfer(
            Transfer.from_row(row),
            row["intent_status"],
            row["expected_amount_usdc"],
            row["review_item_id"],
            row["review_status"],
        )
        for row in rows
    ]


async def treasury_address(db: Executor) -> str | None:
    address: str | None = await db.fetchval(load_queries().treasury_address)
    return address


async def system_balances(db: Executor) -> list[tuple[str, str, int]]:
    """Every account that is not a user's: (code, asset, balance in the smallest unit)."""
    return [(r["code"], r["asset"], int(r["balance"])) for r in await db.fetch(load_queries().system_balances)]


async def paid_deposits_by_receipts(db: Executor, receipts: Sequence[str]) -> list[PaidDeposit]:
    rows = await db.fetch(load_queries().paid_deposits_by_receipts, list(receipts))
    return [PaidDeposit.from_row(row) for row in rows]


async def paid_deposits_between(db: Executor, start: datetime, end: datetime) -> list[PaidDeposit]:
    rows = await db.fetch(load_queries().paid_deposits_between, start, end)
    return [PaidDeposit.from_row(row) for row in rows]
