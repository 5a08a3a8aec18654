"""An adversarial review of several treasuries (issue 14): each test is a way the merge could move money
wrongly or stop a worker, found by reading it, and shows it cannot (any longer)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
import structlog.testing
from pydantic import SecretStr
from web3.types import RPCEndpoint

from jobs.context import WorkerTuning, build_context
from kiota import ops
from kiota.chain_rpc import ChainReader
from kiota.dev.chain import BASE_USDC_ADDRESS, mint_usdc
from kiota.ingester import ScanConfig, scan_round
from kiota.ledger import user_account
from kiota.money import format_usdc
from kiota.payouts import LaneConfig, PayoutOutcome, PayoutResult, pay_deposit
from kiota.payouts.attempts import sign_and_store
from kiota.payouts.lanes import TOO_LARGE, choose_lane, slot_of
from kiota.payouts.terms import CAP_RECHECK_SECONDS, LaneItem
from kiota.queue import create_queue
from kiota.settings import WorkerSettings
from kiota.store import payouts as store
from kiota.store.ledger import balance
from kiota.store.metrics import snapshot
from kiota.sweeper import sweep
from tests.conftest import MpesaSystem
from tests.integration.test_mpesa_flow import transfers_from
from tests.integration.test_ops_cli import kiota_ops, ops_json
from tests.integration.test_payout_lane import _processing_while_killed, job_of, wait_for
from tests.integration.test_treasuries import (
    KEY_2,
    KEY_3,
    fund,
    lane_alone,
    wait_completed,
)
from tests.support import ADMIN_AUTH, bearer, settings_kwargs


@pytest.mark.parametrize("address", [None, "0x00000000000000000000000000000000000000aa"])
async def test_a_worker_for_maintenance_only_starts_without_any_treasury(
    database_url: str, redis_url: str, address: str | None
) -> None:
    # The settings accept a maintenance-only worker with no key and no TREASURY_ADDRESS; its context must
    # start too (the merge read settings.treasury_addresses[0], an IndexError for it).
    values = {**settings_kwargs(database_url, redis_url), "worker_queues": "maintenance", "treasury_address": address}
    settings = WorkerSettings(_env_file=None, **values)  # type: ignore[arg-type]
    queue = create_queue(redis_url)
    try:
        context = await build_context(settings, WorkerTuning(), queue, pool_size=2)
        try:
            assert context.treasury is None and context.more_treasuries == ()
            assert context.scan_config.treasuries == ((address,) if address else ())
        finally:
            await context.aclose()
    finally:
        await queue.aclose(close_connection_pool=True)


@pytest.mark.no_worker
async def test_a_treasury_the_chain_worker_was_not_told_of_is_still_no_depositor(mpesa_system: MpesaSystem) -> None:
    # Adding a treasury takes two services (README): its key on kiota-worker-payouts, its address in
    # TREASURY_ADDRESS of kiota-worker. Between the two deploys, or if the second is forgotten, the new
    # treasury pays (its payouts are recognised by their hashes), but any other transfer it makes to a deposit
    # address (an operator's top-up, a manual refund) was credited as the user's deposit: money from nowhere.
    # The treasuries that signed payouts are in PostgreSQL (treasury_nonces): the ingester knows them too.
    system = mpesa_system
    second = await fund(system, KEY_2, 100 * 10**6)
    await system.pool.execute(
        "INSERT INTO treasury_nonces (chain_id, address, next_nonce) VALUES (8453, $1, 0)", second
    )  # it signed payouts: the payouts worker has its key
    address = (await system.http.get("/api/v1/portfolio", headers=bearer("topped"))).json()["deposit_address"]
    lane = lane_alone(system, KEY_2)
    try:
        signed = lane.sign_transfer(address, 3_000_000, await lane.pending_nonce(), await lane.fee_quote())
        await lane.broadcast(signed.raw_tx)
    finally:
        await lane.aclose()
    await system.w3.provider.make_request(RPCEndpoint("anvil_mine"), [3])
    reader = ChainReader(system.settings.base_rpc_url)
    config = ScanConfig(8453, BASE_USDC_ADDRESS, system.treasury_address, 2, 120)  # told of the first only
    try:
        assert await scan_round(system.pool, reader, config) is not None
    finally:
        await reader.aclose()
    kind = await system.pool.fetchval("SELECT kind FROM chain_transfers WHERE tx_hash = $1", signed.tx_hash)
    assert kind == "treasury"
    assert await balance(system.pool, user_account("topped", "USDC")) == 0


async def test_a_treasurys_payouts_in_flight_are_shown_before_it_is_retired(mpesa_system: MpesaSystem) -> None:
    # The README says: retire a treasury only once `kiota ops guards` and the dashboard show none of its
    # payouts in flight. Neither showed any: a key removed too early strands its payouts (no lane re-sends,
    # settles, fills or re-checks them; their deposits go to review while the USDC may move).
    system = mpesa_system
    second = await fund(system, KEY_2, 100 * 10**6)
    ids = await _processing_while_killed(system, ["retire0", "retire1"])
    lane = lane_alone(system, KEY_2)
    try:
        async with system.pool.acquire() as conn:
            payees = [await store.payee(conn, uuid.UUID(deposit)) for deposit in ids]
            assert all(payees)
            created = await store.live_payouts(conn, payees, 8453, BASE_USDC_ADDRESS, second)  # type: ignore[arg-type]
            items = [LaneItem(p, o) for p, o in zip(payees, created, strict=True)]  # type: ignore[arg-type]
            signed = await sign_and_store(conn, lane, items, await lane.fee_quote())  # signed, never sent
    finally:
        await lane.aclose()
    assert signed is not None and len(signed) == 2
    code, out = await kiota_ops(system.settings.database_url, system.settings.redis_url, "guards")
    assert f"treasury {second}: 2 payout(s) in flight" in out, out
    assert code == 0  # in flight is no alarm: it matters before a key is removed
    code, answer = await ops_json(system.settings.database_url, system.settings.redis_url, "guards")
    assert code == 0 and answer["treasury_payouts_in_flight"] == {second: 2}
    page = (await system.http.get("/admin/queues", auth=ADMIN_AUTH)).text
    assert second in page and "2 payout(s) in flight" in page


def _amounts(transfers: list[dict[str, Any]]) -> list[int]:
    return sorted(int.from_bytes(bytes(t["data"]), "big") for t in transfers)


@pytest.mark.no_worker
@pytest.mark.system_settings(intent_poll_seconds=1)
async def test_one_large_deposit_does_not_pause_every_treasury_that_can_still_pay_the_others(
    mpesa_system: MpesaSystem,
) -> None:
    # Two treasuries of 25 USDC each: each pays two 10-USDC deposits, neither a 30-USDC one. The issue: "one
    # treasury running dry pauses its own lane; the others go on". Here none is dry: the merge had a 30-USDC
    # deposit pause the lane of its slot, go to the other lane and pause that one too: every payout stopped.
    system = mpesa_system
    treasuries = [await fund(system, key, 25 * 10**6) for key in (KEY_2, KEY_3)]
    system.settings = system.settings.model_copy(update={"treasury_private_key": SecretStr(f"{KEY_2},{KEY_3}")})
    await system.start_worker()
    big = (await system.initiate("bigone", 3885)).json()["deposit_id"]  # 30 USDC

    async def blocked() -> bool:
        return (await job_of(system, big)).get("status") == "blocked"

    with structlog.testing.capture_logs() as logs:
        await wait_for(blocked, 30)  # each lane read its funds, handed it on; then no treasury covered it
    alert = [line for line in logs if line["event"] == "payout blocked: larger than every treasury's free USDC"]
    assert alert and alert[0]["log_level"] == "error" and alert[0]["amount"] == 30_000_000  # an operator's alert
    job = await job_of(system, big)
    reason = str(job["blocked_reason"])
    assert TOO_LARGE in reason and "30000000" in reason, reason  # the amount, and each treasury's free USDC
    assert all(f"'{address}': 25000000" in reason for address in treasuries), reason
    assert job["next_run_at"] is not None  # it is looked at again by itself
    assert not await system.pool.fetchval("SELECT count(*) FROM treasury_lanes WHERE paused")
    assert "kiota_payouts_too_large 1.0" in (await system.http.get("/metrics", auth=ADMIN_AUTH)).text
    code, answer = await ops_json(system.settings.database_url, system.settings.redis_url, "guards")
    assert code == 0 and answer["treasury_free_usdc"] == {address: format_usdc(25 * 10**6) for address in treasuries}

    # Every lane goes on paying the others: four 10-USDC deposits, wherever their slots are, two per treasury.
    small = [(await system.initiate(f"small{i}", 1295)).json()["deposit_id"] for i in range(4)]
    await wait_completed(system, small, 30)
    for address in treasuries:
        assert _amounts(await transfers_from(system, address)) == [10_000_000, 10_000_000]
    assert not await system.pool.fetchval("SELECT count(*) FROM treasury_lanes WHERE paused")
    assert (await system.deposit("bigone", big))["status"] == "processing"
    assert (
        await system.pool.fetchval("SELECT count(*) FROM payouts WHERE deposit_id = $1 AND status <> 'created'", big)
        == 0
    )
    assert await balance(system.pool, user_account("bigone", "USDC")) == 0

    # A top-up of one treasury pays it at its next look (its recheck made due now), once, from that treasury.
    await mint_usdc(system.w3, BASE_USDC_ADDRESS, treasuries[1], 25 * 10**6)
    await system.pool.execute("UPDATE jobs SET next_run_at = now() WHERE deposit_id = $1", big)
    await sweep(system.pool, system.queue, 1, force=True)
    await wait_completed(system, [big], 30)
    assert _amounts(await transfers_from(system, treasuries[1])) == [10_000_000, 10_000_000, 30_000_000]
    assert _amounts(await transfers_from(system, treasuries[0])) == [10_000_000, 10_000_000]
    paid = await system.pool.fetch("SELECT * FROM payouts WHERE deposit_id = $1 AND status <> 'created'", big)
    assert [(p["status"], p["from_address"]) for p in paid] == [("confirmed", treasuries[1])]
    assert await system.pool.fetchval("SELECT count(*) FROM payouts WHERE deposit_id = $1", big) == 1  # one row, ever

    async def no_longer_blocked() -> bool:  # its job's history is written just after the deposit is paid
        return (await snapshot(system.pool, 8453)).payouts_too_large == 0  # what /metrics shows (cached 15 s)

    await wait_for(no_longer_blocked, 10)
    assert await balance(system.pool, user_account("bigone", "USDC")) == 30_000_000
    assert not await system.pool.fetchval("SELECT count(*) FROM treasury_lanes WHERE paused")


@pytest.mark.no_worker
@pytest.mark.system_settings(intent_poll_seconds=1)
async def test_deposits_larger_than_one_treasury_go_to_one_that_covers_them_and_are_paid_once(
    mpesa_system: MpesaSystem,
) -> None:
    # A treasury of 15 USDC and one of 1,000: 20-USDC deposits of the small treasury's slot are handed to the
    # large one (by the remembered free USDC, or after the small one read its funds), never paid twice, and the
    # small treasury is not paused: it still pays the 10-USDC deposits of its slot.
    system = mpesa_system
    low, high = await fund(system, KEY_2, 15 * 10**6), await fund(system, KEY_3, 1_000 * 10**6)
    system.settings = system.settings.model_copy(update={"treasury_private_key": SecretStr(f"{KEY_2},{KEY_3}")})
    await system.start_worker()
    lanes = list(system.context.signer().lanes)
    low_slot = lanes.index(low)
    others: list[str] = []
    while len([d for d in others if slot_of(uuid.UUID(d), 2) == low_slot]) < 3:  # three of the low one's slot
        others.append((await system.initiate(f"big{len(others)}", 2590)).json()["deposit_id"])  # 20 USDC
    bigs, n = [d for d in others if slot_of(uuid.UUID(d), 2) == low_slot], len(others)
    await wait_completed(system, others, 60)
    smalls: list[str] = []
    while not any(slot_of(uuid.UUID(d), 2) == low_slot for d in smalls):  # 10 USDC, the last of the low one's slot
        smalls.append((await system.initiate(f"small{len(smalls)}", 1295)).json()["deposit_id"])
    await wait_completed(system, smalls, 30)

    rows = await system.pool.fetch("SELECT * FROM payouts WHERE status <> 'created'")
    by_deposit: dict[str, list[Any]] = {}
    for row in rows:
        by_deposit.setdefault(str(row["deposit_id"]), []).append(row)
    assert sorted(by_deposit) == sorted(others + smalls)
    assert all(len(ps) == 1 and ps[0]["status"] == "confirmed" for ps in by_deposit.values())  # once each
    for deposit in bigs:
        assert by_deposit[deposit][0]["from_address"] == high
    low_paid = _amounts(await transfers_from(system, low))
    assert low_paid == [10_000_000]  # not paused: it still pays the small deposit of its slot
    high_paid = _amounts(await transfers_from(system, high))
    assert len(low_paid) + len(high_paid) == len(others) + len(smalls)
    assert sum(low_paid) + sum(high_paid) == 20_000_000 * n + 10_000_000 * len(smalls)
    assert not await system.pool.fetchval("SELECT count(*) FROM treasury_lanes WHERE paused")
    for i in range(n):
        assert await balance(system.pool, user_account(f"big{i}", "USDC")) == 20_000_000


async def test_resuming_a_treasury_whose_lane_is_not_paused_is_refused_not_reported_done(
    pool: asyncpg.Pool, database_url: str, redis_url: str
) -> None:
    # An operator who mistypes the address (or names the wrong treasury) was told "lane of treasury … resumed",
    # while the dry one stayed paused.
    dry = "0x" + "aB" * 20
    await pool.execute(
        "INSERT INTO treasury_lanes (chain_id, address, paused, pause_reason) VALUES (8453, $1, true, 'dry')", dry
    )
    typo = "0x" + "aB" * 19 + "aC"
    code, out = await kiota_ops(database_url, redis_url, "resume-lane", "--treasury", typo)
    assert code == 2 and f"no paused lane of treasury {typo}" in out, out
    assert await pool.fetchval("SELECT paused FROM treasury_lanes WHERE address = $1", dry)
    assert await pool.fetchval("SELECT count(*) FROM admin_actions") == 0


async def test_a_deposit_too_large_for_each_lane_is_paid_once_when_both_lanes_race_for_it_after_a_top_up(
    mpesa_system: MpesaSystem,
) -> None:
    # Two lanes (as two workers) try the same 30-USDC deposit at once, first while each treasury has 25 USDC free
    # (neither pauses, neither signs), then after both are topped up (one signs, once). A deposit also above the
    # per-deposit maximum still goes to review, not blocked as too large.
    system = mpesa_system
    addresses = [await fund(system, key, 25 * 10**6) for key in (KEY_2, KEY_3)]
    await ops.set_kill_switch(system.pool, system.queue, True, "test")  # the system's own worker pays nothing
    ids = [(await system.initiate(user, 3885)).json()["deposit_id"] for user in ("racer", "overmax")]
    for user, deposit in zip(("racer", "overmax"), ids, strict=True):
        await system.wait_status(user, deposit, "processing")

    async def all_blocked() -> bool:
        return all([(await job_of(system, deposit)).get("status") == "blocked" for deposit in ids])

    await wait_for(all_blocked)
    await system.pool.execute("UPDATE payout_guards SET kill_switch = false")
    racer, overmax = (uuid.UUID(deposit) for deposit in ids)
    lanes = [lane_alone(system, key) for key in (KEY_2, KEY_3)]
    for lane in lanes:
        lane.join(addresses)
    config = LaneConfig(drain_seconds=0, lock_wait_seconds=5)
    try:
        for deposit in (racer, overmax):
            results = await asyncio.gather(*(pay_deposit(system.pool, lane, deposit, config) for lane in lanes))
            assert [r.outcome for r in results] == [PayoutOutcome.WAITING] * 2, results  # handed on, not paused
        assert not await system.pool.fetchval("SELECT count(*) FROM treasury_lanes WHERE paused")
        blocked = await choose_lane(system.pool, lanes, racer)
        assert isinstance(blocked, PayoutResult) and blocked.outcome is PayoutOutcome.BLOCKED
        assert TOO_LARGE in blocked.detail and blocked.recheck_in == CAP_RECHECK_SECONDS

        await system.pool.execute("UPDATE payout_guards SET per_deposit_max_micro = 20000000")
        chosen = await choose_lane(system.pool, lanes, overmax)
        assert not isinstance(chosen, PayoutResult)
        assert (await pay_deposit(system.pool, chosen, overmax, config)).outcome is PayoutOutcome.REVIEW
        await system.pool.execute("UPDATE payout_guards SET per_deposit_max_micro = 2000000000")

        for address in addresses:  # the readings are fresh and short: choose_lane reads the balances again
            await mint_usdc(system.w3, BASE_USDC_ADDRESS, address, 25 * 10**6)
        assert not isinstance(await choose_lane(system.pool, lanes, racer), PayoutResult)
        await asyncio.gather(*(pay_deposit(system.pool, lane, racer, config) for lane in lanes))
        row = await system.pool.fetchrow("SELECT * FROM payouts WHERE deposit_id = $1 AND status <> 'created'", racer)
        assert row is not None
        owner = next(lane for lane in lanes if lane.address == row["from_address"])
        await pay_deposit(system.pool, owner, racer, config)  # settles what its turn left unmined
    finally:
        for lane in lanes:
            await lane.aclose()
    assert await system.pool.fetchval("SELECT count(*) FROM payouts WHERE deposit_id = $1", racer) == 1
    assert await system.pool.fetchval("SELECT status FROM deposits WHERE id = $1", racer) == "completed"
    # A run after the payout was settled ends there, whatever the lanes now say: every lane paused (as when both
    # treasuries ran dry) is no "blocked" for a deposit that is paid, or in review.
    await system.pool.execute(
        "INSERT INTO treasury_lanes (chain_id, address, paused, pause_reason) SELECT 8453, a, true, 'dry' "
        "FROM unnest($1::text[]) a ON CONFLICT (chain_id, address) DO UPDATE SET paused = true",
        addresses,
    )
    paid_by = await system.pool.fetchval("SELECT tx_hash FROM deposits WHERE id = $1", racer)
    assert await choose_lane(system.pool, lanes, racer) == PayoutResult(PayoutOutcome.COMPLETED, paid_by)
    in_review = PayoutResult(PayoutOutcome.NOTHING_TO_DO, "deposit is needs_review")
    assert await choose_lane(system.pool, lanes, overmax) == in_review
    assert await choose_lane(system.pool, lanes, uuid.uuid4()) == PayoutResult(
        PayoutOutcome.NOTHING_TO_DO, "no such deposit"
    )
    transfers = [_amounts(await transfers_from(system, address)) for address in addresses]
    assert sorted(transfers) == [[], [30_000_000]]  # one transfer, from one treasury
    assert await balance(system.pool, user_account("racer", "USDC")) == 30_000_000
    assert await system.pool.fetchval("SELECT status FROM deposits WHERE id = $1", overmax) == "needs_review"
    assert (
        await system.pool.fetchval(
            "SELECT count(*) FROM payouts WHERE deposit_id = $1 AND status <> 'created'", overmax
        )
        == 0
    )
    assert await balance(system.pool, user_account("overmax", "USDC")) == 0
