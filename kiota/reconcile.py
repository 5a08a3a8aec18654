"""`kiota reconcile`: every user's ledger USDC against the USDC at their deposit address, custody against
all of them, and the treasury.

Custody (`custody:USDC`) is what the ledger says the deposit addresses hold: every user's USDC, plus USDC held
in suspense for a person. A user's line can agree while custody does not: a reorg took a credited deposit away
(the user's credit went to suspense, the USDC is gone from chain) and nobody has resolved it yet; or it was
written off without taking it out of custody. The custody line says so.

Differences are reported, never corrected here: a person decides (an uncredited
transfer, a reorg deeper than the confirmations, a payout that was never booked).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kiota.chain_rpc import ChainReader
from kiota.db import Pool
from kiota.ledger import CUSTODY_USDC, TREASURY_USDC
from kiota.money import format_usdc
from kiota.store.ledger import balance
from kiota.store.ops import user_ledgers


@dataclass(frozen=True, slots=True)
class Difference:
    who: str
    address: str
    ledger_micro: int
    chain_micro: int


async def reconcile(
    pool: Pool,
    reader: ChainReader,
    token: str,
    treasury: str | None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Difference], list[str]]:
    """Each user's ledger USDC against their deposit address on chain (one RPC call each: `on_progress(done,
    total)` after each), then the treasury's."""
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
    if treasury:
        # The treasury's funding is not booked, so its ledger account holds only the payouts (negative).
        paid_out = -await balance(pool, TREASURY_USDC)
        chain = await reader.usdc_balance(token, treasury)
        lines.append(f"treasury {treasury} on chain {format_usdc(chain)}; paid out per ledger {format_usdc(paid_out)}")
    return differences, lines
