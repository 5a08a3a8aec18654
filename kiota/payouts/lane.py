"""The treasury's lane: who may sign for the treasury right now, and what a turn of the lane does.

One lane owner per treasury at a time: a session advisory lock on a dedicated connection, so a worker
that dies releases it with its connection. A deposit's job (`pay_deposit`) takes the lane and pays its
deposit, with the other processing deposits that have no payout yet, in the same turn (one fee quote,
consecutive nonces, one commit for all their signed transactions, then broadcast in nonce order): a lane
that waits for one receipt per deposit would pay one deposit per block at best. While deposits still
wait, the owner takes further turns (up to `LaneConfig.drain_seconds`) rather than hand the lane over.
Their own jobs then find them paid, or re-send their stored attempts if the owner died. The sweeper takes
the lane for the nonce filler and the finality re-check when no payout comes along to do them.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog

from kiota.db import Connection, Pool, advisory_unlock, connection_lost, try_advisory_lock
from kiota.errors import ChainUnavailable, KiotaError
from kiota.payouts.attempts import broadcast_all, broadcast_or_bump, sign_and_store, stored
from kiota.payouts.failpoint import failpoint
from kiota.payouts.filler import resolve_abandoned
from kiota.payouts.guards import check_caps_and_funds, guards_stop
from kiota.payouts.lanes import lane_slots
from kiota.payouts.settlement import (
    Mined,
    nonce_taken,
    recheck_settled,
    recheck_settled_or_log,
    reverted,
    settle,
    watch,
)
from kiota.payouts.terms import (
    GUARD_RECHECK_SECONDS,
    LaneConfig,
    LaneItem,
    NonceTaken,
    PayoutOutcome,
    PayoutResult,
    SignedItem,
)
from kiota.records import Guards, Payout
from kiota.store import payouts as store
from kiota.store.payouts import Payee
from kiota.treasury import Receipt, Treasury

log = structlog.get_logger(__name__)

LANE_POLL_SECONDS = 0.05  # how often a job waiting for the lane tries it again


class LaneBusy(KiotaError):
    """Another worker owns the treasury lane right now."""


class PaidMeanwhile(KiotaError):
    """While this job waited for the lane, the lane's owner paid its deposit."""


