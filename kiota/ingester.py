"""The chain ingester: one scan per round, whatever the number of deposit addresses.

Each round fetches the USDC Transfer logs of the new block range once, unfiltered
by recipient, and matches them locally against every deposit address (a topic2
OR-list would cost a call per 1,000 addresses; one unfiltered query costs the same
at 10 or 10,000 addresses). The last blocks are rescanned every round: a transfer
whose log is gone is orphaned, one that reappears in another block, or at another
log index of it, is moved there (a transfer is what its transaction emits, not where
its block puts it: `usdc.TransferKey`).
A transfer is credited once it has the required confirmations and was seen in
this round's canonical answer, in the same transaction that completes its intent.

A round's writes are set-based: all its transfers in one statement; all its credits,
after three reads, in two (the journal entries with their postings; the transfers with
the intents they complete). Which intent a credit completes and how it is flagged is
decided in Python (`usdc.decide_credits`). A catch-up round over a thousand transfers
thus costs a couple of dozen round trips, not thousands.

No log can stop the round. Every log to a deposit address is recorded with its kind
(`usdc.classify`): only deposits are credited; a log that adds nothing or that the token
contract did not emit is kept with that reason; one too large for the ledger is listed for
review. The round's credits are written in a savepoint; if that fails, they are written
again one by one, each in its own savepoint, and a transfer whose credit fails goes to
review with its reason while the round, the cursor, the intents and the other credits go
on. A credited deposit whose log a reorg removed (deeper than the confirmations, within
the rescanned blocks) is reversed into `suspense:USDC` and listed for review; if its log
comes back, at any index, it stays there for a person (a second review item says so): never
credited twice. A node must prove the log gone (`usdc.gone_verdict`): its receipt exists
without it, or, on a null receipt, the node holds another block at its height in two rounds
in a row. A node behind a load balancer that simply lacks the block reverses nothing.
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
from kiota.sql import load_queries
from kiota.store.ledger import post_entries
from kiota.usdc import (
    GONE,
    MAX_CREDIT_MICRO,
    PRESENT,
    REPLACED,
    TOO_LARGE,
    Credit,
    DueTransfer,
    OpenIntent,
    TransferKey,
    TransferLog,
    classify,
    confirmations,
    decide_credit,
    decide_credits,
    decode_transfer,
    gone_verdict,
    identify,
    intent_end,
)

log = structlog.get_logger(__name__)

# Failures of the connection or the server, not of one transfer: the round fails and the next one tries again.
_NOT_A_TRANSFERS_FAULT = (
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.TransactionRollbackError,
    OSError,
    TimeoutError,
)


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
    review: int = 0  # transfers sent to review in this round (too large, or their credit failed)
    reversed: int = 0  # credited transfers whose log a reorg removed, reversed into suspense


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
    decoded = [t for t in map(decode_transfer, logs) if t is not None]
    foreign = sum(1 for t in decoded if t.token != config.token.lower())
    if foreign:  # recorded below when they name a deposit address; never credited
        log.warning("the provider answered logs of other contracts", count=foreign, start=start, end=end)
    matching = [t for t in decoded if t.recipient in addresses]
    transfers = identify(matching)
    if len(transfers) < len({(t.tx_hash, t.log_index) for t in matching}):
        log.warning("the provider showed a transaction in two blocks; the highest one's logs were kept",
                    start=start, end=end)  # fmt: skip
    own = {r["tx_hash"] for r in await conn.fetch(q.own_payout_hashes, [t.tx_hash for t in transfers])}
    keys = (
        [t.tx_hash for t in transfers], [t.token for t in transfers], [t.sender for t in transfers],
        [t.recipient for t in transfers], [t.amount for t in transfers], [t.seq for t in transfers],
    )  # fmt: skip
    looked_at = await conn.fetch(q.credited_gone_or_reversed_back, config.chain_id, start, end, *keys)
    judged = await _gone_from_chain(reader, [r for r in looked_at if r["what"] == "gone"])
    async with conn.transaction():
        answered = await _upsert_transfers(conn, config, transfers, addresses, own)
        orphaned = await conn.fetch(q.orphan_missing, config.chain_id, start, end, answered)
        reversed_ = await _reverse(conn, config, judged)
        back = [r for r in looked_at if r["what"] == "back"]
        await _reversed_back(conn, config, transfers, back, head)
        credited, review = await _credit(conn, config, head, start)
        await _advance_intents(conn, config, head, started)
        await conn.execute(q.store_cursor, config.chain_id, end + 1)
        calls = reader.calls - calls_before
        await conn.execute(q.insert_round, config.chain_id, start, end, head, calls, len(transfers), started)
    await _cache_balances(conn, reader, config, credited, head)
    report = RoundReport(
        start, end, head, len(transfers), len(credited), len(orphaned), reader.calls - calls_before,
        review=review, reversed=reversed_,
    )  # fmt: skip
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
    conn: Connection, config: ScanConfig, rows: list[TransferLog], addresses: dict[str, str], own: set[str]
) -> list[int]:
    """The round's transfers (`identify`'d: one per identity) written; the ids of all their rows."""
    written = await conn.fetch(
        load_queries().upsert_transfers, config.chain_id,
        [t.tx_hash for t in rows], [t.log_index for t in rows], [t.block_number for t in rows],
        [t.block_hash for t in rows], [t.token for t in rows], [t.sender for t in rows],
        [t.recipient for t in rows], [t.amount for t in rows], [addresses[t.recipient] for t in rows],
        [classify(t, config.token, config.treasury, own) for t in rows], [t.seq for t in rows],
    )  # fmt: skip
    return [r["id"] for r in written]


async def _credit(conn: Connection, config: ScanConfig, head: int, start: int) -> tuple[list[tuple[str, str]], int]:
    """Credit confirmed deposits seen in this round's canonical answer (block >= start), once each.

    Returns the (user, address) of each credit and how many transfers went to review instead: those too
    large to credit, and those whose credit failed (see `_post_credits_isolated`).
    """
    q = load_queries()
    rows = await conn.fetch(q.transfers_to_credit, config.chain_id, head - config.confirmations_required + 1, start)
    too_large = [r for r in rows if r["kind"] == TOO_LARGE]
    rows = [r for r in rows if r["kind"] != TOO_LARGE]
    if too_large:
        await _to_review(conn, [(r, "usdc_too_large", _too_large_reason(r)) for r in too_large])
    if not rows:
        return [], len(too_large)
    due = [DueTransfer(r["id"], r["tx_hash"], r["log_index"], r["user_id"], int(r["amount_micro"])) for r in rows]
    users = sorted({t.user_id for t in due})
    intents = {
        row["user_id"]: OpenIntent(row["id"], row["expected_amount_usdc"])
        for row in await conn.fetch(q.open_intents_of_users, users)
    }
    late = {row["user_id"] for row in await conn.fetch(q.users_with_recently_expired_intent, users)}
    credits = decide_credits(due, intents, late)
    try:
        async with conn.transaction():  # a savepoint: the round's credits at once, the fast way
            await _post_credits(conn, config, credits)
    except _NOT_A_TRANSFERS_FAULT:
        raise
    except Exception as exc:
        log.warning("the round's credits failed together; crediting them one by one", error=_error(exc))
        credits = await _post_credits_isolated(conn, config, due, intents, late, rows)
    for c in credits:
        log.info(
            "usdc deposit credited", user_id=c.transfer.user_id, tx_hash=c.transfer.tx_hash,
            log_index=c.transfer.log_index, amount_micro=c.transfer.amount, flags=list(c.flags),
        )  # fmt: skip
    address = {r["id"]: r["to_address"] for r in rows}
    failed = len(rows) - len(credits)
    return [(c.transfer.user_id, address[c.transfer.id]) for c in credits], len(too_large) + failed


async def _post_credits(conn: Connection, config: ScanConfig, credits: list[Credit]) -> None:
    """Credits' journal entries and the transfers (and intents) they credit, with the ledger's checks run
    now: inside the caller's savepoint, so that whatever refuses them fails there and not at commit."""
    q = load_queries()
    entries = [
        ledger.usdc_received(config.chain_id, c.transfer.tx_hash, c.transfer.log_index, c.transfer.user_id,
                             c.transfer.amount)
        for c in credits
    ]  # fmt: skip
    await post_entries(conn, entries)
    await conn.execute(
        q.credit_transfers,
        [c.transfer.id for c in credits],
        [c.intent_id for c in credits],
        [c.transfer.amount for c in credits],
        [",".join(c.flags) for c in credits],
        [e.key for e in entries],
    )
    await conn.execute(q.check_ledger_now)


