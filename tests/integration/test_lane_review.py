"""An adversarial review of the pipelined lane (kiota/payouts/lane.py `Pipeline`): the ways money, or the
lane, could move wrongly with many payouts in flight, each tried against real PostgreSQL, Redis and anvil."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

from kiota import ops
from kiota.dev.chain import BASE_USDC_ADDRESS, mint_usdc, usdc_balance
from kiota.errors import ChainUnavailable
from kiota.ledger import user_account
from kiota.payouts import (
    LaneConfig,
    PayoutOutcome,
    PayoutResult,
    fill_abandoned_nonces,
    pay_deposit,
    recheck_settled_payouts,
    settle_stranded_payouts,
)
from kiota.payouts.lane import lane_key
from kiota.store.ledger import balance
from kiota.treasury import Fees, Receipt, SignedTx, Treasury
from tests.conftest import MpesaSystem
from tests.integration.test_mpesa_flow import transfers_from
from tests.integration.test_payout_lane import (
    BlindTreasury,
    _processing_while_killed,
    completions,
    drain_treasury,
    mining,
    rpc,
    treasury_for,
    wait_for,
)
from tests.integration.test_pipelined_lane import (
    USDC_10,
    FullPoolTreasury,
    LosingTreasury,
    SpyTreasury,
    _all_completed,
    _sent_count,
    blocks_every,
    in_flight,
    losing,
    paid_once_each,
    stop,
    tx_hash_of,
)
from tests.support import TREASURY_KEY

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
    owner: asyncio.Task[PayoutResult] | None = None
    try:
        async with blocks_every(system, 1):
            started = time.monotonic()
            owner = asyncio.create_task(pay_deposit(system.pool, treasury, uuid.UUID(ids[0]), config))
            done, _ = await asyncio.wait([owner], timeout=20)
            took = time.monotonic() - started
            assert done, "the owner still holds the lane 20 s into a 3 s watch"
            assert owner.result().outcome is PayoutOutcome.COMPLETED
            assert took < 12
    finally:
        if owner is not None and not owner.done():
            owner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await owner
        await treasury.aclose()
        await rpc(system, "evm_setAutomine", True)


# --- two owners after a lock loss ---------------------------------------------------------------------


class WatchedTreasury(Treasury):
    """Counts what it signs once `cut` is set: the owner whose lane lock was lost must sign nothing more."""

    cut = False
    signed_after_cut = 0

    def sign_transfer(self, to: str, amount: int, nonce: int, fees: Fees) -> SignedTx:
        if self.cut:
            self.signed_after_cut += 1
        return super().sign_transfer(to, amount, nonce, fees)


def _lock_parts(key: int) -> tuple[int, int]:
    """pg_locks shows a bigint advisory key as classid (high 32 bits) and objid (low 32 bits)."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


async def test_an_owner_whose_lock_connection_drops_stops_and_the_next_owner_pays_each_once(
    mpesa_system: MpesaSystem,
) -> None:
    """The lane lock lives on the owner's connection: when PostgreSQL drops it mid-pipeline (payouts settled,
    others in flight), the old owner signs nothing more, and a new owner pays every deposit exactly once."""
    system = mpesa_system
    users = [f"lost{i}" for i in range(7)]
    ids = await _processing_while_killed(system, users)
    old = treasury_for(system, WatchedTreasury)
    assert isinstance(old, WatchedTreasury)
    new = treasury_for(system)
    config = LaneConfig(poll_seconds=0.05, max_in_flight=3, drain_seconds=25, watch_seconds=5)
    classid, objid = _lock_parts(lane_key(old.chain_id, old.address))
    owner: asyncio.Task[PayoutResult] | None = None
    try:
        async with blocks_every(system, 1):
            owner = asyncio.create_task(pay_deposit(system.pool, old, uuid.UUID(ids[0]), config))

            async def settled_and_in_flight() -> bool:
                confirmed = await system.pool.fetchval("SELECT count(*) FROM payouts WHERE status = 'confirmed'")
                return confirmed >= 3 and await in_flight(system.pool) >= 1

            await wait_for(settled_and_in_flight, 30)
            old.cut = True
            killed = await system.pool.fetchval(
                "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                " WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()"
                " AND l.classid = $1 AND l.objid = $2 AND l.objsubid = 1",
                classid,
                objid,
            )
            assert killed == 1
            with contextlib.suppress(Exception):
                await asyncio.wait_for(owner, 20)  # it stops at its next use of the lost connection
            assert owner.done()
            assert old.signed_after_cut == 0
            # The deposits' jobs run again: one of them takes the lane and pays what is left.
            for deposit_id in ids:
                if await system.pool.fetchval("SELECT status FROM deposits WHERE id = $1", deposit_id) != "completed":
                    await pay_deposit(system.pool, new, uuid.UUID(deposit_id), config)
            await wait_for(lambda: _all_completed(system, ids), 30)
    finally:
        if owner is not None and not owner.done():
            owner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await owner
        await old.aclose()
        await new.aclose()
    assert old.signed_after_cut == 0
    await paid_once_each(system, users)


