"""The payout lane: pays a processing M-Pesa deposit's USDC from the treasury, exactly once.

Exactly once rests on PostgreSQL, not on the queue:
- one live payout per deposit (a partial unique index), and one ledger entry per deposit;
- one lane owner per treasury at a time: a session advisory lock on a dedicated
  connection, so a worker that dies releases it with its connection;
- the nonce is allocated in PostgreSQL, and every signed transaction is stored
  before it is broadcast, so a crash is always followed by re-sending or
  recognising the same transaction, never by signing a second payment;
- a receipt for any attempt settles the payout; a reverted receipt is a failure;
- a decision that frees a deposit for a new payout (and a new nonce) is taken only when the block
  that decides it has `LaneConfig.confirmations_required` confirmations: until then a reorg may
  still mine the payout we gave up on, and an operator's retry would pay twice. A payout given up
  on stays 'cancelling' (a retry is refused; its deposit gets no second payout) until its nonce
  filler, or its own reverted transaction, is that deep; if that block vanishes first, the chain
  decides again;
- only a deposit whose M-Pesa success is confirmed (`kiota.confirm`) is ever signed for: the
  caller's own, and every companion below;
- the lane's owner also pays the other processing deposits that have no payout yet, in
  the same turn (one fee quote, consecutive nonces, one commit for all their signed
  transactions, then broadcast in nonce order): a lane that waits for one receipt per
  deposit would pay one deposit per block at best. While deposits still wait, the owner
  takes further turns (up to `LaneConfig.drain_seconds`) rather than hand the lane over.
  Their own jobs then find them paid, or re-send their stored attempts if the owner died;
- a payout given up on keeps its nonce until the lane fills it with a zero-value send
  to the treasury itself (or sees the payout mined after all, and settles it), so a
  gap never strands the payouts signed after it;
- a payout is settled at its receipt (deposit completed, entry booked) but final only when
  its block has `LaneConfig.confirmations_required` confirmations. Until then the lane's
  turns, and the sweeper when no turn comes, look at its receipts again: when a reorg
  removed its block, the same stored signed bytes are sent again (same nonce, same hash:
  still one transfer, and the entry is not touched); when it is mined again, maybe in
  another block, that block is recorded.

Guards (kill switch, lane pause, per-deposit maximum, hourly and daily caps) and
the treasury's balances are checked before anything is signed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import asyncpg
import structlog

from kiota import ledger
from kiota.db import Connection, advisory_unlock, connection_lost, try_advisory_lock
from kiota.errors import ChainUnavailable, KiotaError
from kiota.sql import load_queries
from kiota.store.ledger import post_entries
from kiota.treasury import TRANSFER_GAS_LIMIT, Fees, FeeTooLow, Receipt, SignedTx, Treasury
from kiota.usdc import PAYOUT_FINAL, PAYOUT_GONE, PAYOUT_REVERTED, PAYOUT_WAITING, confirmations, payout_finality

log = structlog.get_logger(__name__)

REPLACE_AFTER_BLOCKS = 3
# A nonce used by a transaction none of whose receipts we can find is called "not ours" only after
# this long: a load-balanced provider may answer the nonce from a node ahead of the receipt's.
NOT_OURS_AFTER = 600.0
LANE_POLL_SECONDS = 0.05  # how often a job waiting for the lane tries it again
HOUR, DAY = 3600.0, 86400.0


class PayoutOutcome(StrEnum):
    """Where one run of a deposit's payout job left it."""

    COMPLETED = "completed"  # paid and credited (now or before)
    NOTHING_TO_DO = "nothing_to_do"  # the deposit is not waiting for a payout
    BLOCKED = "blocked"  # a guard stops it; an operator's action re-enqueues it
    WAITING = "waiting"  # the transaction is not mined yet, or the lane is busy: run again soon
    REVIEW = "review"  # a person must look (over the maximum, reverted)


# A blocked job looks again by itself: a cap frees as its window slides; a guard that an
# operator released is noticed even if the release raced the block.
CAP_RECHECK_SECONDS = 60.0
GUARD_RECHECK_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class PayoutResult:
    outcome: PayoutOutcome
    detail: str = ""
    recheck_in: float | None = None


@dataclass(slots=True)
class LaneConfig:
    poll_seconds: float = 0.05
    watch_seconds: float = 20.0  # how long one job run waits for a receipt before yielding
    lock_wait_seconds: float = 5.0
    replace_after_blocks: int = REPLACE_AFTER_BLOCKS
    batch_size: int = 20  # deposits paid in one turn of the lane, the owner's own included
    drain_seconds: float = 5.0  # after its own turn, the owner starts more turns for waiting deposits this long
    confirmations_required: int = 2  # a settled payout is final at this many (DEPOSIT_CONFIRMATIONS_REQUIRED)


class LaneBusy(KiotaError):
    """Another worker owns the treasury lane right now."""


class NonceTaken(KiotaError):
    """The payout's nonce was mined by a transaction that is none of its attempts."""


