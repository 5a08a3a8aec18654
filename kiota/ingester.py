"""The chain ingester: one scan per round, whatever the number of deposit addresses.

Each round fetches the USDC Transfer logs of the new block range once, unfiltered
by recipient (a topic2 OR-list would cost a call per 1,000 addresses; one unfiltered
query costs the same at 10 or 100,000 addresses), then asks the database which of
their recipients are deposit addresses (one indexed lookup of those recipients only:
the round never loads every user's address). The last blocks are rescanned every round: a transfer
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
credited twice. Transfers held for a person (in review, or reversed) are re-checked every round: only one
whose log is on chain, confirmed, may be credited by two operators (`missing_since`).
A node must prove the log gone (`usdc.gone_verdict`): its receipt exists
without it, or, on a null receipt, the node holds another block at its height in two rounds
in a row. A node behind a load balancer that simply lacks the block reverses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from kiota import ledger
from kiota.chain_rpc import ChainReader
from kiota.db import Connection, Pool, advisory_unlock, try_advisory_lock
from kiota.errors import ChainUnavailable
from kiota.records import Transfer
from kiota.store import chain as store
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
_NOT_A_TRANSFERS_FAULT = store.SERVER_FAULTS


@dataclass(frozen=True, slots=True)
class ScanConfig:
    chain_id: int
    token: str
    treasury: str | None
    confirmations_required: int
    max_checks: int
    rescan_blocks: int = 12
    other_treasuries: tuple[str, ...] = ()  # several treasuries: none of their payouts is a deposit either

    @property
    def treasuries(self) -> tuple[str, ...]:
        return (*((self.treasury,) if self.treasury else ()), *self.other_treasuries)


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


def round_progress(report: RoundReport) -> dict[str, object]:
    """A round's progress for the job history: blocks done of total (a round covers its whole range at
    once, so when it ends they are equal), and what it found."""
    blocks = report.end - report.start + 1
    return {
        "blocks_done": blocks,
        "blocks_total": blocks,
        "from_block": report.start,
        "to_block": report.end,
        "head": report.head,
        "matched": report.matched,
        "credited": report.credited,
    }


def scanner_lock_key(chain_id: int) -> int:
    return 0x6B696F7461_02 + chain_id


async def scan_round(pool: Pool, reader: ChainReader, config: ScanConfig) -> RoundReport | None:
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
    started = datetime.now(UTC)
    calls_before = reader.calls
    head = await reader.head()
    rescan = max(config.rescan_blocks, config.confirmations_required + 2)
    cursor = await store.next_block(conn, config.chain_id)
    next_block = max(0, head - rescan) if cursor is None else min(cursor, head + 1)
    start, end = max(0, next_block - rescan), head
    logs = await reader.transfer_logs(config.token.lower(), start, end)
    if not logs and await reader.head() < end:  # a lagging node answers "nothing" for blocks it lacks
        return None
    decoded = [t for t in map(decode_transfer, logs) if t is not None]
    addresses = await store.deposit_addresses_among(conn, {t.recipient for t in decoded})
    foreign = sum(1 for t in decoded if t.token != config.token.lower())
    if foreign:  # recorded below when they name a deposit address; never credited
        log.warning("the provider answered logs of other contracts", count=foreign, start=start, end=end)
    matching = [t for t in decoded if t.recipient in addresses]
    transfers = identify(matching)
    if len(transfers) < len({(t.tx_hash, t.log_index) for t in matching}):
        log.warning("the provider showed a transaction in two blocks; the highest one's logs were kept",
                    start=start, end=end)  # fmt: skip
    own = await store.own_payout_hashes(conn, [t.tx_hash for t in transfers])
    # The treasuries the settings name, and any that signed payouts (a TREASURY_ADDRESS not updated yet).
    known = await store.known_treasuries(conn, config.chain_id) if transfers else ()
    treasuries = (*config.treasuries, *known)
    gone, back = await store.credited_gone_or_back(conn, config.chain_id, start, end, transfers)
    judged = await _gone_from_chain(reader, gone)
    async with conn.transaction():
        answered = await store.upsert_transfers(
            conn, config.chain_id, transfers, [addresses[t.recipient] for t in transfers],
            [classify(t, config.token, treasuries, own) for t in transfers],
        )  # fmt: skip
        orphaned = await store.orphan_missing(conn, config.chain_id, start, end, answered)
        reversed_ = await _reverse(conn, config, judged)
        await _reversed_back(conn, config, transfers, back, head)
        await _check_held(conn, config, start, end, answered, head)
        credited, review = await _credit(conn, config, head, start)
        await _advance_intents(conn, config, started)
        await store.store_next_block(conn, config.chain_id, end + 1)
        calls = reader.calls - calls_before
        await store.record_round(conn, config.chain_id, start, end, head, calls, len(transfers), started)
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
    await store.cache_wallet_balances(conn, [user_id for user_id, _ in unique], amounts, head)


async def _credit(conn: Connection, config: ScanConfig, head: int, start: int) -> tuple[list[tuple[str, str]], int]:
    """Credit confirmed deposits seen in this round's canonical answer (block >= start), once each.

    Returns the (user, address) of each credit and how many transfers went to review instead: those too
    large to credit, and those whose credit failed (see `_post_credits_isolated`).
    """
    confirmed_up_to = head - config.confirmations_required + 1
    confirmed = await store.transfers_to_credit(conn, config.chain_id, confirmed_up_to, start)
    too_large = [t for t in confirmed if t.kind == TOO_LARGE]
    confirmed = [t for t in confirmed if t.kind != TOO_LARGE]
    if too_large:
        await _to_review(conn, [(t, "usdc_too_large", _too_large_reason(t)) for t in too_large])
    if not confirmed:
        return [], len(too_large)
    due = [DueTransfer(t.id, t.tx_hash, t.log_index, t.user_id, t.amount_micro) for t in confirmed]
    users = sorted({t.user_id for t in due})
    intents = await store.open_intents_of_users(conn, users)
    late = await store.users_with_recently_expired_intent(conn, users)
    credits = decide_credits(due, intents, late)
    try:
        async with conn.transaction():  # a savepoint: the round's credits at once, the fast way
            await _post_credits(conn, config, credits)
    except _NOT_A_TRANSFERS_FAULT:
        raise
    except Exception as exc:
        log.warning("the round's credits failed together; crediting them one by one", error=_error(exc))
        credits = await _post_credits_isolated(conn, config, due, intents, late, confirmed)
    for c in credits:
        log.info(
            "usdc deposit credited", user_id=c.transfer.user_id, tx_hash=c.transfer.tx_hash,
            log_index=c.transfer.log_index, amount_micro=c.transfer.amount, flags=list(c.flags),
        )  # fmt: skip
    address = {t.id: t.to_address for t in confirmed}
    failed = len(confirmed) - len(credits)
    return [(c.transfer.user_id, address[c.transfer.id]) for c in credits], len(too_large) + failed


async def _post_credits(conn: Connection, config: ScanConfig, credits: list[Credit]) -> None:
    """Credits' journal entries and the transfers (and intents) they credit, with the ledger's checks run
    now: inside the caller's savepoint, so that whatever refuses them fails there and not at commit."""
    entries = [
        ledger.usdc_received(config.chain_id, c.transfer.tx_hash, c.transfer.log_index, c.transfer.user_id,
                             c.transfer.amount)
        for c in credits
    ]  # fmt: skip
    await post_entries(conn, entries)
    await store.credit_transfers(conn, credits, [e.key for e in entries])
    await store.check_ledger_now(conn)