# --- a payout left in flight when no deposit's job is left to take the lane -------------------------


# Signed long ago, as the sweeper's upkeep waits for (STRANDED_AFTER_SECONDS).
STRANDED = "UPDATE payouts SET updated_at = now() - interval '1 hour' WHERE status = 'signed'"


async def upkeep_until_completed(system: MpesaSystem, treasury: Treasury, config: LaneConfig, ids: list[str]) -> None:
    """The worker's lane upkeep, as each maintenance tick runs it, until every deposit is completed; the payouts
    in flight are stranded first (signed long ago, as the sweeper waits for)."""
    await system.pool.execute(STRANDED)

    async def settled() -> bool:
        await fill_abandoned_nonces(system.pool, treasury, config)
        await recheck_settled_payouts(system.pool, treasury, config)
        await settle_stranded_payouts(system.pool, treasury, config)
        return await _all_completed(system, ids)

    await wait_for(settled, 20)


async def test_a_payout_left_in_flight_after_its_deposits_job_ended_is_sent_again_and_settled(
    mpesa_system: MpesaSystem,
) -> None:
    """The owner hands the lane over with a payout the node never got (a gap), and that deposit's job ends
    (an operator lowered the per-deposit maximum: its next run sends it to review). No deposit comes along
    to take the lane: the lane's upkeep sends the stored transaction again and settles it, once."""
    system = mpesa_system
    users = [f"strand{i}" for i in range(2)]
    ids = await _processing_while_killed(system, users)
    treasury, _ = await losing(system, 1)  # the second payout never reaches the node while the owner has the lane
    config = LaneConfig(poll_seconds=0.02, drain_seconds=0, watch_seconds=1.5, replace_after_blocks=1000)
    try:
        async with mining(system, every=0.3):
            result = await pay_deposit(system.pool, treasury, uuid.UUID(ids[0]), config)
            assert result.outcome is PayoutOutcome.COMPLETED
            assert await in_flight(system.pool) == 1
            await system.pool.execute("UPDATE payout_guards SET per_deposit_max_micro = 1")
            stranded = await pay_deposit(system.pool, treasury, uuid.UUID(ids[1]), config)  # its job's next run
            assert stranded.outcome is PayoutOutcome.REVIEW
            treasury.lost_nonce, treasury.lost = -1, set()  # the node takes it now
            await upkeep_until_completed(system, treasury, config, ids)
    finally:
        await treasury.aclose()
        await rpc(system, "evm_setAutomine", True)
    await paid_once_each(system, users)


class ReceiptsLagTheNonce(Treasury):
    """A node that counts a mined transaction before it serves its receipt, as anvil did under load (tens of ms):
    a payout's receipt shows only `LAG` seconds after a nonce count first included it."""

    LAG = 0.2
    nonces: dict[str, int]  # our payouts' transactions, by hash
    counted_at: dict[int, float]  # when a count first included a nonce

    def sign_transfer(self, to: str, amount: int, nonce: int, fees: Fees) -> SignedTx:
        signed = super().sign_transfer(to, amount, nonce, fees)
        self.nonces[signed.tx_hash] = nonce
        return signed

    async def mined_nonce(self) -> int:
        mined = await super().mined_nonce()
        for nonce in self.nonces.values():
            if nonce < mined:
                self.counted_at.setdefault(nonce, time.monotonic())
        return mined

    def _served(self, receipt: Receipt | None) -> Receipt | None:
        if receipt is None or receipt.tx_hash not in self.nonces:
            return receipt
        counted = self.counted_at.get(self.nonces[receipt.tx_hash])
        return receipt if counted is not None and time.monotonic() - counted >= self.LAG else None

    async def receipts(self, tx_hashes: list[str]) -> list[Receipt | None]:
        return [self._served(r) for r in await super().receipts(tx_hashes)]

    async def receipt(self, tx_hash: str) -> Receipt | None:
        return self._served(await super().receipt(tx_hash))


