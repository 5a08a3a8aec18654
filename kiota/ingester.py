"""The chain ingester: one scan per round, whatever the number of deposit addresses.

Each round fetches the USDC Transfer logs of the new block range once, unfiltered
by recipient, and matches them locally against every deposit address (a topic2
OR-list would cost a call per 1,000 addresses; one unfiltered query costs the same
at 10 or 10,000 addresses). The last blocks are rescanned every round: a transfer
whose log is gone is orphaned, one that reappears in another block is updated.
A transfer is credited once it has the required confirmations and was seen in
this round's canonical answer, in the same transaction that completes its intent.

A round's writes are set-based: all its transfers in one statement; all its credits,
after three reads, in two (the journal entries with their postings; the transfers with
the intents they complete). Which intent a credit completes and how it is flagged is
decided in Python (`usdc.decide_credits`). A catch-up round over a thousand transfers
thus costs a couple of dozen round trips, not thousands.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import structlog

from kiota import ledger
from kiota.chain_rpc import ChainReader
from kiota.db import Connection, advisory_unlock, try_advisory_lock
from kiota.errors import ChainUnavailable
from kiota.ledger_store import post_entries
from kiota.sql import load_queries
from kiota.usdc import (
    DueTransfer,
    OpenIntent,
    TransferLog,
    classify,
    decide_credits,
    decode_transfer,
    intent_end,
    latest_per_key,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ScanConfig:
    chain_id: int
    token: str
    treasury: str | None
    confirmations_required: int
    max_checks: int
    rescan_blocks: int = 12


@dataclass(frozen=True, slots=True)
class RoundReport:
    start: int
    end: int
    head: int
    matched: int
    credited: int
    orphaned: int
    rpc_calls: int


def scanner_lock_key(chain_id: int) -> int:
    return 0x6B696F7461_02 + chain_id


async def scan_round(pool: asyncpg.Pool, reader: ChainReader, config: ScanConfig) -> RoundReport | None:
    """One round; None when another round of this chain is running or the node lags."""
    async with pool.acquire() as conn:  # one connection for the whole round: lock, reads, transaction
        key = scanner_lock_key(config.chain_id)
        if not await try_advisory_lock(conn, key):
            return None
        try:
            return await _scan_round(conn, reader, config)
        finally:
            await advisory_unlock(conn, key)


async def _scan_round(conn: Connection, reader: ChainReader, config: ScanConfig) -> RoundReport | None:
    q = load_queries()
    started = datetime.now(UTC)
    calls_before = reader.calls
    head = await reader.head()
    rescan = max(config.rescan_blocks, config.confirmations_required + 2)
    cursor = await conn.fetchval(q.chain_cursor, config.chain_id)
    next_block = max(0, head - rescan) if cursor is None else min(cursor, head + 1)
    start, end = max(0, next_block - rescan), head
    logs = await reader.transfer_logs(config.token.lower(), start, end)
    if not logs and await reader.head() < end:  # a lagging node answers "nothing" for blocks it lacks
        return None
    addresses = {row["address"]: row["id"] for row in await conn.fetch(q.deposit_addresses)}
    transfers = [t for t in map(decode_transfer, logs) if t is not None and t.recipient in addresses]
    own = {r["tx_hash"] for r in await conn.fetch(q.own_payout_hashes, [t.tx_hash for t in transfers])}
    async with conn.transaction():
        await _upsert_transfers(conn, config, transfers, addresses, own)
        orphaned = await conn.fetch(
            q.orphan_missing, config.chain_id, start, end,
            [t.tx_hash for t in transfers], [t.log_index for t in transfers],
        )  # fmt: skip
        credited = await _credit(conn, config, head, start)
        await _advance_intents(conn, config, head, started)
        await conn.execute(q.store_cursor, config.chain_id, end + 1)
        calls = reader.calls - calls_before
        await conn.execute(q.insert_round, config.chain_id, start, end, head, calls, len(transfers), started)
    await _cache_balances(conn, reader, config, credited, head)
    report = RoundReport(start, end, head, len(transfers), len(credited), len(orphaned), reader.calls - calls_before)
    if orphaned:
        log.warning("transfers orphaned by a reorg", count=len(orphaned), start=start, end=end)
    return report


async def _cache_balances(
    conn: Connection, reader: ChainReader, config: ScanConfig, users: list[tuple[str, str]], head: int
) -> None:
    """After a credit, the user's on-chain USDC is cached (best effort: it is only a cache)."""
    unique = list(dict.fromkeys(users))
    try:
        amounts = await reader.usdc_balances(config.token, [address for _, address in unique])
    except ChainUnavailable:
        return
    await conn.execute(load_queries().upsert_wallet_balances, [user_id for user_id, _ in unique], amounts, head)


