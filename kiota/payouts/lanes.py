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

Exactly once does not rest on the hash (two workers with different treasury lists may disagree): the
deposit's one live payout (a partial unique index) is claimed by the lane that signs it, under its row
lock, in the signing transaction (`payouts_still_created`); once signed, it stays with its treasury, whose
lane alone re-sends, replaces and settles it (`choose_lane`).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence

from kiota.db import Executor, Pool
from kiota.payouts.terms import GUARD_RECHECK_SECONDS, PayoutOutcome, PayoutResult
from kiota.store import payouts as store
from kiota.treasury import Treasury


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


def served_slots(lane: int, paused: Sequence[bool]) -> list[int]:
    """The slots whose deposits `lane` pays now: its own, and those of paused lanes it stands in for."""
    return [slot for slot in range(len(paused)) if serving_lane(slot, paused) == lane]


async def paused_lanes(db: Executor, chain_id: int, addresses: Sequence[str]) -> list[bool]:
    """Whether each treasury's lane is paused, in the order of `addresses`."""
    paused = {lane.address.lower() for lane in await store.treasury_lanes(db, chain_id) if lane.paused}
    return [address.lower() in paused for address in addresses]


async def lane_slots(db: Executor, treasury: Treasury) -> tuple[int, list[int]]:
    """How many lanes there are, and the slots whose deposits this treasury's lane pays now."""
    paused = await paused_lanes(db, treasury.chain_id, treasury.lanes)
    return len(treasury.lanes), served_slots(treasury.lanes.index(treasury.address), paused)


async def choose_lane(pool: Pool, treasuries: Sequence[Treasury], deposit_id: uuid.UUID) -> Treasury | PayoutResult:
    """The treasury whose lane pays the deposit: the one that signed its payout, if one did (its nonce is that
    treasury's); else the one serving the deposit's slot. A result instead when no lane can pay it now."""
    by_address = {t.address.lower(): t for t in treasuries}
    async with pool.acquire() as conn:
        signed = await store.payout_in_flight_of_deposit(conn, deposit_id)
        if signed is not None:
            owner = by_address.get(signed.from_address.lower())
            if owner is not None:
                return owner
            detail = f"the deposit's payout was signed by treasury {signed.from_address}, whose key this worker lacks"
            return PayoutResult(PayoutOutcome.WAITING, detail)
        lanes = treasuries[0].lanes
        paused = await paused_lanes(conn, treasuries[0].chain_id, lanes)
    lane = serving_lane(slot_of(deposit_id, len(lanes)), paused)
    if lane is None:
        reason = "the payout lane of every treasury is paused (a shortfall): refill one, then resume it"
        return PayoutResult(PayoutOutcome.BLOCKED, reason, GUARD_RECHECK_SECONDS)
    chosen = by_address.get(lanes[lane].lower())
    if chosen is None:  # a treasury this worker has no key for: its lane is another worker's
        return PayoutResult(PayoutOutcome.WAITING, f"the deposit is treasury {lanes[lane]}'s to pay")
    return chosen