async def _post_credits_isolated(
    conn: Connection,
    config: ScanConfig,
    due: list[DueTransfer],
    intents: dict[str, OpenIntent],
    late: set[str],
    confirmed: list[Transfer],
) -> list[Credit]:
    """Each credit in its own savepoint, in chain order. One that fails goes to review with its reason;
    the user's open intent then waits for their next transfer, as if the failed one had not come."""
    waiting = dict(intents)
    credited: list[Credit] = []
    failed: list[tuple[Transfer, str, str]] = []
    by_id = {t.id: t for t in confirmed}
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


async def _to_review(conn: Connection, items: list[tuple[Transfer, str, str]]) -> None:
    """Transfers never credited automatically now, each listed for review: (transfer, review kind, reason)."""
    if not items:
        return
    await store.transfers_to_review(conn, [transfer.id for transfer, _, _ in items])
    await _review_items(conn, items)


async def _review_items(conn: Connection, items: list[tuple[Transfer, str, str]]) -> None:
    created = await store.insert_review_items(conn, [(t.id, kind, reason[:1000]) for t, kind, reason in items])
    for transfer_id, kind in created:
        log.warning("usdc transfer listed for review", transfer_id=transfer_id, kind=kind)


@dataclass(frozen=True, slots=True)
class _Judged:
    """What the node said of the credited transfers a round's logs lack."""

    reverse: list[Transfer]  # proven gone: reversed now
    suspect: list[Transfer]  # block replaced, receipt null, for the first round in a row: next round decides
    clear: list[Transfer]  # present, or nothing proven: any suspicion starts again