def lane_key(chain_id: int, address: str) -> int:
    digest = hashlib.sha256(f"kiota-lane:{chain_id}:{address.lower()}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@asynccontextmanager
async def treasury_lane(
    pool: Pool, key: int, wait_seconds: float, deposit_id: uuid.UUID | None = None
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
                status = await store.deposit_status(conn, deposit_id)
                if status != "processing":
                    raise PaidMeanwhile(str(status))
        try:
            yield conn
        finally:
            await advisory_unlock(conn, key)


def _done(status: str | None) -> PayoutResult:
    """A deposit that left 'processing' while its job waited: paid, or someone else's business now."""
    return PayoutResult(PayoutOutcome.COMPLETED if status == "completed" else PayoutOutcome.NOTHING_TO_DO, str(status))


async def pay_deposit(
    pool: Pool, treasury: Treasury, deposit_id: uuid.UUID, config: LaneConfig | None = None
) -> PayoutResult:
    """Pay a processing, confirmed deposit's USDC from the treasury, exactly once (with any others waiting)."""
    config = config or LaneConfig()
    payee = await store.payee(pool, deposit_id)
    if payee is None:
        return PayoutResult(PayoutOutcome.NOTHING_TO_DO, "no such deposit")
    deposit = payee.deposit
    if deposit.status == "completed":
        return PayoutResult(PayoutOutcome.COMPLETED, deposit.tx_hash or "")
    if deposit.status != "processing":
        return PayoutResult(PayoutOutcome.NOTHING_TO_DO, f"deposit is {deposit.status}")
    if deposit.confirmed_at is None:  # kiota/confirm.py comes first; a turn signs confirmed deposits only
        return PayoutResult(PayoutOutcome.NOTHING_TO_DO, "the M-Pesa payment is not confirmed")
    guards = await store.guards(pool)
    stopped = await guards_stop(pool, guards, deposit)
    if stopped is not None:
        return stopped
    try:
        key = lane_key(treasury.chain_id, treasury.address)
        async with treasury_lane(pool, key, config.lock_wait_seconds, deposit_id) as conn:
            try:
                await resolve_abandoned(conn, treasury, config)
            except ChainUnavailable as exc:  # the sweeper and later turns try the filler again
                log.warning("nonce filler failed this turn", error=str(exc))
            status = await store.deposit_status(conn, deposit_id)
            if status != "processing":  # settled above: its abandoned payout was mined after all
                return _done(status)
            return await _pay_in_lane(conn, treasury, guards, payee, config)
    except LaneBusy as exc:
        return PayoutResult(PayoutOutcome.WAITING, str(exc))
    except PaidMeanwhile as exc:
        return _done(str(exc))


async def _pay_in_lane(
    conn: Connection, treasury: Treasury, guards: Guards, payee: Payee, config: LaneConfig
) -> PayoutResult:
    """This deposit's turn of the lane, then, while the lane is ours and other deposits still wait
    for a payout, more turns for them: handing the lane from job to job costs a turn's worth of time."""
    (payout,) = await _live_payouts(conn, treasury, [payee])
    if payout.status == "cancelling":
        return PayoutResult(PayoutOutcome.WAITING, "the nonce of this deposit's abandoned payout is being filled")
    drain_until = time.monotonic() + config.drain_seconds
    turn = await _turn(conn, treasury, guards, LaneItem(payee, payout), config, time.monotonic() + config.watch_seconds)
    unsigned = PayoutResult(PayoutOutcome.WAITING, "the payout was not signed")
    result = turn.blocked or turn.results.get(payout.id, unsigned)
    while turn.all_paid and time.monotonic() < drain_until:
        # A further turn watches its receipts until drain_seconds after the drain's end at most, so the
        # job stays well inside arq's timeout; what is not mined by then the next turn settles.
        watch_until = min(time.monotonic() + config.watch_seconds, drain_until + config.drain_seconds)
        try:
            guards = await store.guards(conn)
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
    guards: Guards,
    own: LaneItem | None,
    config: LaneConfig,
    watch_until: float,
    funds_at: int | None = None,
) -> _TurnOutcome:
    """One turn of the lane: re-send every signed, unsettled payout in nonce order (after a crash
    some may never have left; a gap would hold back all above it), sign and send the owner's payout
    (if it has none yet) with the other deposits waiting for one, then settle whatever is mined.
    `funds_at`: the treasury's USDC is read at that block (one this lane saw), so that a lagging node
    behind a load balancer cannot show it from before the last turn's payouts."""
    await recheck_settled_or_log(conn, treasury, config)  # first: a payout a reorg removed holds the nonces above it
    batch = await _unsettled(conn, treasury, config.batch_size)
    for item in batch:
        await broadcast_or_bump(conn, treasury, item.payout, item.signed)
    blocked = None
    signed: list[SignedItem] = []
    if own is None or own.payout.status == "created":
        mine = [own] if own is not None else []
        own_id = own.payee.deposit.id if own else None
        others = await _companions(conn, treasury, guards, own_id, config.batch_size - len(mine))
        fresh = mine + others
        fees = await treasury.fee_quote() if fresh else None  # one quote for the turn's checks and signing
        if fees is not None:  # a shortfall alerts (pauses the lane) only for the owner's own payout, alone
            blocked = await check_caps_and_funds(conn, treasury, guards, fresh, fees, funds_at, alert=not others)
        if blocked is not None and fees is not None and mine and others:  # the others wait; this one may fit
            fresh = mine
            blocked = await check_caps_and_funds(conn, treasury, guards, fresh, fees, funds_at, alert=True)
        if blocked is None and fees is not None:
            new = await sign_and_store(conn, treasury, fresh, fees)
            if new is None:
                blocked = PayoutResult(
                    PayoutOutcome.BLOCKED, "a payout guard was set while waiting", GUARD_RECHECK_SECONDS
                )
            elif new:
                signed = new
                await broadcast_all(conn, treasury, signed)
                failpoint("after_broadcast")
                batch += signed
    results: dict[int, PayoutResult] = {}
    mined: list[Mined] = []
    receipts = await _receipts_at_once(treasury, batch)
    for item, seen in zip(batch, receipts, strict=True):  # nonce order
        deposit_id, payout_id = item.payee.deposit.id, item.payout.id
        try:
            receipt = seen or await watch(conn, treasury, item.payout, config, watch_until)
        except NonceTaken as exc:
            results[payout_id] = await nonce_taken(conn, deposit_id, exc)
            continue
        if receipt is None:
            results[payout_id] = PayoutResult(PayoutOutcome.WAITING, "the payout is not mined yet")
            continue
        failpoint("after_receipt")
        if receipt.succeeded:
            mined.append(Mined(item.payee, payout_id, receipt))
            results[payout_id] = PayoutResult(PayoutOutcome.COMPLETED, receipt.tx_hash)
        else:  # at its first confirmation: given up on, and 'reverted' when that block is deep enough
            results[payout_id] = await reverted(conn, payout_id, deposit_id, receipt, final=False)
    await settle(conn, treasury, mined)
    return _TurnOutcome(results, blocked, len(signed), max((m.receipt.block_number for m in mined), default=None))


async def _receipts_at_once(treasury: Treasury, batch: list[SignedItem]) -> list[Receipt | None]:
    """The receipts of the turn's latest attempts in one request; the ones missing are watched one by one
    (older attempts, replacements, a nonce taken). A failed request just leaves them all to be watched."""
    try:
        return await treasury.receipts([item.signed.tx_hash for item in batch])
    except ChainUnavailable:
        return [None] * len(batch)


async def _unsettled(conn: Connection, treasury: Treasury, limit: int) -> list[SignedItem]:
    """Signed payouts not yet settled, in nonce order, with their deposit and newest attempt."""
    batch = []
    for payout in await store.unsettled_payouts(conn, treasury.chain_id, treasury.address, limit):
        assert payout.deposit_id is not None  # a payout pays a deposit
        payee = await store.payee(conn, payout.deposit_id)
        assert payee is not None  # payouts reference their deposit
        attempts = [a for a in await store.attempts_of_payout(conn, payout.id) if a.kind == "payout"]
        batch.append(SignedItem(payee, payout, stored(attempts[-1])))
    return batch


async def _companions(
    conn: Connection, treasury: Treasury, guards: Guards, own: uuid.UUID | None, limit: int
) -> list[LaneItem]:
    """Other processing deposits that have no payout yet and whose M-Pesa success is confirmed (a forged
    callback never rides in another deposit's turn), of this treasury's lane (kiota/payouts/lanes.py),
    oldest first, each given its payout row."""
    if limit <= 0:
        return []
    lanes, slots, free = await lane_slots(conn, treasury)
    largest = guards.per_deposit_max_micro if free is None else min(free, guards.per_deposit_max_micro)
    payees = await store.deposits_awaiting_payout(conn, own, largest, limit, lanes, slots)
    return [LaneItem(p, payout) for p, payout in zip(payees, await _live_payouts(conn, treasury, payees), strict=True)]


async def _live_payouts(conn: Connection, treasury: Treasury, payees: list[Payee]) -> list[Payout]:
    """Each deposit's live payout, created when it has none; in the deposits' order."""
    return await store.live_payouts(conn, payees, treasury.chain_id, treasury.token_address, treasury.address)


async def fill_abandoned_nonces(pool: Pool, treasury: Treasury, config: LaneConfig | None = None) -> bool:
    """The sweeper's turn at the nonce filler, for when no payout comes along to do it.
    Returns False when the lane is busy (its owner fills the nonces in its own turn)."""
    tuning = config or LaneConfig()
    due = await store.any_cancelling(pool, treasury.chain_id, treasury.address)
    return await _sweepers_turn(pool, treasury, due, lambda conn: resolve_abandoned(conn, treasury, tuning))


async def recheck_settled_payouts(pool: Pool, treasury: Treasury, config: LaneConfig | None = None) -> bool:
    """The sweeper's turn at the finality re-check, for when no payout comes along to do it.
    Returns False when the lane is busy (its owner re-checks in its own turns)."""
    tuning = config or LaneConfig()
    due = await store.any_unfinal_payout(pool, treasury.chain_id, treasury.address)
    return await _sweepers_turn(pool, treasury, due, lambda conn: recheck_settled(conn, treasury, tuning))


async def _sweepers_turn(
    pool: Pool, treasury: Treasury, due: bool, work: Callable[[Connection], Awaitable[None]]
) -> bool:
    """`work` in the lane, if it is `due` and the lane is free at once (else False: its owner does the
    same in its own turns)."""
    if not due:
        return True
    try:
        async with treasury_lane(pool, lane_key(treasury.chain_id, treasury.address), 0) as conn:
            await work(conn)
    except LaneBusy:
        return False
    return True
