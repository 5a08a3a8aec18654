"""Signing and sending: nonces allocated in PostgreSQL, every signed transaction stored before it is
broadcast, and a stuck one replaced at the same nonce with higher fees (stored first, too).

So a crash is always followed by re-sending or recognising the same transaction, never by signing a
second payment for one nonce's worth of money.
"""

from __future__ import annotations

import structlog

from kiota.db import Connection
from kiota.errors import ChainUnavailable
from kiota.payouts.failpoint import failpoint
from kiota.payouts.guards import caps_hold
from kiota.payouts.terms import LaneItem, SignedItem
from kiota.records import Attempt, Payout
from kiota.store import payouts as store
from kiota.treasury import Fees, FeeTooLow, SignedTx, Treasury

log = structlog.get_logger(__name__)


async def allocate_nonces(conn: Connection, treasury: Treasury, count: int, chain: int) -> int:
    """The first of `count` consecutive nonces (the rest follow it): the stored next nonce, or the
    chain's pending one (`chain`, read before the caller's transaction) if that is higher."""
    stored = await store.locked_next_nonce(conn, treasury.chain_id, treasury.address)
    nonce = chain if stored is None else max(stored, chain)
    await store.store_next_nonce(conn, treasury.chain_id, treasury.address, nonce + count)
    return nonce


async def sign_and_store(
    conn: Connection, treasury: Treasury, batch: list[LaneItem], fees: Fees
) -> list[SignedItem] | None:
    """Nonces allocated, transactions signed and stored: one transaction for the whole batch. A deposit
    that left 'processing' meanwhile (sent to review by its own job or a callback) is left out; the
    first one, the caller's own, cannot have. Only confirmed deposits are signed for (the lock's query says
    so too). None when a guard was set meanwhile: nothing signed."""
    chain_nonce = await treasury.pending_nonce()  # no RPC while deposits are locked: callbacks may wait on them
    async with conn.transaction():
        guards = await store.guards_for_share(conn)  # an operator's kill switch waits for this commit
        if guards.kill_switch or guards.lane_paused:
            return None
        # Deposits then payouts, locked: one sent to review meanwhile (by its job, or a callback) is left out.
        processing = await store.deposits_still_processing(conn, [item.payee.deposit.id for item in batch])
        candidates = [item.payout.id for item in batch if item.payee.deposit.id in processing]
        unsigned = await store.payouts_still_created(conn, candidates, treasury.address)  # claimed for this lane
        payable = [item for item in batch if item.payee.deposit.id in processing and item.payout.id in unsigned]
        if not payable:
            return []
        if not await caps_hold(conn, treasury.chain_id, guards, payable):  # every lane's payouts together
            return None
        nonce = await allocate_nonces(conn, treasury, len(payable), chain_nonce)
        signed = [
            SignedItem(item.payee, item.payout, _sign(treasury, item.payout, "payout", nonce + i, fees))
            for i, item in enumerate(payable)
        ]
        await store.payouts_signed(conn, [s.payout.id for s in signed], [s.signed.nonce for s in signed])
        await store.store_attempts(conn, [s.payout.id for s in signed], [s.signed for s in signed], "payout")
    failpoint("after_attempt_stored")
    return signed


def stored(attempt: Attempt) -> SignedTx:
    """A stored attempt as the transaction it is, to send again or outbid."""
    fees = Fees(attempt.max_fee_per_gas, attempt.max_priority_fee_per_gas)
    return SignedTx(attempt.tx_hash, attempt.raw_tx, attempt.nonce, fees, attempt.gas_limit)


async def broadcast_all(conn: Connection, treasury: Treasury, batch: list[SignedItem]) -> None:
    """Send a turn's new transactions in nonce order; one head read and one update record them."""
    head = await treasury.head()  # read before sending: a replacement may come a block early, never late
    refusals: list[ChainUnavailable | None]
    try:
        refusals = await treasury.broadcast_many([item.signed.raw_tx for item in batch])
    except ChainUnavailable as exc:  # a provider that takes no batch (or not this one): one by one
        refusals = [exc] * len(batch)
    sent = [item.signed.tx_hash for item, refusal in zip(batch, refusals, strict=True) if refusal is None]
    if sent:
        await store.attempts_broadcast(conn, sent, head)
    for item, refusal in zip(batch, refusals, strict=True):  # nonce order
        if isinstance(refusal, FeeTooLow):
            await replace(conn, treasury, item.payout, item.signed)
        elif refusal is not None:  # e.g. a per-item rate limit: alone, once; if that fails too, it raises
            await broadcast_or_bump(conn, treasury, item.payout, item.signed)


async def broadcast(conn: Connection, treasury: Treasury, signed: SignedTx) -> None:
    await treasury.broadcast(signed.raw_tx)
    await store.attempt_broadcast(conn, signed.tx_hash, await treasury.head())


async def broadcast_or_bump(
    conn: Connection, treasury: Treasury, payout: Payout, signed: SignedTx, kind: str = "payout"
) -> None:
    """Send a stored transaction (again); a node refusing its fees gets a replacement at once."""
    try:
        await broadcast(conn, treasury, signed)
    except FeeTooLow:
        await replace(conn, treasury, payout, signed, kind)


def _sign(treasury: Treasury, payout: Payout, kind: str, nonce: int, fees: Fees) -> SignedTx:
    if kind == "filler":
        return treasury.sign_self_send(nonce, fees)
    return treasury.sign_transfer(payout.to_address, payout.amount_micro, nonce, fees)


async def replace(
    conn: Connection, treasury: Treasury, payout: Payout, latest: SignedTx, kind: str = "payout"
) -> SignedTx:
    """The same nonce, re-signed with fees raised at least 12.5%; stored before it is sent. Returns the
    transaction sent (the newest attempt)."""
    for _ in range(10):  # each refusal raises the offer again; the cap bounds it
        fees = latest.fees.bumped(await treasury.fee_quote())
        if fees == latest.fees:  # at the cap: the same transaction again; re-send it and wait
            log.error("payout fees at the cap and still unmined", payout_id=payout.id, nonce=latest.nonce)
            await broadcast(conn, treasury, latest)
            return latest
        replacement = _sign(treasury, payout, kind, latest.nonce, fees)
        await store.store_attempts(conn, [payout.id], [replacement], kind)
        log.warning(
            f"{'nonce filler' if kind == 'filler' else 'payout'} re-signed with higher fees",
            payout_id=payout.id,
            nonce=latest.nonce,
            tx_hash=replacement.tx_hash,
            max_fee=replacement.fees.max_fee_per_gas,
        )
        try:
            await broadcast(conn, treasury, replacement)
            return replacement
        except FeeTooLow:
            latest = replacement
    raise ChainUnavailable("the node keeps refusing our fees")
