"""The payout lane under pressure: fee replacement, reverts, shortfalls, guards, RPC failures."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from web3.types import RPCEndpoint

from kiota import ops
from kiota.dev.chain import BASE_USDC_ADDRESS, mint_usdc, usdc_balance
from kiota.errors import ChainUnavailable
from kiota.ledger import user_account
from kiota.mpesa import USER_CHECKING
from kiota.payouts import LaneConfig, pay_deposit
from kiota.store.ledger import balance
from kiota.treasury import Fees, Treasury
from tests.conftest import MpesaSystem
from tests.integration.test_mpesa_flow import counts, transfers_from
from tests.support import ADMIN_AUTH, TREASURY_KEY, free_port


async def rpc(system: MpesaSystem, method: str, *params: object) -> object:
    return (await system.w3.provider.make_request(RPCEndpoint(method), list(params)))["result"]


@contextlib.asynccontextmanager
async def mining(system: MpesaSystem, every: float = 0.1) -> AsyncIterator[None]:
    async def miner() -> None:
        while True:
            await rpc(system, "anvil_mine")
            await asyncio.sleep(every)

    task = asyncio.create_task(miner())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_for(predicate: object, seconds: float = 15) -> None:
    async with asyncio.timeout(seconds):
        while not await predicate():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def test_an_underpriced_payout_is_replaced_and_settles_once(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    await rpc(system, "evm_setAutomine", False)
    body = (await system.initiate("alice", 1295)).json()

    async def broadcast() -> bool:
        return bool(await system.pool.fetchval("SELECT count(*) FROM payout_attempts WHERE broadcast_at IS NOT NULL"))

    await wait_for(broadcast)
    first = await system.pool.fetchrow("SELECT * FROM payout_attempts ORDER BY id LIMIT 1")
    # The next block charges ten times what the first attempt offers: it can never be included.
    await rpc(system, "anvil_setNextBlockBaseFeePerGas", hex(int(first["max_fee_per_gas"]) * 10))
    async with mining(system):
        done = await system.wait_status("alice", body["deposit_id"], "completed")
    attempts = await system.pool.fetch("SELECT * FROM payout_attempts ORDER BY id")
    assert len(attempts) >= 2
    assert {a["nonce"] for a in attempts} == {first["nonce"]}
    assert attempts[1]["max_fee_per_gas"] >= first["max_fee_per_gas"] * 1125 / 1000
    assert attempts[1]["max_priority_fee_per_gas"] >= first["max_priority_fee_per_gas"] * 1125 / 1000
    assert done["tx_hash"] in {a["tx_hash"] for a in attempts[1:]}
    assert len(await transfers_from(system, system.treasury_address)) == 1
    assert await balance(system.pool, user_account("alice", "USDC")) == 10_000_000


async def drain_treasury(system: MpesaSystem) -> None:
    treasury = Treasury(system.settings.base_rpc_url, TREASURY_KEY, 8453, BASE_USDC_ADDRESS)
    try:
        amount = await treasury.usdc_balance()
        signed = treasury.sign_transfer(
            "0x000000000000000000000000000000000000dEaD",
            amount,
            await treasury.pending_nonce(),
            await treasury.fee_quote(),
        )
        await treasury.broadcast(signed.raw_tx)
    finally:
        await treasury.aclose()
    assert await usdc_balance(system.w3, BASE_USDC_ADDRESS, system.treasury_address) == 0


async def job_of(system: MpesaSystem, deposit_id: str) -> dict[str, object]:
    row = await system.pool.fetchrow("SELECT * FROM jobs WHERE deposit_id = $1::uuid", deposit_id)
    return dict(row) if row else {}


async def test_a_treasury_without_usdc_pauses_the_lane_and_resuming_completes(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    await drain_treasury(system)
    body = (await system.initiate("bob", 1295)).json()

    async def blocked() -> bool:
        return (await job_of(system, body["deposit_id"])).get("status") == "blocked"

    await wait_for(blocked)
    lane = await system.pool.fetchrow("SELECT * FROM treasury_lanes")  # the treasury's own lane
    assert lane["address"] == system.treasury_address
    assert lane["paused"] and "USDC" in lane["pause_reason"]
    assert (await system.deposit("bob", body["deposit_id"]))["status"] == "processing"
    assert (await counts(system))["attempts"] == 0  # nothing was signed

    await mint_usdc(system.w3, BASE_USDC_ADDRESS, system.treasury_address, 50 * 10**6)
    assert await ops.resume_lane(system.pool, system.queue, "test") == 1
    await system.wait_status("bob", body["deposit_id"], "completed")
    assert await balance(system.pool, user_account("bob", "USDC")) == 10_000_000


class BlindTreasury(Treasury):
    """A treasury adapter whose balance check is wrong, so the transfer itself reverts on-chain."""

    async def usdc_balance(self, owner: str | None = None, block: int | str = "latest") -> int:
        if owner is None:
            return 10**18
        return await super().usdc_balance(owner, block)


async def test_a_reverted_transfer_is_a_failure_that_pauses_the_lane(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    await drain_treasury(system)
    original = system.use_treasury(BlindTreasury(system.settings.base_rpc_url, TREASURY_KEY, 8453, BASE_USDC_ADDRESS))
    body = (await system.initiate("carl", 1295)).json()
    review = await system.wait_status("carl", body["deposit_id"], "needs_review")
    assert review["failure_reason"] == USER_CHECKING
    assert "reverted" in await system.review_reason(body["deposit_id"])
    # Given up on at once, but 'reverted' (its deposit free for a retry) only at the required confirmations:
    # a reorg could still mine it, and succeed.
    payout = await system.pool.fetchrow("SELECT * FROM payouts")
    assert payout["status"] == "cancelling"
    [attempt] = await system.pool.fetch("SELECT * FROM payout_attempts")
    assert (await system.w3.eth.get_transaction_receipt(attempt["tx_hash"]))["status"] == 0
    assert (await system.pool.fetchrow("SELECT * FROM payout_guards"))["lane_paused"]
    assert await balance(system.pool, user_account("carl", "USDC")) == 0
    with pytest.raises(ops.CannotRetry, match="could still mine it"):
        await ops.retry_deposit(system.pool, system.queue, uuid.UUID(body["deposit_id"]), "test")

    # The operator refills the treasury (a block: the revert's second confirmation), resumes the lane and
    # retries the deposit once its payout is reverted: paid once.
    await system.use_treasury(original).aclose()
    await mint_usdc(system.w3, BASE_USDC_ADDRESS, system.treasury_address, 50 * 10**6)

    async def reverted() -> bool:
        return await system.pool.fetchval("SELECT status FROM payouts") == "reverted"

    await wait_for(reverted)
    payout = await system.pool.fetchrow("SELECT * FROM payouts")
    assert payout["tx_hash"] == attempt["tx_hash"]
    await ops.resume_lane(system.pool, system.queue, "test")
    await ops.retry_deposit(system.pool, system.queue, uuid.UUID(body["deposit_id"]), "test")
    done = await system.wait_status("carl", body["deposit_id"], "completed")
    assert done["tx_hash"] != payout["tx_hash"]
    assert await balance(system.pool, user_account("carl", "USDC")) == 10_000_000
    assert (
        await usdc_balance(
            system.w3,
            BASE_USDC_ADDRESS,
            (await system.pool.fetchval("SELECT deposit_address FROM users WHERE id = 'carl'")),
        )
        == 10_000_000
    )


async def test_the_kill_switch_stops_payouts_and_releasing_it_resumes_them(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    await ops.set_kill_switch(system.pool, system.queue, True, "test")
    ids = [(await system.initiate("dina", 1295)).json()["deposit_id"] for _ in range(3)]

    async def all_blocked() -> bool:
        return all([(await job_of(system, d)).get("status") == "blocked" for d in ids])

    await wait_for(all_blocked)
    assert (await counts(system))["attempts"] == 0
    assert await transfers_from(system, system.treasury_address) == []
    assert await ops.set_kill_switch(system.pool, system.queue, False, "test") == 3
    for deposit_id in ids:
        await system.wait_status("dina", deposit_id, "completed")
    assert len(await transfers_from(system, system.treasury_address)) == 3
    assert await balance(system.pool, user_account("dina", "USDC")) == 30_000_000


async def test_a_deposit_above_the_per_deposit_maximum_goes_to_review(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    await system.pool.execute("UPDATE payout_guards SET per_deposit_max_micro = 5000000")
    body = (await system.initiate("eve", 1295)).json()
    review = await system.wait_status("eve", body["deposit_id"], "needs_review")
    assert review["failure_reason"] == USER_CHECKING
    assert "maximum" in await system.review_reason(body["deposit_id"])
    await system.pool.execute("UPDATE payout_guards SET per_deposit_max_micro = 2000000000")
    await ops.retry_deposit(system.pool, system.queue, uuid.UUID(body["deposit_id"]), "test")
    await system.wait_status("eve", body["deposit_id"], "completed")


async def test_hourly_cap_blocks_payouts(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    await system.pool.execute("UPDATE payout_guards SET hourly_cap_micro = 15000000")
    first = (await system.initiate("fay", 1295)).json()["deposit_id"]
    await system.wait_status("fay", first, "completed")
    second = (await system.initiate("fay", 1295)).json()["deposit_id"]

    async def blocked() -> bool:
        return (await job_of(system, second)).get("status") == "blocked"

    await wait_for(blocked)
    job = await job_of(system, second)
    assert "hourly" in str(job["blocked_reason"])
    assert job["next_run_at"] is not None  # it looks again by itself as the window slides


async def test_an_rpc_down_for_good_ends_in_review_and_an_operator_retry_completes(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    dead = Treasury(f"http://127.0.0.1:{free_port()}", TREASURY_KEY, 8453, BASE_USDC_ADDRESS)
    original = system.use_treasury(dead)
    body = (await system.initiate("gil", 1295)).json()
    review = await system.wait_status("gil", body["deposit_id"], "needs_review", seconds=30)
    assert review["failure_reason"] == USER_CHECKING
    assert "failed 5 times" in await system.review_reason(body["deposit_id"])
    job = await job_of(system, body["deposit_id"])
    assert job["failures"] == 5 and job["status"] == "failed" and "RPC" in str(job["last_error"])
    await dead.aclose()
    system.use_treasury(original)
    await ops.retry_deposit(system.pool, system.queue, uuid.UUID(body["deposit_id"]), "test")
    await system.wait_status("gil", body["deposit_id"], "completed")
    assert len(await transfers_from(system, system.treasury_address)) == 1


async def test_two_workers_racing_for_one_deposit_pay_it_once(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    await ops.set_kill_switch(system.pool, system.queue, True, "test")  # keep the real worker out of it
    body = (await system.initiate("hal", 1295)).json()

    async def blocked() -> bool:  # its job confirmed the success with M-Pesa, then met the kill switch
        return (await job_of(system, body["deposit_id"])).get("status") == "blocked"

    await wait_for(blocked)
    await system.pool.execute("UPDATE payout_guards SET kill_switch = false")
    treasuries = [Treasury(system.settings.base_rpc_url, TREASURY_KEY, 8453, BASE_USDC_ADDRESS) for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(pay_deposit(system.pool, t, uuid.UUID(body["deposit_id"])) for t in treasuries)
        )
    finally:
        for t in treasuries:
            await t.aclose()
    assert {r.outcome.value for r in results} <= {"completed", "waiting"}
    assert len(await transfers_from(system, system.treasury_address)) == 1
    assert await balance(system.pool, user_account("hal", "USDC")) == 10_000_000


@pytest.mark.parametrize("base_fee_multiplier", [1])
async def test_fees_are_eip1559(mpesa_system: MpesaSystem, base_fee_multiplier: int) -> None:
    system = mpesa_system
    body = (await system.initiate("ian", 1295)).json()
    done = await system.wait_status("ian", body["deposit_id"], "completed")
    tx = await system.w3.eth.get_transaction(done["tx_hash"])
    block = await system.w3.eth.get_block(tx["blockNumber"] - 1)
    assert tx["type"] == 2
    assert tx["maxFeePerGas"] >= block["baseFeePerGas"] * 2 * base_fee_multiplier


async def test_metrics_show_the_paused_lane_and_deposits(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    await drain_treasury(system)
    body = (await system.initiate("jan", 1295)).json()

    async def blocked() -> bool:
        return (await job_of(system, body["deposit_id"])).get("status") == "blocked"

    await wait_for(blocked)
    text = (await system.http.get("/metrics", auth=ADMIN_AUTH)).text
    assert "kiota_payout_lane_paused 1.0" in text
    assert 'kiota_deposits{kind="mpesa",status="processing"} 1.0' in text
    assert 'kiota_job_states{status="blocked"} 1.0' in text


async def test_a_nonce_taken_by_another_transaction_cancels_the_payout_for_review(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    await rpc(system, "evm_setAutomine", False)
    body = (await system.initiate("kim", 1295)).json()

    async def broadcast() -> bool:
        return bool(await system.pool.fetchval("SELECT count(*) FROM payout_attempts WHERE broadcast_at IS NOT NULL"))

    await wait_for(broadcast)
    ours = await system.pool.fetchrow("SELECT * FROM payout_attempts")
    # Someone uses the treasury key elsewhere: same nonce, higher fees, replaces ours in the pool.
    other = Treasury(system.settings.base_rpc_url, TREASURY_KEY, 8453, BASE_USDC_ADDRESS)
    try:
        fees = Fees(int(ours["max_fee_per_gas"]) * 3, int(ours["max_priority_fee_per_gas"]) * 3)
        await other.broadcast(other.sign_self_send(ours["nonce"], fees).raw_tx)
    finally:
        await other.aclose()
    async with mining(system):
        review = await system.wait_status("kim", body["deposit_id"], "needs_review")
    assert review["failure_reason"] == USER_CHECKING
    assert "not this payout" in await system.review_reason(body["deposit_id"])
    # Not cancelled at once: a lagging node may yet show our receipt. Ten minutes later it is.
    assert await system.pool.fetchval("SELECT status FROM payouts") == "cancelling"
    await system.pool.execute("UPDATE payouts SET updated_at = now() - interval '11 minutes'")

    async def cancelled() -> bool:
        return await system.pool.fetchval("SELECT status FROM payouts") == "cancelled"

    async with mining(system):
        await wait_for(cancelled)
    assert await transfers_from(system, system.treasury_address) == []
    assert await balance(system.pool, user_account("kim", "USDC")) == 0


def treasury_for(system: MpesaSystem, kind: type[Treasury] = Treasury) -> Treasury:
    """A treasury of the test's own (the worker keeps its own), on the system's chain."""
    return kind(system.settings.base_rpc_url, TREASURY_KEY, 8453, BASE_USDC_ADDRESS)


async def _processing_while_killed(system: MpesaSystem, users: list[str]) -> list[str]:
    """Deposits brought to processing while the kill switch keeps the real worker from paying them."""
    await ops.set_kill_switch(system.pool, system.queue, True, "test")
    ids = [(await system.initiate(user, 1295)).json()["deposit_id"] for user in users]
    for user, deposit_id in zip(users, ids, strict=True):
        await system.wait_status(user, deposit_id, "processing")

    async def all_blocked() -> bool:
        return all([(await job_of(system, deposit_id)).get("status") == "blocked" for deposit_id in ids])

    await wait_for(all_blocked)  # their jobs look again only in minutes: the test's calls are the only payers
    await system.pool.execute("UPDATE payout_guards SET kill_switch = false")
    # In the order the lane takes companions (their callbacks may have come in any order).
    rows = await system.pool.fetch(
        "SELECT id::text FROM deposits WHERE id = ANY($1::uuid[]) ORDER BY processing_since, id", ids
    )
    return [row["id"] for row in rows]


async def test_the_lane_owner_pays_every_waiting_deposit_in_further_turns(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    users = [f"drain{i}" for i in range(7)]
    ids = await _processing_while_killed(system, users)
    treasury = treasury_for(system)
    try:
        one_turn = await pay_deposit(
            system.pool, treasury, uuid.UUID(ids[0]), LaneConfig(max_in_flight=2, drain_seconds=0)
        )
        assert one_turn.outcome.value == "completed"
        assert len(await transfers_from(system, system.treasury_address)) == 2  # its own and one companion
        result = await pay_deposit(system.pool, treasury, uuid.UUID(ids[2]), LaneConfig(max_in_flight=2))
    finally:
        await treasury.aclose()
    assert result.outcome.value == "completed"
    assert len(await transfers_from(system, system.treasury_address)) == 7  # 2 + 2 in its turn + 3 in two more
    statuses = await system.pool.fetch("SELECT status FROM deposits WHERE id = ANY($1::uuid[])", ids)
    assert [row["status"] for row in statuses] == ["completed"] * 7
    nonces = [row["nonce"] for row in await system.pool.fetch("SELECT nonce FROM payouts ORDER BY nonce")]
    assert nonces == list(range(nonces[0], nonces[0] + 7))
    for user in users:
        assert await balance(system.pool, user_account(user, "USDC")) == 10_000_000
    assert await completions(system) == 7


async def completions(system: MpesaSystem) -> int:
    return int(await system.pool.fetchval("SELECT count(*) FROM journal_entries WHERE kind = 'mpesa_completed'"))


class _SendsOnce(Treasury):
    """A treasury whose node takes its first batch of transactions and then no more, batched or not."""

    batches = 0

    async def broadcast_many(self, raw_txs: list[str]) -> list[ChainUnavailable | None]:
        self.batches += 1
        if self.batches > 1:
            raise ChainUnavailable("RPC failed: the node went away")
        return await super().broadcast_many(raw_txs)

    async def broadcast(self, raw_tx: str) -> None:
        if self.batches > 1:
            raise ChainUnavailable("RPC failed: the node went away")
        await super().broadcast(raw_tx)


class _NoBatches(Treasury):
    """A provider that refuses JSON-RPC batches of transactions (some hosted ones do)."""

    async def broadcast_many(self, raw_txs: list[str]) -> list[ChainUnavailable | None]:
        raise ChainUnavailable("RPC failed: batch requests are not supported")


async def test_a_provider_that_refuses_batches_gets_the_turn_one_transaction_at_a_time(
    mpesa_system: MpesaSystem,
) -> None:
    system = mpesa_system
    users = [f"single{i}" for i in range(3)]
    ids = await _processing_while_killed(system, users)
    treasury = treasury_for(system, _NoBatches)
    try:
        result = await pay_deposit(system.pool, treasury, uuid.UUID(ids[0]), LaneConfig(max_in_flight=3))
    finally:
        await treasury.aclose()
    assert result.outcome.value == "completed"
    assert len(await transfers_from(system, system.treasury_address)) == 3
    assert await completions(system) == 3
    sent = await system.pool.fetchval("SELECT count(*) FROM payout_attempts WHERE broadcast_at IS NOT NULL")
    assert sent == 3


async def test_a_failure_in_a_further_turn_leaves_the_owner_paid_and_the_rest_for_the_next_turn(
    mpesa_system: MpesaSystem,
) -> None:
    system = mpesa_system
    users = [f"halt{i}" for i in range(5)]
    ids = await _processing_while_killed(system, users)
    flaky = treasury_for(system, _SendsOnce)
    healthy = treasury_for(system)
    try:
        result = await pay_deposit(system.pool, flaky, uuid.UUID(ids[0]), LaneConfig(max_in_flight=2))
        assert result.outcome.value == "completed"  # its own payout settled before the failure
        assert len(await transfers_from(system, system.treasury_address)) == 2
        # The second turn's two payouts were signed and stored, never sent: the next turn sends them.
        signed = await system.pool.fetchval("SELECT count(*) FROM payouts WHERE status = 'signed'")
        assert signed == 2
        result = await pay_deposit(system.pool, healthy, uuid.UUID(ids[4]), LaneConfig(max_in_flight=2))
    finally:
        await flaky.aclose()
        await healthy.aclose()
    assert result.outcome.value == "completed"
    assert len(await transfers_from(system, system.treasury_address)) == 5
    assert await completions(system) == 5
    for user in users:
        assert await balance(system.pool, user_account(user, "USDC")) == 10_000_000


async def test_deposits_left_out_of_a_turn_by_a_cap_ride_in_a_later_turn(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    users = [f"capped{i}" for i in range(3)]
    ids = await _processing_while_killed(system, users)
    await system.pool.execute("UPDATE payout_guards SET hourly_cap_micro = 15000000")  # one payout of 10 USDC fits
    treasury = treasury_for(system)
    try:
        first = await pay_deposit(system.pool, treasury, uuid.UUID(ids[0]), LaneConfig(max_in_flight=3))
        assert first.outcome.value == "completed"
        assert len(await transfers_from(system, system.treasury_address)) == 1  # the others got payout rows only
        assert await system.pool.fetchval("SELECT count(*) FROM payouts WHERE status = 'created'") == 2
        await system.pool.execute("UPDATE payout_guards SET hourly_cap_micro = 100000000")
        one_turn = LaneConfig(max_in_flight=3, drain_seconds=0)
        second = await pay_deposit(system.pool, treasury, uuid.UUID(ids[1]), one_turn)
    finally:
        await treasury.aclose()
    assert second.outcome.value == "completed"
    assert len(await transfers_from(system, system.treasury_address)) == 3  # its own and the third, in one turn
    assert await completions(system) == 3


async def test_a_batch_the_treasurys_eth_cannot_cover_shrinks_to_the_owners_payout(mpesa_system: MpesaSystem) -> None:
    # anvil checks each transaction's gas against the balance on its own; geth (and so Base's op-geth) refuses
    # a pending transaction whose cost, with the account's others, would overdraw it ("overdraft").
    system = mpesa_system
    users = [f"gas{i}" for i in range(5)]
    ids = await _processing_while_killed(system, users)
    treasury = treasury_for(system)
    try:
        fees = await treasury.fee_quote()
        # Gas for one payout and its replacement at today's fees, not for a batch of five.
        await rpc(system, "anvil_setBalance", system.treasury_address, hex(fees.max_fee_per_gas * 100_000 * 3))
        result = await pay_deposit(
            system.pool, treasury, uuid.UUID(ids[0]), LaneConfig(max_in_flight=5, drain_seconds=0)
        )
    finally:
        await treasury.aclose()
    assert result.outcome.value == "completed"
    assert len(await transfers_from(system, system.treasury_address)) == 1
    assert await system.pool.fetchval("SELECT count(*) FROM payouts WHERE status = 'signed'") == 0
    assert not await system.pool.fetchval("SELECT lane_paused FROM payout_guards")  # one payout fit: no alert
    assert not await system.pool.fetchval("SELECT count(*) FROM treasury_lanes WHERE paused")
