"""The chain ingester's rows in PostgreSQL: the cursor, the transfers seen, their credits and reversals,
the intents they complete, and the round's log.

Owns the ingester's named queries of `sql/queries/usdc.sql`. Transfers come back as `kiota.records.Transfer`;
open intents as the few columns the rules of `kiota.usdc` decide on (`OpenIntent`, `IntentAge`), since
every round reads them; the rest as ids or plain values. Every function runs on the
caller's connection, so a round's writes commit (or roll back to a savepoint) together.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime

import asyncpg

from kiota.db import Connection
from kiota.records import Transfer
from kiota.sql import load_queries
from kiota.usdc import Credit, IntentAge, OpenIntent, TransferLog

# Failures of the connection or the server, not of what was asked: a caller that isolates one row's
# failure (a savepoint per credit) lets these through, and the whole round fails and runs again.
SERVER_FAULTS = (
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.TransactionRollbackError,
    OSError,
    TimeoutError,
)


# The cursor and the round's log


async def next_block(conn: Connection, chain_id: int) -> int | None:
    """The first block the next round scans; None before the first round."""
    value: int | None = await conn.fetchval(load_queries().chain_cursor, chain_id)
    return value


async def store_next_block(conn: Connection, chain_id: int, block: int) -> None:
    await conn.execute(load_queries().store_cursor, chain_id, block)


async def record_round(
    conn: Connection, chain_id: int, start: int, end: int, head: int, rpc_calls: int, transfers: int, started: datetime
) -> None:
    await conn.execute(load_queries().insert_round, chain_id, start, end, head, rpc_calls, transfers, started)


# What a round matches against


async def deposit_addresses_among(conn: Connection, addresses: Collection[str]) -> dict[str, str]:
    """Those of `addresses` (lower case) that are deposit addresses, and whose each is.

    The database is asked about the round's recipients only, by its index on lower(deposit_address): the
    answer costs one index probe per recipient, the same at 10 or 100,000 users, and the worker keeps no
    copy of every address (which also means a user created a moment ago is matched by the next round)."""
    rows = await conn.fetch(load_queries().deposit_addresses_among, list(addresses))
    return {row["address"]: row["id"] for row in rows}


async def own_payout_hashes(conn: Connection, tx_hashes: list[str]) -> set[str]:
    """Those of `tx_hashes` that our payout lane signed."""
    return {row["tx_hash"] for row in await conn.fetch(load_queries().own_payout_hashes, tx_hashes)}


async def known_treasuries(conn: Connection, chain_id: int) -> tuple[str, ...]:
    """Every treasury that signed a payout on the chain, whatever the settings list."""
    return tuple(row["address"] for row in await conn.fetch(load_queries().known_treasuries, chain_id))


# Transfers


async def upsert_transfers(
    conn: Connection, chain_id: int, transfers: Sequence[TransferLog], user_ids: list[str], kinds: list[str]
) -> list[int]:
    """A round's transfers (one per identity) written with their users and kinds; the ids of all their rows."""
    rows = await conn.fetch(
        load_queries().upsert_transfers, chain_id,
        [t.tx_hash for t in transfers], [t.log_index for t in transfers], [t.block_number for t in transfers],
        [t.block_hash for t in transfers], [t.token for t in transfers], [t.sender for t in transfers],
        [t.recipient for t in transfers], [t.amount for t in transfers], user_ids, kinds, [t.seq for t in transfers],
    )  # fmt: skip
    return [row["id"] for row in rows]


async def orphan_missing(conn: Connection, chain_id: int, start: int, end: int, answered: list[int]) -> list[int]:
    """Transfers in blocks `start`..`end` that are not among the `answered` rows: orphaned; their ids."""
    return [row["id"] for row in await conn.fetch(load_queries().orphan_missing, chain_id, start, end, answered)]


async def check_held_presence(
    conn: Connection, chain_id: int, start: int, end: int, answered: list[int], confirmed_up_to: int
) -> list[tuple[int, bool]]:
    """Transfers held for a person (in review, or reversed) checked against a round's answer: missing when the
    rescanned range lacks them or holds them unconfirmed, on chain when it holds them confirmed. Each row whose
    state changed: (id, missing now)."""
    rows = await conn.fetch(load_queries().held_transfers_presence, chain_id, start, end, answered, confirmed_up_to)
    return [(row["id"], row["missing"]) for row in rows]


async def credited_gone_or_back(
    conn: Connection, chain_id: int, start: int, end: int, answered: Sequence[TransferLog]
) -> tuple[list[Transfer], list[Transfer]]:
    """Against a round's answer: the credited transfers it lacks (in `start`..`end`, or suspected by the last
    round), and the reversed ones it holds again."""
    rows = await conn.fetch(
        load_queries().credited_gone_or_reversed_back, chain_id, start, end,
        [t.tx_hash for t in answered], [t.token for t in answered], [t.sender for t in answered],
        [t.recipient for t in answered], [t.amount for t in answered], [t.seq for t in answered],
    )  # fmt: skip
    gone = [Transfer.from_row(row) for row in rows if row["what"] == "gone"]
    back = [Transfer.from_row(row) for row in rows if row["what"] == "back"]
    return gone, back


