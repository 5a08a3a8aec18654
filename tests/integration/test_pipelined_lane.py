"""The lane's pipeline with many payouts in flight: every exactly-once guarantee still holds.

The lane owner signs and sends the next nonces while earlier ones wait for their block (kiota/payouts/lane.py
`Pipeline`). Here: every transaction it sends was stored first; a worker killed at each failpoint in the
middle of a full pipeline pays every deposit once after a restart; the nonce filler fills a gap in the
middle of the pipeline; a reorg of a block holding several payouts while others are in flight credits none
twice; fee replacement touches only the lowest unmined nonce; batches grow past 20 when deposits wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from arq.constants import job_key_prefix, retry_key_prefix
from eth_utils.crypto import keccak

from kiota.db import advisory_unlock, try_advisory_lock
from kiota.dev.chain import BASE_USDC_ADDRESS, usdc_balance
from kiota.errors import ChainUnavailable
from kiota.job_names import JobName, arq_queue_of
from kiota.ledger import user_account
from kiota.payouts import (
    LaneConfig,
    PayoutOutcome,
    PayoutResult,
    abandon,
    fill_abandoned_nonces,
    pay_deposit,
    recheck_settled_payouts,
)
from kiota.payouts import lane as lane_module
from kiota.payouts.lane import IN_FLIGHT_RECHECK_SECONDS, lane_key
from kiota.store.ledger import balance
from kiota.treasury import Fees, SignedTx, Treasury
from tests.conftest import MpesaSystem
from tests.integration.test_mpesa_flow import counts, transfers_from
from tests.integration.test_payout_lane import (
    _processing_while_killed,
    completions,
    mining,
    rpc,
    treasury_for,
    wait_for,
)
from tests.integration.test_recovery import spawn_worker, stop_worker_process
from tests.support import TREASURY_KEY

USDC_10 = 10_000_000


def tx_hash_of(raw_tx: str) -> str:
    """A typed transaction's hash is the keccak of its raw bytes."""
    return "0x" + keccak(bytes.fromhex(raw_tx.removeprefix("0x"))).hex()


async def paid_once_each(system: MpesaSystem, users: list[str]) -> None:
    """Each user's deposit paid exactly once: on chain (one transfer each, 10 USDC at its address) and in
    the ledger (one completion each, 10 USDC balance)."""
    logs = await transfers_from(system, system.treasury_address)
    assert len(logs) == len(users)
    for user in users:
        address = await system.pool.fetchval("SELECT deposit_address FROM users WHERE id = $1", user)
        assert await usdc_balance(system.w3, BASE_USDC_ADDRESS, address) == USDC_10
        assert await balance(system.pool, user_account(user, "USDC")) == USDC_10
    assert await completions(system) == len(users)
    nonces = [r["nonce"] for r in await system.pool.fetch("SELECT nonce FROM payouts WHERE status = 'confirmed'")]
    assert len(nonces) == len(set(nonces)) == len(users)


