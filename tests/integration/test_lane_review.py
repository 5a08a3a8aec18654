"""An adversarial review of the pipelined lane (kiota/payouts/lane.py `Pipeline`): the ways money, or the
lane, could move wrongly with many payouts in flight, each tried against real PostgreSQL, Redis and anvil."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

from kiota.payouts import LaneConfig, PayoutOutcome, pay_deposit
from kiota.treasury import Receipt
from tests.conftest import MpesaSystem
from tests.integration.test_payout_lane import _processing_while_killed, rpc, treasury_for
from tests.integration.test_pipelined_lane import LosingTreasury, blocks_every

# --- the owner's bound: drain + watch, even when every look finds a new block -------------------------


class SlowReceiptsLosingTreasury(LosingTreasury):
    """A gap that never fills (LosingTreasury), and a provider whose batch of receipts takes longer than a
    block: each time the owner looks, a new head has come."""

    async def receipts(self, tx_hashes: list[str]) -> list[Receipt | None]:
        await asyncio.sleep(1.3)
        return await super().receipts(tx_hashes)


async def test_the_owner_hands_the_lane_over_at_its_bound_even_when_every_look_finds_a_new_block(
    mpesa_system: MpesaSystem,
) -> None:
    """The owner's drain + watch must stay inside arq's job timeout (jobs/worker.py): it stops once the watch
    is over although a payout stays in flight and blocks come faster than it settles them."""
    system = mpesa_system
    users = [f"bound{i}" for i in range(3)]
    ids = await _processing_while_killed(system, users)
    treasury = treasury_for(system, SlowReceiptsLosingTreasury)
    assert isinstance(treasury, SlowReceiptsLosingTreasury)
    treasury.lost = set()
    treasury.lost_nonce = await treasury.pending_nonce() + 1  # the second payout never reaches the node
    config = LaneConfig(poll_seconds=0.05, drain_seconds=0, watch_seconds=3, replace_after_blocks=1000)
    owner: asyncio.Task[object] | None = None
    try:
        async with blocks_every(system, 1):
            started = time.monotonic()
            owner = asyncio.create_task(pay_deposit(system.pool, treasury, uuid.UUID(ids[0]), config))
            done, _ = await asyncio.wait([owner], timeout=20)
            took = time.monotonic() - started
            assert done, "the owner still holds the lane 20 s into a 3 s watch"
            assert owner.result().outcome is PayoutOutcome.COMPLETED  # type: ignore[attr-defined]
            assert took < 12
    finally:
        if owner is not None and not owner.done():
            owner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await owner
        await treasury.aclose()
        await rpc(system, "evm_setAutomine", True)