async def _post_credits_isolated(
    conn: Connection,
    config: ScanConfig,
    due: list[DueTransfer],
    intents: dict[str, OpenIntent],
    late: set[str],
    rows: list[asyncpg.Record],
) -> list[Credit]:
    """Each credit in its own savepoint, in chain order. One that fails goes to review with its reason;
    the user's open intent then waits for their next transfer, as if the failed one had not come."""
    waiting = dict(intents)
    credited: list[Credit] = []
    failed: list[tuple[asyncpg.Record, str, str]] = []
    by_id = {r["id"]: r for r in rows}
    for transfer in due:
        credit = decide_credit(transfer, waiting.get(transfer.user_id), late)
        try:
            async with conn.transaction():
                await _post_credits(conn, config, [credit])
        except _NOT_A_TRANSFERS_FAULT:
            raise
        except Exception as exc:
            log.error(
                "usdc deposit could not be credited: sent to review", user_id=transfer.user_id,
                tx_hash=transfer.tx_hash, log_index=transfer.log_index, error=_error(exc),
            )  # fmt: skip
            reason = f"{_describe(by_id[transfer.id])} could not be credited: {_error(exc)}"
            failed.append((by_id[transfer.id], "usdc_credit_failed", reason))
            continue
        if credit.intent_id is not None:
            waiting.pop(transfer.user_id, None)
        credited.append(credit)
    await _to_review(conn, failed)
    return credited


