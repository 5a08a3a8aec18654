"""An adversarial review of several treasuries (issue 14): each test is a way the merge could move money
wrongly or stop a worker, found by reading it, and shows it cannot (any longer)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from pydantic import SecretStr
from web3.types import RPCEndpoint

from jobs.context import WorkerTuning, build_context
from kiota.chain_rpc import ChainReader
from kiota.dev.chain import BASE_USDC_ADDRESS
from kiota.ingester import ScanConfig, scan_round
from kiota.ledger import user_account
from kiota.payouts.attempts import sign_and_store
from kiota.payouts.terms import LaneItem
from kiota.queue import create_queue
from kiota.settings import WorkerSettings
from kiota.store import payouts as store
from kiota.store.ledger import balance
from tests.conftest import MpesaSystem
from tests.integration.test_ops_cli import kiota_ops, ops_json
from tests.integration.test_payout_lane import _processing_while_killed, wait_for
from tests.integration.test_treasuries import (
    KEY_2,
    KEY_3,
    deposits_in_every_slot,
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


@pytest.mark.xfail(
    strict=True,
    reason="a shortfall for one deposit pauses its lane, the deposit moves to the next lane and pauses it too: "
    "one deposit larger than each treasury's free USDC (but not than their sum) stops every lane",
)
@pytest.mark.no_worker
@pytest.mark.system_settings(intent_poll_seconds=1)
async def test_one_large_deposit_does_not_pause_every_treasury_that_can_still_pay_the_others(
    mpesa_system: MpesaSystem,
) -> None:
    # Two treasuries of 15 USDC each: each pays 10-USDC deposits, neither a 20-USDC one. The issue: "one
    # treasury running dry pauses its own lane; the others go on". Here none is dry, yet a 20-USDC deposit
    # pauses the lane of its slot, goes to the other lane, and pauses that one too: every payout stops.
    system = mpesa_system
    for key in (KEY_2, KEY_3):
        await fund(system, key, 15 * 10**6)
    system.settings = system.settings.model_copy(update={"treasury_private_key": SecretStr(f"{KEY_2},{KEY_3}")})
    await system.start_worker()
    big = (await system.initiate("bigone", 2590)).json()["deposit_id"]  # 20 USDC

    async def lane_paused() -> bool:
        return bool(await system.pool.fetchval("SELECT count(*) FROM treasury_lanes WHERE paused"))

    await wait_for(lane_paused, 30)
    await asyncio.sleep(3)  # the big deposit's job runs again meanwhile, on the other lane
    paused = await system.pool.fetchval("SELECT count(*) FROM treasury_lanes WHERE paused")
    assert paused < 2, "every treasury's lane is paused by one deposit none of them could pay alone"
    small = [deposit for slot in await deposits_in_every_slot(system, 2, 1, "small") for deposit in slot]
    await wait_completed(system, small, 30)  # each treasury can pay 10 USDC
    assert (await system.deposit("bigone", big))["status"] == "processing"


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
