"""The payout guards, checked before anything is signed: the kill switch, the lane's pause, the
per-deposit maximum, the hourly and daily caps, and the treasury's USDC and ETH.

A shortfall of the treasury is an alert: it pauses the lane (an operator resumes it).
"""

from __future__ import annotations

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
    for window, name, cap in ((HOUR, "hourly", guards.hourly_cap_micro), (DAY, "daily", guards.daily_cap_micro)):
        spent = await store.paid_out_since(conn, treasury.chain_id, window)
        if spent + amount > cap:
            return PayoutResult(PayoutOutcome.BLOCKED, f"the {name} payout cap would be exceeded", CAP_RECHECK_SECONDS)
    in_flight = await store.in_flight_micro(conn, treasury.chain_id)
    usdc = await treasury.usdc_balance(block="latest" if funds_at is None else funds_at)
    eth = await treasury.eth_balance()
    # The treasury-low alerts' gauges (whole units: a metric, not money we compute with).
    metrics.tally.set(metrics.TREASURY_BALANCE, eth / 10**18, "ETH")
    metrics.tally.set(metrics.TREASURY_BALANCE, usdc / 10**6, "USDC")
    shortfall = None
    if usdc - in_flight < amount:
        shortfall = f"treasury USDC {usdc} (in flight {in_flight}) is below the payout {amount}"
    elif eth < fees.max_fee_per_gas * TRANSFER_GAS_LIMIT * (pending + len(batch) + 1):  # and a replacement
        shortfall = f"treasury ETH {eth} wei cannot pay for gas"
    if shortfall is None:
        return None
    if not alert:
        return PayoutResult(PayoutOutcome.BLOCKED, shortfall)
    await store.pause_lane(conn, shortfall)
    # An alert: an error line here and the paused lane in /metrics and the dashboard.
    log.error("payout lane paused: treasury shortfall", reason=shortfall, treasury=treasury.address)
    return PayoutResult(PayoutOutcome.BLOCKED, f"the payout lane is paused: {shortfall}", GUARD_RECHECK_SECONDS)