async def test_a_payout_counted_by_the_nonce_before_its_receipt_shows_is_settled_not_taken_for_another(
    mpesa_system: MpesaSystem,
) -> None:
    """A payout below the mined nonce whose receipt the node does not serve yet looked like a nonce used by another
    transaction: its deposit went to review until the nonce filler's turn found it paid (B7 on four treasuries
    showed it, 2026-12-07, the receipt 88 ms late). The owner now looks again for up to a second first."""
    system = mpesa_system
    users = [f"lagging{i}" for i in range(3)]
    ids = await _processing_while_killed(system, users)
    treasury = treasury_for(system, ReceiptsLagTheNonce)
    assert isinstance(treasury, ReceiptsLagTheNonce)
    treasury.nonces, treasury.counted_at = {}, {}
    config = LaneConfig(poll_seconds=0.02, drain_seconds=0.2, watch_seconds=0.3)
    try:
        result = await pay_deposit(system.pool, treasury, uuid.UUID(ids[0]), config)
        assert result.outcome is PayoutOutcome.COMPLETED, result
        assert await _all_completed(system, ids)
        assert await system.pool.fetchval("SELECT count(*) FROM payouts WHERE status <> 'confirmed'") == 0
    finally:
        await treasury.aclose()
    await paid_once_each(system, users)


class Counting(LosingTreasury):
    """Counts the transactions it sends."""

    sends = 0

    async def broadcast_many(self, raw_txs: list[str]) -> list[ChainUnavailable | None]:
        self.sends += len(raw_txs)
        return await super().broadcast_many(raw_txs)

    async def broadcast(self, raw_tx: str) -> None:
        self.sends += 1
        await super().broadcast(raw_tx)


async def in_flight_when_the_switch_goes_on(
    system: MpesaSystem, treasury: Counting, config: LaneConfig, ids: list[str], count: int
) -> tuple[int, int]:
    """An owner sends `count` payouts with no block mined (automine off), hands the lane over, and the kill switch
    goes on: the attempts stored and the transactions sent by then."""
    await rpc(system, "evm_setAutomine", False)  # no block while the owner has the lane
    result = await pay_deposit(system.pool, treasury, uuid.UUID(ids[0]), config)
    assert result.outcome is PayoutOutcome.WAITING and await in_flight(system.pool) == count
    await ops.set_kill_switch(system.pool, system.queue, True, "test")
    return await system.pool.fetchval("SELECT count(*) FROM payout_attempts"), treasury.sends


async def test_under_the_kill_switch_payouts_the_chain_mined_are_booked_and_nothing_is_sent(
    mpesa_system: MpesaSystem,
) -> None:
    """An owner hands the lane over with payouts in flight (sent, not yet mined), then the kill switch goes on
    and a block mines them anyway. Their deposits are paid: the lane's upkeep books them while the switch stays
    on (before, they waited for it to be turned off), and it sends nothing: not the lost payout the node never
    got (a gap), not a fee bump of the lowest one."""

    system = mpesa_system
    users = [f"booked{i}" for i in range(4)]
    ids = await _processing_while_killed(system, users)
    treasury = treasury_for(system, Counting)
    assert isinstance(treasury, Counting)
    treasury.lost, treasury.lost_nonce = set(), await treasury.pending_nonce() + 3  # the fourth never reaches the node
    config = LaneConfig(poll_seconds=0.02, drain_seconds=0, watch_seconds=0.3, replace_after_blocks=1)
    try:
        signed_before, sends_before = await in_flight_when_the_switch_goes_on(system, treasury, config, ids, 4)
        await rpc(system, "anvil_mine", 3)  # the three the node has are mined, the switch notwithstanding
        await system.pool.execute(STRANDED)

        assert await settle_stranded_payouts(system.pool, treasury, config)

        assert await _all_completed(system, ids[:3]) and not await _all_completed(system, ids[3:])
        assert await in_flight(system.pool) == 1
        assert await system.pool.fetchval("SELECT count(*) FROM payout_attempts") == signed_before  # none re-signed
        assert treasury.sends == sends_before  # the lost one was not sent again
        # The switch off, the lane's upkeep sends the lost one (the node takes it now) and settles it.
        await system.pool.execute("UPDATE payout_guards SET kill_switch = false")
        treasury.lost_nonce, treasury.lost = -1, set()
        await rpc(system, "evm_setAutomine", True)
        await upkeep_until_completed(system, treasury, config, ids)
    finally:
        await treasury.aclose()
        await rpc(system, "evm_setAutomine", True)
    await paid_once_each(system, users)


