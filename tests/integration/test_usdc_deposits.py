"""USDC deposits on Base: intents, the ingester, confirmations, reorgs, late and unsolicited transfers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from web3.types import RPCEndpoint

from kiota.chain_rpc import ChainReader
from kiota.dev.chain import BASE_USDC_ADDRESS, install_usdc, mint_usdc
from kiota.ingester import ScanConfig, scan_round
from kiota.ledger import user_account
from kiota.store.ledger import balance
from kiota.treasury import SignedTx
from tests.conftest import MpesaSystem
from tests.support import bearer

FAST = {"intent_poll_seconds": 1, "deposit_confirmations_required": 2}


async def rpc(system: MpesaSystem, method: str, *params: object) -> Any:
    return (await system.w3.provider.make_request(RPCEndpoint(method), list(params))).get("result")


async def create_intent(system: MpesaSystem, user: str, expected: str | None = "25.50") -> dict[str, Any]:
    body = {"expected_amount_usdc": expected} if expected is not None else {}
    response = await system.http.post("/api/v1/deposit/intent/create", json=body, headers=bearer(user))
    assert response.status_code in (200, 201), response.text
    result: dict[str, Any] = response.json()
    return result


async def intent(system: MpesaSystem, user: str, intent_id: str) -> dict[str, Any]:
    response = await system.http.get(f"/api/v1/deposit/intents/{intent_id}", headers=bearer(user))
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def wait_intent(
    system: MpesaSystem, user: str, intent_id: str, status: str, seconds: float = 20
) -> dict[str, Any]:
    async with asyncio.timeout(seconds):
        while (body := await intent(system, user, intent_id))["status"] != status:
            await asyncio.sleep(0.1)
    return body


async def rounds(system: MpesaSystem) -> int:
    return int(await system.pool.fetchval("SELECT count(*) FROM scan_rounds"))


async def wait_rounds(system: MpesaSystem, n: int) -> None:
    target = await rounds(system) + n
    async with asyncio.timeout(30):
        while await rounds(system) < target:
            await asyncio.sleep(0.1)


@pytest.mark.system_settings(**FAST)
async def test_transfer_confirms_and_is_credited_once(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    created = await create_intent(system, "ada")
    assert created["status"] == "awaiting_payment" and created["chain_id"] == 8453
    assert created["confirmations_required"] == 2 and created["token_address"] == BASE_USDC_ADDRESS
    again = await system.http.post(
        "/api/v1/deposit/intent/create", json={"expected_amount_usdc": "99"}, headers=bearer("ada")
    )
    assert again.status_code == 200 and again.json()["intent_id"] == created["intent_id"]

    tx = await mint_usdc(system.w3, BASE_USDC_ADDRESS, created["deposit_address"], 25_500_000)
    confirming = await wait_intent(system, "ada", created["intent_id"], "confirming")
    assert confirming["tx_hash"] == tx.lower() and confirming["confirmations"] == 1
    await wait_rounds(system, 2)  # too few confirmations: nothing is credited however often we look
    assert await balance(system.pool, user_account("ada", "USDC")) == 0

    await rpc(system, "anvil_mine")
    done = await wait_intent(system, "ada", created["intent_id"], "completed")
    assert done["end_reason"] == "confirmed" and done["received_amount_usdc"] == "25.500000"
    await wait_rounds(system, 2)
    assert await balance(system.pool, user_account("ada", "USDC")) == 25_500_000
    portfolio = (await system.http.get("/api/v1/portfolio", headers=bearer("ada"))).json()
    assert portfolio["balances"] == {"USDC": "25.500000"}
    assert await system.pool.fetchval("SELECT usdc_micro FROM wallet_balances WHERE user_id = 'ada'") == 25_500_000


@pytest.mark.system_settings(**FAST, intent_ttl_seconds=2)
async def test_an_intent_expires_by_ttl(mpesa_system: MpesaSystem) -> None:
    created = await create_intent(mpesa_system, "bea")
    expired = await wait_intent(mpesa_system, "bea", created["intent_id"], "expired")
    assert expired["end_reason"] == "ttl" and expired["checks"] >= 1
    checks = expired["checks"]
    await wait_rounds(mpesa_system, 2)
    assert (await intent(mpesa_system, "bea", created["intent_id"]))["checks"] == checks  # stops when it ends


@pytest.mark.system_settings(**FAST, intent_max_checks=3)
async def test_an_intent_expires_by_max_checks_with_exact_checks(mpesa_system: MpesaSystem) -> None:
    created = await create_intent(mpesa_system, "cy")
    expired = await wait_intent(mpesa_system, "cy", created["intent_id"], "expired")
    assert expired["end_reason"] == "max_checks" and expired["checks"] == 3


@pytest.mark.system_settings(**FAST)
async def test_unsolicited_and_two_in_one_block_are_credited_and_flagged(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    address = (await system.http.get("/api/v1/portfolio", headers=bearer("dan"))).json()["deposit_address"]
    await rpc(system, "evm_setAutomine", False)
    await mint_usdc_unmined(system, address, 1_000_000)
    await mint_usdc_unmined(system, address, 2_000_000)
    await rpc(system, "anvil_mine", 3)
    await rpc(system, "evm_setAutomine", True)

    async def credited() -> bool:
        return await balance(system.pool, user_account("dan", "USDC")) == 3_000_000

    async with asyncio.timeout(20):
        while not await credited():
            await asyncio.sleep(0.1)
    rows = await system.pool.fetch("SELECT block_number, flags FROM chain_transfers WHERE user_id = 'dan'")
    assert len(rows) == 2 and rows[0]["block_number"] == rows[1]["block_number"]
    assert all(r["flags"] == ["unsolicited"] for r in rows)


async def mint_usdc_unmined(system: MpesaSystem, to: str, amount: int) -> None:
    data = "0x40c10f19" + to[2:].lower().rjust(64, "0") + f"{amount:064x}"
    accounts = await system.w3.eth.accounts
    await rpc(system, "eth_sendTransaction", {"from": accounts[0], "to": BASE_USDC_ADDRESS, "data": data})


@pytest.mark.system_settings(**FAST)
async def test_a_treasury_payout_to_an_address_with_an_open_intent_is_not_a_deposit(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    created = await create_intent(system, "eve")
    body = (await system.initiate("eve", 1295)).json()
    await system.wait_status("eve", body["deposit_id"], "completed")
    await rpc(system, "anvil_mine", 3)
    await wait_rounds(system, 2)
    row = await system.pool.fetchrow("SELECT kind, status FROM chain_transfers WHERE user_id = 'eve'")
    assert row is not None and row["kind"] == "treasury" and row["status"] == "seen"
    assert (await intent(system, "eve", created["intent_id"]))["status"] == "awaiting_payment"
    assert await balance(system.pool, user_account("eve", "USDC")) == 10_000_000  # the M-Pesa credit only


@pytest.mark.system_settings(**FAST)
async def test_another_token_is_never_credited_as_usdc(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    usdbc = "0xd9aAEc86B65D86f6A7B5B1b0c42FFA531710b6CA"
    await install_usdc(system.w3, usdbc)
    address = (await system.http.get("/api/v1/portfolio", headers=bearer("fox"))).json()["deposit_address"]
    await mint_usdc(system.w3, usdbc, address, 5_000_000)
    await rpc(system, "anvil_mine", 3)
    await wait_rounds(system, 2)
    assert await system.pool.fetchval("SELECT count(*) FROM chain_transfers") == 0
    assert await balance(system.pool, user_account("fox", "USDC")) == 0


@pytest.mark.system_settings(**FAST)
async def test_a_payment_replaced_after_a_reorg_is_credited_once(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    created = await create_intent(system, "hal")
    await mint_usdc(system.w3, BASE_USDC_ADDRESS, created["deposit_address"], 7_000_000)
    await wait_intent(system, "hal", created["intent_id"], "confirming")
    await system.stop_worker()
    await rpc(system, "anvil_reorg", 1, [])  # the payment's block is replaced; the payer pays again
    # A new transaction, from another wallet: a second mint from the same sender at the same nonce, with the
    # same base fee, is the same transaction with the same hash (a re-sent payment, tested elsewhere).
    again = await signed_payment(system, created["deposit_address"], 7_000_000)
    await system.start_worker()
    await rpc(system, "eth_sendRawTransaction", again.raw_tx)
    await rpc(system, "anvil_mine", 4)
    done = await wait_intent(system, "hal", created["intent_id"], "completed")
    assert done["received_amount_usdc"] == "7.000000"
    await wait_rounds(system, 2)
    statuses = sorted(r["status"] for r in await system.pool.fetch("SELECT status FROM chain_transfers"))
    assert statuses == ["credited", "orphaned"]
    assert await balance(system.pool, user_account("hal", "USDC")) == 7_000_000


@pytest.mark.system_settings(**FAST)
@pytest.mark.parametrize("depth", [1, 2, 3])
async def test_a_reorg_while_confirming_never_credits_an_orphan(mpesa_system: MpesaSystem, depth: int) -> None:
    system = mpesa_system
    created = await create_intent(system, "gus")
    if depth > 1:
        await rpc(system, "anvil_mine", depth - 1)
    tx = await mint_usdc(system.w3, BASE_USDC_ADDRESS, created["deposit_address"], 7_000_000)
    await wait_intent(system, "gus", created["intent_id"], "confirming")
    await system.stop_worker()  # hold the rounds while the chain changes under us
    await rpc(system, "anvil_reorg", depth, [])  # the transfer's block is replaced
    await system.start_worker()
    await rpc(system, "anvil_mine", 4)
    await wait_rounds(system, 3)
    receipt_block = None
    try:
        receipt_block = (await system.w3.eth.get_transaction_receipt(tx))["blockNumber"]
    except Exception:
        receipt_block = None
    credited = await balance(system.pool, user_account("gus", "USDC"))
    if receipt_block is None:
        assert credited == 0
        assert await system.pool.fetchval("SELECT status FROM chain_transfers") == "orphaned"
    else:  # re-included: credited once, in its new block
        assert credited == 7_000_000
        row = await system.pool.fetchrow("SELECT status, block_number FROM chain_transfers")
        assert row["status"] == "credited" and row["block_number"] == receipt_block


async def signed_payment(system: MpesaSystem, to: str, amount: int) -> SignedTx:
    """A USDC transfer from an ordinary funded wallet, signed and not yet sent: its raw bytes can be sent again."""
    from eth_account import Account

    from kiota.dev.chain import fund_eth
    from kiota.treasury import Treasury

    payer = Treasury(system.settings.base_rpc_url, "0x" + bytes(Account.create().key).hex(), 8453, BASE_USDC_ADDRESS)
    try:
        await fund_eth(system.w3, payer.address, 10**18)
        await mint_usdc(system.w3, BASE_USDC_ADDRESS, payer.address, amount)
        return payer.sign_transfer(to, amount, await payer.pending_nonce(), await payer.fee_quote())
    finally:
        await payer.aclose()


async def receipt_of(system: MpesaSystem, tx_hash: str) -> dict[str, Any]:
    """The receipt as the node answers it (anvil may answer a send before it has mined it)."""
    async with asyncio.timeout(10):
        while (receipt := await rpc(system, "eth_getTransactionReceipt", tx_hash)) is None:
            await asyncio.sleep(0.02)
    result: dict[str, Any] = receipt
    return result


async def transfer_rows(system: MpesaSystem) -> list[dict[str, Any]]:
    rows = await system.pool.fetch(
        "SELECT id, tx_hash, log_index, block_number, block_hash, status FROM chain_transfers ORDER BY id"
    )
    return [dict(r) for r in rows]


@pytest.mark.system_settings(**FAST)
@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("how", ["same-height", "resent-after-orphaned", "behind-another-log"])
async def test_the_same_transaction_reincluded_after_a_reorg_is_credited_once(
    mpesa_system: MpesaSystem, depth: int, how: str
) -> None:
    """The very same signed transaction (same hash) is mined, seen confirming, reorged out and mined again.

    same-height: the reorg's new blocks carry it at its old height (new block hash, same log index), seen
    by no round in between: its row moves in place. resent-after-orphaned: a round sees it gone (orphaned),
    then the payer's wallet re-broadcasts the same bytes into a later block: its row comes back. behind-
    another-log: re-mined at its old height after another transfer, so its log index changes: a transfer
    is what its transaction emits, not its index, so its row moves there too.
    """
    system = mpesa_system
    created = await create_intent(system, "lea", "7")
    signed = await signed_payment(system, created["deposit_address"], 7_000_000)
    if depth > 1:
        await rpc(system, "anvil_mine", depth - 1)  # the reorg replaces these blocks and the payment's
    await rpc(system, "eth_sendRawTransaction", signed.raw_tx)
    old_receipt = await receipt_of(system, signed.tx_hash)
    await wait_intent(system, "lea", created["intent_id"], "confirming")
    [old] = await transfer_rows(system)
    assert (old["tx_hash"], old["block_hash"], old["status"]) == (signed.tx_hash, old_receipt["blockHash"], "seen")
    await system.stop_worker()  # hold the rounds while the chain changes under us

    if how == "resent-after-orphaned":
        await rpc(system, "anvil_reorg", depth, [])
        assert await rpc(system, "eth_getTransactionReceipt", signed.tx_hash) is None
        await system.start_worker()
        await wait_intent(system, "lea", created["intent_id"], "awaiting_payment")
        assert [r["status"] for r in await transfer_rows(system)] == ["orphaned"]
        await rpc(system, "eth_sendRawTransaction", signed.raw_tx)  # the same bytes, so the same hash
    else:
        accounts = await system.w3.eth.accounts
        stranger = "ab" * 20  # nobody's address: the mint's log only moves the payment's log index
        stranger_mint = {"from": accounts[0], "to": BASE_USDC_ADDRESS, "gas": hex(100_000),
                         "data": "0x40c10f19" + stranger.rjust(64, "0") + f"{1:064x}"}  # fmt: skip
        # The mint before the payment moves its log index; after it, it only makes the rebuilt block differ
        # (a block with the same parent, transactions and timestamp would be the same block, same hash).
        before = how == "behind-another-log"
        mint = [stranger_mint, depth - 1]
        await rpc(
            system,
            "anvil_reorg",
            depth,
            [mint, [signed.raw_tx, depth - 1]] if before else [[signed.raw_tx, depth - 1], mint],
        )
        await system.start_worker()
    receipt = await receipt_of(system, signed.tx_hash)
    assert receipt["transactionHash"] == signed.tx_hash and receipt["blockHash"] != old_receipt["blockHash"]
    log_index = int(receipt["logs"][0]["logIndex"], 16)
    assert (log_index, int(receipt["blockNumber"], 16)) == {
        "same-height": (old["log_index"], old["block_number"]),
        "resent-after-orphaned": (old["log_index"], old["block_number"] + 1),
        "behind-another-log": (old["log_index"] + 1, old["block_number"]),
    }[how]

    await rpc(system, "anvil_mine")  # its second confirmation
    done = await wait_intent(system, "lea", created["intent_id"], "completed")
    assert (done["end_reason"], done["tx_hash"]) == ("confirmed", signed.tx_hash)
    assert done["received_amount_usdc"] == "7.000000"
    await wait_rounds(system, 2)  # later rounds change nothing

    rows = await transfer_rows(system)
    credited = [r for r in rows if r["status"] == "credited"]
    assert len(credited) == 1
    [row] = credited
    assert (row["tx_hash"], row["log_index"]) == (signed.tx_hash, log_index)
    assert (row["block_number"], row["block_hash"]) == (int(receipt["blockNumber"], 16), receipt["blockHash"])
    assert [r["id"] for r in rows] == [old["id"]]  # the same transfer: the same row, moved
    entries = await system.pool.fetch("SELECT idempotency_key FROM journal_entries WHERE kind = 'usdc_received'")
    assert [e["idempotency_key"] for e in entries] == [f"usdc:8453:{signed.tx_hash}:{log_index}"]
    assert await balance(system.pool, user_account("lea", "USDC")) == 7_000_000
    intents = await system.pool.fetch("SELECT status, transfer_id, flags FROM deposit_intents WHERE user_id = 'lea'")
    assert [tuple(i) for i in intents] == [("completed", row["id"], [])]


async def test_rpc_calls_per_round_do_not_grow_with_addresses(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    await system.stop_worker()
    reader = ChainReader(system.settings.base_rpc_url)
    config = ScanConfig(8453, BASE_USDC_ADDRESS, system.treasury_address, 2, 120)
    try:
        await system.http.get("/api/v1/portfolio", headers=bearer("one"))
        first = await scan_round(system.pool, reader, config)
        for i in range(1000):
            await system.http.post("/api/v1/deposit/intent/create", json={}, headers=bearer(f"many{i}"))
        second = await scan_round(system.pool, reader, config)
    finally:
        await reader.aclose()
    assert first is not None and second is not None
    assert second.rpc_calls == first.rpc_calls == 2  # eth_blockNumber + one eth_getLogs
    assert await system.pool.fetchval("SELECT min(checks) FROM deposit_intents") == 1


@pytest.mark.parametrize(
    "rules",
    [
        {"max_log_range": 3, "suggest_range": True},
        {"max_log_range": 2, "suggest_range": False},
        {"max_log_range": 2, "suggest_range": False, "range_error_http_status": 400},
        {"rate_limit_every": 3},
    ],
    ids=["suggested-range", "plain-refusal", "http-400", "429"],
)
async def test_a_strict_provider_still_yields_every_transfer_once(
    mpesa_system: MpesaSystem, rules: dict[str, Any]
) -> None:
    from kiota.dev.rpc_proxy import ProxyConfig, running_rpc_proxy

    system = mpesa_system
    await system.stop_worker()
    users = [f"p{i}" for i in range(3)]
    addresses = [
        (await system.http.get("/api/v1/portfolio", headers=bearer(u))).json()["deposit_address"] for u in users
    ]
    reader = ChainReader(system.settings.base_rpc_url)
    config = ScanConfig(8453, BASE_USDC_ADDRESS, system.treasury_address, 2, 120, rescan_blocks=20)
    try:
        await scan_round(system.pool, reader, config)  # the cursor starts here
    finally:
        await reader.aclose()
    for n in range(12):  # twelve transfers over twelve blocks, to three users
        await mint_usdc(system.w3, BASE_USDC_ADDRESS, addresses[n % 3], 1_000_000 + n)
    await rpc(system, "anvil_mine", 2)
    async with running_rpc_proxy(system.settings.base_rpc_url, ProxyConfig(**rules)) as proxy:
        strict = ChainReader(proxy.url)
        try:
            report = await scan_round(system.pool, strict, config)
            again = await scan_round(system.pool, strict, config)
        finally:
            await strict.aclose()
        assert proxy.state.calls["eth_getLogs"] >= 2
    assert report is not None and again is not None
    assert report.matched == 12 and report.credited == 12 and again.credited == 0
    assert await system.pool.fetchval("SELECT count(*) FROM chain_transfers WHERE status = 'credited'") == 12
    for n, user in enumerate(users):
        expected = sum(1_000_000 + k for k in range(12) if k % 3 == n)
        assert await balance(system.pool, user_account(user, "USDC")) == expected


async def test_reconcile_reports_what_the_ledger_does_not_know(mpesa_system: MpesaSystem) -> None:
    import os
    import sys

    system = mpesa_system
    body = (await system.initiate("ivy", 1295)).json()
    await system.wait_status("ivy", body["deposit_id"], "completed")  # ledger and chain agree for ivy
    stray = (await system.http.get("/api/v1/portfolio", headers=bearer("jay"))).json()["deposit_address"]
    await system.stop_worker()  # no ingester: jay's USDC stays unknown to the ledger
    await mint_usdc(system.w3, BASE_USDC_ADDRESS, stray, 3_000_000)
    env = {
        "PATH": os.environ["PATH"],
        "DATABASE_URL": system.settings.database_url,
        "BASE_RPC_URL": system.settings.base_rpc_url,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kiota.cli", "reconcile", "--treasury", system.treasury_address,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    finally:
        if proc.returncode is None:  # timed out: stopped, not left behind
            proc.kill()
            await proc.wait()
    assert proc.returncode == 1, out
    assert "2 difference(s)" in out
    assert f"DIFFERENCE user jay {stray}: ledger 0.000000, chain 3.000000" in out
    # Custody, too, lacks jay's USDC: the deposit addresses hold 13, the ledger knows of 10.
    assert "DIFFERENCE custody:USDC all deposit addresses: ledger 10.000000, chain 13.000000" in out
    assert "user ivy" in out and "ledger 10.000000 chain 10.000000" in out
    assert "paid out per ledger 10.000000" in out


@pytest.mark.system_settings(**FAST, intent_ttl_seconds=1)
async def test_a_late_ordinary_transfer_is_credited_and_flagged_late(mpesa_system: MpesaSystem) -> None:
    from eth_account import Account

    from kiota.dev.chain import fund_eth
    from kiota.treasury import Treasury

    system = mpesa_system
    created = await create_intent(system, "kai", "5")
    await wait_intent(system, "kai", created["intent_id"], "expired")
    payer_key = Account.create()
    payer = Treasury(system.settings.base_rpc_url, "0x" + bytes(payer_key.key).hex(), 8453, BASE_USDC_ADDRESS)
    try:  # an ordinary wallet sends USDC (not a mint): from a real sender address
        await fund_eth(system.w3, payer.address, 10**18)
        await mint_usdc(system.w3, BASE_USDC_ADDRESS, payer.address, 9_000_000)
        signed = payer.sign_transfer(created["deposit_address"], 5_000_000, await payer.pending_nonce(),
                                     await payer.fee_quote())  # fmt: skip
        await payer.broadcast(signed.raw_tx)
    finally:
        await payer.aclose()
    await rpc(system, "anvil_mine", 2)

    async def credited() -> bool:
        return await balance(system.pool, user_account("kai", "USDC")) == 5_000_000

    async with asyncio.timeout(20):
        while not await credited():
            await asyncio.sleep(0.1)
    row = await system.pool.fetchrow("SELECT from_address, flags, intent_id FROM chain_transfers")
    assert row["from_address"] == payer.address.lower() and row["flags"] == ["late"] and row["intent_id"] is None
    assert (await intent(system, "kai", created["intent_id"]))["status"] == "expired"
