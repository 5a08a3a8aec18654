"""`kiota reconcile`: every user's ledger USDC against the USDC at their deposit address, custody against
all of them, and each treasury (several treasuries: each on chain and what its payouts paid, then all of
them against the ledger's payouts).

Custody (`custody:USDC`) is what the ledger says the deposit addresses hold: every user's USDC, plus USDC held
in suspense for a person. A user's line can agree while custody does not: a reorg took a credited deposit away
(the user's credit went to suspense, the USDC is gone from chain) and nobody has resolved it yet; or it was
written off without taking it out of custody. The custody line says so.

It also checks the caps' running totals per minute (migration 0023) against the payouts they count: payouts
written with their triggers off leave them behind, and the caps then count too much or too little.

Differences are reported, never corrected here: a person decides (an uncredited
transfer, a reorg deeper than the confirmations, a payout that was never booked).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Final

from kiota.chain_rpc import ChainReader
from kiota.db import Pool
from kiota.ledger import CUSTODY_USDC, TREASURY_USDC
from kiota.money import format_usdc
from kiota.store.ledger import balance
from kiota.store.ops import user_ledgers
from kiota.store.payouts import cap_totals_drift, paid_out_by_treasury

CAPS_CHECKED_HOURS: Final = 25.0  # the daily cap's window and an hour more


@dataclass(frozen=True, slots=True)
class Difference:
    """Two figures that should agree: the ledger's and the chain's, unless `sides` names others."""

    who: str
    address: str
    ledger_micro: int
    chain_micro: int
    sides: tuple[str, str] = ("ledger", "chain")


async def reconcile(
    pool: Pool,
    reader: ChainReader,
    token: str,
    treasury: str | Sequence[str] | None,
    on_progress: Callable[[int, int], None] | None = None,
    *,
    chain_id: int,
) -> tuple[list[Difference], list[str]]:
    """Each user's ledger USDC against their deposit address on chain (one RPC call each: `on_progress(done,
    total)` after each), the caps' running totals of `chain_id`, then each treasury's (`treasury`: one address,
    or several)."""
    differences: list[Difference] = []
    lines: list[str] = []
    users = await user_ledgers(pool)
    held = 0
    for done, user in enumerate(users, 1):
        chain = await reader.usdc_balance(token, user.deposit_address)
        held += chain
        ledger = user.ledger_micro
        lines.append(f"user {user.id} {user.deposit_address} ledger {format_usdc(ledger)} chain {format_usdc(chain)}")
        if chain != ledger:
            differences.append(Difference(f"user {user.id}", user.deposit_address, ledger, chain))
        if on_progress is not None:
            on_progress(done, len(users))
    custody = await balance(pool, CUSTODY_USDC)
    lines.append(f"custody per ledger {format_usdc(custody)}; at deposit addresses on chain {format_usdc(held)}")
    if custody != held:
        differences.append(Difference("custody:USDC", "all deposit addresses", custody, held))
    caps = await _cap_totals(pool, chain_id)
    if caps is not None:
        differences.append(caps)
    said = "agree with the payouts" if caps is None else "DIFFER from the payouts"
    lines.append(f"caps' running totals for the last {CAPS_CHECKED_HOURS:.0f} h {said}")
    treasuries = [treasury] if isinstance(treasury, str) else list(treasury or [])
    if treasuries:
        lines += await _treasuries(pool, reader, token, treasuries)
    return differences, lines


async def _cap_totals(pool: Pool, chain_id: int) -> Difference | None:
    """The chain's caps' running totals per minute (migration 0023) against the payouts they count, over the window
    the daily cap reads: a difference means the caps count too much or too little (README, Runbook: rebuild them).
    The sums are over the minutes that disagree, which the count says (two may differ in opposite directions)."""
    drift = await cap_totals_drift(pool, chain_id, CAPS_CHECKED_HOURS * 3600)
    if not drift:
        return None
    first = f"{drift[0].minute.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    where = f"{len(drift)} minute(s) from {first}"
    payouts, totals = sum(m.payouts_micro for m in drift), sum(m.totals_micro for m in drift)
    return Difference("caps payout_cap_minutes", where, payouts, totals, ("payouts", "running totals"))


async def _treasuries(pool: Pool, reader: ChainReader, token: str, treasuries: list[str]) -> list[str]:
    """Each treasury's USDC on chain and what its settled payouts paid, then all of them together against the
    ledger. The treasuries' funding is not booked, so the ledger's account holds only the payouts (negative)."""
    lines = []
    by_payouts = await paid_out_by_treasury(pool)
    on_chain = 0
    for address in treasuries:
        chain = await reader.usdc_balance(token, address)
        on_chain += chain
        paid = format_usdc(by_payouts.get(address.lower(), 0))
        lines.append(f"treasury {address} on chain {format_usdc(chain)}; paid out by its payouts {paid}")
    paid_out = -await balance(pool, TREASURY_USDC)
    every = "treasuries" if len(treasuries) > 1 else "treasury"
    lines.append(f"{every} on chain {format_usdc(on_chain)}; paid out per ledger {format_usdc(paid_out)}")
    return lines