class BlindCounting(Counting, BlindTreasury):
    """Counts its sends, and its funds check sees plenty: a payout the treasury cannot cover is signed and reverts."""


async def test_under_the_kill_switch_a_payout_that_reverted_goes_to_review_and_nothing_is_sent(
    mpesa_system: MpesaSystem,
) -> None:
    """The kill switch goes on with three payouts in flight, and a block mines them anyway; the treasury held
    20 USDC, so the third reverts. The lane's upkeep books the two that moved money and sends the third's
    deposit to review with the lane paused, as any owner would, and it sends and signs nothing. The operator
    retries that deposit once its revert is final: each deposit is paid once."""
    system = mpesa_system
    users = [f"bounced{i}" for i in range(3)]
    ids = await _processing_while_killed(system, users)
    await drain_treasury(system)
    await mint_usdc(system.w3, BASE_USDC_ADDRESS, system.treasury_address, 2 * USDC_10)
    treasury = treasury_for(system, BlindCounting)
    assert isinstance(treasury, BlindCounting)
    treasury.lost = set()
    config = LaneConfig(poll_seconds=0.02, drain_seconds=0, watch_seconds=0.3, replace_after_blocks=1)
    last = await system.pool.fetchval("SELECT user_id FROM deposits WHERE id = $1", uuid.UUID(ids[2]))  # paid third
    try:
        signed_before, sends_before = await in_flight_when_the_switch_goes_on(system, treasury, config, ids, 3)
        await rpc(system, "anvil_mine", 1)  # all three in one block: the third finds the treasury empty
        await system.pool.execute(STRANDED)

        assert await settle_stranded_payouts(system.pool, treasury, config)

        assert await _all_completed(system, ids[:2])
        assert (await system.deposit(last, ids[2]))["status"] == "needs_review"
        assert "reverted" in await system.review_reason(ids[2])
        assert await system.pool.fetchval("SELECT status FROM payouts WHERE deposit_id = $1", uuid.UUID(ids[2])) == (
            "cancelling"  # a reorg could still mine it again, and this time succeed
        )
        assert (await system.pool.fetchrow("SELECT * FROM payout_guards"))["lane_paused"]
        assert await system.pool.fetchval("SELECT count(*) FROM payout_attempts") == signed_before  # none re-signed
        assert treasury.sends == sends_before
        assert await balance(system.pool, user_account(last, "USDC")) == 0

        # The revert final, the operator refills the treasury, turns the switch off, resumes the lane and retries.
        await rpc(system, "evm_setAutomine", True)
        await mint_usdc(system.w3, BASE_USDC_ADDRESS, system.treasury_address, USDC_10)

        async def reverted() -> bool:
            await rpc(system, "anvil_mine", 1)
            await fill_abandoned_nonces(system.pool, treasury, config)
            return await system.pool.fetchval("SELECT status FROM payouts WHERE status <> 'confirmed'") == "reverted"

        await wait_for(reverted, 20)
        await system.pool.execute("UPDATE payout_guards SET kill_switch = false")
        await ops.resume_lane(system.pool, system.queue, "test")
        await ops.retry_deposit(system.pool, system.queue, uuid.UUID(ids[2]), "test")
        await system.wait_status(last, ids[2], "completed")
    finally:
        await treasury.aclose()
        await rpc(system, "evm_setAutomine", True)
    payees = [bytes(log["topics"][2])[-20:].hex() for log in await transfers_from(system, system.treasury_address)]
    for user in users:
        address = await system.pool.fetchval("SELECT deposit_address FROM users WHERE id = $1", user)
        assert payees.count(address.lower().removeprefix("0x")) == 1
        assert await usdc_balance(system.w3, BASE_USDC_ADDRESS, address) == USDC_10
        assert await balance(system.pool, user_account(user, "USDC")) == USDC_10
    assert await completions(system) == len(users)


