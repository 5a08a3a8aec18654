"""Several treasuries: which treasury's lane pays a deposit.

Each treasury key has its own lane (an advisory lock, `lane.lane_key`) and its own nonces. A deposit is given
to a lane by a hash of its id: `slot_of(id, n)` is one of n slots, one per treasury in address order, and the
slot's treasury pays it. Why a hash and not the least loaded lane:
- every worker and the lane's own companion query (sql/queries/payouts.sql `deposits_awaiting_payout`, the
  same md5) compute the same answer from the id alone, without reading any lane's load and without a race
  between two jobs that both see the same lane as the least loaded;
- deposit ids are random UUIDs, so at the rates where a second treasury matters the shares are even
  (a lane's load is its share of the stream);
- a deposit's job and its lane's companions agree, so a turn picks up its own slots' deposits in batches.
A lane that is paused (its treasury ran dry) hands its slots to the next running lane in slot order
(`serving_lane`), so its deposits do not wait for an operator while another treasury can pay them.

A deposit larger than one treasury's free USDC (its balance less its payouts in flight) does not pause that
treasury's lane while it can still pay smaller deposits (kiota/payouts/guards.py): each lane remembers its free
USDC as it last read it before signing (table treasury_funds), and `choose_lane` gives the deposit to the first
running lane from its slot on whose treasury covers it. A reading older than `FUNDS_FRESH_SECONDS`, or none,
counts as covering: that lane reads its funds again in its turn (and, short, hands the deposit on at its next
run). When no treasury covers it, the deposit is blocked with the reason (an error line, the job's history,
the dashboard's blocked jobs) and looked at again every `CAP_RECHECK_SECONDS`, while every lane pays the others;
a top-up of one treasury then pays it. With one treasury, none of this: its shortfall pauses its lane (guards.py).

Exactly once does not rest on the hash (two workers with different treasury lists may disagree): the
deposit's one live payout (a partial unique index) is claimed by the lane that signs it, under its row
lock, in the signing transaction (`payouts_still_created`); once signed, it stays with its treasury, whose
lane alone re-sends, replaces and settles it (`choose_lane`).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence

import structlog

from kiota.db import Executor, Pool
from kiota.payouts.terms import (
    CAP_RECHECK_SECONDS,
    GUARD_RECHECK_SECONDS,
    PayoutOutcome,
    PayoutResult,
    not_processing,
)
from kiota.store import payouts as store
from kiota.store.payouts import DepositRoute, TreasuryFunds
from kiota.treasury import Treasury

log = structlog.get_logger(__name__)

# A treasury's remembered free USDC steers the lane choice this long; older, its lane is tried and reads it again.
FUNDS_FRESH_SECONDS = 60.0
TOO_LARGE = "no treasury's free USDC covers this payout"


def slot_of(deposit_id: uuid.UUID, lanes: int) -> int:
    """The deposit's slot among `lanes`: the first 28 bits of md5 of its id's text (as the SQL computes it)."""
    if lanes <= 1:
        return 0
    return int(hashlib.md5(str(deposit_id).encode()).hexdigest()[:7], 16) % lanes  # noqa: S324 - a spread, not a MAC


def serving_lane(slot: int, paused: Sequence[bool]) -> int | None:
    """The lane that pays a slot's deposits: the slot's own, else the next running one after it (in slot
    order, wrapping round); None when every lane is paused."""
    count = len(paused)
    for step in range(count):
        lane = (slot + step) % count
        if not paused[lane]:
            return lane
    return None


def may_cover(funds: TreasuryFunds | None, amount: int) -> bool:
    """Whether a treasury's remembered free USDC may pay `amount`: yes unless a fresh reading says it is short."""
    return funds is None or funds.age_seconds > FUNDS_FRESH_SECONDS or funds.free_micro >= amount


def served_slots(lane: int, paused: Sequence[bool]) -> list[int]:
    """The slots whose deposits `lane` pays now: its own, and those of paused lanes it stands in for."""
    return [slot for slot in range(len(paused)) if serving_lane(slot, paused) == lane]


async def paused_lanes(db: Executor, chain_id: int, addresses: Sequence[str]) -> list[bool]:
    """Whether each treasury's lane is paused, in the order of `addresses`."""
    paused = {lane.address.lower() for lane in await store.treasury_lanes(db, chain_id) if lane.paused}
    return [address.lower() in paused for address in addresses]


