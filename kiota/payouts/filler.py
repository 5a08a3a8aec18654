"""The nonce filler: a payout given up on keeps its nonce until the lane fills it with a zero-value
send to the treasury itself (or sees the payout mined after all, and settles it), so a gap never
strands the payouts signed after it.

A given-up payout stays 'cancelling' (a retry is refused; its deposit gets no second payout) until its
filler, or its own reverted transaction, has `LaneConfig.confirmations_required` confirmations: until
then a reorg may still mine the payout itself. If that block vanishes first, the chain decides again.
"""

from __future__ import annotations

import structlog

from kiota.db import Connection
from kiota.payouts.attempts import broadcast_or_bump, replace, stored
from kiota.payouts.settlement import Mined, reverted, settle
from kiota.payouts.terms import NOT_OURS_AFTER, LaneConfig
from kiota.records import Attempt, Payout
from kiota.store import payouts as store
from kiota.treasury import Treasury
from kiota.usdc import confirmations

log = structlog.get_logger(__name__)


async def resolve_abandoned(conn: Connection, treasury: Treasury, config: LaneConfig) -> None:
    """For each payout being cancelled: if its nonce is used, record by what; else send (or bump) the filler.
    Never waits for a receipt: the next turn looks again."""
    payouts = await store.cancelling_payouts(conn, treasury.chain_id, treasury.address)
    if not payouts:
        return
    mined = await treasury.mined_nonce()
    for payout in payouts:
        assert payout.nonce is not None  # only a signed payout is being cancelled: it holds its nonce
        attempts = await store.attempts_of_payout(conn, payout.id)
        if mined > payout.nonce:
            await _nonce_used(conn, treasury, payout, attempts, config)
        else:
            await _send_filler(conn, treasury, payout, payout.nonce, attempts, config)


async def _nonce_used(
    conn: Connection, treasury: Treasury, payout: Payout, attempts: list[Attempt], config: LaneConfig
) -> None:
    """What used a given-up payout's nonce decides it. The payout itself, succeeded: settled now (the money
    moved; the finality re-check follows it). The filler, or the payout reverted: the payout is cancelled
    or reverted, which frees its deposit for a new payout with a new nonce, only once that block has the
    required confirmations; until then it stays 'cancelling' and a later turn looks again (a reorg may drop
    that block and mine the payout itself, and a retry's payout would then pay twice)."""
    bound = log.bind(payout_id=payout.id, deposit_id=str(payout.deposit_id), nonce=payout.nonce)
    head = await treasury.head()  # read before the receipts: a receipt above it counts as not deep enough
    for _ in range(2):  # look twice: an attempt may have landed between the nonce and the receipts
        for attempt in reversed(attempts):
            receipt = await treasury.receipt(attempt.tx_hash)
            if receipt is None:
                continue
            final = confirmations(head, receipt.block_number) >= config.confirmations_required
            if attempt.kind == "filler" and not final:
                bound.info("nonce filler mined; the payout is cancelled at the required confirmations",
                           tx_hash=receipt.tx_hash, block=receipt.block_number)  # fmt: skip
            elif attempt.kind == "filler":
                await store.payout_filled(conn, payout.id, receipt.tx_hash, receipt.block_number)
                bound.info("abandoned payout cancelled: its nonce was filled", tx_hash=receipt.tx_hash)
            else:
                assert payout.deposit_id is not None  # a payout attempt pays a deposit
                if receipt.succeeded:  # the payout we gave up on was mined after all: the money moved
                    payee = await store.payee(conn, payout.deposit_id)
                    assert payee is not None  # payouts reference their deposit
                    await settle(conn, treasury, [Mined(payee, payout.id, receipt)])
                    bound.warning("a payout given up on was mined after all: deposit paid and credited")
                else:
                    await reverted(conn, payout.id, payout.deposit_id, receipt, final=final)
            return
    if await store.cancelling_for_seconds(conn, payout.id) < NOT_OURS_AFTER:
        bound.error("abandoned payout's nonce is used, but by no transaction of ours that we can see yet")
        return
    await store.payout_filled(conn, payout.id, None, None)
    bound.error("abandoned payout cancelled: its nonce was used by a transaction that is not ours")


async def _send_filler(
    conn: Connection, treasury: Treasury, payout: Payout, nonce: int, attempts: list[Attempt], config: LaneConfig
) -> None:
    fillers = [a for a in attempts if a.kind == "filler"]
    if fillers:  # sent before: re-send it, or bump it when it has waited too long
        latest = fillers[-1]
        sent_at = latest.broadcast_block
        if sent_at is not None and await treasury.head() - sent_at >= config.replace_after_blocks:
            await replace(conn, treasury, payout, stored(latest), "filler")
        else:
            await broadcast_or_bump(conn, treasury, payout, stored(latest), "filler")
        return
    # Outbid every attempt of the payout, which may still sit in a node's pool.
    offered = stored(attempts[-1]).fees
    filler = treasury.sign_self_send(nonce, offered.bumped(await treasury.fee_quote()))
    await store.store_attempts(conn, [payout.id], [filler], "filler")
    log.warning("filling an abandoned payout's nonce", payout_id=payout.id, nonce=filler.nonce, tx=filler.tx_hash)
    await broadcast_or_bump(conn, treasury, payout, filler, "filler")