def lane_key(chain_id: int, address: str) -> int:
    digest = hashlib.sha256(f"kiota-lane:{chain_id}:{address.lower()}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def failpoint(name: str) -> None:
    """Test-only crash points: KIOTA_FAILPOINT=<name> kills this process right there (SIGKILL)."""
    if os.environ.get("KIOTA_FAILPOINT") == name:
        log.warning("failpoint reached: killing the worker", failpoint=name)
        os.kill(os.getpid(), signal.SIGKILL)


class PaidMeanwhile(KiotaError):
    """While this job waited for the lane, the lane's owner paid its deposit."""


@asynccontextmanager
async def treasury_lane(
    pool: asyncpg.Pool, key: int, wait_seconds: float, deposit_id: uuid.UUID | None = None
) -> AsyncIterator[Connection]:
    """Own the lane for the block. The lock lives on this connection: if the process dies, it is freed.
    A job waiting for its deposit stops waiting (PaidMeanwhile) once the owner has paid it."""
    async with pool.acquire() as conn:
        deadline = time.monotonic() + wait_seconds
        while not await try_advisory_lock(conn, key):
            if time.monotonic() > deadline:
                raise LaneBusy("the treasury lane is owned by another worker")
            # The owner pays every waiting deposit in its turn: look less often, and stop once paid.
            await asyncio.sleep(LANE_POLL_SECONDS)
            if deposit_id is not None:
                status = await conn.fetchval(load_queries().deposit_status, deposit_id)
                if status != "processing":
                    raise PaidMeanwhile(str(status))
        try:
            yield conn
        finally:
            await advisory_unlock(conn, key)


async def pay_deposit(
    pool: asyncpg.Pool, treasury: Treasury, deposit_id: uuid.UUID, config: LaneConfig | None = None
) -> PayoutResult:
    config = config or LaneConfig()
    q = load_queries()
    deposit = await pool.fetchrow(q.deposit_by_id, deposit_id)
    if deposit is None:
        return PayoutResult(PayoutOutcome.NOTHING_TO_DO, "no such deposit")
    if deposit["status"] == "completed":
        return PayoutResult(PayoutOutcome.COMPLETED, deposit["tx_hash"])
    if deposit["status"] != "processing":
        return PayoutResult(PayoutOutcome.NOTHING_TO_DO, f"deposit is {deposit['status']}")
    if deposit["confirmed_at"] is None:  # kiota/confirm.py comes first; a turn signs confirmed deposits only
        return PayoutResult(PayoutOutcome.NOTHING_TO_DO, "the M-Pesa payment is not confirmed")
    guards = await pool.fetchrow(q.guards)
    assert guards is not None  # the migration inserts the one row
    stopped = await _guards_stop(pool, guards, deposit)
    if stopped is not None:
        return stopped
    try:
        key = lane_key(treasury.chain_id, treasury.address)
        async with treasury_lane(pool, key, config.lock_wait_seconds, deposit_id) as conn:
            try:
                await _resolve_abandoned(conn, treasury, config)
            except ChainUnavailable as exc:  # the sweeper and later turns try the filler again
                log.warning("nonce filler failed this turn", error=str(exc))
            status = await conn.fetchval(q.deposit_status, deposit_id)
            if status != "processing":  # settled above: its abandoned payout was mined after all
                done = PayoutOutcome.COMPLETED if status == "completed" else PayoutOutcome.NOTHING_TO_DO
                return PayoutResult(done, status)
            return await _pay_in_lane(conn, treasury, guards, deposit, config)
    except LaneBusy as exc:
        return PayoutResult(PayoutOutcome.WAITING, str(exc))
    except PaidMeanwhile as exc:
        status = str(exc)
        return PayoutResult(PayoutOutcome.COMPLETED if status == "completed" else PayoutOutcome.NOTHING_TO_DO, status)


# A payout in a turn of the lane: the deposit and its payout row.
Pair = tuple[asyncpg.Record, asyncpg.Record]


async def _pay_in_lane(
    conn: Connection, treasury: Treasury, guards: asyncpg.Record, deposit: asyncpg.Record, config: LaneConfig
) -> PayoutResult:
    """This deposit's turn of the lane, then, while the lane is ours and other deposits still wait
    for a payout, more turns for them: handing the lane from job to job costs a turn's worth of time."""
    (payout,) = await _live_payouts(conn, treasury, [deposit])
    if payout["status"] == "cancelling":
        return PayoutResult(PayoutOutcome.WAITING, "the nonce of this deposit's abandoned payout is being filled")
    drain_until = time.monotonic() + config.drain_seconds
    turn = await _turn(conn, treasury, guards, (deposit, payout), config, time.monotonic() + config.watch_seconds)
    unsigned = PayoutResult(PayoutOutcome.WAITING, "the payout was not signed")
    result = turn.blocked or turn.results.get(payout["id"], unsigned)
    while turn.all_paid and time.monotonic() < drain_until:
        # A further turn watches its receipts until drain_seconds after the drain's end at most, so the
        # job stays well inside arq's timeout; what is not mined by then the next turn settles.
        watch_until = min(time.monotonic() + config.watch_seconds, drain_until + config.drain_seconds)
        try:
            guards = await conn.fetchrow(load_queries().guards) or guards
            turn = await _turn(conn, treasury, guards, None, config, watch_until, turn.settled_block)
        except Exception as exc:
            # This job's own payout is settled: whatever failed is the others', stored for the next turn.
            if connection_lost(exc) or isinstance(exc, OSError):  # an outage, logged once by the worker
                error = f"{type(exc).__name__}: {exc}"
                log.info("the lane stopped paying other deposits: connection lost", error=error)
            else:
                log.exception("the lane stopped paying other deposits after a failure")
            break
    return result


@dataclass(frozen=True, slots=True)
class _TurnOutcome:
    results: dict[int, PayoutResult]  # by payout id
    blocked: PayoutResult | None
    signed: int  # new payouts signed in this turn
    settled_block: int | None  # the highest block of a receipt settled in this turn

    @property
    def all_paid(self) -> bool:
        """New payouts were signed and every payout of the turn settled: the lane may go on."""
        return (
            self.signed > 0
            and self.blocked is None
            and all(r.outcome is PayoutOutcome.COMPLETED for r in self.results.values())
        )


async def _turn(
    conn: Connection,
    treasury: Treasury,
    guards: asyncpg.Record,
    own: Pair | None,
    config: LaneConfig,
    watch_until: float,
    funds_at: int | None = None,
) -> _TurnOutcome:
    """One turn of the lane: re-send every signed, unsettled payout in nonce order (after a crash
    some may never have left; a gap would hold back all above it), sign and send the owner's payout
    (if it has none yet) with the other deposits waiting for one, then settle whatever is mined.
    `funds_at`: the treasury's USDC is read at that block (one this lane saw), so that a lagging node
    behind a load balancer cannot show it from before the last turn's payouts."""
    await _recheck_settled_or_log(conn, treasury, config)  # first: a payout a reorg removed holds the nonces above it
    batch: list[Any] = await _unsettled(conn, treasury, config.batch_size)
    for _, p, attempt in batch:
        await _broadcast_or_bump(conn, treasury, p, attempt)
    blocked = None
    signed: list[tuple[asyncpg.Record, asyncpg.Record, SignedTx]] = []
    if own is None or own[1]["status"] == "created":
        mine = [own] if own is not None else []
        others = await _companions(conn, treasury, guards, own[0]["id"] if own else None, config.batch_size - len(mine))
        fresh = mine + others
        fees = await treasury.fee_quote() if fresh else None  # one quote for the turn's checks and signing
        if fees is not None:  # a shortfall alerts (pauses the lane) only for the owner's own payout, alone
            blocked = await _check_caps_and_funds(conn, treasury, guards, fresh, fees, funds_at, alert=not others)
        if blocked is not None and fees is not None and mine and others:  # the others wait; this one may fit
            fresh = mine
            blocked = await _check_caps_and_funds(conn, treasury, guards, fresh, fees, funds_at, alert=True)
        if blocked is None and fees is not None:
            stored = await _sign_and_store(conn, treasury, fresh, fees)
            if stored is None:
                blocked = PayoutResult(
                    PayoutOutcome.BLOCKED, "a payout guard was set while waiting", GUARD_RECHECK_SECONDS
                )
            elif stored:
                signed = stored
                await _broadcast_all(conn, treasury, signed)
                failpoint("after_broadcast")
                batch += signed
    results: dict[int, PayoutResult] = {}
    mined: list[tuple[asyncpg.Record, int, Receipt]] = []
    receipts = await _receipts_at_once(treasury, batch)
    for (d, p, _), seen in zip(batch, receipts, strict=True):  # nonce order
        try:
            receipt = seen or await _watch(conn, treasury, p, config, watch_until)
        except NonceTaken as exc:
            results[p["id"]] = await _nonce_taken(conn, d["id"], exc)
            continue
        if receipt is None:
            results[p["id"]] = PayoutResult(PayoutOutcome.WAITING, "the payout is not mined yet")
            continue
        failpoint("after_receipt")
        if receipt.succeeded:
            mined.append((d, p["id"], receipt))
            results[p["id"]] = PayoutResult(PayoutOutcome.COMPLETED, receipt.tx_hash)
        else:  # at its first confirmation: given up on, and 'reverted' when that block is deep enough
            results[p["id"]] = await _reverted(conn, p["id"], d["id"], receipt, final=False)
    await _settle(conn, treasury, mined)
    return _TurnOutcome(results, blocked, len(signed), max((r.block_number for _, _, r in mined), default=None))


async def _receipts_at_once(treasury: Treasury, batch: list[tuple[Any, Any, SignedTx]]) -> list[Receipt | None]:
    """The receipts of the turn's latest attempts in one request; the ones missing are watched one by one
    (older attempts, replacements, a nonce taken). A failed request just leaves them all to be watched."""
    try:
        return await treasury.receipts([signed.tx_hash for _, _, signed in batch])
    except ChainUnavailable:
        return [None] * len(batch)


async def _unsettled(conn: Connection, treasury: Treasury, limit: int) -> list[tuple[Any, Any, SignedTx]]:
    """Signed payouts not yet settled, in nonce order, with their deposit and newest attempt."""
    q = load_queries()
    batch = []
    for payout in await conn.fetch(q.unsettled_payouts, treasury.chain_id, treasury.address, limit):
        deposit = await conn.fetchrow(q.deposit_by_id, payout["deposit_id"])
        attempts = [a for a in await conn.fetch(q.attempts_of_payout, payout["id"]) if a["kind"] == "payout"]
        batch.append((deposit, payout, _stored(attempts[-1])))
    return batch


async def _companions(
    conn: Connection, treasury: Treasury, guards: asyncpg.Record, own: uuid.UUID | None, limit: int
) -> list[Pair]:
    """Other processing deposits that have no payout yet and whose M-Pesa success is confirmed (a forged
    callback never rides in another deposit's turn), oldest first, each given its payout row."""
    if limit <= 0:
        return []
    rows = await conn.fetch(load_queries().deposits_awaiting_payout, own, guards["per_deposit_max_micro"], limit)
    return list(zip(rows, await _live_payouts(conn, treasury, rows), strict=True))


async def _nonce_taken(conn: Connection, deposit_id: uuid.UUID, exc: NonceTaken) -> PayoutResult:
    """The payout is given up on ('cancelling'), not cancelled: if a receipt of ours turns up after all, the
    nonce filler's turn settles it; only when none has for NOT_OURS_AFTER is the payout cancelled."""
    q = load_queries()
    reason = f"{exc}: the treasury key may have been used elsewhere; check the treasury before retrying"
    async with conn.transaction():
        await conn.execute(q.deposit_to_review, deposit_id, reason)
        await conn.execute(q.payout_abandon, deposit_id, reason)
    log.error("payout nonce taken by another transaction", deposit_id=str(deposit_id), error=str(exc))
    return PayoutResult(PayoutOutcome.REVIEW, reason)


async def _guards_stop(pool: asyncpg.Pool, guards: asyncpg.Record, deposit: asyncpg.Record) -> PayoutResult | None:
    if guards["kill_switch"]:
        return PayoutResult(PayoutOutcome.BLOCKED, "the payout kill switch is on", GUARD_RECHECK_SECONDS)
    if guards["lane_paused"]:
        reason = f"the payout lane is paused: {guards['pause_reason']}"
        return PayoutResult(PayoutOutcome.BLOCKED, reason, GUARD_RECHECK_SECONDS)
    if deposit["amount_usdc"] > guards["per_deposit_max_micro"]:
        reason = "the payout is above the per-deposit maximum"
        await pool.execute(load_queries().deposit_to_review, deposit["id"], reason)
        return PayoutResult(PayoutOutcome.REVIEW, reason)
    return None


async def _live_payouts(conn: Connection, treasury: Treasury, deposits: list[asyncpg.Record]) -> list[asyncpg.Record]:
    """Each deposit's live payout, created when it has none; in the deposits' order."""
    if not deposits:
        return []
    q = load_queries()
    ids = [d["id"] for d in deposits]
    await conn.execute(
        q.insert_payouts,
        ids,
        [d["deposit_address"] for d in deposits],
        [d["amount_usdc"] for d in deposits],
        treasury.chain_id,
        treasury.token_address,
        treasury.address,
    )
    payouts = {p["deposit_id"]: p for p in await conn.fetch(q.live_payouts_for_deposits, ids)}
    return [payouts[deposit_id] for deposit_id in ids]


async def _check_caps_and_funds(
    conn: Connection,
    treasury: Treasury,
    guards: asyncpg.Record,
    batch: list[Pair],
    fees: Fees,
    funds_at: int | None = None,
    *,
    alert: bool,
) -> PayoutResult | None:
    """Whether the batch fits the caps and the treasury; with `alert`, a shortfall pauses the lane."""
    q = load_queries()
    amount = sum(int(d["amount_usdc"]) for d, _ in batch)
    for window, cap_name in ((HOUR, "hourly_cap_micro"), (DAY, "daily_cap_micro")):
        spent = await conn.fetchval(q.paid_out_since, treasury.chain_id, window)
        if spent + amount > guards[cap_name]:
            return PayoutResult(
                PayoutOutcome.BLOCKED, f"the {cap_name.split('_')[0]} payout cap would be exceeded", CAP_RECHECK_SECONDS
            )
    in_flight = await conn.fetchval(q.in_flight_micro, treasury.chain_id)
    usdc = await treasury.usdc_balance(block="latest" if funds_at is None else funds_at)
    eth = await treasury.eth_balance()
    shortfall = None
    if usdc - in_flight < amount:
        shortfall = f"treasury USDC {usdc} (in flight {in_flight}) is below the payout {amount}"
    elif eth < fees.max_fee_per_gas * TRANSFER_GAS_LIMIT * (len(batch) + 1):  # the batch, and a replacement
        shortfall = f"treasury ETH {eth} wei cannot pay for gas"
    if shortfall is None:
        return None
    if not alert:
        return PayoutResult(PayoutOutcome.BLOCKED, shortfall)
    await conn.execute(q.pause_lane, shortfall)
    # An alert: an error line here and the paused lane in /metrics and the dashboard.
    log.error("payout lane paused: treasury shortfall", reason=shortfall, treasury=treasury.address)
    return PayoutResult(PayoutOutcome.BLOCKED, f"the payout lane is paused: {shortfall}", GUARD_RECHECK_SECONDS)


async def _allocate_nonces(conn: Connection, treasury: Treasury, count: int, chain: int) -> int:
    """The first of `count` consecutive nonces (the rest follow it): the stored next nonce, or the
    chain's pending one (`chain`, read before the caller's transaction) if that is higher."""
    q = load_queries()
    stored = await conn.fetchval(q.lock_nonce, treasury.chain_id, treasury.address)
    nonce = chain if stored is None else max(stored, chain)
    await conn.execute(q.store_nonce, treasury.chain_id, treasury.address, nonce + count)
    return int(nonce)


async def _store_attempts(conn: Connection, attempts: list[tuple[int, SignedTx]], kind: str = "payout") -> None:
    """Signed transactions stored (before they are sent): (payout id, transaction) each."""
    await conn.execute(
        load_queries().insert_attempts,
        [payout_id for payout_id, _ in attempts],
        [tx.nonce for _, tx in attempts],
        [tx.tx_hash for _, tx in attempts],
        [tx.raw_tx for _, tx in attempts],
        [tx.fees.max_fee_per_gas for _, tx in attempts],
        [tx.fees.max_priority_fee_per_gas for _, tx in attempts],
        [tx.gas_limit for _, tx in attempts],
        [kind] * len(attempts),
    )


async def _sign_and_store(
    conn: Connection, treasury: Treasury, batch: list[Pair], fees: Fees
) -> list[tuple[asyncpg.Record, asyncpg.Record, SignedTx]] | None:
    """Nonces allocated, transactions signed and stored: one transaction for the whole batch. A deposit
    that left 'processing' meanwhile (sent to review by its own job or a callback) is left out; the
    first one, the caller's own, cannot have. Only confirmed deposits are signed for (the lock's query says
    so too). None when a guard was set meanwhile: nothing signed."""
    q = load_queries()
    chain_nonce = await treasury.pending_nonce()  # no RPC while deposits are locked: callbacks may wait on them
    async with conn.transaction():
        guards = await conn.fetchrow(q.guards_for_share)  # an operator's kill switch waits for this commit
        assert guards is not None
        if guards["kill_switch"] or guards["lane_paused"]:
            return None
        # Deposits then payouts, locked: one sent to review meanwhile (by its job, or a callback) is left out.
        processing = {r["id"] for r in await conn.fetch(q.deposits_still_processing, [d["id"] for d, _ in batch])}
        candidates = [p["id"] for d, p in batch if d["id"] in processing]
        unsigned = {r["id"] for r in await conn.fetch(q.payouts_still_created, candidates)}
        payable = [(d, p) for d, p in batch if d["id"] in processing and p["id"] in unsigned]
        if not payable:
            return []
        nonce = await _allocate_nonces(conn, treasury, len(payable), chain_nonce)
        signed = [
            (d, p, treasury.sign_transfer(p["to_address"], p["amount_micro"], nonce + i, fees))
            for i, (d, p) in enumerate(payable)
        ]
        await conn.execute(q.payouts_signed, [p["id"] for _, p, _ in signed], [tx.nonce for _, _, tx in signed])
        await _store_attempts(conn, [(p["id"], tx) for _, p, tx in signed])
    failpoint("after_attempt_stored")
    return signed


def _stored(attempt: asyncpg.Record) -> SignedTx:
    fees = Fees(int(attempt["max_fee_per_gas"]), int(attempt["max_priority_fee_per_gas"]))
    return SignedTx(attempt["tx_hash"], attempt["raw_tx"], attempt["nonce"], fees, attempt["gas_limit"])


async def _broadcast_all(conn: Connection, treasury: Treasury, batch: list[tuple[Any, Any, SignedTx]]) -> None:
    """Send a turn's new transactions in nonce order; one head read and one update record them."""
    head = await treasury.head()  # read before sending: a replacement may come a block early, never late
    refusals: list[ChainUnavailable | None]
    try:
        refusals = await treasury.broadcast_many([signed.raw_tx for _, _, signed in batch])
    except ChainUnavailable as exc:  # a provider that takes no batch (or not this one): one by one
        refusals = [exc] * len(batch)
    sent = [signed.tx_hash for (_, _, signed), refusal in zip(batch, refusals, strict=True) if refusal is None]
    if sent:
        await conn.execute(load_queries().attempts_broadcast, sent, head)
    for (_, payout, signed), refusal in zip(batch, refusals, strict=True):  # nonce order
        if isinstance(refusal, FeeTooLow):
            await _replace(conn, treasury, payout, signed)
        elif refusal is not None:  # e.g. a per-item rate limit: alone, once; if that fails too, it raises
            await _broadcast_or_bump(conn, treasury, payout, signed)


async def _broadcast(conn: Connection, treasury: Treasury, signed: SignedTx) -> None:
    await treasury.broadcast(signed.raw_tx)
    await conn.execute(load_queries().attempt_broadcast, signed.tx_hash, await treasury.head())


async def _broadcast_or_bump(
    conn: Connection, treasury: Treasury, payout: asyncpg.Record, signed: SignedTx, kind: str = "payout"
) -> None:
    try:
        await _broadcast(conn, treasury, signed)
    except FeeTooLow:
        await _replace(conn, treasury, payout, signed, kind)


def _sign(treasury: Treasury, payout: asyncpg.Record, kind: str, nonce: int, fees: Fees) -> SignedTx:
    if kind == "filler":
        return treasury.sign_self_send(nonce, fees)
    return treasury.sign_transfer(payout["to_address"], payout["amount_micro"], nonce, fees)


async def _replace(
    conn: Connection, treasury: Treasury, payout: asyncpg.Record, latest: SignedTx, kind: str = "payout"
) -> None:
    """The same nonce, re-signed with fees raised at least 12.5%; stored before it is sent."""
    for _ in range(10):  # each refusal raises the offer again; the cap bounds it
        fees = latest.fees.bumped(await treasury.fee_quote())
        if fees == latest.fees:  # at the cap: the same transaction again; re-send it and wait
            log.error("payout fees at the cap and still unmined", payout_id=payout["id"], nonce=latest.nonce)
            await _broadcast(conn, treasury, latest)
            return
        replacement = _sign(treasury, payout, kind, latest.nonce, fees)
        await _store_attempts(conn, [(payout["id"], replacement)], kind)
        log.warning(
            f"{'nonce filler' if kind == 'filler' else 'payout'} re-signed with higher fees",
            payout_id=payout["id"],
            nonce=latest.nonce,
            tx_hash=replacement.tx_hash,
            max_fee=replacement.fees.max_fee_per_gas,
        )
        try:
            await _broadcast(conn, treasury, replacement)
            return
        except FeeTooLow:
            latest = replacement
    raise ChainUnavailable("the node keeps refusing our fees")


async def _watch(
    conn: Connection, treasury: Treasury, payout: asyncpg.Record, config: LaneConfig, deadline: float
) -> Receipt | None:
    """Wait for a receipt of any attempt; re-sign with higher fees when one sits unmined too long."""
    q = load_queries()
    payout_id = payout["id"]
    while True:
        attempts = [a for a in await conn.fetch(q.attempts_of_payout, payout_id) if a["kind"] == "payout"]
        for attempt in reversed(attempts):
            receipt = await treasury.receipt(attempt["tx_hash"])
            if receipt is not None:
                return receipt
        latest = attempts[-1]
        mined = await treasury.mined_nonce()
        if mined > latest["nonce"]:
            # Mined past our nonce: one of our attempts (look again: it may have just landed) or not ours.
            for attempt in reversed(attempts):
                receipt = await treasury.receipt(attempt["tx_hash"])
                if receipt is not None:
                    return receipt
            raise NonceTaken(f"nonce {latest['nonce']} was used by a transaction that is not this payout")
        # Re-sign only the next nonce to be mined: the ones above it wait for it, not for their fees.
        if mined == latest["nonce"] and latest["broadcast_block"] is not None:
            if await treasury.head() - latest["broadcast_block"] >= config.replace_after_blocks:
                await _replace(conn, treasury, payout, _stored(latest))
                continue
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(config.poll_seconds)


async def _reverted(
    conn: Connection, payout_id: int, deposit_id: uuid.UUID, receipt: Receipt, *, final: bool
) -> PayoutResult:
    """A payout's transaction reverted: the money did not move. The deposit goes to review and the lane
    pauses at once. The payout becomes 'reverted' (its deposit free for an operator's retry) only when
    `final`: the reverting block has the required confirmations. Until then it is given up on
    ('cancelling'): a reorg may mine it again, and this time it may succeed; the nonce filler's turn
    (`_resolve_abandoned`) looks again."""
    q = load_queries()
    reason = f"the payout transaction {receipt.tx_hash} reverted"
    async with conn.transaction():  # the deposit's row first, then the payout's, as everywhere
        await conn.execute(q.deposit_to_review, deposit_id, reason)
        if final:
            await conn.execute(q.payout_reverted, payout_id, receipt.tx_hash, receipt.block_number)
        else:
            await conn.execute(q.payout_abandon, deposit_id, reason)
        await conn.execute(q.pause_lane, reason)
    log.error("payout reverted: lane paused", deposit_id=str(deposit_id), tx_hash=receipt.tx_hash, final=final)
    return PayoutResult(PayoutOutcome.REVIEW, reason)


async def _settle(conn: Connection, treasury: Treasury, mined: list[tuple[asyncpg.Record, int, Receipt]]) -> None:
    """For each deposit paid, in one transaction: the conversion and payout entry, the deposit
    completed, the payout confirmed, the wallet balance cached."""
    if not mined:
        return
    q = load_queries()
    balances: list[int] | None
    try:  # only a cache: read at "latest" (a pruned node has no old state) and never block settling
        balances = await treasury.usdc_balances([d["deposit_address"] for d, _, _ in mined])
        head = await treasury.head()
    except ChainUnavailable:
        balances, head = None, 0
    entries = [
        ledger.mpesa_converted_and_paid(str(d["id"]), d["user_id"], d["received_kes"], d["amount_usdc"])
        for d, _, _ in mined
    ]
    async with conn.transaction():
        await post_entries(conn, entries)
        await conn.execute(q.deposits_completed, [d["id"] for d, _, _ in mined], [r.tx_hash for _, _, r in mined])
        await conn.execute(
            q.payouts_confirmed,
            [payout_id for _, payout_id, _ in mined],
            [r.tx_hash for _, _, r in mined],
            [r.block_number for _, _, r in mined],
        )
        if balances is not None:  # one user paid twice in a turn: the same address, the same balance
            cached = {d["user_id"]: balance for (d, _, _), balance in zip(mined, balances, strict=True)}
            await conn.execute(q.upsert_wallet_balances, list(cached), list(cached.values()), head)
    for deposit, _, receipt in mined:
        log.info("deposit paid and credited", deposit_id=str(deposit["id"]), tx_hash=receipt.tx_hash)


async def abandon(pool: asyncpg.Pool, deposit_id: uuid.UUID, reason: str) -> None:
    """Give up on a deposit's payout for now: the deposit goes to review and its payout, if it
    holds a nonce, to 'cancelling' until the lane fills that nonce. An operator's retry then
    pays it with a new payout and a new nonce."""
    q = load_queries()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(q.deposit_to_review, deposit_id, reason[:1000])
        await conn.execute(q.payout_abandon, deposit_id, reason[:1000])


async def fill_abandoned_nonces(pool: asyncpg.Pool, treasury: Treasury, config: LaneConfig | None = None) -> bool:
    """The sweeper's turn at the nonce filler, for when no payout comes along to do it.
    Returns False when the lane is busy (its owner fills the nonces in its own turn)."""
    tuning = config or LaneConfig()
    return await _sweepers_turn(
        pool, treasury, load_queries().any_cancelling, lambda conn: _resolve_abandoned(conn, treasury, tuning)
    )


async def _sweepers_turn(
    pool: asyncpg.Pool, treasury: Treasury, due: str, work: Callable[[Connection], Awaitable[None]]
) -> bool:
    """`work` in the lane, if the `due` query says there is any and the lane is free at once (else False:
    its owner does the same in its own turns)."""
    if not await pool.fetchval(due, treasury.chain_id, treasury.address):
        return True
    try:
        async with treasury_lane(pool, lane_key(treasury.chain_id, treasury.address), 0) as conn:
            await work(conn)
    except LaneBusy:
        return False
    return True


async def _resolve_abandoned(conn: Connection, treasury: Treasury, config: LaneConfig) -> None:
    """For each payout being cancelled: if its nonce is used, record by what; else send (or bump) the filler.
    Never waits for a receipt: the next turn looks again."""
    q = load_queries()
    payouts = await conn.fetch(q.cancelling_payouts, treasury.chain_id, treasury.address)
    if not payouts:
        return
    mined = await treasury.mined_nonce()
    for payout in payouts:
        attempts = await conn.fetch(q.attempts_of_payout, payout["id"])
        if mined > payout["nonce"]:
            await _nonce_used(conn, treasury, payout, attempts, config)
        else:
            await _send_filler(conn, treasury, payout, attempts, config)


async def _nonce_used(
    conn: Connection, treasury: Treasury, payout: asyncpg.Record, attempts: list[asyncpg.Record], config: LaneConfig
) -> None:
    """What used a given-up payout's nonce decides it. The payout itself, succeeded: settled now (the money
    moved; the finality re-check follows it). The filler, or the payout reverted: the payout is cancelled
    or reverted, which frees its deposit for a new payout with a new nonce, only once that block has the
    required confirmations; until then it stays 'cancelling' and a later turn looks again (a reorg may drop
    that block and mine the payout itself, and a retry's payout would then pay twice)."""
    q = load_queries()
    bound = log.bind(payout_id=payout["id"], deposit_id=str(payout["deposit_id"]), nonce=payout["nonce"])
    head = await treasury.head()  # read before the receipts: a receipt above it counts as not deep enough
    for _ in range(2):  # look twice: an attempt may have landed between the nonce and the receipts
        for attempt in reversed(attempts):
            receipt = await treasury.receipt(attempt["tx_hash"])
            if receipt is None:
                continue
            final = confirmations(head, receipt.block_number) >= config.confirmations_required
            if attempt["kind"] == "filler" and not final:
                bound.info("nonce filler mined; the payout is cancelled at the required confirmations",
                           tx_hash=receipt.tx_hash, block=receipt.block_number)  # fmt: skip
            elif attempt["kind"] == "filler":
                await conn.execute(q.payout_filled, payout["id"], receipt.tx_hash, receipt.block_number)
                bound.info("abandoned payout cancelled: its nonce was filled", tx_hash=receipt.tx_hash)
            elif receipt.succeeded:  # the payout we gave up on was mined after all: the money moved
                deposit = await conn.fetchrow(q.deposit_by_id, payout["deposit_id"])
                assert deposit is not None  # payouts reference their deposit
                await _settle(conn, treasury, [(deposit, payout["id"], receipt)])
                bound.warning("a payout given up on was mined after all: deposit paid and credited")
            else:
                await _reverted(conn, payout["id"], payout["deposit_id"], receipt, final=final)
            return
    if (await conn.fetchval(q.cancelling_for_seconds, payout["id"]) or 0) < NOT_OURS_AFTER:
        bound.error("abandoned payout's nonce is used, but by no transaction of ours that we can see yet")
        return
    await conn.execute(q.payout_filled, payout["id"], None, None)
    bound.error("abandoned payout cancelled: its nonce was used by a transaction that is not ours")


async def _send_filler(
    conn: Connection, treasury: Treasury, payout: asyncpg.Record, attempts: list[asyncpg.Record], config: LaneConfig
) -> None:
    fillers = [a for a in attempts if a["kind"] == "filler"]
    if fillers:  # sent before: re-send it, or bump it when it has waited too long
        latest = fillers[-1]
        stale = latest["broadcast_block"] is not None
        if stale and await treasury.head() - latest["broadcast_block"] >= config.replace_after_blocks:
            await _replace(conn, treasury, payout, _stored(latest), "filler")
        else:
            await _broadcast_or_bump(conn, treasury, payout, _stored(latest), "filler")
        return
    # Outbid every attempt of the payout, which may still sit in a node's pool.
    offered = _stored(attempts[-1]).fees
    filler = treasury.sign_self_send(payout["nonce"], offered.bumped(await treasury.fee_quote()))
    await _store_attempts(conn, [(payout["id"], filler)], "filler")
    log.warning("filling an abandoned payout's nonce", payout_id=payout["id"], nonce=filler.nonce, tx=filler.tx_hash)
    await _broadcast_or_bump(conn, treasury, payout, filler, "filler")


# Settled payouts looked at again in one check, at most.
RECHECK_BATCH = 100


async def recheck_settled_payouts(pool: asyncpg.Pool, treasury: Treasury, config: LaneConfig | None = None) -> bool:
    """The sweeper's turn at the finality re-check, for when no payout comes along to do it.
    Returns False when the lane is busy (its owner re-checks in its own turns)."""
    tuning = config or LaneConfig()
    return await _sweepers_turn(
        pool, treasury, load_queries().any_unfinal_payout, lambda conn: _recheck_settled(conn, treasury, tuning)
    )


async def _recheck_settled_or_log(conn: Connection, treasury: Treasury, config: LaneConfig) -> None:
    try:
        await _recheck_settled(conn, treasury, config)
    except ChainUnavailable as exc:  # the next turn, or the sweeper, looks again
        log.warning("settled payouts could not be re-checked this turn", error=str(exc))


async def _recheck_settled(conn: Connection, treasury: Treasury, config: LaneConfig) -> None:
    """Settled payouts that are not final yet, in nonce order: final at the required confirmations; moved
    when mined again elsewhere; sent again, the same signed bytes, when a reorg removed them; for review
    when the chain now says the money did not move. Every turn does it (one query when none waits; else
    two RPC calls more): a payout that a reorg removed holds back every nonce above it."""
    q = load_queries()
    payouts = await conn.fetch(q.unfinal_payouts, treasury.chain_id, treasury.address, RECHECK_BATCH)
    if not payouts:
        return
    attempts = await conn.fetch(q.attempts_of_payouts, [p["id"] for p in payouts])
    head = await treasury.head()
    receipts = dict(zip([a["tx_hash"] for a in attempts], await treasury.receipts([a["tx_hash"] for a in attempts]),
                        strict=True))  # fmt: skip
    mined_nonce: int | None = None
    updates: list[tuple[asyncpg.Record, Receipt, bool]] = []  # (payout, receipt, final)
    for payout in payouts:
        own = [a for a in attempts if a["payout_id"] == payout["id"]]
        receipt = next((receipts[a["tx_hash"]] for a in own if a["kind"] == "payout" and receipts[a["tx_hash"]]), None)
        if receipt is None and mined_nonce is None:
            mined_nonce = await treasury.mined_nonce()
        state = payout_finality(
            receipt_block=receipt.block_number if receipt else None,
            succeeded=receipt is not None and receipt.succeeded,
            nonce_used=mined_nonce is not None and mined_nonce > payout["nonce"],
            head=head,
            required=config.confirmations_required,
        )
        if state in (PAYOUT_FINAL, PAYOUT_WAITING):
            assert receipt is not None
            moved = (receipt.tx_hash, receipt.block_number) != (payout["tx_hash"], payout["block_number"])
            if state == PAYOUT_FINAL or moved:
                updates.append((payout, receipt, state == PAYOUT_FINAL))
        elif state == PAYOUT_GONE:
            assert mined_nonce is not None
            await _send_settled_again(conn, treasury, payout, own, config, head, mined_nonce)
        elif state == PAYOUT_REVERTED:
            assert receipt is not None
            what = f"its transaction {receipt.tx_hash} was mined again after a reorg and reverted"
            await _lost_when_final(conn, payout, what, receipt, head, config)
        else:
            await _nonce_taken_after_reorg(conn, payout, own, receipts, head, config)
    if updates:
        await conn.execute(
            q.payouts_rechecked,
            [p["id"] for p, _, _ in updates], [r.tx_hash for _, r, _ in updates],
            [r.block_number for _, r, _ in updates], [final for _, _, final in updates],
        )  # fmt: skip
    for payout, receipt, final in updates:
        if receipt.block_number != payout["block_number"]:
            log.warning("settled payout mined again after a reorg", payout_id=payout["id"],
                        tx_hash=receipt.tx_hash, block=receipt.block_number, was=payout["block_number"])  # fmt: skip
        if final:
            log.info("payout final", payout_id=payout["id"], tx_hash=receipt.tx_hash, block=receipt.block_number)


async def _send_settled_again(
    conn: Connection,
    treasury: Treasury,
    payout: asyncpg.Record,
    attempts: list[asyncpg.Record],
    config: LaneConfig,
    head: int,
    mined_nonce: int,
) -> None:
    """A reorg removed a settled payout's block and its nonce is free: the same stored signed transaction
    (the one that was mined, or a newer attempt at the same nonce) is sent again. As `_watch` does for a
    payout never mined, once it is the lowest nonce still unmined and has waited `replace_after_blocks`
    since it left the chain, it is re-signed at the same nonce with fees raised (base fees may have risen
    past its cap since it was first mined), and so is a node refusing its fees. One transfer either way (one
    nonce), and the deposit's entry stands."""
    payout_attempts = [a for a in attempts if a["kind"] == "payout"]
    settled = next((a for a in payout_attempts if a["tx_hash"] == payout["tx_hash"]), payout_attempts[-1])
    latest = payout_attempts[-1] if payout_attempts[-1]["id"] > settled["id"] else settled
    if payout["block_number"] is not None:
        await conn.execute(load_queries().payout_out_of_chain, payout["id"], head)
        log.warning(
            "a reorg removed a settled payout's block: sending the same transaction again",
            payout_id=payout["id"], deposit_id=str(payout["deposit_id"]), nonce=payout["nonce"],
            tx_hash=latest["tx_hash"], block=payout["block_number"],
        )  # fmt: skip
    else:
        since = max(payout["out_of_chain_block"] or head, latest["broadcast_block"] or 0)
        if mined_nonce == payout["nonce"] and head - since >= config.replace_after_blocks:
            await _replace(conn, treasury, payout, _stored(latest))
            return
    await _broadcast_or_bump(conn, treasury, payout, _stored(latest))


async def _nonce_taken_after_reorg(
    conn: Connection,
    payout: asyncpg.Record,
    attempts: list[asyncpg.Record],
    receipts: dict[str, Receipt | None],
    head: int,
    config: LaneConfig,
) -> None:
    """A settled payout in no block, its nonce used by another transaction: our nonce filler (the money did
    not move; believed when the filler's block has the required confirmations), or one that is not ours,
    which is believed only after NOT_OURS_AFTER (a node behind a load balancer may show the nonce before the
    receipt)."""
    q = load_queries()
    filler = next((receipts[a["tx_hash"]] for a in attempts if a["kind"] == "filler" and receipts[a["tx_hash"]]), None)
    if filler is not None:
        what = f"the nonce filler {filler.tx_hash} was mined in its place after a reorg"
        await _lost_when_final(conn, payout, what, filler, head, config)
        return
    if payout["block_number"] is not None:
        await conn.execute(q.payout_out_of_chain, payout["id"], head)
    missing_for = await conn.fetchval(q.payout_out_of_chain_for_seconds, payout["id"]) or 0
    if missing_for < NOT_OURS_AFTER:
        log.error("a settled payout is in no block and its nonce is used by a transaction we cannot see yet",
                  payout_id=payout["id"], nonce=payout["nonce"])  # fmt: skip
        return
    await _lost(conn, payout, f"its nonce {payout['nonce']} was used by a transaction that is not ours after a reorg")


async def _lost_when_final(
    conn: Connection, payout: asyncpg.Record, what: str, deciding: Receipt, head: int, config: LaneConfig
) -> None:
    """A settled payout that the chain now says did not move the money is lost only when the block that
    says so (`deciding`) has the required confirmations: a person told to pay it by hand must not pay what
    a further reorg would mine after all. Until then it is in no block (its USDC counts as in flight) and
    the next re-check looks again."""
    if confirmations(head, deciding.block_number) >= config.confirmations_required:
        await _lost(conn, payout, what)
        return
    if payout["block_number"] is not None:
        await conn.execute(load_queries().payout_out_of_chain, payout["id"], head)
    log.warning("a settled payout looks lost; decided at the required confirmations", payout_id=payout["id"],
                nonce=payout["nonce"], reason=what, block=deciding.block_number)  # fmt: skip


async def _lost(conn: Connection, payout: asyncpg.Record, what: str) -> None:
    """The chain now says a settled payout did not move the money. Its deposit stays completed and booked
    (the user paid, and is owed the USDC): a person pays it or books it back. The lane pauses."""
    q = load_queries()
    reason = (
        f"payout {payout['id']} of deposit {payout['deposit_id']} was settled, but {what}: "
        "the user's USDC is booked and not on chain; pay it by hand or book it back"
    )
    async with conn.transaction():
        await conn.execute(q.payout_lost, payout["id"])
        await conn.execute(q.insert_payout_review_item, payout["id"], payout["deposit_id"], reason[:1000])
        await conn.execute(q.pause_lane, reason[:1000])
    log.error("a settled payout was lost after a reorg: lane paused, listed for review", payout_id=payout["id"],
              deposit_id=str(payout["deposit_id"]), reason=what)  # fmt: skip