async def _to_review(conn: Connection, items: list[tuple[asyncpg.Record, str, str]]) -> None:
    """Transfers never credited automatically now, each listed for review: (row, review kind, reason)."""
    if not items:
        return
    q = load_queries()
    await conn.execute(q.transfers_to_review, [row["id"] for row, _, _ in items])
    await _review_items(conn, items)


async def _review_items(conn: Connection, items: list[tuple[asyncpg.Record, str, str]]) -> None:
    created = await conn.fetch(
        load_queries().insert_usdc_review_items,
        [row["id"] for row, _, _ in items], [kind for _, kind, _ in items], [reason[:1000] for _, _, reason in items],
    )  # fmt: skip
    for item in created:
        log.warning("usdc transfer listed for review", transfer_id=item["chain_transfer_id"], kind=item["kind"])


@dataclass(frozen=True, slots=True)
class _Judged:
    """What the node said of the credited transfers a round's logs lack."""

    reverse: list[asyncpg.Record]  # proven gone: reversed now
    suspect: list[asyncpg.Record]  # block replaced, receipt null, for the first round in a row: next round decides
    clear: list[asyncpg.Record]  # present, or nothing proven: any suspicion starts again


_NOTHING_JUDGED = _Judged([], [], [])


def _key(row: asyncpg.Record) -> TransferKey:
    return TransferKey(row["tx_hash"], row["token_address"], row["from_address"], row["to_address"],
                       int(row["amount_micro"]), row["seq"])  # fmt: skip


async def _gone_from_chain(reader: ChainReader, rows: list[asyncpg.Record]) -> _Judged:
    """Of the credited transfers missing from this round's answer, those the node proves gone (`gone_verdict`).

    Their receipts in one batch; for those without one, the blocks at their heights in another. A provider's
    incomplete answer, or a node behind the others (no receipt, no block), must not reverse a credit. If the
    node cannot be read, nothing is judged this round (a later round asks again) and crediting goes on.
    """
    if not rows:
        return _NOTHING_JUDGED
    hashes = list(dict.fromkeys(r["tx_hash"] for r in rows))
    try:
        receipts = dict(zip(hashes, await reader.batch("eth_getTransactionReceipt", [[h] for h in hashes]),
                            strict=True))  # fmt: skip
        if any(error is not None for _, error in receipts.values()):
            raise ChainUnavailable(next(str(error) for _, error in receipts.values() if error is not None))
        heights = sorted({r["block_number"] for r in rows if receipts[r["tx_hash"]][0] is None})
        answers = await reader.batch("eth_getBlockByNumber", [[hex(n), False] for n in heights])
        blocks = {n: (None if error is not None else block) for n, (block, error) in zip(heights, answers, strict=True)}
    except ChainUnavailable as exc:
        log.warning("credited transfers missing from the logs; the node could not be asked about them", error=str(exc))
        return _NOTHING_JUDGED
    judged = _Judged([], [], [])
    for row in rows:
        receipt = receipts[row["tx_hash"]][0]
        verdict = gone_verdict(receipt, blocks.get(row["block_number"]), _key(row), row["block_hash"])
        if verdict == GONE or (verdict == REPLACED and row["gone_rounds"] >= 1):
            judged.reverse.append(row)
        elif verdict == REPLACED:
            judged.suspect.append(row)
            log.warning("a credited transfer's block was replaced and it has no receipt; reversed if the next "
                        "round agrees", tx_hash=row["tx_hash"], log_index=row["log_index"])  # fmt: skip
        else:
            judged.clear.append(row)
            if verdict == PRESENT:
                log.warning("the provider's logs lack a credited transfer its receipt still has; not reversed",
                            tx_hash=row["tx_hash"], log_index=row["log_index"])  # fmt: skip
            else:
                log.warning("a credited transfer is missing from the logs and the node proves nothing; waiting",
                            tx_hash=row["tx_hash"], log_index=row["log_index"])  # fmt: skip
    return judged