async def _upsert_transfers(
    conn: Connection, config: ScanConfig, transfers: list[TransferLog], addresses: dict[str, str], own: set[str]
) -> None:
    rows = latest_per_key(transfers)
    await conn.execute(
        load_queries().upsert_transfers, config.chain_id,
        [t.tx_hash for t in rows], [t.log_index for t in rows], [t.block_number for t in rows],
        [t.block_hash for t in rows], [t.token for t in rows], [t.sender for t in rows],
        [t.recipient for t in rows], [t.amount for t in rows], [addresses[t.recipient] for t in rows],
        [classify(t, config.treasury, own) for t in rows],
    )  # fmt: skip


async def _credit(conn: Connection, config: ScanConfig, head: int, start: int) -> list[tuple[str, str]]:
    """Credit confirmed deposits seen in this round's canonical answer (block >= start), once each."""
    q = load_queries()
    rows = await conn.fetch(q.transfers_to_credit, config.chain_id, head - config.confirmations_required + 1, start)
    if not rows:
        return []
    due = [DueTransfer(r["id"], r["tx_hash"], r["log_index"], r["user_id"], int(r["amount_micro"])) for r in rows]
    users = sorted({t.user_id for t in due})
    intents = {
        row["user_id"]: OpenIntent(row["id"], row["expected_amount_usdc"])
        for row in await conn.fetch(q.open_intents_of_users, users)
    }
    late = {row["user_id"] for row in await conn.fetch(q.users_with_recently_expired_intent, users)}
    credits = decide_credits(due, intents, late)
    entries = [ledger.usdc_received(config.chain_id, t.tx_hash, t.log_index, t.user_id, t.amount) for t in due]
    await post_entries(conn, entries)
    await conn.execute(
        q.credit_transfers,
        [c.transfer.id for c in credits],
        [c.intent_id for c in credits],
        [c.transfer.amount for c in credits],
        [",".join(c.flags) for c in credits],
    )
    for c in credits:
        log.info(
            "usdc deposit credited", user_id=c.transfer.user_id, tx_hash=c.transfer.tx_hash,
            log_index=c.transfer.log_index, amount_micro=c.transfer.amount, flags=list(c.flags),
        )  # fmt: skip
    return [(row["user_id"], row["to_address"]) for row in rows]


async def _advance_intents(conn: Connection, config: ScanConfig, head: int, started: datetime) -> None:
    """A round that covered an open intent counts; then ttl, then max_checks (confirmed came first)."""
    q = load_queries()
    await conn.execute(q.intents_confirming, config.chain_id)
    await conn.execute(q.count_intent_checks, started)
    now = datetime.now(UTC)
    ended = [
        (intent["id"], end)
        for intent in await conn.fetch(q.open_intents)
        if (end := intent_end(credited=False, expires_at=intent["expires_at"], now=now, checks=intent["checks"],
                              max_checks=config.max_checks)) is not None
    ]  # fmt: skip
    if ended:
        await conn.execute(q.intents_expired, [i for i, _ in ended], [end for _, end in ended])