async def lane_slots(db: Executor, treasury: Treasury) -> tuple[int, list[int], int | None]:
    """How many lanes there are, the slots whose deposits this treasury's lane pays now, and (several lanes) its
    fresh free USDC, if known: a deposit above it is no companion in its turns (`choose_lane` gives it elsewhere)."""
    paused = await paused_lanes(db, treasury.chain_id, treasury.lanes)
    slots = served_slots(treasury.lanes.index(treasury.address), paused)
    if len(treasury.lanes) <= 1:
        return 1, slots, None
    funds = (await store.treasury_funds(db, treasury.chain_id)).get(treasury.address.lower())
    fresh = funds is not None and funds.age_seconds <= FUNDS_FRESH_SECONDS
    return len(treasury.lanes), slots, funds.free_micro if fresh and funds is not None else None


def _signed_or_done(deposit: DepositRoute, by_address: dict[str, Treasury]) -> Treasury | PayoutResult | None:
    """Decided before any lane is looked at: a signed payout's treasury (this worker's, or not), or the end of a
    run for a deposit that is not processing; None: choose a lane."""
    if deposit.signed_by is not None:
        owner = by_address.get(deposit.signed_by.lower())
        if owner is not None:
            return owner
        detail = f"the deposit's payout was signed by treasury {deposit.signed_by}, whose key this worker lacks"
        return PayoutResult(PayoutOutcome.WAITING, detail)
    if deposit.status != "processing":
        return not_processing(deposit.status, deposit.tx_hash)
    return None


async def choose_lane(pool: Pool, treasuries: Sequence[Treasury], deposit_id: uuid.UUID) -> Treasury | PayoutResult:
    """The treasury whose lane pays the deposit: the one that signed its payout, if one did (its nonce is that
    treasury's); else, from the deposit's slot on, the first running lane whose treasury may cover it (`may_cover`).
    A result instead when no lane can pay it now (every lane paused, or no treasury's free USDC covers it), or when
    the deposit is no longer processing (a run after its payout was settled: paid)."""
    by_address = {t.address.lower(): t for t in treasuries}
    lanes = treasuries[0].lanes
    chain_id = treasuries[0].chain_id
    async with pool.acquire() as conn:
        deposit = await store.deposit_route(conn, deposit_id, chain_id)
        if deposit is None:
            return not_processing(None)
        decided = _signed_or_done(deposit, by_address)
        if decided is not None:
            return decided
        paused = [address.lower() in deposit.paused for address in lanes]  # as `paused_lanes` reads them
        short = [False] * len(lanes)
        amount, funds = None, {}
        if len(lanes) > 1 and not all(paused):
            amount = deposit.amount_micro
            funds = deposit.funds
            short = [not may_cover(funds.get(address.lower()), amount) for address in lanes]
        slot = slot_of(deposit_id, len(lanes))
        if all(paused):
            reason = "the payout lane of every treasury is paused (a shortfall): refill one, then resume it"
            return PayoutResult(PayoutOutcome.BLOCKED, reason, GUARD_RECHECK_SECONDS)
        lane = serving_lane(slot, [p or s for p, s in zip(paused, short, strict=True)])
        if lane is None and amount is not None:
            # Each running treasury's fresh reading is short of it: read again those this worker can (a top-up
            # since then pays it at its next look, not once the readings are stale).
            for address, was_paused in zip(lanes, paused, strict=True):
                treasury = by_address.get(address.lower())
                if treasury is not None and not was_paused:
                    reading = await treasury.usdc_balance() - await store.in_flight_micro(conn, chain_id, address)
                    await store.note_treasury_funds(conn, chain_id, address, reading)
            funds = await store.treasury_funds(conn, chain_id)
            short = [not may_cover(funds.get(address.lower()), amount) for address in lanes]
            lane = serving_lane(slot, [p or s for p, s in zip(paused, short, strict=True)])
            if lane is None and amount > (await store.guards(conn)).per_deposit_max_micro:
                lane = serving_lane(slot, paused)  # above the per-deposit maximum: its lane sends it to review
    if lane is None:  # several lanes, some running, and each running one's free USDC is short of it
        free = {a: f.free_micro for a, p in zip(lanes, paused, strict=True) if not p and (f := funds.get(a.lower()))}
        reason = (
            f"{TOO_LARGE} ({amount} micro-USDC; free USDC of each running treasury: {free}): top up one treasury "
            f"to at least that much; it is looked at again every {CAP_RECHECK_SECONDS:.0f} s"
        )
        # An alert: the other deposits go on, this one waits for an operator's top-up.
        log.error("payout blocked: larger than every treasury's free USDC", amount=amount, free=free)
        return PayoutResult(PayoutOutcome.BLOCKED, reason, CAP_RECHECK_SECONDS)
    chosen = by_address.get(lanes[lane].lower())
    if chosen is None:  # a treasury this worker has no key for: its lane is another worker's
        return PayoutResult(PayoutOutcome.WAITING, f"the deposit is treasury {lanes[lane]}'s to pay")
    return chosen
