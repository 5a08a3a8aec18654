"""The treasury's lane: who may sign for the treasury right now, and what its owner does with it.

One lane owner per treasury at a time: a session advisory lock on a dedicated connection, so a worker
that dies releases it with its connection. A deposit's job (`pay_deposit`) takes the lane and runs the
owner's pipeline (`Pipeline`): its own payout and those of the other processing deposits are signed with
consecutive nonces, stored in one commit and broadcast in nonce order; while they wait for their block the
owner signs and sends the next ones, up to `LaneConfig.max_in_flight` unsettled, and at each new head it
settles what was mined in one transaction (a block's payouts; several blocks' if it fell behind). A lane that
waits for one block per batch pays a batch per block at best. The owner keeps the lane while work is in flight (up to
`drain_seconds` + `watch_seconds`, well inside arq's job timeout). The other deposits' jobs find them paid, or
in flight, or the lane owned (they look again in a moment), or re-send their stored attempts if the owner died.
The sweeper takes the lane for the nonce filler and the finality re-check when no payout comes along to do them.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import structlog

from kiota.db import Connection, Pool, advisory_unlock, connection_lost, try_advisory_lock
from kiota.errors import ChainUnavailable, KiotaError
from kiota.payouts.attempts import broadcast_all, replace, sign_and_store, stored
from kiota.payouts.failpoint import failpoint
from kiota.payouts.filler import resolve_abandoned
from kiota.payouts.guards import check_caps_and_funds, guards_stop
from kiota.payouts.lanes import lane_slots
from kiota.payouts.settlement import Mined, nonce_taken, recheck_settled, recheck_settled_or_log, reverted, settle
from kiota.payouts.terms import (
    GUARD_RECHECK_SECONDS,
    LaneConfig,
    LaneItem,
    NonceTaken,
    PayoutOutcome,
    PayoutResult,
    SignedItem,
    not_processing,
)
from kiota.records import Guards, Payout
from kiota.store import payouts as store
from kiota.store.payouts import Payee
from kiota.treasury import Fees, Receipt, Treasury

log = structlog.get_logger(__name__)

LANE_POLL_SECONDS = 0.05  # how often a job waiting for the lane tries it again
# A job whose payout is in the owner's pipeline, or (slow blocks, below) whose lane is owned, looks again after this
# long: the owner signs a newly confirmed deposit in a look or two, then come a 2-second block and its settling.
IN_FLIGHT_RECHECK_SECONDS = 3.0
# On a chain that makes blocks faster than this (anvil's automine: a block per transaction), a job whose lane is
# owned waits in its slot (up to `LaneConfig.lock_wait_seconds`) for the owner to pay it, and once its payout is
# in flight this long more: a second run would cost more than the wait. On a chain whose blocks a send waits for
# (Base's 2-second blocks; `BlockPace.waits_for_blocks`) it does not wait at all: each deposit's job would hold
# its slot until the owner signed for it, for seconds while an owner hands the lane over, and the slots are
# shared by every lane and every first run (B7, four treasuries at 80/s: first runs waited 8–12 s for a slot,
# 0.19 s of slot per deposit went to that wait, while the machine had 0.45 cores idle).
IN_FLIGHT_GRACE_SECONDS = 0.3
# ... but only while its deposit is newly confirmed. One still unsigned this long after its confirmation may be one
# no owner takes as a companion (a deposit retried after its payout was cancelled or reverted; a worker with another
# list of treasuries): only its own job pays it, and that job waits for the lane as on a fast chain.
LEAVE_OWNED_LANE_SECONDS = 10.0
# On such a chain the block holding what the owner just sent comes a few ms after the send answered: the owner looks
# again this soon, this many times, rather than a whole poll later (measured: B4's p95 rose 25% without it).
QUICK_LOOK_SECONDS, QUICK_LOOKS = 0.005, 10
# A payout below the mined nonce with no receipt is looked at again after these pauses (1 s in all) before its
# nonce is taken to be another transaction's: anvil under load has counted a mined nonce tens of ms before it
# served the receipt (B7, four treasuries: a payout sent to review, paid 88 ms later by the nonce filler's turn).
RECEIPT_LAG_LOOKS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.35)
# Signed, unsettled payouts a new owner takes over at most (PAYOUT_MAX_IN_FLIGHT is at most 1000).
RESUME_AT_MOST = 1000
# A payout signed this long ago and still unsettled has had its owners' turns: the sweeper looks at it.
STRANDED_AFTER_SECONDS = 120.0


class LaneBusy(KiotaError):
    """Another worker owns the treasury lane right now."""


class PaidMeanwhile(KiotaError):
    """While this job waited for the lane, the lane's owner paid its deposit."""