_NOTHING_JUDGED = _Judged([], [], [])


def _key(transfer: Transfer) -> TransferKey:
    return TransferKey(transfer.tx_hash, transfer.token_address, transfer.from_address, transfer.to_address,
                       transfer.amount_micro, transfer.seq)  # fmt: skip


async def _gone_from_chain(reader: ChainReader, gone: list[Transfer]) -> _Judged:
    """Of the credited transfers missing from this round's answer, those the node proves gone (`gone_verdict`).

    Their receipts in one batch; for those without one, the blocks at their heights in another. A provider's
    incomplete answer, or a node behind the others (no receipt, no block), must not reverse a credit. If the
    node cannot be read, nothing is judged this round (a later round asks again) and crediting goes on.
    """
    if not gone:
        return _NOTHING_JUDGED
    hashes = list(dict.fromkeys(t.tx_hash for t in gone))
    try:
        receipts = dict(zip(hashes, await reader.batch("eth_getTransactionReceipt", [[h] for h in hashes]),
                            strict=True))  # fmt: skip
        if any(error is not None for _, error in receipts.values()):
            raise ChainUnavailable(next(str(error) for _, error in receipts.values() if error is not None))
        heights = sorted({t.block_number for t in gone if receipts[t.tx_hash][0] is None})
        answers = await reader.batch("eth_getBlockByNumber", [[hex(n), False] for n in heights])
        blocks = {n: (None if error is not None else block) for n, (block, error) in zip(heights, answers, strict=True)}
    except ChainUnavailable as exc:
        log.warning("credited transfers missing from the logs; the node could not be asked about them", error=str(exc))
        return _NOTHING_JUDGED
    judged = _Judged([], [], [])
    for t in gone:
        receipt = receipts[t.tx_hash][0]
        verdict = gone_verdict(receipt, blocks.get(t.block_number), _key(t), t.block_hash)
        if verdict == GONE or (verdict == REPLACED and t.gone_rounds >= 1):
            judged.reverse.append(t)
        elif verdict == REPLACED:
            judged.suspect.append(t)
            log.warning("a credited transfer's block was replaced and it has no receipt; reversed if the next "
                        "round agrees", tx_hash=t.tx_hash, log_index=t.log_index)  # fmt: skip
        else:
            judged.clear.append(t)
            if verdict == PRESENT:
                log.warning("the provider's logs lack a credited transfer its receipt still has; not reversed",
                            tx_hash=t.tx_hash, log_index=t.log_index)  # fmt: skip
            else:
                log.warning("a credited transfer is missing from the logs and the node proves nothing; waiting",
                            tx_hash=t.tx_hash, log_index=t.log_index)  # fmt: skip
    return judged