async def _reverse(conn: Connection, config: ScanConfig, judged: _Judged) -> int:
    """Credited deposits whose log is gone: each credit taken back into suspense and listed for review, in
    a savepoint. If that fails they stay credited for now and the next round tries again (logged). The
    suspicions of this round are recorded first (they count only in a row)."""
    q = load_queries()
    if judged.suspect or judged.clear:
        await conn.execute(q.transfers_gone_rounds, [r["id"] for r in judged.suspect],
                           [r["id"] for r in judged.clear if r["gone_rounds"] > 0])  # fmt: skip
    gone = judged.reverse
    if not gone:
        return 0
    try:
        async with conn.transaction():
            rows = await conn.fetch(q.transfers_reversed, [r["id"] for r in gone])
            entries = [ledger.usdc_reversed(r["credit_key"], r["user_id"], int(r["amount_micro"])) for r in rows]
            await post_entries(conn, entries)
            await _review_items(conn, [(r, "usdc_reversed", _reversed_reason(r)) for r in rows])
            await conn.execute(q.check_ledger_now)
    except _NOT_A_TRANSFERS_FAULT:
        raise
    except Exception as exc:
        log.error("credited transfers whose log is gone could not be reversed", count=len(gone), error=_error(exc))
        return 0
    for r in rows:
        log.error(
            "a credited usdc deposit's log is gone: credit reversed into suspense for review", user_id=r["user_id"],
            tx_hash=r["tx_hash"], log_index=r["log_index"], amount_micro=int(r["amount_micro"]),
        )  # fmt: skip
    return len(rows)


async def _reversed_back(
    conn: Connection, config: ScanConfig, transfers: list[TransferLog], back: list[asyncpg.Record], head: int
) -> None:
    """A reversed deposit whose log is on chain again (at any index), with its confirmations: a second review
    item says so. Its amount stays in suspense for a person: it is never credited twice automatically."""
    if not back:
        return
    blocks = {t.key: t.block_number for t in transfers}
    confirmed = [
        (row, blocks[_key(row)])
        for row in back
        if confirmations(head, blocks[_key(row)]) >= config.confirmations_required
    ]
    await _review_items(conn, [(row, "usdc_reappeared", _reappeared_reason(row, block)) for row, block in confirmed])


def _describe(row: asyncpg.Record) -> str:
    return (
        f"USDC transfer {row['tx_hash']} log {row['log_index']} to user {row['user_id']} "
        f"({int(row['amount_micro'])} micro-USDC)"
    )


def _too_large_reason(row: asyncpg.Record) -> str:
    return f"{_describe(row)} is above {MAX_CREDIT_MICRO} micro-USDC, the most credited automatically"


def _reversed_reason(row: asyncpg.Record) -> str:
    return f"{_describe(row)} was credited, then a reorg removed its log: the credit was moved to suspense:USDC"


def _reappeared_reason(row: asyncpg.Record, block: int) -> str:
    return (
        f"{_describe(row)} was reversed and is on chain again (block {block}): its amount stays in "
        "suspense:USDC until a person credits it (never automatically)"
    )


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


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
