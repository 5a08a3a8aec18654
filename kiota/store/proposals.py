"""The two-person rule's proposals and the review items they resolve, in PostgreSQL.

Owns the named queries of `sql/queries/proposals.sql`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from kiota.db import Connection, Executor
from kiota.records import MoneyProposal, ReviewItem
from kiota.sql import load_queries


async def insert_proposal(
    conn: Connection,
    action: str,
    review_item_id: int | None,
    deposit_id: uuid.UUID | None,
    user_id: str | None,
    asset: str | None,
    amount: int | None,
    note: str,
    proposed_by: str,
) -> MoneyProposal | None:
    """The new proposal, or None when its item or deposit has a live or approved one already."""
    row = await conn.fetchrow(
        load_queries().proposal_insert, action, review_item_id, deposit_id, user_id, asset, amount, note, proposed_by
    )
    return None if row is None else MoneyProposal.from_row(row)


async def proposal_for_update(conn: Connection, proposal_id: int) -> MoneyProposal | None:
    row = await conn.fetchrow(load_queries().proposal_for_update, proposal_id)
    return None if row is None else MoneyProposal.from_row(row)


async def close_proposal(
    conn: Connection, proposal_id: int, status: str, by: str, note: str, entry_id: int | None
) -> MoneyProposal | None:
    """The proposal approved, rejected or withdrawn; None when it was not live any more."""
    row = await conn.fetchrow(load_queries().proposal_close, proposal_id, status, by, note, entry_id)
    return None if row is None else MoneyProposal.from_row(row)


async def open_proposals(db: Executor) -> list[MoneyProposal]:
    return [MoneyProposal.from_row(row) for row in await db.fetch(load_queries().proposals_open)]


async def proposals_of(
    db: Executor, review_item_ids: Sequence[int], deposit_id: uuid.UUID | None
) -> list[MoneyProposal]:
    rows = await db.fetch(load_queries().proposals_of, list(review_item_ids), deposit_id)
    return [MoneyProposal.from_row(row) for row in rows]


async def review_item_for_update(conn: Connection, item_id: int) -> ReviewItem | None:
    row = await conn.fetchrow(load_queries().review_item_for_update, item_id)
    return None if row is None else ReviewItem.from_row(row)


async def held_transfer(conn: Connection, transfer_id: int) -> tuple[str, bool] | None:
    """The status of the transfer a review item holds and whether its log is missing from chain now (locked)."""
    row = await conn.fetchrow(load_queries().held_transfer_for_share, transfer_id)
    return None if row is None else (row["status"], row["missing"])


async def resolve_review_item(conn: Connection, item_id: int, resolution: str, transfer_id: int | None) -> bool:
    """True when the item was open and is now resolved (with every open item listing the same transfer)."""
    return bool(await conn.fetch(load_queries().review_item_resolve, item_id, resolution, transfer_id))


async def review_items_by_ids(db: Executor, item_ids: Sequence[int]) -> list[ReviewItem]:
    return [ReviewItem.from_row(row) for row in await db.fetch(load_queries().review_items_by_ids, list(item_ids))]