async def test_an_owner_stops_sending_and_re_pricing_once_the_kill_switch_goes_on(mpesa_system: MpesaSystem) -> None:
    """The switch goes on while an owner holds payouts in flight, the lowest unmined one lost by the node (a gap).
    Before, the owner went on re-pricing it at every block for the rest of its turn (a review's finding): a
    payout the operator meant to freeze could be pushed through."""
    system = mpesa_system
    users = [f"frozen{i}" for i in range(3)]
    ids = await _processing_while_killed(system, users)
    treasury, _ = await losing(system, 1)  # the second payout never reaches the node: it stays the lowest unmined
    config = LaneConfig(poll_seconds=0.02, drain_seconds=0, watch_seconds=1.5, replace_after_blocks=1)
    await rpc(system, "evm_setAutomine", False)  # no block until the switch is on

    async def all_sent() -> bool:
        return await in_flight(system.pool) == 3 and await _sent_count(system, 3)

    try:
        owner = asyncio.create_task(pay_deposit(system.pool, treasury, uuid.UUID(ids[0]), config))
        try:
            await wait_for(all_sent, 10)
            await ops.set_kill_switch(system.pool, system.queue, True, "test")
            signed_before = await system.pool.fetchval("SELECT count(*) FROM payout_attempts")
            async with mining(system, every=0.1):  # blocks come, and the lowest unmined nonce waits in vain
                await asyncio.wait_for(owner, 10)
        finally:
            await stop(owner, treasury)
        assert await system.pool.fetchval("SELECT count(*) FROM payout_attempts") == signed_before  # none re-priced
        assert await _all_completed(system, ids[:1]) and await in_flight(system.pool) == 2
        # The switch off, the lane's upkeep sends the lost one (the node takes it now) and everything settles.
        await system.pool.execute("UPDATE payout_guards SET kill_switch = false")
        treasury = treasury_for(system)
        await rpc(system, "evm_setAutomine", True)
        await upkeep_until_completed(system, treasury, config, ids)
    finally:
        await treasury.aclose()
        await rpc(system, "evm_setAutomine", True)
    await paid_once_each(system, users)


# --- the next owner, when the node takes fewer of the stored payouts than are unsettled -----------------


async def test_the_next_owner_resumes_more_unsent_payouts_than_the_node_takes_without_failing(
    mpesa_system: MpesaSystem,
) -> None:
    """An owner hands over with payouts the node refused (its pool takes three per sender; the cap is eight):
    they are stored, unsent. The next owner sends them again on taking the lane; the node refuses some again.
    That must slow the lane, as it does for the owner that signed them, not fail every job that takes it
    (five failures send a deposit to review)."""
    system = mpesa_system
    users = [f"resume{i}" for i in range(8)]
    ids = await _processing_while_killed(system, users)
    treasury = treasury_for(system, FullPoolTreasury)
    assert isinstance(treasury, FullPoolTreasury)
    treasury.nonces = {}
    await rpc(system, "evm_setAutomine", False)  # no block while the first owner has the lane
    first = LaneConfig(poll_seconds=0.02, max_in_flight=8, drain_seconds=0.3, watch_seconds=0.3)
    try:
        handed_over = await pay_deposit(system.pool, treasury, uuid.UUID(ids[0]), first)
        assert handed_over.outcome is PayoutOutcome.WAITING
        assert await in_flight(system.pool) == 8
        unsent = "SELECT count(*) FROM payout_attempts WHERE broadcast_at IS NULL"
        # At least the five the pool refused (the first owner may have sent fewer before its drain ended, on a
        # busy machine): more than the node takes, so the next owner's resend meets refusals.
        assert await system.pool.fetchval(unsent) >= 5
        config = LaneConfig(poll_seconds=0.02, max_in_flight=8, drain_seconds=5, watch_seconds=10)
        async with mining(system, every=0.4):
            result = await pay_deposit(system.pool, treasury, uuid.UUID(ids[1]), config)  # the next job's run
            assert result.outcome is PayoutOutcome.COMPLETED
            for deposit_id in ids:  # the deposits' jobs run again (each finds its payout settled)
                await pay_deposit(system.pool, treasury, uuid.UUID(deposit_id), config)
            await wait_for(lambda: _all_completed(system, ids), 20)
    finally:
        await treasury.aclose()
        await rpc(system, "evm_setAutomine", True)
    await paid_once_each(system, users)


# --- a replacement the provider refuses for a moment ----------------------------------------------------


class FlakyReplacementTreasury(Treasury):
    """A provider that rate-limits the next single send (a replacement goes out alone) `fail_next` times."""

    fail_next = 0

    async def broadcast(self, raw_tx: str) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ChainUnavailable("broadcast failed: 429 Too Many Requests")
        await super().broadcast(raw_tx)