async def _reverse(conn: Connection, config: ScanConfig, judged: _Judged) -> int:
    """Credited deposits whose log is gone: each credit taken back into suspense and listed for review, in
    a savepoint. If that fails they stay credited for now and the next round tries again (logged). The
    suspicions of this round are recorded first (they count only in a row)."""
    if judged.suspect or judged.clear:
        await store.count_gone_rounds(conn, [t.id for t in judged.suspect],
                                      [t.id for t in judged.clear if t.gone_rounds > 0])  # fmt: skip
    gone = judged.reverse
    if not gone:
        return 0
    try:
        async with conn.transaction():
            reversed_ = await store.reverse_transfers(conn, [t.id for t in gone])
            await post_entries(conn, [_reversal(t) for t in reversed_])
            await _review_items(conn, [(t, "usdc_reversed", _reversed_reason(t)) for t in reversed_])
            await store.check_ledger_now(conn)
    except _NOT_A_TRANSFERS_FAULT:
        raise
    except Exception as exc:
        log.error("credited transfers whose log is gone could not be reversed", count=len(gone), error=_error(exc))
        return 0
    for t in reversed_:
        log.error(
            "a credited usdc deposit's log is gone: credit reversed into suspense for review", user_id=t.user_id,
            tx_hash=t.tx_hash, log_index=t.log_index, amount_micro=t.amount_micro,
        )  # fmt: skip
    return len(reversed_)


def _reversal(transfer: Transfer) -> ledger.Entry:
    # the table's check: a reversed transfer keeps its credit's key
    assert transfer.credit_key is not None, "a reversed transfer without its credit's key"
    return ledger.usdc_reversed(transfer.credit_key, transfer.user_id, transfer.amount_micro)


async def _reversed_back(
    conn: Connection, config: ScanConfig, transfers: list[TransferLog], back: list[Transfer], head: int
) -> None:
    """A reversed deposit whose log is on chain again (at any index), with its confirmations: a second review
    item says so. Its amount stays in suspense for a person: it is never credited twice automatically."""
    if not back:
        return
    blocks = {t.key: t.block_number for t in transfers}
    confirmed = [
        (t, blocks[_key(t)]) for t in back if confirmations(head, blocks[_key(t)]) >= config.confirmations_required
    ]
    await _review_items(conn, [(t, "usdc_reappeared", _reappeared_reason(t, block)) for t, block in confirmed])


async def _check_held(
    conn: Connection, config: ScanConfig, start: int, end: int, answered: list[int], head: int
) -> None:
    """Transfers waiting for a person are re-checked every round, as `seen` ones are orphaned: USDC in review
    (too large, or its credit failed) or reversed is creditable by two operators only while its log is on
    chain, confirmed. A reorg that takes it away after it was listed makes it not creditable, until it is back."""
    changed = await store.check_held_presence(
        conn, config.chain_id, start, end, answered, head - config.confirmations_required + 1
    )
    for transfer_id, missing in changed:
        if missing:
            log.warning("a transfer held for review is not on chain now: not creditable", transfer_id=transfer_id)
        else:
            log.info("a transfer held for review is on chain again, confirmed", transfer_id=transfer_id)


def _describe(transfer: Transfer) -> str:
    return (
        f"USDC transfer {transfer.tx_hash} log {transfer.log_index} to user {transfer.user_id} "
        f"({transfer.amount_micro} micro-USDC)"
    )


def _too_large_reason(transfer: Transfer) -> str:
    return f"{_describe(transfer)} is above {MAX_CREDIT_MICRO} micro-USDC, the most credited automatically"


def _reversed_reason(transfer: Transfer) -> str:
    return f"{_describe(transfer)} was credited, then a reorg removed its log: the credit was moved to suspense:USDC"


def _reappeared_reason(transfer: Transfer, block: int) -> str:
    return (
        f"{_describe(transfer)} was reversed and is on chain again (block {block}): its amount stays in "
        "suspense:USDC until a person credits it (never automatically)"
    )


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


async def _advance_intents(conn: Connection, config: ScanConfig, started: datetime) -> None:
    """A round that covered an open intent counts; then ttl, then max_checks (confirmed came first)."""
    await store.mark_intents_confirming(conn, config.chain_id)
    await store.count_intent_checks(conn, started)
    now = datetime.now(UTC)
    ended = [
        (intent.id, end)
        for intent in await store.intents_maybe_ending(conn, now, config.max_checks)
        if (end := intent_end(credited=False, expires_at=intent.expires_at, now=now, checks=intent.checks,
                              max_checks=config.max_checks)) is not None
    ]  # fmt: skip
    if ended:
        await store.expire_intents(conn, ended)
