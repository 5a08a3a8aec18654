"""Several treasuries (issue 14): each key has its own lane and nonces; deposits are spread over the lanes by a
hash of their id; two lanes racing for the same deposits pay each once; a dry treasury pauses only its own lane
while the others pay its deposits; the caps and the kill switch span every treasury; reconcile and the
ingester know each of them."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import asyncpg
import pytest
from eth_account import Account
from pydantic import SecretStr

from kiota import ops
from kiota.chain_rpc import ChainReader
from kiota.dev.chain import BASE_USDC_ADDRESS, fund_eth, mint_usdc
from kiota.ledger import user_account
from kiota.payouts import LaneConfig, PayoutOutcome, pay_deposit
from kiota.payouts.attempts import broadcast_all, sign_and_store
from kiota.payouts.lanes import slot_of
from kiota.payouts.terms import LaneItem
from kiota.reconcile import reconcile
from kiota.store import payouts as store
from kiota.store.ledger import balance
from kiota.treasury import Treasury
from tests.conftest import MpesaSystem
from tests.integration.test_mpesa_flow import transfers_from
from tests.integration.test_payout_lane import _processing_while_killed, completions, wait_for
from tests.support import ADMIN_AUTH, TREASURY_KEY

KEY_2 = "0x" + hashlib.sha256(b"kiota test treasury 2").hexdigest()
KEY_3 = "0x" + hashlib.sha256(b"kiota test treasury 3").hexdigest()
TEN_USDC = 10_000_000  # 1295 KES at 129.50
FAST = {"intent_poll_seconds": 1}


def address_of(key: str) -> str:
    return str(Account.from_key(key).address)


async def fund(system: MpesaSystem, key: str, usdc: int) -> str:
    address = address_of(key)
    await fund_eth(system.w3, address, 10 * 10**18)
    if usdc:
        await mint_usdc(system.w3, BASE_USDC_ADDRESS, address, usdc)
    return address


async def start_with_treasuries(system: MpesaSystem, keys: list[str], usdc: dict[str, int] | None = None) -> list[str]:
    """The worker started with every key in TREASURY_PRIVATE_KEY (the first is the system's own, funded);
    the lanes' addresses in slot order."""
    for key in keys[1:]:
        await fund(system, key, (usdc or {}).get(key, 1_000 * 10**6))
    system.settings = system.settings.model_copy(update={"treasury_private_key": SecretStr(",".join(keys))})
    await system.start_worker()
    lanes = list(system.context.signer().lanes)
    assert sorted(lanes) == sorted(address_of(k) for k in keys)
    return lanes


async def deposits_in_every_slot(system: MpesaSystem, lanes: int, each: int, prefix: str) -> list[list[str]]:
    """Deposits initiated until every lane's slot has `each` of them: their ids, by slot."""
    slots: list[list[str]] = [[] for _ in range(lanes)]
    n = 0
    while min(len(slot) for slot in slots) < each:
        body = (await system.initiate(f"{prefix}{n}", 1295)).json()
        slots[slot_of(uuid.UUID(body["deposit_id"]), lanes)].append(body["deposit_id"])
        n += 1
    return slots


async def wait_completed(system: MpesaSystem, ids: list[str], seconds: float = 30) -> None:
    async def done() -> bool:
        rows = await system.pool.fetch("SELECT status FROM deposits WHERE id = ANY($1::uuid[])", ids)
        return [r["status"] for r in rows] == ["completed"] * len(ids)

    await wait_for(done, seconds)


async def payouts_by_deposit(system: MpesaSystem) -> dict[str, list[dict[str, Any]]]:
    rows = await system.pool.fetch("SELECT * FROM payouts WHERE status = 'confirmed' ORDER BY id")
    paid: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        paid.setdefault(str(row["deposit_id"]), []).append(dict(row))
    return paid


def lane_alone(system: MpesaSystem, key: str) -> Treasury:
    """A treasury that believes it is the only one: every deposit is its lane's (two such race for them all)."""
    return Treasury(system.settings.base_rpc_url, key, 8453, BASE_USDC_ADDRESS)


@pytest.mark.no_worker
@pytest.mark.system_settings(**FAST)
async def test_each_treasury_pays_its_share_with_its_own_nonces(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    lanes = await start_with_treasuries(system, [TREASURY_KEY, KEY_2, KEY_3])
    slots = await deposits_in_every_slot(system, 3, 2, "share")
    ids = [deposit for slot in slots for deposit in slot]
    await wait_completed(system, ids)

    paid = await payouts_by_deposit(system)
    for slot, deposits in enumerate(slots):
        for deposit in deposits:  # each paid once, by its slot's treasury
            assert [p["from_address"] for p in paid[deposit]] == [lanes[slot]]
    for slot, address in enumerate(lanes):
        nonces = sorted(p["nonce"] for ps in paid.values() for p in ps if p["from_address"] == address)
        assert len(nonces) == len(slots[slot])
        assert nonces == list(range(nonces[0], nonces[0] + len(nonces)))  # its own nonces, without a gap
        assert len(await transfers_from(system, address)) == len(nonces)
        stored = await system.pool.fetchval("SELECT next_nonce FROM treasury_nonces WHERE address = $1", address)
        assert stored == nonces[-1] + 1
    assert await completions(system) == len(ids)

    # Reconcile reports each treasury: on chain, and what its payouts paid; then all of them against the ledger.
    known = await store.treasury_addresses(system.pool)
    assert sorted(known) == sorted(lanes)
    reader = ChainReader(system.settings.base_rpc_url)
    try:
        differences, lines = await reconcile(system.pool, reader, BASE_USDC_ADDRESS, known, chain_id=8453)
    finally:
        await reader.aclose()
    assert differences == []
    for slot, address in enumerate(lanes):
        paid_by_it = f"{len(slots[slot]) * 10}.000000"
        assert any(line.startswith(f"treasury {address} on chain ") and line.endswith(paid_by_it) for line in lines)
    assert lines[-1].endswith(f"paid out per ledger {len(ids) * 10}.000000")

    # The ingester: a transfer from any treasury that is no payout (an operator's own) is never a deposit.
    user = "share0"
    address = (await system.http.get("/api/v1/portfolio", headers=_bearer(user))).json()["deposit_address"]
    before = await balance(system.pool, user_account(user, "USDC"))
    third = lane_alone(system, KEY_3)
    try:
        signed = third.sign_transfer(address, 1_000_000, await third.pending_nonce(), await third.fee_quote())
        await third.broadcast(signed.raw_tx)
    finally:
        await third.aclose()

    async def seen() -> bool:
        kind = await system.pool.fetchval("SELECT kind FROM chain_transfers WHERE tx_hash = $1", signed.tx_hash)
        return kind is not None

    await _mine_until(system, seen)
    assert (
        await system.pool.fetchval("SELECT kind FROM chain_transfers WHERE tx_hash = $1", signed.tx_hash) == "treasury"
    )
    assert await balance(system.pool, user_account(user, "USDC")) == before


def _bearer(user: str) -> dict[str, str]:
    from tests.support import bearer

    return bearer(user)


async def _mine_until(system: MpesaSystem, predicate: object, seconds: float = 20) -> None:
    from tests.integration.test_payout_lane import mining

    async with mining(system, 0.3):
        await wait_for(predicate, seconds)


async def test_two_lanes_signing_the_same_payouts_at_once_sign_each_once(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    await fund(system, KEY_2, 1_000 * 10**6)
    users = [f"race{i}" for i in range(8)]
    ids = await _processing_while_killed(system, users)
    first, second = lane_alone(system, TREASURY_KEY), lane_alone(system, KEY_2)
    try:
        async with system.pool.acquire() as one, system.pool.acquire() as two:
            payees = [await store.payee(one, uuid.UUID(deposit)) for deposit in ids]
            assert all(payees)
            created = await store.live_payouts(one, payees, 8453, BASE_USDC_ADDRESS, first.address)  # type: ignore[arg-type]
            items = [LaneItem(p, o) for p, o in zip(payees, created, strict=True)]  # type: ignore[arg-type]
            fees = await first.fee_quote()
            # Both lanes sign the very same payouts at the same moment (the second in reverse order).
            signed_one, signed_two = await asyncio.gather(
                sign_and_store(one, first, items, fees), sign_and_store(two, second, items[::-1], fees)
            )
            assert signed_one is not None and signed_two is not None
            await broadcast_all(one, first, signed_one)
            await broadcast_all(two, second, signed_two)
    finally:
        await first.aclose()
        await second.aclose()
    by_one = {s.payout.id for s in signed_one}
    by_two = {s.payout.id for s in signed_two}
    assert not by_one & by_two
    assert len(by_one | by_two) == 8
    rows = await system.pool.fetch("SELECT * FROM payouts WHERE status = 'signed' ORDER BY nonce")
    assert len(rows) == 8
    for row in rows:  # each signed by the lane that claimed it, at that lane's nonce
        assert row["from_address"] == (first.address if row["id"] in by_one else second.address)
    transfers = len(await transfers_from(system, first.address)) + len(await transfers_from(system, second.address))
    assert transfers == 8


async def test_two_lanes_racing_for_the_same_deposits_pay_each_once(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    await fund(system, KEY_2, 1_000 * 10**6)
    users = [f"both{i}" for i in range(10)]
    ids = await _processing_while_killed(system, users)
    lanes = [lane_alone(system, TREASURY_KEY), lane_alone(system, KEY_2)]
    config = LaneConfig(max_in_flight=4, drain_seconds=2, lock_wait_seconds=5)
    try:
        # Every deposit's job on both lanes at once: each lane believes every deposit is its own.
        await asyncio.gather(
            *(pay_deposit(system.pool, lane, uuid.UUID(deposit), config) for deposit in ids for lane in lanes)
        )
        for deposit in ids:  # what a turn left signed and unmined, its lane settles on the job's next run
            row = await system.pool.fetchrow("SELECT * FROM payouts WHERE deposit_id = $1::uuid", deposit)
            assert row is not None
            owner = next(lane for lane in lanes if lane.address == row["from_address"])
            await pay_deposit(system.pool, owner, uuid.UUID(deposit), config)
    finally:
        for lane in lanes:
            await lane.aclose()
    paid = await payouts_by_deposit(system)
    assert sorted(paid) == sorted(ids)
    assert all(len(payouts) == 1 for payouts in paid.values())
    assert await system.pool.fetchval("SELECT count(*) FROM payouts") == 10  # no second payout row, ever
    transfers = sum([len(await transfers_from(system, lane.address)) for lane in lanes])
    assert transfers == 10
    assert await completions(system) == 10
    for user in users:
        assert await balance(system.pool, user_account(user, "USDC")) == TEN_USDC


@pytest.mark.no_worker
async def test_a_dry_treasury_pauses_only_its_lane_and_the_others_pay_its_deposits(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    dry = address_of(KEY_2)
    lanes = await start_with_treasuries(system, [TREASURY_KEY, KEY_2], usdc={KEY_2: 0})
    slots = await deposits_in_every_slot(system, 2, 3, "dry")
    ids = [deposit for slot in slots for deposit in slot]
    await wait_completed(system, ids)

    paid = await payouts_by_deposit(system)
    wet = next(address for address in lanes if address != dry)
    assert {p["from_address"] for ps in paid.values() for p in ps} == {wet}  # the other lane paid them all
    assert all(len(ps) == 1 for ps in paid.values())
    assert await transfers_from(system, dry) == []
    lane = await system.pool.fetchrow("SELECT * FROM treasury_lanes")
    assert lane is not None
    assert (lane["address"], lane["paused"]) == (dry, True) and "USDC" in lane["pause_reason"]
    assert not await system.pool.fetchval("SELECT lane_paused FROM payout_guards")  # the global lane runs
    text = (await system.http.get("/metrics", auth=ADMIN_AUTH)).text
    assert f'kiota_treasury_lane_paused{{treasury="{dry}"}} 1.0' in text
    dashboard = (await system.http.get("/admin/queues", auth=ADMIN_AUTH)).text
    assert dry in dashboard and "Resume this treasury&#39;s lane" in dashboard

    # Refilled and resumed (that treasury only), its lane pays its own slot's deposits again.
    await mint_usdc(system.w3, BASE_USDC_ADDRESS, dry, 100 * 10**6)
    await ops.resume_lane(system.pool, system.queue, "test", treasury=dry.lower())
    assert not await system.pool.fetchval("SELECT paused FROM treasury_lanes WHERE address = $1", dry)
    actions = await system.pool.fetch("SELECT * FROM admin_actions WHERE target_kind = 'treasury_lane'")
    assert [(a["action"], a["target_id"]) for a in actions] == [("resume_lane", dry)]
    more = await deposits_in_every_slot(system, 2, 1, "refilled")
    again = more[lanes.index(dry)]
    await wait_completed(system, again)
    paid = await payouts_by_deposit(system)
    assert [p["from_address"] for p in paid[again[0]]] == [dry]


async def test_the_caps_span_every_treasury_even_when_two_lanes_sign_at_once(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    await fund(system, KEY_2, 1_000 * 10**6)
    ids = await _processing_while_killed(system, ["capa", "capb"])
    await system.pool.execute("UPDATE payout_guards SET hourly_cap_micro = 15000000")  # one payout of 10 fits
    first, second = lane_alone(system, TREASURY_KEY), lane_alone(system, KEY_2)
    try:
        async with system.pool.acquire() as one, system.pool.acquire() as two:
            items = []
            for deposit, lane in zip(ids, (first, second), strict=True):
                payee = await store.payee(one, uuid.UUID(deposit))
                assert payee is not None
                (payout,) = await store.live_payouts(one, [payee], 8453, BASE_USDC_ADDRESS, lane.address)
                items.append(LaneItem(payee, payout))
            fees = await first.fee_quote()
            # Each lane checked the caps before (nothing paid yet: each fits); they sign at the same moment.
            outcomes = await asyncio.gather(
                sign_and_store(one, first, items[:1], fees), sign_and_store(two, second, items[1:], fees)
            )
    finally:
        await first.aclose()
        await second.aclose()
    assert sorted(len(signed) if signed is not None else 0 for signed in outcomes) == [0, 1]
    assert await store.paid_out_since(system.pool, 8453, 3600) == TEN_USDC

    # And through the lanes: the second deposit stays blocked by the hourly cap whichever treasury tries it.
    for key in (TREASURY_KEY, KEY_2):
        lane = lane_alone(system, key)
        try:
            for deposit in ids:
                result = await pay_deposit(system.pool, lane, uuid.UUID(deposit), LaneConfig(drain_seconds=0))
                assert result.outcome in (PayoutOutcome.BLOCKED, PayoutOutcome.COMPLETED, PayoutOutcome.WAITING)
        finally:
            await lane.aclose()
    assert await store.paid_out_since(system.pool, 8453, 3600) == TEN_USDC


async def test_the_kill_switch_stops_every_treasury(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    await fund(system, KEY_2, 1_000 * 10**6)
    ids = await _processing_while_killed(system, ["killa", "killb"])
    await ops.set_kill_switch(system.pool, system.queue, True, "test")
    for key in (TREASURY_KEY, KEY_2):
        lane = lane_alone(system, key)
        try:
            for deposit in ids:
                result = await pay_deposit(system.pool, lane, uuid.UUID(deposit), LaneConfig(drain_seconds=0))
                assert result.outcome is PayoutOutcome.BLOCKED and "kill switch" in result.detail
        finally:
            await lane.aclose()
    assert await system.pool.fetchval("SELECT count(*) FROM payout_attempts") == 0


async def test_the_lanes_companion_query_hashes_a_deposit_to_the_same_slot_as_its_job(pool: asyncpg.Pool) -> None:
    ids = [uuid.uuid4() for _ in range(300)]
    for lanes in (2, 3, 4, 7):
        rows = await pool.fetch(
            "SELECT id, ('x' || substr(md5(id::text), 1, 7))::bit(28)::int % $2 AS slot FROM unnest($1::uuid[]) AS id",
            ids,
            lanes,
        )
        assert {row["id"]: row["slot"] for row in rows} == {i: slot_of(i, lanes) for i in ids}
