"""The payout guards, checked before anything is signed: the kill switch, the lanes' pause, the
per-deposit maximum, the hourly and daily caps, and the treasury's USDC and ETH.

The kill switch, the global pause and the caps are the guards of all treasuries together: the caps sum
every treasury's payouts, and `caps_hold` checks them again while signing, under one lock, so that two
lanes signing at once cannot both fit under what is left. Funds are each treasury's own: a shortfall is an
alert that pauses that treasury's lane only (an operator resumes it); the other lanes go on and take its
deposits (kiota/payouts/lanes.py).

With several treasuries, a lane pauses only when its treasury truly runs dry: no ETH for gas, or free USDC
(balance less payouts in flight) below `DRY_BELOW_MICRO`, when it cannot pay even a small deposit. A USDC shortfall
for one deposit larger than the lane's free USDC, while the lane can still pay smaller ones, pauses nothing: the
lane remembers its free USDC (every check does, table treasury_funds) and hands the deposit back (WAITING), and
`choose_lane` gives it to a running lane whose treasury covers it, or blocks it with its reason when none does,
while every lane goes on paying the others. Without this, one deposit larger than each treasury's free USDC (but
not than their sum) paused its slot's lane, moved to the next and paused that too, until every lane was paused.

With one treasury, a shortfall still pauses its lane, as before several treasuries: there is no other lane to
give a large deposit to, the pause is the loud alert (KiotaTreasuryLanePaused) that makes an operator refill
the treasury, whose USDC is then short of what users ask; a lane left running would page no one while each large
deposit sat blocked.
"""

from __future__ import annotations

import hashlib

import structlog

from kiota import metrics
from kiota.db import Connection, Pool
from kiota.payouts.terms import CAP_RECHECK_SECONDS, GUARD_RECHECK_SECONDS, LaneItem, PayoutOutcome, PayoutResult
from kiota.records import Deposit, Guards
from kiota.store import payouts as store
from kiota.store.deposits import deposit_to_review
from kiota.treasury import TRANSFER_GAS_LIMIT, Fees, Treasury

log = structlog.get_logger(__name__)

HOUR, DAY = 3600.0, 86400.0
# Several treasuries: a treasury with less free USDC than this is dry, its lane pauses (M-Pesa's 10-KES minimum is
# 0.02-0.2 USDC in the rate band; below 1 USDC a treasury pays almost nothing, and its deposits go elsewhere).
DRY_BELOW_MICRO = 1_000_000
# The advisory lock every lane's signing transaction takes for the caps (transaction-scoped).
CAPS_LOCK_KEY = int.from_bytes(hashlib.sha256(b"kiota-payout-caps").digest()[:8], "big", signed=True)


async def guards_stop(pool: Pool, guards: Guards, deposit: Deposit) -> PayoutResult | None:
    """Whether a guard stops this deposit's payout before the lane is even asked for; over the
    per-deposit maximum, the deposit goes to review."""
    if guards.kill_switch:
        return PayoutResult(PayoutOutcome.BLOCKED, "the payout kill switch is on", GUARD_RECHECK_SECONDS)
    if guards.lane_paused:
        reason = f"the payout lane is paused: {guards.pause_reason}"
        return PayoutResult(PayoutOutcome.BLOCKED, reason, GUARD_RECHECK_SECONDS)
    if deposit.amount_usdc > guards.per_deposit_max_micro:
        reason = "the payout is above the per-deposit maximum"
        await deposit_to_review(pool, deposit.id, reason)
        return PayoutResult(PayoutOutcome.REVIEW, reason)
    return None


async def check_caps_and_funds(
    conn: Connection,
    treasury: Treasury,
    guards: Guards,
    batch: list[LaneItem],
    fees: Fees,
    funds_at: int | None = None,
    *,
    alert: bool,
    pending: int = 0,
) -> PayoutResult | None:
    """Whether the batch fits the caps and the treasury; with `alert`, a shortfall pauses the lane. `pending`:
    the treasury's transactions already in flight, whose gas the node counts against its ETH too."""
    amount = sum(item.payee.deposit.amount_usdc for item in batch)
    over = await _cap_exceeded(conn, treasury.chain_id, guards, amount)
    if over is not None:
        return PayoutResult(PayoutOutcome.BLOCKED, f"the {over} payout cap would be exceeded", CAP_RECHECK_SECONDS)
    in_flight = await store.in_flight_micro(conn, treasury.chain_id, treasury.address)
    usdc = await treasury.usdc_balance(block="latest" if funds_at is None else funds_at)
    eth = await treasury.eth_balance()
    # The treasury-low alerts' gauges, one per treasury (whole units: a metric, not money we compute with).
    metrics.tally.set(metrics.TREASURY_BALANCE, eth / 10**18, "ETH", treasury.address)
    metrics.tally.set(metrics.TREASURY_BALANCE, usdc / 10**6, "USDC", treasury.address)
    free = usdc - in_flight
    several = len(treasury.lanes) > 1
    if several:  # steers the choice of lane for deposits larger than some treasury's free USDC (lanes.py)
        await store.note_treasury_funds(conn, treasury.chain_id, treasury.address, free)
    shortfall = None
    usdc_short = free < amount
    if usdc_short:
        shortfall = f"treasury USDC {usdc} (in flight {in_flight}) is below the payout {amount}"
    elif eth < fees.max_fee_per_gas * TRANSFER_GAS_LIMIT * (pending + len(batch) + 1):  # and a replacement
        shortfall = f"treasury ETH {eth} wei cannot pay for gas"
    if shortfall is None:
        return None
    if not alert:
        return PayoutResult(PayoutOutcome.BLOCKED, shortfall)
    if several and usdc_short and free >= DRY_BELOW_MICRO:  # too large for this treasury, which is not dry
        log.info("payout larger than the treasury's free USDC: handed to another lane", reason=shortfall)
        reason = f"the payout {amount} is larger than treasury {treasury.address}'s free USDC {free}"
        return PayoutResult(PayoutOutcome.WAITING, reason)  # its next run: a lane that covers it, or blocked
    await store.pause_treasury(conn, treasury.chain_id, treasury.address, shortfall)
    # An alert: an error line here and the paused lane in /metrics and the dashboard.
    log.error("treasury lane paused: treasury shortfall", reason=shortfall, treasury=treasury.address)
    reason = f"the payout lane of treasury {treasury.address} is paused: {shortfall}"
    if several:  # the job's next run, in a moment, goes to another treasury's lane (lanes.py)
        return PayoutResult(PayoutOutcome.WAITING, reason)
    return PayoutResult(PayoutOutcome.BLOCKED, reason, GUARD_RECHECK_SECONDS)


async def _cap_exceeded(conn: Connection, chain_id: int, guards: Guards, amount: int) -> str | None:
    """Which cap (hourly, daily) `amount` more would exceed, counting every treasury's payouts; None: none."""
    for window, name, cap in ((HOUR, "hourly", guards.hourly_cap_micro), (DAY, "daily", guards.daily_cap_micro)):
        if await store.paid_out_since(conn, chain_id, window) + amount > cap:
            return name
    return None


async def caps_hold(conn: Connection, chain_id: int, guards: Guards, batch: list[LaneItem]) -> bool:
    """Inside a signing transaction: whether the batch still fits the caps, with the caps' lock held until the
    transaction ends, so that the lanes of several treasuries sign one batch at a time against them."""
    await store.lock_caps(conn, CAPS_LOCK_KEY)
    amount = sum(item.payee.deposit.amount_usdc for item in batch)
    return await _cap_exceeded(conn, chain_id, guards, amount) is None
