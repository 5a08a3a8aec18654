"""Settling payouts: settling what is mined (deposit completed, entry booked),
giving up on one that reverted or whose nonce was taken, and looking at settled payouts again until
they are final.

A payout is settled at its receipt but final only when its block has `LaneConfig.confirmations_required`
confirmations. Until then the re-check looks at its receipts again: when a reorg removed its block, the
same stored signed bytes are sent again (same nonce, same hash: still one transfer, and the entry is not
touched); when it is mined again, maybe in another block, that block is recorded. A decision that frees a
deposit for a new payout is taken only when the block that decides it is that deep.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import structlog

from kiota import ledger, metrics
from kiota.db import Connection, Pool
from kiota.errors import ChainUnavailable
from kiota.payouts.attempts import broadcast_or_bump, replace, stored
from kiota.payouts.terms import NOT_OURS_AFTER, LaneConfig, NonceTaken, PayoutOutcome, PayoutResult
from kiota.records import Attempt, Payout
from kiota.store import payouts as store
from kiota.store.chain import cache_wallet_balances
from kiota.store.deposits import deposit_to_review
from kiota.store.ledger import post_entries
from kiota.store.payouts import Payee
from kiota.treasury import Receipt, Treasury
from kiota.usdc import PAYOUT_FINAL, PAYOUT_GONE, PAYOUT_REVERTED, PAYOUT_WAITING, confirmations, payout_finality

log = structlog.get_logger(__name__)

# Settled payouts looked at again in one check, at most.
RECHECK_BATCH = 100


@dataclass(frozen=True, slots=True)
class Mined:
    """A payout whose transaction succeeded: its deposit (to complete and book), its id, its receipt."""

    payee: Payee
    payout_id: int
    receipt: Receipt


async def settle(conn: Connection, treasury: Treasury, mined: list[Mined]) -> None:
    """For each deposit paid, in one transaction: the conversion and payout entry, the deposit
    completed, the payout confirmed, the wallet balance cached."""
    if not mined:
        return
    balances: list[int] | None
    try:  # only a cache: read at "latest" (a pruned node has no old state) and never block settling
        balances = await treasury.usdc_balances([m.payee.address for m in mined])
        head = await treasury.head()
    except ChainUnavailable:
        balances, head = None, 0
    entries = [_paid_entry(m) for m in mined]
    async with conn.transaction():
        await post_entries(conn, entries)
        await store.deposits_completed(conn, [m.payee.deposit.id for m in mined], [m.receipt.tx_hash for m in mined])
        await store.payouts_confirmed(
            conn, [m.payout_id for m in mined], [m.receipt.tx_hash for m in mined],
            [m.receipt.block_number for m in mined],
        )  # fmt: skip
        if balances is not None:  # one user paid twice in a turn: the same address, the same balance
            cached = {m.payee.deposit.user_id: balance for m, balance in zip(mined, balances, strict=True)}
            await cache_wallet_balances(conn, list(cached), list(cached.values()), head)
    for m in mined:
        log.info("deposit paid and credited", deposit_id=str(m.payee.deposit.id), tx_hash=m.receipt.tx_hash)
        metrics.tally.observe(metrics.PAYOUT_FEE, m.receipt.fee_wei)


def _paid_entry(mined: Mined) -> ledger.Entry:
    deposit = mined.payee.deposit
    assert deposit.received_kes is not None  # only a deposit paid in M-Pesa is paid out
    return ledger.mpesa_converted_and_paid(str(deposit.id), deposit.user_id, deposit.received_kes, deposit.amount_usdc)


async def reverted(
    conn: Connection, payout_id: int, deposit_id: uuid.UUID, receipt: Receipt, *, final: bool
) -> PayoutResult:
    """A payout's transaction reverted: the money did not move. The deposit goes to review and the lane
    pauses at once. The payout becomes 'reverted' (its deposit free for an operator's retry) only when
    `final`: the reverting block has the required confirmations. Until then it is given up on
    ('cancelling'): a reorg may mine it again, and this time it may succeed; the nonce filler's turn
    (`kiota.payouts.filler`) looks again."""
    reason = f"the payout transaction {receipt.tx_hash} reverted"
    async with conn.transaction():  # the deposit's row first, then the guards' (as in _lost), then the payout's
        await deposit_to_review(conn, deposit_id, reason)
        await store.pause_lane(conn, reason)
        if final:
            await store.payout_reverted(conn, payout_id, receipt.tx_hash, receipt.block_number)
        else:
            await store.payout_abandon(conn, deposit_id, reason)
    log.error("payout reverted: lane paused", deposit_id=str(deposit_id), tx_hash=receipt.tx_hash, final=final)
    return PayoutResult(PayoutOutcome.REVIEW, reason)


async def nonce_taken(conn: Connection, deposit_id: uuid.UUID, exc: NonceTaken) -> PayoutResult:
    """The payout is given up on ('cancelling'), not cancelled: if a receipt of ours turns up after all, the
    nonce filler's turn settles it; only when none has for NOT_OURS_AFTER is the payout cancelled."""
    reason = f"{exc}: the treasury key may have been used elsewhere; check the treasury before retrying"
    async with conn.transaction():
        await deposit_to_review(conn, deposit_id, reason)
        await store.payout_abandon(conn, deposit_id, reason)
    log.error("payout nonce taken by another transaction", deposit_id=str(deposit_id), error=str(exc))
    return PayoutResult(PayoutOutcome.REVIEW, reason)


async def abandon(pool: Pool, deposit_id: uuid.UUID, reason: str) -> None:
    """Give up on a deposit's payout for now: the deposit goes to review and its payout, if it
    holds a nonce, to 'cancelling' until the lane fills that nonce. An operator's retry then
    pays it with a new payout and a new nonce."""
    async with pool.acquire() as conn, conn.transaction():
        await abandon_in(conn, deposit_id, reason)


async def abandon_in(conn: Connection, deposit_id: uuid.UUID, reason: str) -> None:
    """`abandon`, in the caller's transaction (an operator's cancel of the deposit's job)."""
    await deposit_to_review(conn, deposit_id, reason[:1000])
    await store.payout_abandon(conn, deposit_id, reason[:1000])


async def recheck_settled_or_log(conn: Connection, treasury: Treasury, config: LaneConfig) -> None:
    try:
        await recheck_settled(conn, treasury, config)
    except ChainUnavailable as exc:  # the next turn, or the sweeper, looks again
        log.warning("settled payouts could not be re-checked this turn", error=str(exc))


async def recheck_settled(conn: Connection, treasury: Treasury, config: LaneConfig) -> None:
    """Settled payouts that are not final yet, in nonce order: final at the required confirmations; moved
    when mined again elsewhere; sent again, the same signed bytes, when a reorg removed them; for review
    when the chain now says the money did not move. Every turn does it (one query when none waits; else
    two RPC calls more): a payout that a reorg removed holds back every nonce above it."""
    payouts = await store.unfinal_payouts(conn, treasury.chain_id, treasury.address, RECHECK_BATCH)
    if not payouts:
        return
    attempts = await store.attempts_of_payouts(conn, [p.id for p in payouts])
    head = await treasury.head()
    hashes = [a.tx_hash for a in attempts]
    receipts = dict(zip(hashes, await treasury.receipts(hashes), strict=True))
    mined_nonce: int | None = None
    updates: list[tuple[Payout, Receipt, bool]] = []  # (payout, receipt, final)
    for payout in payouts:
        own = [a for a in attempts if a.payout_id == payout.id]
        receipt = next((receipts[a.tx_hash] for a in own if a.kind == "payout" and receipts[a.tx_hash]), None)
        if receipt is None and mined_nonce is None:
            mined_nonce = await treasury.mined_nonce()
        state = payout_finality(
            receipt_block=receipt.block_number if receipt else None,
            succeeded=receipt is not None and receipt.succeeded,
            nonce_used=mined_nonce is not None and mined_nonce > _nonce(payout),
            head=head,
            required=config.confirmations_required,
        )
        if state in (PAYOUT_FINAL, PAYOUT_WAITING):
            assert receipt is not None
            moved = (receipt.tx_hash, receipt.block_number) != (payout.tx_hash, payout.block_number)
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
        await store.payouts_rechecked(
            conn, [p.id for p, _, _ in updates], [r.tx_hash for _, r, _ in updates],
            [r.block_number for _, r, _ in updates], [final for _, _, final in updates],
        )  # fmt: skip
    for payout, receipt, final in updates:
        if receipt.block_number != payout.block_number:
            log.warning("settled payout mined again after a reorg", payout_id=payout.id,
                        tx_hash=receipt.tx_hash, block=receipt.block_number, was=payout.block_number)  # fmt: skip
        if final:
            log.info("payout final", payout_id=payout.id, tx_hash=receipt.tx_hash, block=receipt.block_number)


def _nonce(payout: Payout) -> int:
    """The nonce of a payout past 'created': every signed payout holds one."""
    assert payout.nonce is not None
    return payout.nonce


async def _send_settled_again(
    conn: Connection,
    treasury: Treasury,
    payout: Payout,
    attempts: list[Attempt],
    config: LaneConfig,
    head: int,
    mined_nonce: int,
) -> None:
    """A reorg removed a settled payout's block and its nonce is free: the same stored signed transaction
    (the one that was mined, or a newer attempt at the same nonce) is sent again. As the lane does for a
    payout never mined, once it is the lowest nonce still unmined and has waited `replace_after_blocks`
    since it left the chain, it is re-signed at the same nonce with fees raised (base fees may have risen
    past its cap since it was first mined), and so is a node refusing its fees. One transfer either way (one
    nonce), and the deposit's entry stands."""
    payout_attempts = [a for a in attempts if a.kind == "payout"]
    settled = next((a for a in payout_attempts if a.tx_hash == payout.tx_hash), payout_attempts[-1])
    latest = payout_attempts[-1] if payout_attempts[-1].id > settled.id else settled
    if payout.block_number is not None:
        await store.payout_out_of_chain(conn, payout.id, head)
        log.warning(
            "a reorg removed a settled payout's block: sending the same transaction again",
            payout_id=payout.id, deposit_id=str(payout.deposit_id), nonce=payout.nonce,
            tx_hash=latest.tx_hash, block=payout.block_number,
        )  # fmt: skip
    else:
        since = max(payout.out_of_chain_block or head, latest.broadcast_block or 0)
        if mined_nonce == payout.nonce and head - since >= config.replace_after_blocks:
            await replace(conn, treasury, payout, stored(latest))
            return
    await broadcast_or_bump(conn, treasury, payout, stored(latest))


async def _nonce_taken_after_reorg(
    conn: Connection,
    payout: Payout,
    attempts: list[Attempt],
    receipts: dict[str, Receipt | None],
    head: int,
    config: LaneConfig,
) -> None:
    """A settled payout in no block, its nonce used by another transaction: our nonce filler (the money did
    not move; believed when the filler's block has the required confirmations), or one that is not ours,
    which is believed only after NOT_OURS_AFTER (a node behind a load balancer may show the nonce before the
    receipt)."""
    filler = next((receipts[a.tx_hash] for a in attempts if a.kind == "filler" and receipts[a.tx_hash]), None)
    if filler is not None:
        what = f"the nonce filler {filler.tx_hash} was mined in its place after a reorg"
        await _lost_when_final(conn, payout, what, filler, head, config)
        return
    if payout.block_number is not None:
        await store.payout_out_of_chain(conn, payout.id, head)
    if await store.out_of_chain_for_seconds(conn, payout.id) < NOT_OURS_AFTER:
        log.error("a settled payout is in no block and its nonce is used by a transaction we cannot see yet",
                  payout_id=payout.id, nonce=payout.nonce)  # fmt: skip
        return
    await _lost(conn, payout, f"its nonce {payout.nonce} was used by a transaction that is not ours after a reorg")


async def _lost_when_final(
    conn: Connection, payout: Payout, what: str, deciding: Receipt, head: int, config: LaneConfig
) -> None:
    """A settled payout that the chain now says did not move the money is lost only when the block that
    says so (`deciding`) has the required confirmations: a person told to pay it by hand must not pay what
    a further reorg would mine after all. Until then it is in no block (its USDC counts as in flight) and
    the next re-check looks again."""
    if confirmations(head, deciding.block_number) >= config.confirmations_required:
        await _lost(conn, payout, what)
        return
    if payout.block_number is not None:
        await store.payout_out_of_chain(conn, payout.id, head)
    log.warning("a settled payout looks lost; decided at the required confirmations", payout_id=payout.id,
                nonce=payout.nonce, reason=what, block=deciding.block_number)  # fmt: skip


async def _lost(conn: Connection, payout: Payout, what: str) -> None:
    """The chain now says a settled payout did not move the money. Its deposit stays completed and booked
    (the user paid, and is owed the USDC): a person pays it or books it back. The lane pauses."""
    reason = (
        f"payout {payout.id} of deposit {payout.deposit_id} was settled, but {what}: "
        "the user's USDC is booked and not on chain; pay it by hand or book it back"
    )
    async with conn.transaction():
        # The guards' row before the payout's: a signing holds it (FOR SHARE) while it writes the current minute's
        # cap total (sql/migrations/0023), which this payout's change also writes if it was signed that minute.
        await store.pause_lane(conn, reason[:1000])
        await store.payout_lost(conn, payout.id)
        await store.payout_review_item(conn, payout.id, payout.deposit_id, reason[:1000])
    log.error("a settled payout was lost after a reorg: lane paused, listed for review", payout_id=payout.id,
              deposit_id=str(payout.deposit_id), reason=what)  # fmt: skip