async def in_flight(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM payouts WHERE status = 'signed'"))


# --- signed attempts stored before they are sent --------------------------------------------------


class SpyTreasury(Treasury):
    """Checks, at every send, that each transaction is already committed in payout_attempts (read on a
    connection of its own, which sees committed rows only), and how many payouts are in flight then."""

    def __init__(self, pool: asyncpg.Pool, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.pool = pool
        self.sent: list[str] = []
        self.unstored: list[str] = []
        self.most_in_flight = 0

    async def _check(self, raw_txs: list[str]) -> None:
        hashes = [tx_hash_of(raw) for raw in raw_txs]
        rows = await self.pool.fetch("SELECT tx_hash FROM payout_attempts WHERE tx_hash = ANY($1::text[])", hashes)
        stored = {r["tx_hash"] for r in rows}
        self.unstored += [h for h in hashes if h not in stored]
        self.sent += hashes
        self.most_in_flight = max(self.most_in_flight, await in_flight(self.pool))

    async def broadcast_many(self, raw_txs: list[str]) -> list[ChainUnavailable | None]:
        await self._check(raw_txs)
        return await super().broadcast_many(raw_txs)

    async def broadcast(self, raw_tx: str) -> None:
        await self._check([raw_tx])
        await super().broadcast(raw_tx)


async def test_every_transaction_the_pipeline_sends_was_stored_before(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    users = [f"spy{i}" for i in range(10)]
    ids = await _processing_while_killed(system, users)
    await rpc(system, "evm_setAutomine", False)  # blocks come every 0.4 s: payouts wait for them in flight
    spy = SpyTreasury(system.pool, system.settings.base_rpc_url, TREASURY_KEY, 8453, BASE_USDC_ADDRESS)
    config = LaneConfig(poll_seconds=0.02, max_in_flight=4, drain_seconds=20, watch_seconds=10)
    try:
        async with mining(system, every=0.4):
            result = await pay_deposit(system.pool, spy, uuid.UUID(ids[0]), config)
            await wait_for(lambda: _all_completed(system, ids), 20)
    finally:
        await spy.aclose()
    assert result.outcome is PayoutOutcome.COMPLETED
    assert spy.unstored == []
    assert len(set(spy.sent)) >= len(users)
    assert spy.most_in_flight >= 3  # several in flight at once, never more than the cap
    assert await system.pool.fetchval("SELECT max(n) FROM (SELECT count(*) n FROM payout_attempts "
                                      "GROUP BY created_at) t") <= 4  # fmt: skip
    await paid_once_each(system, users)


async def _all_completed(system: MpesaSystem, ids: list[str]) -> bool:
    done = await system.pool.fetchval(
        "SELECT count(*) FROM deposits WHERE id = ANY($1::uuid[]) AND status = 'completed'", ids
    )
    return bool(done == len(ids))


async def test_batches_grow_past_20_when_deposits_wait(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    users = [f"many{i}" for i in range(26)]
    ids = await _processing_while_killed(system, users)
    treasury = treasury_for(system)
    try:
        result = await pay_deposit(system.pool, treasury, uuid.UUID(ids[0]), LaneConfig(drain_seconds=0))
    finally:
        await treasury.aclose()
    assert result.outcome is PayoutOutcome.COMPLETED
    sizes = [r["n"] for r in await system.pool.fetch("SELECT count(*) n FROM payout_attempts GROUP BY created_at")]
    assert sizes == [26]  # one signing transaction for all of them
    await paid_once_each(system, users)


async def _pay_while_the_lane_is_owned(
    system: MpesaSystem, treasury: Treasury, deposit_id: str, config: LaneConfig
) -> tuple[PayoutResult, float]:
    """pay_deposit while another worker owns the treasury's lane: its result and how long the job held its slot."""
    key = lane_key(treasury.chain_id, treasury.address)
    async with system.pool.acquire() as owner:
        assert await try_advisory_lock(owner, key)
        try:
            started = time.monotonic()
            result = await pay_deposit(system.pool, treasury, uuid.UUID(deposit_id), config)
            return result, time.monotonic() - started
        finally:
            await advisory_unlock(owner, key)


OWNED = "the treasury lane is owned by another worker"


async def _waits_for_blocks(treasury: Treasury) -> bool:
    return treasury.pace.waits_for_blocks()


async def test_on_slow_blocks_a_newly_confirmed_deposits_job_gives_its_slot_back_at_once(
    mpesa_system: MpesaSystem,
) -> None:
    """On 2-second blocks a deposit's job does not wait in its slot for the lane's owner to sign its payout: the
    owner signs it in its turn, or a later run takes the lane over. Waiting there, every lane's jobs held the
    slots every first run needs (B7 with four treasuries). A process whose owners have not sent yet cannot tell
    the chain's pace, and a deposit confirmed long ago may be one no owner takes: their jobs wait as before."""
    system = mpesa_system
    users = ["slow0", "slow1"]
    first, second = await _processing_while_killed(system, users)
    await system.pool.execute("UPDATE deposits SET confirmed_at = NULL WHERE id = $1", second)
    treasury, fresh = treasury_for(system), treasury_for(system)
    try:
        async with blocks_every(system, 600):  # no block until the test mines one
            unseen, waited = await _pay_while_the_lane_is_owned(system, fresh, first, LaneConfig(lock_wait_seconds=0.5))
            assert unseen == PayoutResult(PayoutOutcome.WAITING, OWNED) and waited >= 0.5
            assert not treasury.pace.waits_for_blocks()
            owner = asyncio.create_task(pay_deposit(system.pool, treasury, uuid.UUID(first), LaneConfig()))
            try:
                await wait_for(lambda: _waits_for_blocks(treasury))  # its send was not mined as it came
                await rpc(system, "evm_mine")
                assert (await owner).outcome is PayoutOutcome.COMPLETED
            finally:
                owner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await owner

            await system.pool.execute("UPDATE deposits SET confirmed_at = now() WHERE id = $1", second)
            busy, held = await _pay_while_the_lane_is_owned(system, treasury, second, LaneConfig(lock_wait_seconds=5))
            assert busy == PayoutResult(PayoutOutcome.WAITING, OWNED, IN_FLIGHT_RECHECK_SECONDS)
            assert held < 1.0  # not the 5 s of lock_wait_seconds
            assert await system.pool.fetchval("SELECT count(*) FROM payouts WHERE deposit_id = $1", second) == 0

            await system.pool.execute(
                "UPDATE deposits SET confirmed_at = now() - interval '1 minute' WHERE id = $1", second
            )
            old, waited = await _pay_while_the_lane_is_owned(
                system, treasury, second, LaneConfig(lock_wait_seconds=0.5)
            )
            assert old == unseen and waited >= 0.5
        paid = await pay_deposit(system.pool, treasury, uuid.UUID(second), LaneConfig())  # free, on automine again
        assert paid.outcome is PayoutOutcome.COMPLETED
    finally:
        await treasury.aclose()
        await fresh.aclose()
    await paid_once_each(system, users)


async def test_on_slow_blocks_the_owner_pays_a_deposit_whose_job_left_the_owned_lane(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    users = ["leaves0", "leaves1"]
    first, second = await _processing_while_killed(system, users)
    await system.pool.execute("UPDATE deposits SET confirmed_at = NULL WHERE id = $1", second)  # not yet
    treasury = treasury_for(system)
    try:
        async with blocks_every(system, 600):  # no block until the test mines one
            config = LaneConfig(poll_seconds=0.02, drain_seconds=30, watch_seconds=30)
            owner = asyncio.create_task(pay_deposit(system.pool, treasury, uuid.UUID(first), config))
            try:
                await wait_for(lambda: in_flight(system.pool))  # the owner's own payout waits for its block
                await system.pool.execute("UPDATE deposits SET confirmed_at = now() WHERE id = $1", second)
                await wait_for(lambda: _waits_for_blocks(treasury))
                left = await pay_deposit(system.pool, treasury, uuid.UUID(second), LaneConfig())
                assert left == PayoutResult(PayoutOutcome.WAITING, OWNED, IN_FLIGHT_RECHECK_SECONDS)
                await wait_for(lambda: _in_flight_is(system, 2))  # the owner signed it at its next look
                await rpc(system, "evm_mine")
                await wait_for(lambda: _all_completed(system, [first, second]))
                assert (await owner).outcome is PayoutOutcome.COMPLETED
            finally:
                await stop(owner, treasury)
    finally:
        await treasury.aclose()
    await paid_once_each(system, users)


async def _in_flight_is(system: MpesaSystem, count: int) -> bool:
    return await in_flight(system.pool) == count


# --- a worker killed at each failpoint with a full pipeline -----------------------------------------


PAID_MEANWHILE = "deposit paid in its lane owner's turn: no further run needed"


async def test_on_slow_blocks_the_owner_finishes_the_jobs_of_the_deposits_its_turn_paid(
    mpesa_system: MpesaSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deposit whose job left the owned lane is paid in the owner's turn; its job then succeeds at once and arq
    forgets it: no run comes only to find it paid (on Base, most deposits' second run). The job stays one run
    with a line saying who paid it, and the deposit is paid once."""
    system = mpesa_system
    # The recheck is long here, so it is the owner that finishes the jobs, not a race with their next run.
    monkeypatch.setattr(lane_module, "IN_FLIGHT_RECHECK_SECONDS", 120.0)
    users = ["turn0", "turn1", "turn2"]
    async with blocks_every(system, 600):  # no block until the test mines one
        ids = [(await system.initiate(user, 1295)).json()["deposit_id"] for user in users]

        async def signed_and_waiting() -> bool:
            signed = await system.pool.fetchval("SELECT count(*) FROM payouts WHERE status = 'signed'")
            waiting = await system.pool.fetchval("SELECT count(*) FROM jobs WHERE status = 'retrying'")
            return bool(signed == 3 and waiting == 2)  # the owner's own job is still running its turn

        await wait_for(signed_and_waiting)
        await rpc(system, "evm_mine")
        for user, deposit_id in zip(users, ids, strict=True):
            await system.wait_status(user, deposit_id, "completed")
        await wait_for(lambda: _all_succeeded(system))
    jobs = await system.pool.fetch("SELECT * FROM jobs WHERE function = 'complete_mpesa_deposit' ORDER BY id")
    assert [job["runs"] for job in jobs] == [1, 1, 1]
    finished = [job for job in jobs if any(line.get("event") == PAID_MEANWHILE for line in job["logs"])]
    assert len(finished) == 2
    attempts = await system.pool.fetch(
        "SELECT outcome FROM job_attempts WHERE job_id = ANY($1::text[])", [job["id"] for job in finished]
    )
    assert [a["outcome"] for a in attempts] == ["deferred", "deferred"]  # their one run; nothing ran after it
    for job in jobs:  # arq forgot them: no job, no queue entry, no count of tries
        assert not await system.queue.exists(job_key_prefix + job["id"], retry_key_prefix + job["id"])
        assert await system.queue.zscore(arq_queue_of(JobName.COMPLETE_MPESA_DEPOSIT), job["id"]) is None
    await paid_once_each(system, users)


async def _all_succeeded(system: MpesaSystem) -> bool:
    statuses = await system.pool.fetch("SELECT status FROM jobs WHERE function = 'complete_mpesa_deposit'")
    return [row["status"] for row in statuses] == ["succeeded"] * 3


@contextlib.asynccontextmanager
async def blocks_every(system: MpesaSystem, seconds: int) -> AsyncIterator[None]:
    """anvil mines a block every `seconds` (as `--block-time`), then mines on each transaction again."""
    await rpc(system, "evm_setIntervalMining", seconds)
    try:
        yield
    finally:
        await rpc(system, "evm_setIntervalMining", 0)  # (this turns automine off: turned on again below)
        await rpc(system, "evm_setAutomine", True)


async def confirmed_processing(system: MpesaSystem, users: list[str]) -> list[str]:
    """Deposits paid in M-Pesa and confirmed, with no worker running: their jobs wait in Redis."""
    ids = [(await system.initiate(user, 1295)).json()["deposit_id"] for user in users]
    for user, deposit_id in zip(users, ids, strict=True):
        await system.wait_status(user, deposit_id, "processing")
    await system.pool.execute(
        "UPDATE deposits SET confirmed_at = now(), confirmed_by = 'setting' WHERE id = ANY($1::uuid[])", ids
    )
    return ids


@pytest.mark.no_worker
@pytest.mark.system_settings(payout_max_in_flight=3)  # the worker's environment carries it
@pytest.mark.parametrize("failpoint", ["after_attempt_stored@2", "after_broadcast@2", "after_receipt@2"])
async def test_a_worker_killed_in_a_full_pipeline_pays_every_deposit_once_after_restart(
    mpesa_system: MpesaSystem, failpoint: str
) -> None:
    """Seven deposits, at most three in flight, a block a second: the owner signs three, settles them when
    their block comes, signs three more, and is killed at the failpoint's second time: three paid, three in
    flight (stored and unsent, sent, or mined and unsettled), one waiting. A new worker pays each once."""
    system = mpesa_system
    users = [f"crash{i}" for i in range(7)]
    ids = await confirmed_processing(system, users)
    async with blocks_every(system, 1):
        doomed = await spawn_worker(system, failpoint)
        out, _ = await asyncio.wait_for(doomed.communicate(), 60)
        assert doomed.returncode == -signal.SIGKILL, out.decode()[-3000:]
        assert await in_flight(system.pool) == 3, out.decode()[-3000:]  # a full pipeline when it died
        assert await system.pool.fetchval("SELECT count(*) FROM payouts WHERE status = 'confirmed'") == 3

        survivor = await spawn_worker(system)
        try:
            for user, deposit_id in zip(users, ids, strict=True):
                await system.wait_status(user, deposit_id, "completed", seconds=40)
        finally:
            print((await stop_worker_process(survivor))[-5000:])  # on failure
    await paid_once_each(system, users)
    assert (await counts(system))["payouts"] == 7


# --- the nonce filler for a gap in the middle of the pipeline ---------------------------------------


class LosingTreasury(Treasury):
    """A node that answers "accepted" for every payout transaction at one nonce and never has it: a gap in
    the middle of the pipeline. Other transactions at that nonce (the nonce filler) reach the node."""

    lost_nonce = -1
    lost: set[str]

    def sign_transfer(self, to: str, amount: int, nonce: int, fees: Fees) -> SignedTx:
        signed = super().sign_transfer(to, amount, nonce, fees)
        if nonce == self.lost_nonce:
            self.lost.add(signed.raw_tx)
        return signed

    async def broadcast_many(self, raw_txs: list[str]) -> list[ChainUnavailable | None]:
        kept = [raw for raw in raw_txs if raw not in self.lost]
        answers = iter(await super().broadcast_many(kept) if kept else [])
        return [None if raw in self.lost else next(answers) for raw in raw_txs]

    async def broadcast(self, raw_tx: str) -> None:
        if raw_tx not in self.lost:
            await super().broadcast(raw_tx)


async def losing(system: MpesaSystem, offset: int) -> tuple[LosingTreasury, int]:
    """The worker's treasury as a LosingTreasury that loses the payout at `offset` above the next nonce; with
    that next nonce."""
    treasury = treasury_for(system, LosingTreasury)
    assert isinstance(treasury, LosingTreasury)
    treasury.lost = set()
    first = await treasury.pending_nonce()
    treasury.lost_nonce = first + offset
    return treasury, first


async def stop(owner: asyncio.Task[PayoutResult], treasury: Treasury) -> None:
    """The lane owner cancelled if it is still running, and its treasury closed."""
    if not owner.done():
        owner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await owner
    await treasury.aclose()


async def test_the_nonce_filler_fills_a_gap_in_the_middle_of_the_pipeline(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    users = [f"gap{i}" for i in range(5)]
    ids = await _processing_while_killed(system, users)
    treasury, first = await losing(system, 2)  # the third payout never reaches the node: the two above it wait
    config = LaneConfig(poll_seconds=0.02, drain_seconds=1, watch_seconds=40, replace_after_blocks=2)
    await rpc(system, "evm_setAutomine", False)
    try:
        async with mining(system, every=0.3):
            owner = asyncio.create_task(pay_deposit(system.pool, treasury, uuid.UUID(ids[0]), config))

            async def stuck_behind_the_gap() -> bool:
                rows = await system.pool.fetch("SELECT nonce, status FROM payouts ORDER BY nonce")
                return [r["status"] for r in rows] == ["confirmed", "confirmed", "signed", "signed", "signed"]

            await wait_for(stuck_behind_the_gap)
            await asyncio.sleep(1.5)  # blocks come; nothing above the gap is mined, and the owner still waits
            assert await stuck_behind_the_gap() and not owner.done()
            gap_deposit = await system.pool.fetchval("SELECT deposit_id FROM payouts WHERE nonce = $1", first + 2)
            # Its job gives up on it (30 minutes unsettled, or an operator's cancel): the owner's filler fills it.
            await abandon(system.pool, gap_deposit, "test: not settled within 30 minutes")
            result = await asyncio.wait_for(owner, 30)

            async def filled() -> bool:  # cancelled once the filler's block has its confirmations
                await fill_abandoned_nonces(system.pool, treasury, config)  # (or the worker's upkeep does it)
                return await system.pool.fetchval("SELECT status FROM payouts WHERE nonce = $1", first + 2) == (
                    "cancelled"
                )

            await wait_for(filled)
    finally:
        await treasury.aclose()
    assert result.outcome is PayoutOutcome.COMPLETED
    [filler] = await system.pool.fetch("SELECT * FROM payout_attempts WHERE kind = 'filler'")
    tx = await system.w3.eth.get_transaction(filler["tx_hash"])
    assert (tx["nonce"], tx["value"], tx["to"]) == (first + 2, 0, system.treasury_address)
    gap_user = await system.pool.fetchval("SELECT user_id FROM deposits WHERE id = $1", gap_deposit)
    await paid_once_each(system, [u for u in users if u != gap_user])
    assert (await system.deposit(gap_user, str(gap_deposit)))["status"] == "needs_review"
    assert await balance(system.pool, user_account(gap_user, "USDC")) == 0
    above = await system.pool.fetch("SELECT nonce, status FROM payouts WHERE nonce > $1 ORDER BY nonce", first + 2)
    assert [(r["nonce"], r["status"]) for r in above] == [(first + 3, "confirmed"), (first + 4, "confirmed")]


# --- a reorg of a block holding several payouts while others are in flight ---------------------------


async def test_a_reorg_of_a_block_of_payouts_while_others_are_in_flight_credits_none_twice(
    mpesa_system: MpesaSystem,
) -> None:
    system = mpesa_system
    users = [f"reorg{i}" for i in range(6)]
    ids = await _processing_while_killed(system, users)
    treasury = treasury_for(system)
    config = LaneConfig(poll_seconds=0.02, max_in_flight=3, drain_seconds=30, watch_seconds=30)
    await rpc(system, "evm_setAutomine", False)  # blocks only when the test mines them
    owner = asyncio.create_task(pay_deposit(system.pool, treasury, uuid.UUID(ids[0]), config))
    try:

        async def sent(n: int) -> bool:
            return n == await system.pool.fetchval(
                "SELECT count(*) FROM payout_attempts WHERE broadcast_at IS NOT NULL"
            )

        await wait_for(lambda: sent(3))
        await rpc(system, "anvil_mine")  # one block holds the first three payouts

        async def settled_and_three_more_sent() -> bool:
            confirmed = await system.pool.fetchval("SELECT count(*) FROM payouts WHERE status = 'confirmed'")
            return confirmed == 3 and await _sent_count(system, 6)

        await wait_for(settled_and_three_more_sent)
        block = {r["block_number"] for r in await system.pool.fetch("SELECT block_number FROM payouts "
                                                                     "WHERE status = 'confirmed'")}  # fmt: skip
        assert len(block) == 1 and await in_flight(system.pool) == 3
        assert await completions(system) == 3
        # The block holding the three settled payouts is replaced by an empty one; three more are in flight.
        reorged = await system.pool.fetch("SELECT tx_hash FROM payouts WHERE status = 'confirmed'")
        await rpc(system, "anvil_reorg", 1, [])
        assert [await rpc(system, "eth_getTransactionReceipt", r["tx_hash"]) for r in reorged] == [None] * 3
        async with mining(system, every=0.3):
            assert (await asyncio.wait_for(owner, 40)).outcome is PayoutOutcome.COMPLETED

            async def all_final() -> bool:
                await recheck_settled_payouts(system.pool, treasury, config)  # (or the worker's upkeep does it)
                unfinal = await system.pool.fetchval("SELECT count(*) FROM payouts WHERE final_at IS NULL")
                return unfinal == 0 and await _all_completed(system, ids)

            await wait_for(all_final, 30)
    finally:
        await stop(owner, treasury)
    await paid_once_each(system, users)
    assert [r["status"] for r in await system.pool.fetch("SELECT status FROM payouts")] == ["confirmed"] * 6
    assert await system.pool.fetchval("SELECT count(*) FROM review_items") == 0
    assert not await system.pool.fetchval("SELECT lane_paused FROM payout_guards")


# --- fee replacement stays on the lowest unmined nonce ----------------------------------------------


async def test_only_the_lowest_unmined_nonce_is_re_signed_with_higher_fees(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    users = [f"fee{i}" for i in range(4)]
    ids = await _processing_while_killed(system, users)
    treasury = treasury_for(system)
    config = LaneConfig(poll_seconds=0.02, drain_seconds=20, watch_seconds=20, replace_after_blocks=2)
    await rpc(system, "evm_setAutomine", False)
    owner = asyncio.create_task(pay_deposit(system.pool, treasury, uuid.UUID(ids[0]), config))
    try:
        await wait_for(lambda: _sent_count(system, 4))
        first = await system.pool.fetchrow("SELECT * FROM payout_attempts ORDER BY nonce LIMIT 1")
        base_fee = (await system.w3.eth.get_block("latest"))["baseFeePerGas"]
        # Blocks come that the payouts' fees cannot pay for: only the lowest unmined nonce is ever re-signed
        # (with fees from the new quote it may then be mined, and the next becomes the lowest); the ones above
        # it wait for it, not for their fees.
        for _ in range(8):
            await rpc(system, "anvil_setNextBlockBaseFeePerGas", hex(int(first["max_fee_per_gas"]) * 20))
            await rpc(system, "anvil_mine")
            await asyncio.sleep(0.3)
            mined = await system.w3.eth.get_transaction_count(system.treasury_address)
            per_nonce = await system.pool.fetch("SELECT nonce, count(*) n FROM payout_attempts GROUP BY nonce")
            assert all(r["n"] == 1 for r in per_nonce if r["nonce"] > mined), (mined, per_nonce)
        assert max(r["n"] for r in per_nonce) >= 2  # the lowest was re-signed
        await rpc(system, "anvil_setNextBlockBaseFeePerGas", hex(base_fee))
        async with mining(system, every=0.3):  # fees back to normal: all mined, each once
            assert (await asyncio.wait_for(owner, 40)).outcome is PayoutOutcome.COMPLETED
            await wait_for(lambda: _all_completed(system, ids), 20)
    finally:
        await stop(owner, treasury)
    await paid_once_each(system, users)


async def _sent_count(system: MpesaSystem, n: int) -> bool:
    return n == await system.pool.fetchval("SELECT count(*) FROM payout_attempts WHERE broadcast_at IS NOT NULL")


# --- a node whose pool takes fewer of our transactions than the cap ---------------------------------


class FullPoolTreasury(Treasury):
    """A node whose pool holds at most `limit` transactions of one sender (reth's default is 16): it refuses
    the next ones until earlier ones are mined."""

    limit = 3
    nonces: dict[str, int]

    def sign_transfer(self, to: str, amount: int, nonce: int, fees: Fees) -> SignedTx:
        signed = super().sign_transfer(to, amount, nonce, fees)
        self.nonces[signed.raw_tx] = nonce
        return signed

    async def _room_for(self, raw_txs: list[str]) -> list[bool]:
        mined = await self.mined_nonce()
        return [self.nonces.get(raw, mined) < mined + self.limit for raw in raw_txs]

    async def broadcast_many(self, raw_txs: list[str]) -> list[ChainUnavailable | None]:
        room = await self._room_for(raw_txs)
        kept = [raw for raw, fits in zip(raw_txs, room, strict=True) if fits]
        answers = iter(await super().broadcast_many(kept) if kept else [])
        full = ChainUnavailable("broadcast failed: txpool is full")
        return [next(answers) if fits else full for fits in room]

    async def broadcast(self, raw_tx: str) -> None:
        if not (await self._room_for([raw_tx]))[0]:
            raise ChainUnavailable("broadcast failed: txpool is full")
        await super().broadcast(raw_tx)


async def test_a_node_that_takes_fewer_than_the_cap_slows_the_pipeline_and_pays_each_once(
    mpesa_system: MpesaSystem,
) -> None:
    system = mpesa_system
    users = [f"full{i}" for i in range(8)]
    ids = await _processing_while_killed(system, users)
    treasury = treasury_for(system, FullPoolTreasury)
    assert isinstance(treasury, FullPoolTreasury)
    treasury.nonces = {}
    config = LaneConfig(poll_seconds=0.02, max_in_flight=8, drain_seconds=20, watch_seconds=10)
    await rpc(system, "evm_setAutomine", False)
    try:
        async with mining(system, every=0.4):
            owner = asyncio.create_task(pay_deposit(system.pool, treasury, uuid.UUID(ids[0]), config))
            await wait_for(lambda: _all_completed(system, ids), 30)
            result = await asyncio.wait_for(owner, 30)
    finally:
        await treasury.aclose()
    assert result.outcome is PayoutOutcome.COMPLETED
    await paid_once_each(system, users)
    assert (await counts(system))["payouts"] == 8
    assert await system.pool.fetchval("SELECT count(*) FROM payout_attempts WHERE broadcast_at IS NULL") == 0