async def transfers_to_credit(conn: Connection, chain_id: int, confirmed_up_to: int, start: int) -> list[Transfer]:
    """Confirmed deposits (and too large ones) seen from block `start` on, in chain order, locked."""
    rows = await conn.fetch(load_queries().transfers_to_credit, chain_id, confirmed_up_to, start)
    return [Transfer.from_row(row) for row in rows]


async def credit_transfers(conn: Connection, credits: Sequence[Credit], credit_keys: list[str]) -> None:
    """Each transfer credited with its flags and its journal entry's key, and the intent it completes."""
    await conn.execute(
        load_queries().credit_transfers,
        [c.transfer.id for c in credits],
        [c.intent_id for c in credits],
        [c.transfer.amount for c in credits],
        [",".join(c.flags) for c in credits],
        credit_keys,
    )


async def check_ledger_now(conn: Connection) -> None:
    """The ledger's deferred checks, run now: an entry they refuse fails inside the savepoint that wrote it."""
    await conn.execute(load_queries().check_ledger_now)


async def count_gone_rounds(conn: Connection, suspected: list[int], cleared: list[int]) -> None:
    """One more round in a row for the `suspected` credited transfers; the count starts again for `cleared`."""
    await conn.execute(load_queries().transfers_gone_rounds, suspected, cleared)


async def reverse_transfers(conn: Connection, transfer_ids: list[int]) -> list[Transfer]:
    """Those of the credited transfers that are still credited, marked reversed."""
    return [Transfer.from_row(row) for row in await conn.fetch(load_queries().transfers_reversed, transfer_ids)]


async def transfers_to_review(conn: Connection, transfer_ids: list[int]) -> None:
    await conn.execute(load_queries().transfers_to_review, transfer_ids)


async def insert_review_items(conn: Connection, items: Sequence[tuple[int, str, str]]) -> list[tuple[int, str]]:
    """Review items (transfer id, kind, reason), one per transfer and kind; the (transfer id, kind) created."""
    rows = await conn.fetch(
        load_queries().insert_usdc_review_items,
        [transfer_id for transfer_id, _, _ in items],
        [kind for _, kind, _ in items],
        [reason for _, _, reason in items],
    )
    return [(row["chain_transfer_id"], row["kind"]) for row in rows]


# Intents


async def open_intents_of_users(conn: Connection, user_ids: list[str]) -> dict[str, OpenIntent]:
    """The users' open intents, locked, by user (a user has at most one)."""
    rows = await conn.fetch(load_queries().open_intents_of_users, user_ids)
    return {row["user_id"]: OpenIntent(row["id"], row["expected_amount_usdc"]) for row in rows}


async def users_with_recently_expired_intent(conn: Connection, user_ids: list[str]) -> set[str]:
    rows = await conn.fetch(load_queries().users_with_recently_expired_intent, user_ids)
    return {row["user_id"] for row in rows}


async def mark_intents_confirming(conn: Connection, chain_id: int) -> None:
    """Each open intent confirming or awaiting, by whether a live deposit to its address waits for credit."""
    await conn.execute(load_queries().intents_confirming, chain_id)


async def count_intent_checks(conn: Connection, created_by: datetime) -> None:
    """One more check for every open intent created by `created_by` (the round covered it)."""
    await conn.execute(load_queries().count_intent_checks, created_by)


async def intents_maybe_ending(conn: Connection, now: datetime, max_checks: int) -> list[IntentAge]:
    """The open intents whose ttl or max_checks may have come (`usdc.intent_end` decides), as their end is
    decided: read every round, so only those and only the three columns that decide, not every open intent."""
    rows = await conn.fetch(load_queries().intents_maybe_ending, now, max_checks)
    return [IntentAge(row["id"], row["expires_at"], row["checks"]) for row in rows]


async def expire_intents(conn: Connection, ended: Sequence[tuple[uuid.UUID, str]]) -> None:
    """Intents that ended without a credit: (intent id, end reason)."""
    await conn.execute(
        load_queries().intents_expired, [intent_id for intent_id, _ in ended], [reason for _, reason in ended]
    )


# The wallet balances cache


async def cache_wallet_balances(conn: Connection, user_ids: list[str], balances: list[int], block: int) -> None:
    """Users' on-chain USDC as read at `block` (each user once); an older read never replaces a newer one.
    Rows are written in user order: two lanes settling the same users at once cannot deadlock on them."""
    ordered = sorted(zip(user_ids, balances, strict=True))
    await conn.execute(load_queries().upsert_wallet_balances, [u for u, _ in ordered], [b for _, b in ordered], block)
