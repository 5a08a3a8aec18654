"""Payouts given up on: their nonce is filled (or their late mining settled), so nothing waits behind a gap.

The worker's treasury talks to anvil through the provider proxy, which can refuse
`eth_sendRawTransaction` alone: a node that answers reads but never takes a transaction.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest

from kiota import ops
from kiota.dev.chain import BASE_USDC_ADDRESS
from kiota.dev.rpc_proxy import ProxyState, running_rpc_proxy
from kiota.ledger import user_account
from kiota.mpesa import USER_CHECKING
from kiota.store.ledger import balance
from kiota.treasury import Treasury
from tests.conftest import MpesaSystem
from tests.integration.test_mpesa_flow import transfers_from
from tests.integration.test_payout_lane import rpc, wait_for
from tests.support import ADMIN_AUTH, TREASURY_KEY

SEND = "eth_sendRawTransaction"


@contextlib.asynccontextmanager
async def proxied_treasury(system: MpesaSystem) -> AsyncIterator[ProxyState]:
    """The worker's treasury behind the proxy for the block; yields the proxy's controls."""
    assert system.worker is not None
    async with running_rpc_proxy(system.settings.base_rpc_url) as proxy:
        proxied = Treasury(proxy.url, TREASURY_KEY, 8453, BASE_USDC_ADDRESS)
        original = system.use_treasury(proxied)
        try:
            yield proxy.state
        finally:
            system.use_treasury(original)
            await proxied.aclose()


async def payout_of(system: MpesaSystem, deposit_id: str) -> dict[str, object]:
    row = await system.pool.fetchrow(
        "SELECT * FROM payouts WHERE deposit_id = $1::uuid ORDER BY id DESC LIMIT 1", deposit_id
    )
    assert row is not None
    return dict(row)


async def wait_payout(system: MpesaSystem, deposit_id: str, status: str, seconds: float = 20) -> dict[str, object]:
    async def reached() -> bool:
        return (await payout_of(system, deposit_id))["status"] == status

    await wait_for(reached, seconds)
    return await payout_of(system, deposit_id)


async def attempts(system: MpesaSystem, kind: str) -> list[dict[str, object]]:
    rows = await system.pool.fetch("SELECT * FROM payout_attempts WHERE kind = $1 ORDER BY id", kind)
    return [dict(r) for r in rows]


async def test_a_payout_never_sent_is_filled_and_later_payouts_are_not_stuck(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    async with proxied_treasury(system) as proxy:
        proxy.configure(refuse_methods=(SEND,))
        first = (await system.initiate("amy", 1295)).json()
        review = await system.wait_status("amy", first["deposit_id"], "needs_review", seconds=30)
        assert review["failure_reason"] == USER_CHECKING
        assert "failed 5 times" in await system.review_reason(first["deposit_id"])
        abandoned = await payout_of(system, first["deposit_id"])
        assert abandoned["status"] == "cancelling"
        nonce = abandoned["nonce"]
        assert await system.w3.eth.get_transaction_count(system.treasury_address) == nonce  # nothing was sent
        assert await system.pool.fetchval("SELECT next_nonce FROM treasury_nonces") == nonce + 1  # type: ignore[operator]
        assert "kiota_payouts_cancelling 1.0" in (await system.http.get("/metrics", auth=ADMIN_AUTH)).text

        # The node takes transactions again. The next payout is signed at nonce + 1: it is only
        # mined if something fills the abandoned nonce first.
        proxy.configure(refuse_methods=())
        second = (await system.initiate("bob", 1295)).json()
        done = await system.wait_status("bob", second["deposit_id"], "completed")

    filled = await wait_payout(system, first["deposit_id"], "cancelled")
    [filler] = await attempts(system, "filler")
    tx = await system.w3.eth.get_transaction(filler["tx_hash"])  # type: ignore[arg-type]
    assert (tx["nonce"], tx["value"], tx["to"], tx["from"]) == (nonce, 0, tx["from"], system.treasury_address)
    assert filled["tx_hash"] == filler["tx_hash"]
    assert (await system.w3.eth.get_transaction(done["tx_hash"]))["nonce"] == nonce + 1
    assert (await system.deposit("amy", first["deposit_id"]))["status"] == "needs_review"  # nobody paid amy

    # An operator's retry pays amy with a new payout and a new nonce.
    await ops.retry_deposit(system.pool, system.queue, uuid.UUID(first["deposit_id"]), "test")
    paid = await system.wait_status("amy", first["deposit_id"], "completed")
    assert (await system.w3.eth.get_transaction(paid["tx_hash"]))["nonce"] == nonce + 2
    assert len(await transfers_from(system, system.treasury_address)) == 2
    for user in ("amy", "bob"):
        assert await balance(system.pool, user_account(user, "USDC")) == 10_000_000
    statuses = await system.pool.fetch("SELECT status FROM payouts WHERE deposit_id = $1::uuid", first["deposit_id"])
    assert sorted(r["status"] for r in statuses) == ["cancelled", "confirmed"]


async def test_after_30_minutes_unmined_the_payout_is_replaced_by_a_filler(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    await rpc(system, "evm_setAutomine", False)  # the payout is sent but no block comes
    body = (await system.initiate("cat", 1295)).json()
    await wait_for(lambda: _broadcast(system, "payout"))
    await system.pool.execute("UPDATE deposits SET processing_since = now() - interval '31 minutes'")
    review = await system.wait_status("cat", body["deposit_id"], "needs_review")
    assert review["failure_reason"] == USER_CHECKING
    assert "not settled within 30 minutes" in await system.review_reason(body["deposit_id"])
    assert (await payout_of(system, body["deposit_id"]))["status"] == "cancelling"

    # No other payout comes along: the sweeper sends the filler, outbidding the payout in the pool.
    await wait_for(lambda: _broadcast(system, "filler"))
    [payout] = await attempts(system, "payout")
    [filler] = await attempts(system, "filler")
    assert filler["nonce"] == payout["nonce"]
    assert filler["max_fee_per_gas"] * 1000 >= payout["max_fee_per_gas"] * 1125  # type: ignore[operator]
    await rpc(system, "anvil_mine")  # the filler is mined: the payout is cancelled at its second confirmation
    await wait_for(lambda: _filler_mined(system))
    assert (await payout_of(system, body["deposit_id"]))["status"] == "cancelling"
    with pytest.raises(ops.CannotRetry, match="could still mine it"):
        await ops.retry_deposit(system.pool, system.queue, uuid.UUID(body["deposit_id"]), "test")
    await rpc(system, "anvil_mine")
    await wait_payout(system, body["deposit_id"], "cancelled")
    assert await transfers_from(system, system.treasury_address) == []
    assert await balance(system.pool, user_account("cat", "USDC")) == 0

    await rpc(system, "evm_setAutomine", True)
    await ops.retry_deposit(system.pool, system.queue, uuid.UUID(body["deposit_id"]), "test")
    await system.wait_status("cat", body["deposit_id"], "completed")
    assert len(await transfers_from(system, system.treasury_address)) == 1
    assert await balance(system.pool, user_account("cat", "USDC")) == 10_000_000


async def test_a_payout_given_up_on_but_mined_after_all_is_settled_once(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    async with proxied_treasury(system) as proxy:
        await rpc(system, "evm_setAutomine", False)
        body = (await system.initiate("dan", 1295)).json()
        await wait_for(lambda: _broadcast(system, "payout"))
        proxy.configure(refuse_methods=(SEND,))  # from now on no filler can reach the node
        await system.pool.execute("UPDATE deposits SET processing_since = now() - interval '31 minutes'")
        await system.wait_status("dan", body["deposit_id"], "needs_review")
        await wait_for(lambda: _stored(system, "filler"))  # signed and stored, refused by the node
        await rpc(system, "anvil_mine")  # the original payout is mined
        done = await system.wait_status("dan", body["deposit_id"], "completed")

    [payout] = await attempts(system, "payout")
    assert done["tx_hash"] == payout["tx_hash"]
    assert (await payout_of(system, body["deposit_id"]))["status"] == "confirmed"
    assert len(await transfers_from(system, system.treasury_address)) == 1
    assert await balance(system.pool, user_account("dan", "USDC")) == 10_000_000
    entries = await system.pool.fetchval("SELECT count(*) FROM journal_entries WHERE kind = 'mpesa_completed'")
    assert entries == 1


async def _broadcast(system: MpesaSystem, kind: str) -> bool:
    return bool(
        await system.pool.fetchval(
            "SELECT count(*) FROM payout_attempts WHERE kind = $1 AND broadcast_at IS NOT NULL", kind
        )
    )


async def _filler_mined(system: MpesaSystem) -> bool:
    [filler] = await attempts(system, "filler")
    return await system.w3.eth.get_transaction_count(system.treasury_address) > filler["nonce"]  # type: ignore[operator]


async def _stored(system: MpesaSystem, kind: str) -> bool:
    return bool(await system.pool.fetchval("SELECT count(*) FROM payout_attempts WHERE kind = $1", kind))