async def test_a_replacement_the_provider_refuses_once_is_tried_again_at_the_next_block(
    mpesa_system: MpesaSystem,
) -> None:
    """The lowest unmined nonce is re-signed with higher fees and the provider refuses that one send: the owner
    tries again at the next head, as it does for receipts it could not read, rather than failing the job (whose
    failures send its deposit to review) with the whole pipeline."""
    system = mpesa_system
    ids = await _processing_while_killed(system, ["flaky"])
    treasury = treasury_for(system, FlakyReplacementTreasury)
    assert isinstance(treasury, FlakyReplacementTreasury)
    config = LaneConfig(poll_seconds=0.02, drain_seconds=1, watch_seconds=20, replace_after_blocks=1)
    await rpc(system, "evm_setAutomine", False)
    owner = asyncio.create_task(pay_deposit(system.pool, treasury, uuid.UUID(ids[0]), config))
    try:
        await wait_for(lambda: _sent_count(system, 1))
        sent = await system.pool.fetchrow("SELECT * FROM payout_attempts")
        base_fee = (await system.w3.eth.get_block("latest"))["baseFeePerGas"]
        treasury.fail_next = 1
        for _ in range(3):  # blocks its fees cannot pay for: it is re-signed, and that send is refused once
            await rpc(system, "anvil_setNextBlockBaseFeePerGas", hex(int(sent["max_fee_per_gas"]) * 20))
            await rpc(system, "anvil_mine")
            await asyncio.sleep(0.3)
        assert treasury.fail_next == 0
        await rpc(system, "anvil_setNextBlockBaseFeePerGas", hex(base_fee))
        async with mining(system, every=0.3):
            assert (await asyncio.wait_for(owner, 30)).outcome is PayoutOutcome.COMPLETED
    finally:
        await stop(owner, treasury)
        await rpc(system, "evm_setAutomine", True)
    await paid_once_each(system, ["flaky"])


# --- the in-flight cap after it was lowered with a full pipeline ----------------------------------------


class NewSendsSpy(SpyTreasury):
    """Measures the payouts in flight only when it sends a transaction not `known` before (a new payout)."""

    known: set[str]

    async def _check(self, raw_txs: list[str]) -> None:
        if any(tx_hash_of(raw) not in self.known for raw in raw_txs):
            self.most_in_flight = max(self.most_in_flight, await in_flight(self.pool))


async def test_the_cap_holds_after_it_was_lowered_with_more_payouts_in_flight(mpesa_system: MpesaSystem) -> None:
    """PAYOUT_MAX_IN_FLIGHT lowered from four to two with four in flight: the next owner takes over all four and
    signs nothing new until fewer than two are unsettled (it took over two and signed new ones beside the rest)."""
    system = mpesa_system
    users = [f"lowered{i}" for i in range(6)]
    ids = await _processing_while_killed(system, users)
    treasury = treasury_for(system)
    spy = NewSendsSpy(system.pool, system.settings.base_rpc_url, TREASURY_KEY, 8453, BASE_USDC_ADDRESS)
    await rpc(system, "evm_setAutomine", False)
    try:
        before = LaneConfig(poll_seconds=0.02, max_in_flight=4, drain_seconds=0.3, watch_seconds=0.3)
        assert (await pay_deposit(system.pool, treasury, uuid.UUID(ids[0]), before)).outcome is PayoutOutcome.WAITING
        assert await in_flight(system.pool) == 4
        spy.known = {r["tx_hash"] for r in await system.pool.fetch("SELECT tx_hash FROM payout_attempts")}
        lowered = LaneConfig(poll_seconds=0.02, max_in_flight=2, drain_seconds=5, watch_seconds=10)
        async with mining(system, every=0.4):
            await pay_deposit(system.pool, spy, uuid.UUID(ids[4]), lowered)
            for deposit_id in ids:  # the deposits' jobs run again until each is paid
                await pay_deposit(system.pool, spy, uuid.UUID(deposit_id), lowered)
            await wait_for(lambda: _all_completed(system, ids), 30)
    finally:
        await treasury.aclose()
        await spy.aclose()
        await rpc(system, "evm_setAutomine", True)
    await paid_once_each(system, users)
    assert 0 < spy.most_in_flight <= 2  # new payouts were signed, never with more than two in flight