class InOwnersPipeline(KiotaError):
    """While this job waited for the lane, the lane's owner signed its deposit's payout: the owner settles it
    as its block arrives, so the job need not hold a worker's slot meanwhile."""


def lane_key(chain_id: int, address: str) -> int:
    digest = hashlib.sha256(f"kiota-lane:{chain_id}:{address.lower()}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@asynccontextmanager
async def treasury_lane(
    pool: Pool, key: int, wait_seconds: float, deposit_id: uuid.UUID | None = None, in_flight_grace: float = 0.0
) -> AsyncIterator[Connection]:
    """Own the lane for the block. The lock lives on this connection: if the process dies, it is freed.
    A job waiting for its deposit stops waiting once the owner has paid it (PaidMeanwhile) or has had its payout
    in flight for `in_flight_grace` (InOwnersPipeline: the job looks again in a moment, and finds it paid, or the
    lane free if the owner died, and then sends the stored attempts itself)."""
    async with pool.acquire() as conn:
        deadline = time.monotonic() + wait_seconds
        seen_in_flight: float | None = None
        while not await try_advisory_lock(conn, key):
            if time.monotonic() > deadline:
                raise LaneBusy("the treasury lane is owned by another worker")
            # The owner pays every waiting deposit in its turn: look less often, and stop once paid.
            await asyncio.sleep(LANE_POLL_SECONDS)
            if deposit_id is not None:
                status, in_flight = await store.deposit_payout_state(conn, deposit_id)
                if status != "processing":
                    raise PaidMeanwhile(str(status))
                if in_flight:
                    seen_in_flight = seen_in_flight or time.monotonic()
                    if time.monotonic() - seen_in_flight >= in_flight_grace:
                        raise InOwnersPipeline("the payout is in flight in the lane owner's pipeline")
        try:
            yield conn
        finally:
            await advisory_unlock(conn, key)


# Told, after each settling transaction of an owner's turn, which deposits it paid, with the owner's connection
# (the jobs layer finishes their jobs that wait for a later run: kiota/job_history.py `finish_paid_jobs`). It
# must not raise, and must be quick: the owner holds its lane meanwhile.
PaidHook = Callable[[Connection, list[uuid.UUID]], Awaitable[object]]


async def pay_deposit(
    pool: Pool,
    treasury: Treasury,
    deposit_id: uuid.UUID,
    config: LaneConfig | None = None,
    on_paid: PaidHook | None = None,
) -> PayoutResult:
    """Pay a processing, confirmed deposit's USDC from the treasury, exactly once (with any others waiting);
    `on_paid` hears of each deposit the turn pays, if this job becomes the lane's owner."""
    config = config or LaneConfig()
    payee = await store.payee(pool, deposit_id)
    if payee is None:
        return not_processing(None)
    deposit = payee.deposit
    if deposit.status != "processing":
        return not_processing(deposit.status, deposit.tx_hash)
    if deposit.confirmed_at is None:  # kiota/confirm.py comes first; a turn signs confirmed deposits only
        return PayoutResult(PayoutOutcome.NOTHING_TO_DO, "the M-Pesa payment is not confirmed")
    guards = await store.guards(pool)
    stopped = await guards_stop(pool, guards, deposit)
    if stopped is not None:
        return stopped
    try:
        key = lane_key(treasury.chain_id, treasury.address)
        grace = IN_FLIGHT_GRACE_SECONDS if treasury.pace.faster_than(IN_FLIGHT_GRACE_SECONDS) else 0.0
        # Until this treasury's lane owner in this process has sent, it cannot tell the chain's pace: it waits.
        newly = deposit.confirmed_at > datetime.now(UTC) - timedelta(seconds=LEAVE_OWNED_LANE_SECONDS)
        wait = 0.0 if treasury.pace.waits_for_blocks() and newly else config.lock_wait_seconds
        async with treasury_lane(pool, key, wait, deposit_id, grace) as conn:
            try:
                await resolve_abandoned(conn, treasury, config)
            except ChainUnavailable as exc:  # the sweeper and later turns try the filler again
                log.warning("nonce filler failed this turn", error=str(exc))
            status = await store.deposit_status(conn, deposit_id)
            if status != "processing":  # settled above: its abandoned payout was mined after all
                return not_processing(status)
            return await _pay_in_lane(conn, treasury, guards, payee, config, on_paid)
    except LaneBusy as exc:  # slow blocks, no wait: its owner signs it, or a later run takes the lane over
        return PayoutResult(PayoutOutcome.WAITING, str(exc), None if wait else IN_FLIGHT_RECHECK_SECONDS)
    except InOwnersPipeline as exc:  # looked at again once its block has likely come and been settled
        return PayoutResult(PayoutOutcome.WAITING, str(exc), IN_FLIGHT_RECHECK_SECONDS)
    except PaidMeanwhile as exc:
        return not_processing(str(exc))


async def _pay_in_lane(
    conn: Connection, treasury: Treasury, guards: Guards, payee: Payee, config: LaneConfig, on_paid: PaidHook | None
) -> PayoutResult:
    """The owner's pipeline, this job's deposit first: handing the lane from job to job costs a block."""
    (payout,) = await _live_payouts(conn, treasury, [payee])
    if payout.status == "cancelling":
        return PayoutResult(PayoutOutcome.WAITING, "the nonce of this deposit's abandoned payout is being filled")
    return await Pipeline(conn, treasury, config, on_paid).run(LaneItem(payee, payout), guards)


class Pipeline:
    """The lane owner's pipeline: sign and send the next nonces while earlier ones wait for their block, up to
    `LaneConfig.max_in_flight` unsettled; at each new head, the receipts of everything in flight in one
    request, and what they find mined settled in one transaction (a block's, or several blocks' if it fell
    behind). Fee replacement only for the lowest unmined nonce: the ones above it wait for it, not for their fees.

    It signs for `drain_seconds`, then settles what is in flight for `watch_seconds` at most, and hands the
    lane over as soon as nothing is in flight and no deposit waits."""

    def __init__(
        self, conn: Connection, treasury: Treasury, config: LaneConfig, on_paid: PaidHook | None = None
    ) -> None:
        self.conn, self.treasury, self.config = conn, treasury, config
        self.on_paid = on_paid
        self.in_flight: list[SignedItem] = []  # nonce order
        self.sent_at: dict[int, int | None] = {}  # payout id -> head when its newest attempt was sent
        self.results: dict[int, PayoutResult] = {}  # by payout id: what each settled (or given up) payout came to
        self.settled_block: int | None = None  # the highest block of a receipt settled here
        self.head = 0
        self.may_sign = True
        self.unsent: set[int] = set()  # payout ids a full node refused: sent again at each head, nothing new meanwhile
        self.sending = True  # False under the kill switch or the lanes' pause: settle what is mined, send nothing
        self.quick_looks = 0  # looks left at QUICK_LOOK_SECONDS after a send, on a chain that mines as it is sent
        # The treasury's mined nonce as last seen (None: not yet), and the head at which it last rose.
        self.mined_nonce: int | None = None
        self.took_at = 0

    async def run(self, own: LaneItem, guards: Guards) -> PayoutResult:
        started = time.monotonic()
        sign_until, stop_at = started + self.config.drain_seconds, started + self.config.drain_seconds
        stop_at += self.config.watch_seconds
        await recheck_settled_or_log(self.conn, self.treasury, self.config)  # a payout a reorg removed comes first
        self.head = await self.treasury.head()
        await self._heed_guards()  # set since this job looked (kiota/payouts/guards.py `guards_stop`)?
        await self._resume()
        if self.in_flight:  # they may be mined already: no new block need come for them
            await self._settle_head()
        blocked = await self._fill(guards, own)  # the owner's own payout, whatever the drain says
        if blocked is not None and own.payout.status == "created":
            self.may_sign = False
        while True:
            try:
                signed = 0
                # Between blocks too: a deposit confirmed now rides in the next block, not the one after. Not while
                # the owner looks quickly for the block of what it just sent (a head is all it needs then).
                if (
                    self.may_sign
                    and not self.unsent
                    and not self.quick_looks
                    and time.monotonic() < sign_until
                    and self.in_flight_room() > 0
                ):
                    guards = await store.guards(self.conn)
                    signed = await self._fill_others(guards)
                if not self.in_flight and not signed:
                    break  # nothing in flight and no deposit waits: the lane is handed over
                new_head = await self._new_head()
                if new_head:
                    await self._settle_head()
                # Looked at after a block's settling too: when settling takes longer than a block, every look
                # finds a new head, and a payout stuck in flight would keep the owner past arq's job timeout.
                if time.monotonic() >= stop_at:
                    break
                if not new_head:
                    await asyncio.sleep(self._next_look())
            except Exception as exc:
                if own.payout.id not in self.results:
                    raise
                # This job's own payout is settled: whatever failed is the others', stored for the next owner.
                self._log_stop(exc)
                break
        return blocked or self._own_result(own.payout.id)

    def _sent(self, head_before: int | None) -> None:
        """Just sent: on a chain that mines each transaction as it comes (anvil's automine), its block is due in a
        few ms; on Base's 2-second blocks nothing changes."""
        self.treasury.pace.sent(time.monotonic(), head_before)
        self.quick_looks = QUICK_LOOKS if self.treasury.pace.faster_than(IN_FLIGHT_GRACE_SECONDS) else 0

    def _next_look(self) -> float:
        """How long until the owner looks for a new head again: a poll, or a few ms while it looks quickly."""
        if self.quick_looks > 0:
            self.quick_looks -= 1
            return min(QUICK_LOOK_SECONDS, self.config.poll_seconds)
        return self.config.poll_seconds

    def in_flight_room(self) -> int:
        return self.config.max_in_flight - len(self.in_flight)

    def _own_result(self, payout_id: int) -> PayoutResult:
        if payout_id in self.results:
            return self.results[payout_id]
        if any(item.payout.id == payout_id for item in self.in_flight):
            return PayoutResult(PayoutOutcome.WAITING, "the payout is not mined yet")
        return PayoutResult(PayoutOutcome.WAITING, "the payout was not signed")

    @staticmethod
    def _log_stop(exc: Exception) -> None:
        if connection_lost(exc) or isinstance(exc, OSError):  # an outage, logged once by the worker
            log.info("the lane stopped paying other deposits: connection lost", error=f"{type(exc).__name__}: {exc}")
        else:
            log.exception("the lane stopped paying other deposits after a failure")

    async def _load_unsettled(self) -> None:
        # All of them, not only max_in_flight: after the cap was lowered, more may be in flight than it allows, and
        # every one counts against it (nothing new is signed until they are settled below it).
        loaded = await _unsettled(self.conn, self.treasury, max(self.config.max_in_flight, RESUME_AT_MOST))
        self.in_flight = [item for item, _ in loaded]
        self.sent_at = {item.payout.id: sent or self.head for item, sent in loaded}

    async def _resume(self) -> None:
        """Signed, unsettled payouts from before (a previous owner's, maybe killed): sent again in nonce order,
        since some may never have left and a gap would hold back all above it."""
        await self._load_unsettled()
        if not self.in_flight or not self.sending:
            return
        try:  # one JSON-RPC batch (a node that has them, or mined them, says so harmlessly)
            await broadcast_all(self.conn, self.treasury, self.in_flight)
        except ChainUnavailable as exc:
            if await self.treasury.pending_nonce() <= self.in_flight[0].signed.nonce:
                raise  # the node takes none of ours: a failure, as any other
            # The node takes fewer than a previous owner left unsent (a pool's per-sender limit), as when they
            # were signed: sent again at each head until it has them all, and nothing new is signed meanwhile.
            self.unsent.update(item.payout.id for item in self.in_flight)
            log.warning("the node refused some of the stored transactions; sending them again each block",
                        error=str(exc), in_flight=len(self.in_flight))  # fmt: skip

    async def settle_stored(self) -> None:
        """One look at what a previous owner left (the sweeper's turn): sent again, and settled if mined. Under
        the kill switch or the lanes' pause only settled: the chain mined it anyway, its USDC has left and its
        deposit is paid; what is not mined waits, unsent and not re-priced, for the lane to open again."""
        await recheck_settled_or_log(self.conn, self.treasury, self.config)
        self.head = await self.treasury.head()
        await self._heed_guards()
        await self._resume()
        if self.in_flight:
            await self._settle_head()

    async def _heed_guards(self) -> None:
        """The kill switch and the lanes' pause, read again (an operator may set them at any moment): while either is
        on, this owner signs nothing new, and sends or re-prices none of its stored payouts. Two things still go out,
        as they did before either was set (jobs/maintenance.py runs them under both): a settled payout that a reorg
        took off the chain, sent again as the same signed bytes (it is booked and paid); zero-value nonce fillers."""
        guards = await store.guards(self.conn)
        if guards.kill_switch or guards.lane_paused:  # for the rest of this turn: the next owner looks again
            self.sending = self.may_sign = False

    async def _fill(self, guards: Guards, own: LaneItem) -> PayoutResult | None:
        """The first signing: the owner's payout (if it has none yet) with the deposits that wait for one."""
        if own.payout.status != "created" or self.in_flight_room() <= 0:
            return None
        others = await _companions(self.conn, self.treasury, guards, own.payee.deposit.id, self.in_flight_room() - 1)
        fresh = [own, *others]
        fees = await self.treasury.fee_quote()  # one quote for the checks and the signing
        # A shortfall alerts (pauses the lane) only for the owner's own payout, alone.
        blocked = await self._check(guards, fresh, fees, alert=not others)
        if blocked is not None and others:  # the others wait; this one may fit
            fresh = [own]
            blocked = await self._check(guards, fresh, fees, alert=True)
        if blocked is not None:
            return blocked
        if await self._sign_and_send(fresh, fees) is None:
            return PayoutResult(PayoutOutcome.BLOCKED, "a payout guard was set while waiting", GUARD_RECHECK_SECONDS)
        return None

    async def _fill_others(self, guards: Guards) -> int:
        """More deposits that wait, into the room under the cap; how many were signed. A guard or a cap that
        stops them stops the signing for this owner (the deposits' own jobs look again)."""
        if guards.kill_switch or guards.lane_paused:
            self.may_sign = False
            return 0
        fresh = await _companions(self.conn, self.treasury, guards, None, self.in_flight_room())
        if not fresh:
            return 0
        fees = await self.treasury.fee_quote()
        if await self._check(guards, fresh, fees, alert=False) is not None:
            self.may_sign = False
            return 0
        signed = await self._sign_and_send(fresh, fees)
        if signed is None:
            self.may_sign = False
            return 0
        return signed

    async def _check(self, guards: Guards, fresh: list[LaneItem], fees: Fees, *, alert: bool) -> PayoutResult | None:
        return await check_caps_and_funds(
            self.conn, self.treasury, guards, fresh, fees, self.settled_block, alert=alert, pending=len(self.in_flight)
        )

    async def _sign_and_send(self, fresh: list[LaneItem], fees: Fees) -> int | None:
        """Signed and stored in one transaction, then sent in nonce order; None when a guard was set meanwhile."""
        new = await sign_and_store(self.conn, self.treasury, fresh, fees)
        if new is None:
            return None
        if new:
            accepted_before = bool(self.in_flight)
            self._add_in_flight(new)
            head_before = self.treasury.pace.head
            try:
                await broadcast_all(self.conn, self.treasury, new)
                self._sent(head_before)
            except ChainUnavailable as exc:
                if not accepted_before and await self.treasury.pending_nonce() <= new[0].signed.nonce:
                    raise  # the node takes none of ours: a failure, as any other
                # The node holds our earlier ones and takes no more (a pool's per-sender limit, more than
                # PAYOUT_MAX_IN_FLIGHT allows for): stored, they are sent again at each head, and nothing new
                # is signed until the node takes them.
                self.unsent.update(item.payout.id for item in new)
                log.warning("the node refused the lane's next transactions; sending them again each block",
                            error=str(exc), in_flight=len(self.in_flight))  # fmt: skip
            failpoint("after_broadcast")
        return len(new)

    def _add_in_flight(self, new: list[SignedItem]) -> None:
        """`new`, just signed, in flight from this head."""
        if not self.in_flight:  # the chain's first step onto the batch (a filler's below it too) counts as progress
            self.mined_nonce, self.took_at = new[0].signed.nonce - 1, self.head
        self.in_flight += new
        for item in new:
            self.sent_at[item.payout.id] = self.head

    async def _send_unsent(self) -> None:
        items = [item for item in self.in_flight if item.payout.id in self.unsent]
        try:
            if items:
                await broadcast_all(self.conn, self.treasury, items)
        except ChainUnavailable as exc:
            log.info("the node still refuses the lane's next transactions", error=str(exc), unsent=len(items))
            return
        self.unsent.clear()

    async def _new_head(self) -> bool:
        """Whether a block came after the last one seen."""
        head = await self.treasury.head()
        if head > self.head:
            self.head, self.quick_looks = head, 0
            return True
        return False

    async def _settle_head(self) -> None:
        """A new head: settled payouts re-checked (a reorg), payouts given up on meanwhile handed to the nonce
        filler, then everything in flight looked at in one request, each block's mined payouts settled in one
        transaction, and the lowest unmined nonce re-signed with higher fees when it has waited too long."""
        await recheck_settled_or_log(self.conn, self.treasury, self.config)
        await self._drop_given_up()
        if not self.in_flight:
            return
        try:
            # The nonce first: receipts read after it include those of payouts mined between the two reads.
            mined_nonce = await self.treasury.mined_nonce()
            receipts = await self.treasury.receipts([item.signed.tx_hash for item in self.in_flight])
        except ChainUnavailable as exc:  # the next head looks again
            log.warning("the lane could not read receipts this block", error=str(exc))
            return
        seen = {item.payout.id: r for item, r in zip(self.in_flight, receipts, strict=True) if r is not None}
        # Mined past a nonce with no receipt of its newest attempt: an older attempt, or not ours.
        below = [i for i in self.in_flight if i.payout.id not in seen and i.signed.nonce < mined_nonce]
        if below:
            try:
                seen.update(await _older_receipts(self.conn, self.treasury, [i.payout.id for i in below]))
            except ChainUnavailable as exc:  # never "nonce taken" on a failed look: the next head looks again
                log.warning("the lane could not read older receipts this block", error=str(exc))
                return
        if seen:
            failpoint("after_receipt")
        mined: list[Mined] = []
        done: set[int] = set()
        for item in self.in_flight:  # nonce order
            deposit_id, payout_id = item.payee.deposit.id, item.payout.id
            receipt = seen.get(payout_id)
            if receipt is None and item in below:
                taken = NonceTaken(f"nonce {item.signed.nonce} was used by a transaction that is not this payout")
                self.results[payout_id] = await nonce_taken(self.conn, deposit_id, taken)
                done.add(payout_id)
            elif receipt is not None and receipt.succeeded:
                mined.append(Mined(item.payee, payout_id, receipt))
            elif receipt is not None:  # at its first confirmation: given up on, and 'reverted' when deep enough
                self.results[payout_id] = await reverted(self.conn, payout_id, deposit_id, receipt, final=False)
                self.may_sign = False  # the lane is paused
                done.add(payout_id)
        # What this look found mined, in one transaction: a block's payouts, or several blocks' when the chain
        # makes blocks faster than the owner looks (automine: a block per transaction).
        await settle(self.conn, self.treasury, mined)
        if mined and self.on_paid is not None:
            await self.on_paid(self.conn, [m.payee.deposit.id for m in mined])
        for m in mined:
            self.results[m.payout_id] = PayoutResult(PayoutOutcome.COMPLETED, m.receipt.tx_hash)
            done.add(m.payout_id)
            self.settled_block = max(m.receipt.block_number, self.settled_block or 0)
        self.in_flight = [item for item in self.in_flight if item.payout.id not in done]
        self.unsent &= {item.payout.id for item in self.in_flight}
        await self._send_more(mined_nonce)

    async def _send_more(self, mined_nonce: int) -> None:
        """What is still in flight: the node's refused ones sent again, the lowest unmined one re-priced when it has
        waited too long; neither once payouts were stopped."""
        if self.in_flight and self.sending:
            await self._heed_guards()
        if self.sending:
            await self._send_unsent()
            await self._bump_lowest(mined_nonce)

    async def _drop_given_up(self) -> None:
        """A payout given up on while in flight (its job's time ran out, an operator's cancel) leaves the
        pipeline: the nonce filler fills its nonce (or sees it mined, and settles it), so the payouts above it
        are not held back."""
        treasury = self.treasury
        if not self.in_flight or not await store.any_cancelling(self.conn, treasury.chain_id, treasury.address):
            return
        still = await store.payouts_still_signed(self.conn, [item.payout.id for item in self.in_flight])
        self.in_flight = [item for item in self.in_flight if item.payout.id in still]
        try:
            await resolve_abandoned(self.conn, self.treasury, self.config)
        except ChainUnavailable as exc:
            log.warning("nonce filler failed this block", error=str(exc))

    async def _bump_lowest(self, mined_nonce: int) -> None:
        """Only the next nonce to be mined is re-signed with higher fees, once it has waited replace_after_blocks:
        blocks since it was sent, and since the chain last took one of the treasury's nonces. A chain still taking
        them is not passing this one over (automine mines a batch one transaction, one block, at a time)."""
        if self.mined_nonce is None or mined_nonce > self.mined_nonce:
            # An owner that took over (or the sweeper's one look) knows of no progress yet: the sending alone counts.
            self.took_at = self.head if self.mined_nonce is not None else 0
            self.mined_nonce = mined_nonce
        lowest = self.in_flight[0] if self.in_flight else None
        if lowest is None or lowest.signed.nonce != mined_nonce:
            return
        sent = self.sent_at.get(lowest.payout.id)
        if sent is None or self.head - max(sent, self.took_at) < self.config.replace_after_blocks:
            return
        try:
            newest = await replace(self.conn, self.treasury, lowest.payout, lowest.signed)
        except ChainUnavailable as exc:  # stored before it was sent: the next head re-signs or sends it again
            log.warning("the lane could not send the lowest nonce's replacement this block", error=str(exc))
            return
        self.in_flight[0] = SignedItem(lowest.payee, lowest.payout, newest)
        self.sent_at[lowest.payout.id] = self.head


async def _older_receipts(conn: Connection, treasury: Treasury, payout_ids: list[int]) -> dict[int, Receipt]:
    """Receipts of any attempt of these payouts (an older one may have been mined instead of the newest). Looked
    at again, over `RECEIPT_LAG_LOOKS`, while some are missing: a node may count a mined nonce before it serves
    the receipt. A slow node gets fewer looks: none starts past the pauses' total (the owner's turn is bounded)."""
    attempts = [a for a in await store.attempts_of_payouts(conn, payout_ids) if a.kind == "payout"]
    found: dict[int, Receipt] = {}
    until = time.monotonic() + sum(RECEIPT_LAG_LOOKS)
    for look, pause in enumerate(RECEIPT_LAG_LOOKS):
        if look > 0 and time.monotonic() + pause > until:
            break
        await asyncio.sleep(pause)
        receipts = await treasury.receipts([a.tx_hash for a in attempts])
        for attempt, receipt in zip(attempts, receipts, strict=True):
            if receipt is not None:
                found[attempt.payout_id] = receipt
        if len(found) == len(set(payout_ids)):
            break
    return found


async def _unsettled(conn: Connection, treasury: Treasury, limit: int) -> list[tuple[SignedItem, int | None]]:
    """Signed payouts not yet settled, in nonce order, with their deposit and newest attempt (and the head at
    which that attempt was sent, if it was)."""
    payouts = await store.unsettled_payouts(conn, treasury.chain_id, treasury.address, limit)
    attempts = await store.attempts_of_payouts(conn, [p.id for p in payouts]) if payouts else []
    newest = {a.payout_id: a for a in attempts if a.kind == "payout"}  # oldest first: the last one wins
    deposit_ids = [payout.deposit_id for payout in payouts if payout.deposit_id is not None]
    assert len(deposit_ids) == len(payouts)  # a payout pays a deposit
    payees = await store.payees(conn, deposit_ids) if payouts else {}
    batch = []
    for payout, deposit_id in zip(payouts, deposit_ids, strict=True):
        attempt = newest[payout.id]
        batch.append((SignedItem(payees[deposit_id], payout, stored(attempt)), attempt.broadcast_block))
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


async def settle_stranded_payouts(pool: Pool, treasury: Treasury, config: LaneConfig | None = None) -> bool:
    """The sweeper's turn at payouts signed long ago and still unsettled, for when no deposit's job comes along to
    take the lane (each such deposit's job has ended: sent to review by a guard meanwhile; or the lane is quiet):
    their stored transactions sent again (a gap would hold back every nonce above it) and what is mined settled,
    one look. While the kill switch or the lanes' pause is on, nothing is sent: only what the chain mined anyway
    is settled (its deposit is paid; left unbooked, its user would wait for the switch; `Pipeline.settle_stored`).
    Returns False when the lane is busy (its owner resumes and settles them in its own turn)."""
    tuning = config or LaneConfig()
    async with pool.acquire() as conn:
        due = await store.any_unsettled_since(conn, treasury.chain_id, treasury.address, STRANDED_AFTER_SECONDS)
    return await _sweepers_turn(pool, treasury, due, lambda conn: Pipeline(conn, treasury, tuning).settle_stored())


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
