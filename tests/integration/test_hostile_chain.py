"""A hostile chain: no odd log, failing credit or deep reorg stops crediting or pays twice (issue 11, item 1).

Each odd log is mined in the same block, so seen by the same round, as a real transfer to another user's
open intent: the real one must still be credited and complete the intent. The rounds read the chain through
the provider proxy with `ignore_log_address`, so the answers hold other contracts' logs too: the provider's
address filter is never trusted.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from eth_account import Account
from web3.types import RPCEndpoint

from kiota import ledger, ops
from kiota.chain_rpc import ChainReader
from kiota.dev.chain import BASE_USDC_ADDRESS, install_usdc, mint_usdc
from kiota.dev.rpc_proxy import ProxyConfig, running_rpc_proxy
from kiota.ingester import RoundReport, ScanConfig, scan_round
from kiota.ledger import SUSPENSE_USDC, user_account
from kiota.payouts import (
    LaneConfig,
    PayoutOutcome,
    abandon,
    fill_abandoned_nonces,
    pay_deposit,
    recheck_settled_payouts,
)
from kiota.sql import load_queries
from kiota.store.ledger import balance, post_entry
from kiota.treasury import Fees, Treasury
from kiota.usdc import MAX_CREDIT_MICRO
from tests.conftest import MpesaSystem
from tests.integration.test_mpesa_flow import transfers_from
from tests.integration.test_payout_lane import wait_for
from tests.integration.test_usdc_deposits import (
    FAST,
    create_intent,
    intent,
    receipt_of,
    signed_payment,
    wait_intent,
    wait_rounds,
)
from tests.support import TREASURY_KEY, bearer

OTHER_TOKEN = "0x0000000000000000000000000000000000C0FFEE"  # a Transfer-emitting look-alike at another address
TRANSFER, TRANSFER_FROM, APPROVE, MINT = "a9059cbb", "23b872dd", "095ea7b3", "40c10f19"
REAL = 1_250_000  # the real transfer that must be credited whatever else the round holds


def word(value: int | str) -> str:
    if isinstance(value, str):
        return value.lower().removeprefix("0x").rjust(64, "0")
    return f"{value:064x}"


def calldata(selector: str, *args: int | str) -> str:
    return "0x" + selector + "".join(word(a) for a in args)


async def call(system: MpesaSystem, method: str, *params: object) -> Any:
    answer = await system.w3.provider.make_request(RPCEndpoint(method), list(params))
    assert "error" not in answer, (method, answer)
    return answer.get("result")


async def send_as(system: MpesaSystem, sender: str, data: str, to: str = BASE_USDC_ADDRESS) -> str:
    """A transaction from any address (anvil impersonates it, and gives it gas money)."""
    await call(system, "anvil_impersonateAccount", sender)
    await call(system, "anvil_setBalance", sender, hex(10**18))
    try:
        return str(await call(system, "eth_sendTransaction", {"from": sender, "to": to, "data": data,
                                                              "gas": hex(200_000)}))  # fmt: skip
    finally:
        await call(system, "anvil_stopImpersonatingAccount", sender)


async def mint_unmined(system: MpesaSystem, to: str, amount: int, token: str = BASE_USDC_ADDRESS) -> str:
    minter = (await system.w3.eth.accounts)[-1]  # not a deposit address of these tests
    return await send_as(system, minter, calldata(MINT, to, amount), token)


def fresh_address() -> str:
    return str(Account.create().address)


async def address_of(system: MpesaSystem, user: str) -> str:
    response = await system.http.get("/api/v1/portfolio", headers=bearer(user))
    return str(response.json()["deposit_address"])


def scan_config(system: MpesaSystem) -> ScanConfig:
    return ScanConfig(8453, BASE_USDC_ADDRESS, system.treasury_address, 2, 120)


async def one_round(system: MpesaSystem, reader: ChainReader) -> RoundReport:
    report = await scan_round(system.pool, reader, scan_config(system))
    assert report is not None
    return report


async def transfer_row(system: MpesaSystem, tx_hash: str) -> dict[str, Any]:
    row = await system.pool.fetchrow("SELECT * FROM chain_transfers WHERE tx_hash = $1", tx_hash.lower())
    assert row is not None, tx_hash
    return dict(row)


async def review_items(system: MpesaSystem) -> list[dict[str, Any]]:
    return [dict(r) for r in await system.pool.fetch(load_queries().open_review_items)]


async def entry_keys(system: MpesaSystem, kind: str) -> list[str]:
    rows = await system.pool.fetch("SELECT idempotency_key FROM journal_entries WHERE kind = $1 ORDER BY id", kind)
    return [r["idempotency_key"] for r in rows]


# What each odd log is recorded as, its status after the round, and what the victim is credited in all.
ODD = {
    "zero_value": ("zero_value", "seen", 0),
    "self_transfer": ("self_transfer", "seen", 3_000_000),  # 3 USDC minted to it earlier: credited; the echo is not
    "mint": ("deposit", "credited", 2_000_000),  # real USDC arriving
    "transfer_from": ("deposit", "credited", 5_000_000),  # a third party moved an owner's USDC here: real too
    "too_large": ("too_large", "review", 0),
    "foreign_contract": ("foreign_contract", "seen", 0),
}


@pytest.mark.no_worker
@pytest.mark.parametrize("odd", list(ODD))
async def test_an_odd_log_in_the_same_round_never_stops_a_real_credit(mpesa_system: MpesaSystem, odd: str) -> None:
    system = mpesa_system
    victim = (await address_of(system, "odd")).lower()
    created = await create_intent(system, "pay", "1.25")
    payer, owner, spender = fresh_address(), fresh_address(), fresh_address()
    await mint_usdc(system.w3, BASE_USDC_ADDRESS, payer, REAL)
    if odd == "self_transfer":  # the address must hold what it sends itself
        await mint_usdc(system.w3, BASE_USDC_ADDRESS, victim, 3_000_000)
    elif odd == "transfer_from":
        await mint_usdc(system.w3, BASE_USDC_ADDRESS, owner, 5_000_000)
        await send_as(system, owner, calldata(APPROVE, spender, 5_000_000))
    elif odd == "foreign_contract":
        await install_usdc(system.w3, OTHER_TOKEN)

    await call(system, "evm_setAutomine", False)
    odd_tx = {
        "zero_value": lambda: send_as(system, fresh_address(), calldata(TRANSFER, victim, 0)),
        "self_transfer": lambda: send_as(system, victim, calldata(TRANSFER, victim, 3_000_000)),
        "mint": lambda: mint_unmined(system, victim, 2_000_000),
        "transfer_from": lambda: send_as(system, spender, calldata(TRANSFER_FROM, owner, victim, 5_000_000)),
        "too_large": lambda: mint_unmined(system, victim, 10**30),
        "foreign_contract": lambda: mint_unmined(system, victim, 4_000_000, OTHER_TOKEN),
    }[odd]
    odd_hash = await odd_tx()
    real_hash = await send_as(system, payer, calldata(TRANSFER, created["deposit_address"], REAL))
    await call(system, "anvil_mine", 2)  # both in one block, and its second confirmation
    odd_receipt, real_receipt = await receipt_of(system, odd_hash), await receipt_of(system, real_hash)
    assert odd_receipt["status"] == real_receipt["status"] == "0x1"
    assert odd_receipt["blockNumber"] == real_receipt["blockNumber"]

    async with running_rpc_proxy(system.settings.base_rpc_url, ProxyConfig(ignore_log_address=True)) as proxy:
        reader = ChainReader(proxy.url)
        try:
            report = await one_round(system, reader)
            again = await one_round(system, reader)
        finally:
            await reader.aclose()

    # The real transfer is credited and completes the other user's intent, in this very round.
    done = await intent(system, "pay", created["intent_id"])
    assert (done["status"], done["end_reason"], done["received_amount_usdc"]) == ("completed", "confirmed", "1.250000")
    assert done["tx_hash"] == real_hash.lower()
    assert await balance(system.pool, user_account("pay", "USDC")) == REAL
    assert report.end == await system.w3.eth.block_number
    assert await system.pool.fetchval("SELECT next_block FROM chain_cursors") == report.end + 1

    kind, status, credited = ODD[odd]
    row = await transfer_row(system, odd_hash)
    assert (row["kind"], row["status"], row["to_address"]) == (kind, status, victim)
    assert await balance(system.pool, user_account("odd", "USDC")) == credited
    received = await entry_keys(system, "usdc_received")
    assert f"usdc:8453:{real_hash.lower()}:{int(real_receipt['logs'][0]['logIndex'], 16)}" in received
    assert len(received) == (2 if credited else 1)
    items = await review_items(system)
    if odd == "too_large":
        assert [(i["kind"], i["chain_transfer_id"], i["amount_usdc_micro"]) for i in items] == [
            ("usdc_too_large", row["id"], 10**30)
        ]
        assert str(MAX_CREDIT_MICRO) in items[0]["reason"] and odd_hash.lower() in items[0]["reason"]
        assert report.review == 1
    else:
        assert items == []
    if odd == "mint":
        assert row["from_address"] == "0x" + "00" * 20 and row["flags"] == ["unsolicited"]
    if odd == "transfer_from":
        assert row["from_address"] == owner.lower()  # the log names the owner, not the spender who sent it
    if odd == "foreign_contract":
        assert row["token_address"] == OTHER_TOKEN.lower()
        assert proxy.state.log_filters and all("address" in f for f in proxy.state.log_filters)  # we asked by address
    # A second round over the same blocks changes nothing.
    assert (again.credited, again.review) == (0, 0)
    assert len(await entry_keys(system, "usdc_received")) == len(received)
    assert len(await review_items(system)) == len(items)


@pytest.mark.system_settings(**FAST)
async def test_a_zero_value_transfer_does_not_stop_the_worker_crediting_another_user(
    mpesa_system: MpesaSystem,
) -> None:
    """The attack as it was run against the worker: a zero-value transfer to one address, then a real one to
    another user's intent. Before the fix every round rolled back, and the intent stayed awaiting_payment."""
    system = mpesa_system
    victim = await address_of(system, "odd")
    created = await create_intent(system, "pay", "1.25")
    zero = await send_as(system, fresh_address(), calldata(TRANSFER, victim, 0))
    await call(system, "anvil_mine", 2)
    await wait_rounds(system, 2)  # the round running when the intent was made may not count it: one more does
    payer = fresh_address()
    await mint_usdc(system.w3, BASE_USDC_ADDRESS, payer, REAL)
    await send_as(system, payer, calldata(TRANSFER, created["deposit_address"], REAL))
    await call(system, "anvil_mine", 2)
    done = await wait_intent(system, "pay", created["intent_id"], "completed")
    assert done["received_amount_usdc"] == "1.250000" and done["checks"] >= 1
    assert await balance(system.pool, user_account("pay", "USDC")) == REAL
    row = await transfer_row(system, zero)
    assert (row["kind"], row["status"]) == ("zero_value", "seen")


@pytest.mark.no_worker
async def test_a_credit_that_fails_goes_to_review_and_the_round_goes_on(mpesa_system: MpesaSystem) -> None:
    """One transfer's credit is refused by the ledger (its key was used for other postings): the round's
    credits are written again one by one; that one goes to review with its reason, every other is credited,
    and its user's intent is completed by their next transfer, as if the refused one had not come."""
    system = mpesa_system
    dora = await create_intent(system, "dora", "2")
    pay = await create_intent(system, "pay", "1.25")
    doomed = await signed_payment(system, dora["deposit_address"], 2_000_000)
    second = await signed_payment(system, dora["deposit_address"], 2_000_000)
    real = await signed_payment(system, pay["deposit_address"], REAL)
    # The first transfer's idempotency key, taken by an entry with other postings before it is even mined.
    async with system.pool.acquire() as conn:
        postings = ledger.transfer(ledger.CUSTODY_USDC, SUSPENSE_USDC, "USDC", 1)
        await post_entry(conn, ledger.Entry(f"usdc:8453:{doomed.tx_hash}:0", "test_squatter", postings))
    await call(system, "evm_setAutomine", False)
    await call(system, "eth_sendRawTransaction", doomed.raw_tx)
    await call(system, "anvil_mine")  # alone in its block: log index 0
    await call(system, "eth_sendRawTransaction", second.raw_tx)
    await call(system, "eth_sendRawTransaction", real.raw_tx)
    await call(system, "anvil_mine", 2)
    reader = ChainReader(system.settings.base_rpc_url)
    try:
        report = await one_round(system, reader)
        again = await one_round(system, reader)
    finally:
        await reader.aclose()

    assert (report.matched, report.credited, report.review) == (3, 2, 1)
    assert (again.credited, again.review) == (0, 0)
    row = await transfer_row(system, doomed.tx_hash)
    assert (row["status"], row["log_index"]) == ("review", 0)
    [item] = await review_items(system)
    assert (item["kind"], item["chain_transfer_id"], item["amount_usdc_micro"]) == (
        "usdc_credit_failed",
        row["id"],
        2_000_000,
    )
    assert "used for other postings" in item["reason"]
    assert (await transfer_row(system, second.tx_hash))["status"] == "credited"
    assert (await transfer_row(system, real.tx_hash))["status"] == "credited"
    dora_done = await intent(system, "dora", dora["intent_id"])
    assert (dora_done["status"], dora_done["tx_hash"]) == ("completed", second.tx_hash)
    assert (await intent(system, "pay", pay["intent_id"]))["status"] == "completed"
    assert await balance(system.pool, user_account("dora", "USDC")) == 2_000_000
    assert await balance(system.pool, user_account("pay", "USDC")) == REAL
    assert await system.pool.fetchval("SELECT next_block FROM chain_cursors") == report.end + 1


async def credit_then_reorg_away(
    system: MpesaSystem, reader: ChainReader, user: str, amount: int, *, remine_behind_another_log: bool = False
) -> Any:
    """A transfer to `user`'s intent, credited at its confirmations, then removed by a reorg 3 blocks deep
    (deeper than the 2 confirmations, within the 12 rescanned blocks). With `remine_behind_another_log` the
    reorg's first new block mines the same transaction again, behind a stranger's mint: its log index is 1
    now. Returns its signed transaction."""
    created = await create_intent(system, user, None)
    signed = await signed_payment(system, created["deposit_address"], amount)
    await call(system, "anvil_mine", 2)  # the reorg replaces these and the payment's blocks, not the payer's funding
    await call(system, "eth_sendRawTransaction", signed.raw_tx)
    assert int((await receipt_of(system, signed.tx_hash))["logs"][0]["logIndex"], 16) == 0
    await call(system, "anvil_mine")  # two confirmations
    assert (await one_round(system, reader)).credited == 1
    assert await balance(system.pool, user_account(user, "USDC")) == amount
    assert (await intent(system, user, created["intent_id"]))["status"] == "completed"
    if remine_behind_another_log:
        minter = (await system.w3.eth.accounts)[0]
        mint = {
            "from": minter,
            "to": BASE_USDC_ADDRESS,
            "gas": hex(100_000),
            "data": calldata(MINT, fresh_address(), 1),
        }
        await call(system, "anvil_reorg", 3, [[mint, 0], [signed.raw_tx, 0]])
        receipt = await receipt_of(system, signed.tx_hash)
        assert int(receipt["logs"][0]["logIndex"], 16) == 1
    else:
        await call(system, "anvil_reorg", 3, [])
        assert await call(system, "eth_getTransactionReceipt", signed.tx_hash) is None
    return signed


@pytest.mark.no_worker
async def test_a_credited_deposit_whose_log_a_deep_reorg_removed_is_reversed_into_suspense(
    mpesa_system: MpesaSystem,
) -> None:
    system = mpesa_system
    reader = ChainReader(system.settings.base_rpc_url)
    try:
        signed = await credit_then_reorg_away(system, reader, "rey", 7_000_000)
        # No receipt, and another block at its height: reversed when two rounds in a row say so.
        assert (await one_round(system, reader)).reversed == 0
        assert (await transfer_row(system, signed.tx_hash))["gone_rounds"] == 1
        report = await one_round(system, reader)
        assert report.reversed == 1
        row = await transfer_row(system, signed.tx_hash)
        assert row["status"] == "reversed" and row["reversed_at"] is not None
        assert await balance(system.pool, user_account("rey", "USDC")) == 0
        assert await balance(system.pool, SUSPENSE_USDC) == 7_000_000
        assert await entry_keys(system, "usdc_reversed") == [f"usdc:8453:{signed.tx_hash}:0:reversed"]
        [item] = await review_items(system)
        assert (item["kind"], item["chain_transfer_id"], item["amount_usdc_micro"]) == (
            "usdc_reversed",
            row["id"],
            7_000_000,
        )
        assert (await one_round(system, reader)).reversed == 0  # once
        assert (await transfer_row(system, signed.tx_hash))["missing_since"] is not None  # not creditable

        # The same transaction mined again: listed for review a second time, never credited twice.
        await call(system, "eth_sendRawTransaction", signed.raw_tx)
        await receipt_of(system, signed.tx_hash)
        await call(system, "anvil_mine")
        await one_round(system, reader)
        await one_round(system, reader)
    finally:
        await reader.aclose()
    back = await transfer_row(system, signed.tx_hash)
    assert back["status"] == "reversed" and back["missing_since"] is None  # on chain, confirmed: creditable by two
    assert [i["kind"] for i in await review_items(system)] == ["usdc_reversed", "usdc_reappeared"]
    assert await entry_keys(system, "usdc_received") == [f"usdc:8453:{signed.tx_hash}:0"]
    assert await balance(system.pool, user_account("rey", "USDC")) == 0
    assert await balance(system.pool, SUSPENSE_USDC) == 7_000_000


@pytest.mark.system_settings(**FAST)
async def test_the_worker_reverses_a_deep_reorg_and_the_operator_sees_it(mpesa_system: MpesaSystem) -> None:
    from tests.integration.test_ops_cli import kiota_ops

    system = mpesa_system
    created = await create_intent(system, "rex", None)
    signed = await signed_payment(system, created["deposit_address"], 3_000_000)
    await call(system, "anvil_mine", 2)
    await call(system, "eth_sendRawTransaction", signed.raw_tx)
    await call(system, "anvil_mine")
    await wait_intent(system, "rex", created["intent_id"], "completed")
    await system.stop_worker()
    await call(system, "anvil_reorg", 3, [])
    await system.start_worker()

    async def reversed_() -> bool:
        return await balance(system.pool, user_account("rex", "USDC")) == 0

    await wait_for(reversed_, 20)
    code, out = await kiota_ops(system.settings.database_url, system.settings.redis_url, "review")
    assert code == 1, out  # an open review item needs a person
    row = await transfer_row(system, signed.tx_hash)
    assert "kind=usdc_reversed" in out and f"chain_transfer_id={row['id']}" in out and signed.tx_hash in out
    assert "amount_usdc_micro=3000000" in out


@pytest.mark.no_worker
async def test_a_reversed_transfer_mined_again_behind_another_log_is_never_credited_again(
    mpesa_system: MpesaSystem,
) -> None:
    """The review's probe: credited at log index 0, reversed after a deep reorg, then the same signed
    transaction is mined again behind a higher-fee mint in its block, at log index 1. It is the same transfer:
    its row moves there and stays reversed; a person is told it is back; the user is not credited again
    while suspense still holds the first credit (custody debited once for one transfer on chain)."""
    system = mpesa_system
    reader = ChainReader(system.settings.base_rpc_url)
    try:
        signed = await credit_then_reorg_away(system, reader, "rey", 7_000_000)
        assert sum([(await one_round(system, reader)).reversed for _ in range(2)]) == 1
        reversed_row = await transfer_row(system, signed.tx_hash)
        await call(system, "evm_setAutomine", False)
        minter = (await system.w3.eth.accounts)[0]
        decoy = await call(system, "eth_sendTransaction", {
            "from": minter, "to": BASE_USDC_ADDRESS, "data": calldata(MINT, fresh_address(), 1), "gas": hex(200_000),
            "maxFeePerGas": hex(10**13), "maxPriorityFeePerGas": hex(10**12),
        })  # fmt: skip  # it pays more: first in the block
        await call(system, "eth_sendRawTransaction", signed.raw_tx)
        await call(system, "anvil_mine", 1)
        await call(system, "evm_setAutomine", True)
        receipt = await receipt_of(system, signed.tx_hash)
        assert (await receipt_of(system, decoy))["blockNumber"] == receipt["blockNumber"]
        assert int(receipt["logs"][0]["logIndex"], 16) == 1
        await call(system, "anvil_mine", 2)
        reports = [await one_round(system, reader) for _ in range(2)]
    finally:
        await reader.aclose()
    assert [(r.credited, r.reversed) for r in reports] == [(0, 0), (0, 0)]
    rows = await system.pool.fetch("SELECT * FROM chain_transfers WHERE tx_hash = $1", signed.tx_hash.lower())
    assert [(r["id"], r["status"], r["log_index"], r["block_hash"]) for r in rows] == [
        (reversed_row["id"], "reversed", 1, receipt["blockHash"])
    ]
    assert [i["kind"] for i in await review_items(system)] == ["usdc_reversed", "usdc_reappeared"]
    assert await entry_keys(system, "usdc_received") == [f"usdc:8453:{signed.tx_hash}:0"]
    assert await balance(system.pool, user_account("rey", "USDC")) == 0
    assert await balance(system.pool, SUSPENSE_USDC) == 7_000_000
    assert await balance(system.pool, ledger.CUSTODY_USDC) == 7_000_000  # moved once: one transfer on chain


@pytest.mark.no_worker
async def test_a_credited_transfer_mined_again_at_another_log_index_stays_credited_once(
    mpesa_system: MpesaSystem,
) -> None:
    """A reorg deeper than the confirmations mines the credited transaction again, in the same round's view,
    behind another log (index 0 → 1). Its receipt holds it, at the new index: nothing is reversed and
    nothing is credited again; the row moves."""
    system = mpesa_system
    reader = ChainReader(system.settings.base_rpc_url)
    try:
        signed = await credit_then_reorg_away(system, reader, "rue", 7_000_000, remine_behind_another_log=True)
        first = await transfer_row(system, signed.tx_hash)
        reports = [await one_round(system, reader) for _ in range(3)]
    finally:
        await reader.aclose()
    receipt = await receipt_of(system, signed.tx_hash)
    assert [(r.credited, r.reversed, r.orphaned) for r in reports] == [(0, 0, 0)] * 3
    rows = await system.pool.fetch("SELECT * FROM chain_transfers WHERE tx_hash = $1", signed.tx_hash.lower())
    assert [(r["id"], r["status"], r["log_index"], r["block_hash"]) for r in rows] == [
        (first["id"], "credited", 1, receipt["blockHash"])
    ]
    assert await entry_keys(system, "usdc_received") == [f"usdc:8453:{signed.tx_hash}:0"]
    assert await entry_keys(system, "usdc_reversed") == []
    assert await review_items(system) == []
    assert await balance(system.pool, user_account("rue", "USDC")) == 7_000_000
    assert await balance(system.pool, SUSPENSE_USDC) == 0


class LaggingReader(ChainReader):
    """A load-balanced provider: the head from an up-to-date node, everything else from a node that has no
    block above `behind` yet (its logs answer is partial, not empty; its receipts and blocks there are null)."""

    def __init__(self, rpc_url: str, behind: int) -> None:
        super().__init__(rpc_url)
        self.behind = behind
        self.logs_answered = 0

    async def transfer_logs(self, token: str, start: int, end: int, depth: int = 0) -> list[dict[str, Any]]:
        logs = await super().transfer_logs(token, start, end, depth)
        kept = [entry for entry in logs if int(entry["blockNumber"], 16) <= self.behind]
        self.logs_answered += len(kept)
        return kept

    async def batch(self, method: str, params: list[list[Any]]) -> list[tuple[Any, dict[str, Any] | None]]:
        answers = await super().batch(method, params)
        if method == "eth_getBlockByNumber":
            return [(None, None) if int(p[0], 16) > self.behind else a for p, a in zip(params, answers, strict=True)]
        if method == "eth_getTransactionReceipt":
            return [
                (None, None) if r is not None and int(r["blockNumber"], 16) > self.behind else (r, e)
                for r, e in answers
            ]
        return answers


@pytest.mark.no_worker
async def test_a_node_behind_the_others_reverses_no_credit(mpesa_system: MpesaSystem) -> None:
    """Behind a load balancer the head comes from an up-to-date node, the logs and receipts from one a few
    blocks behind: the credited transfer is missing from a partial answer, its receipt is null. Nothing
    proves its block replaced (the node has no block at that height), so nothing is reversed, round after
    round; once the node catches up, the transfer is there."""
    system = mpesa_system
    created = await create_intent(system, "lag", None)
    signed = await signed_payment(system, created["deposit_address"], 4_000_000)  # mints to the payer first
    await call(system, "eth_sendRawTransaction", signed.raw_tx)
    paid_in = int((await receipt_of(system, signed.tx_hash))["blockNumber"], 16)
    await call(system, "anvil_mine", 3)
    honest = ChainReader(system.settings.base_rpc_url)
    lagging = LaggingReader(system.settings.base_rpc_url, behind=paid_in - 1)
    try:
        assert (await one_round(system, honest)).credited == 1
        reports = [await one_round(system, lagging) for _ in range(3)]
        assert lagging.logs_answered > 0  # partial, not empty: the empty-answer guard does not catch it
        caught_up = await one_round(system, honest)
    finally:
        await honest.aclose()
        await lagging.aclose()
    assert [r.reversed for r in reports] == [0, 0, 0]
    assert caught_up.reversed == 0
    row = await transfer_row(system, signed.tx_hash)
    assert (row["status"], row["gone_rounds"]) == ("credited", 0)
    assert await balance(system.pool, user_account("lag", "USDC")) == 4_000_000
    assert await balance(system.pool, SUSPENSE_USDC) == 0
    assert await review_items(system) == []


class OmittingReader(ChainReader):
    """A provider whose log answers silently leave out one transaction's logs (its receipts are honest)."""

    def __init__(self, rpc_url: str, omit: str) -> None:
        super().__init__(rpc_url)
        self.omit = omit.lower()

    async def transfer_logs(self, token: str, start: int, end: int, depth: int = 0) -> list[dict[str, Any]]:
        logs = await super().transfer_logs(token, start, end, depth)
        return [entry for entry in logs if str(entry.get("transactionHash")).lower() != self.omit]


@pytest.mark.no_worker
async def test_a_provider_that_omits_a_credited_log_reverses_nothing(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    created = await create_intent(system, "ola", None)
    signed = await signed_payment(system, created["deposit_address"], 4_000_000)
    await call(system, "eth_sendRawTransaction", signed.raw_tx)
    await call(system, "anvil_mine", 2)
    honest = ChainReader(system.settings.base_rpc_url)
    omitting = OmittingReader(system.settings.base_rpc_url, signed.tx_hash)
    try:
        assert (await one_round(system, honest)).credited == 1
        report = await one_round(system, omitting)
    finally:
        await honest.aclose()
        await omitting.aclose()
    assert report.reversed == 0
    assert (await transfer_row(system, signed.tx_hash))["status"] == "credited"
    assert await balance(system.pool, user_account("ola", "USDC")) == 4_000_000
    assert await review_items(system) == []


# --- payouts: final only at the required confirmations ---------------------------------------------


async def payout_row(system: MpesaSystem, deposit_id: str) -> dict[str, Any]:
    row = await system.pool.fetchrow("SELECT * FROM payouts WHERE deposit_id = $1::uuid", deposit_id)
    assert row is not None
    return dict(row)


async def remove_blocks_from(system: MpesaSystem, block: int, how: str) -> None:
    depth = await system.w3.eth.block_number - block + 1
    if how == "rollback":
        await call(system, "anvil_rollback", depth)
    else:
        await call(system, "anvil_reorg", depth, [])


@pytest.mark.parametrize("how", ["reorg", "rollback", "reorg-then-next-deposit"])
async def test_a_settled_payout_whose_block_a_reorg_removed_is_sent_again_and_paid_once(
    mpesa_system: MpesaSystem, how: str
) -> None:
    system = mpesa_system
    body = (await system.initiate("pat", 1295)).json()
    done = await system.wait_status("pat", body["deposit_id"], "completed")
    settled = await payout_row(system, body["deposit_id"])
    assert settled["status"] == "confirmed" and settled["final_at"] is None  # one confirmation only
    [attempt] = await system.pool.fetch("SELECT * FROM payout_attempts")
    await system.stop_worker()  # hold the lane while the chain changes under it
    await remove_blocks_from(system, settled["block_number"], how.split("-")[0])
    assert await call(system, "eth_getTransactionReceipt", settled["tx_hash"]) is None
    assert await transfers_from(system, system.treasury_address) == []
    await system.start_worker()
    deposits = [body["deposit_id"]]
    if how == "reorg-then-next-deposit":  # the next payout's turn sends the lost one first (its nonce is below)
        deposits.append((await system.initiate("pam", 1295)).json()["deposit_id"])
        await system.wait_status("pam", deposits[1], "completed")

    async def mined_again() -> bool:  # after a rollback it may be mined again at the same height
        row = await payout_row(system, body["deposit_id"])
        return row["block_number"] is not None and row["updated_at"] > settled["updated_at"]

    await wait_for(mined_again, 20)
    receipt = await receipt_of(system, settled["tx_hash"])  # the same signed bytes: the same hash
    again = await payout_row(system, body["deposit_id"])
    assert (again["tx_hash"], again["block_number"]) == (settled["tx_hash"], int(receipt["blockNumber"], 16))
    if len(deposits) == 1:
        assert again["final_at"] is None  # one confirmation again
    await call(system, "anvil_mine")

    async def final() -> bool:
        return all([(await payout_row(system, d))["final_at"] is not None for d in deposits])

    await wait_for(final, 20)
    assert await system.pool.fetchval("SELECT count(*) FROM payout_attempts") == len(deposits)  # nothing re-signed
    assert (await system.pool.fetchrow("SELECT * FROM payout_attempts ORDER BY id LIMIT 1"))["tx_hash"] == attempt[
        "tx_hash"
    ]
    logs = await transfers_from(system, system.treasury_address)
    assert len(logs) == len(deposits)  # one transfer per deposit on the chain
    assert await entry_keys(system, "mpesa_completed") == [f"mpesa:{d}:completed" for d in deposits]
    assert await balance(system.pool, user_account("pat", "USDC")) == 10_000_000
    assert (await system.deposit("pat", body["deposit_id"]))["tx_hash"] == done["tx_hash"] == settled["tx_hash"]
    from kiota.dev.chain import usdc_balance

    assert await usdc_balance(system.w3, BASE_USDC_ADDRESS, await address_of(system, "pat")) == 10_000_000
    assert not await system.pool.fetchval("SELECT lane_paused FROM payout_guards")


async def test_a_settled_payout_whose_nonce_another_transaction_took_in_a_reorg_goes_to_review(
    mpesa_system: MpesaSystem,
) -> None:
    """The reorg's new block holds another transaction of the treasury key at the payout's nonce: the money
    did not move. It is believed after NOT_OURS_AFTER (a lagging node may show the nonce first): then the
    payout is no longer live, the lane pauses, and a person is told the deposit is booked but unpaid."""
    system = mpesa_system
    body = (await system.initiate("pia", 1295)).json()
    await system.wait_status("pia", body["deposit_id"], "completed")
    settled = await payout_row(system, body["deposit_id"])
    await system.stop_worker()
    other = Treasury(system.settings.base_rpc_url, TREASURY_KEY, 8453, BASE_USDC_ADDRESS)
    try:
        stranger = other.sign_self_send(settled["nonce"], await other.fee_quote())
        depth = await system.w3.eth.block_number - settled["block_number"] + 1
        await call(system, "anvil_reorg", depth, [[stranger.raw_tx, 0]])
        assert await call(system, "eth_getTransactionReceipt", settled["tx_hash"]) is None
        config = LaneConfig()
        assert await recheck_settled_payouts(system.pool, other, config)
        held = await payout_row(system, body["deposit_id"])
        assert (held["status"], held["block_number"]) == ("confirmed", None)  # not believed yet
        await system.pool.execute("UPDATE payouts SET updated_at = now() - interval '11 minutes'")
        assert await recheck_settled_payouts(system.pool, other, config)
    finally:
        await other.aclose()
    lost = await payout_row(system, body["deposit_id"])
    assert lost["status"] == "reverted" and lost["final_at"] is None
    [item] = await review_items(system)
    assert item["kind"] == "payout_lost" and str(item["deposit_id"]) == body["deposit_id"]
    assert await system.pool.fetchval("SELECT lane_paused FROM payout_guards")
    assert await transfers_from(system, system.treasury_address) == []


# --- payouts: no decision that frees a nonce before it is final; re-sent payouts are fee-bumped -----------

LANE = LaneConfig(poll_seconds=0.02, watch_seconds=0.5, drain_seconds=0)


async def processing_deposit(system: MpesaSystem, user: str) -> uuid.UUID:
    """An M-Pesa deposit paid by the customer and confirmed, waiting for its payout (no worker runs: the test
    drives the lane)."""
    body = (await system.initiate(user, 1295)).json()
    await system.wait_status(user, body["deposit_id"], "processing")
    await system.pool.execute(
        "UPDATE deposits SET confirmed_at = now(), confirmed_by = 'setting' WHERE id = $1::uuid", body["deposit_id"]
    )
    return uuid.UUID(body["deposit_id"])


async def payout_attempts(system: MpesaSystem, kind: str) -> list[dict[str, Any]]:
    rows = await system.pool.fetch("SELECT * FROM payout_attempts WHERE kind = $1 ORDER BY id", kind)
    return [dict(r) for r in rows]


async def head(system: MpesaSystem) -> int:
    return int(await call(system, "eth_blockNumber"), 16)


@pytest.mark.no_worker
async def test_a_payout_whose_filler_a_reorg_removed_is_paid_once_and_never_retried_before(
    mpesa_system: MpesaSystem,
) -> None:
    """A payout given up on, its nonce filled: until the filler's block has the required confirmations an
    operator's retry is refused (it would sign a second payout with a new nonce). A reorg then drops the
    filler's block and the original payout, public in mempools, is mined at its nonce: the lane settles it,
    and the deposit is paid once."""
    system = mpesa_system
    deposit_id = await processing_deposit(system, "fay")
    treasury = Treasury(system.settings.base_rpc_url, TREASURY_KEY, 8453, BASE_USDC_ADDRESS)
    try:
        await call(system, "evm_setAutomine", False)
        assert (await pay_deposit(system.pool, treasury, deposit_id, LANE)).outcome is PayoutOutcome.WAITING
        [payout] = await payout_attempts(system, "payout")
        await abandon(system.pool, deposit_id, "test: not settled within 30 minutes")
        assert await fill_abandoned_nonces(system.pool, treasury, LANE)  # the filler outbids it in the pool
        await call(system, "anvil_mine")
        [filler] = await payout_attempts(system, "filler")
        filler_block = int((await receipt_of(system, filler["tx_hash"]))["blockNumber"], 16)
        assert await fill_abandoned_nonces(system.pool, treasury, LANE)  # one confirmation: not decided
        try:
            await ops.retry_deposit(system.pool, system.queue, deposit_id, "test")
        except ops.CannotRetry as exc:
            assert "could still mine it" in str(exc)
            assert await system.pool.fetchval("SELECT status FROM payouts") == "cancelling"
        else:  # a second payout with the next nonce: what a retry did before
            await pay_deposit(system.pool, treasury, deposit_id, LANE)
            await call(system, "anvil_mine")
        # The filler's block (and any after it) replaced by one that mines the original payout.
        await call(system, "anvil_reorg", await head(system) - filler_block + 1, [[payout["raw_tx"], 0]])
        for _ in range(3):  # whatever the lane and the sweeper do now, with blocks coming
            assert await fill_abandoned_nonces(system.pool, treasury, LANE)
            assert await recheck_settled_payouts(system.pool, treasury, LANE)
            if (await system.deposit("fay", str(deposit_id)))["status"] == "processing":
                await pay_deposit(system.pool, treasury, deposit_id, LANE)
            await call(system, "anvil_mine")
    finally:
        await treasury.aclose()
    logs = await transfers_from(system, system.treasury_address)
    assert len(logs) == 1 and logs[0]["transactionHash"].to_0x_hex() == payout["tx_hash"]  # paid once
    done = await system.deposit("fay", str(deposit_id))
    assert (done["status"], done["tx_hash"]) == ("completed", payout["tx_hash"])
    assert await entry_keys(system, "mpesa_completed") == [f"mpesa:{deposit_id}:completed"]
    assert [r["status"] for r in await system.pool.fetch("SELECT status FROM payouts")] == ["confirmed"]
    with pytest.raises(ops.CannotRetry):
        await ops.retry_deposit(system.pool, system.queue, deposit_id, "test")


@pytest.mark.no_worker
async def test_a_settled_payout_sent_again_after_a_reorg_is_fee_bumped_when_it_stays_unmined(
    mpesa_system: MpesaSystem,
) -> None:
    """After the reorg, blocks come full of another sender's transactions that pay more than the payout's
    stored fees (as when base fees have risen past them). The same signed bytes, re-sent, would wait for
    ever: at the lowest unmined nonce, after replace_after_blocks, the payout is re-signed at the same nonce
    with fees raised, and mined. Still one transfer and one entry."""
    system = mpesa_system
    deposit_id = await processing_deposit(system, "fee")
    treasury = Treasury(system.settings.base_rpc_url, TREASURY_KEY, 8453, BASE_USDC_ADDRESS)
    busy = Account.create()
    await call(system, "anvil_setBalance", busy.address, hex(10**20))
    gas_limit = (await call(system, "eth_getBlockByNumber", "latest", False))["gasLimit"]
    try:
        assert (await pay_deposit(system.pool, treasury, deposit_id, LANE)).outcome is PayoutOutcome.COMPLETED
        settled = await payout_row(system, str(deposit_id))
        [first] = await payout_attempts(system, "payout")
        await call(system, "evm_setAutomine", False)
        await remove_blocks_from(system, settled["block_number"], "reorg")
        await call(system, "evm_setBlockGasLimit", hex(150_000))  # room for one busy transaction, not two
        outbid = Fees(int(first["max_fee_per_gas"]) * 106 // 100, int(first["max_fee_per_gas"]) * 106 // 100)
        for nonce in range(LANE.replace_after_blocks + 2):
            assert await recheck_settled_payouts(system.pool, treasury, LANE)
            busy_tx = busy.sign_transaction({
                "type": 2, "chainId": 8453, "nonce": nonce, "to": busy.address, "value": 0, "gas": 135_000,
                "data": "0x" + "ff" * 2700, "maxFeePerGas": outbid.max_fee_per_gas,
                "maxPriorityFeePerGas": outbid.max_priority_fee_per_gas,
            })  # fmt: skip  # about 129,000 gas: the payout does not fit beside it
            await call(system, "eth_sendRawTransaction", "0x" + bytes(busy_tx.raw_transaction).hex())
            await call(system, "anvil_mine")
        assert await recheck_settled_payouts(system.pool, treasury, LANE)
    finally:
        await call(system, "evm_setBlockGasLimit", gas_limit)
        await treasury.aclose()
    attempts = await payout_attempts(system, "payout")
    assert len(attempts) == 2 and attempts[0]["tx_hash"] == first["tx_hash"]
    bumped = attempts[1]
    assert (bumped["nonce"], bumped["max_fee_per_gas"] * 1000 >= first["max_fee_per_gas"] * 1125) == (
        first["nonce"],
        True,
    )
    again = await payout_row(system, str(deposit_id))
    receipt = await receipt_of(system, bumped["tx_hash"])
    assert (again["tx_hash"], again["block_number"]) == (bumped["tx_hash"], int(receipt["blockNumber"], 16))
    assert (await system.deposit("fee", str(deposit_id)))["tx_hash"] == bumped["tx_hash"]
    assert len(await transfers_from(system, system.treasury_address)) == 1
    assert await entry_keys(system, "mpesa_completed") == [f"mpesa:{deposit_id}:completed"]


@pytest.mark.no_worker
async def test_usdc_of_a_settled_payout_a_reorg_removed_is_not_spent_twice(mpesa_system: MpesaSystem) -> None:
    """The treasury holds 15 USDC. A 10 USDC payout is settled, then a reorg removes its block: the treasury
    shows 15 USDC again, but that payout is being sent again. The next deposit's 10 USDC must not be signed
    against the same USDC: the funds check counts the removed payout as in flight, and the lane pauses."""
    system = mpesa_system
    treasury = Treasury(system.settings.base_rpc_url, TREASURY_KEY, 8453, BASE_USDC_ADDRESS)
    try:
        keep = 15_000_000
        drain = treasury.sign_transfer(fresh_address(), await treasury.usdc_balance() - keep,
                                       await treasury.pending_nonce(), await treasury.fee_quote())  # fmt: skip
        await treasury.broadcast(drain.raw_tx)
        await receipt_of(system, drain.tx_hash)
        first = await processing_deposit(system, "ivy")
        assert (await pay_deposit(system.pool, treasury, first, LANE)).outcome is PayoutOutcome.COMPLETED
        settled = await payout_row(system, str(first))
        await call(system, "evm_setAutomine", False)
        await remove_blocks_from(system, settled["block_number"], "reorg")
        assert await treasury.usdc_balance() == keep
        second = await processing_deposit(system, "ian")
        result = await pay_deposit(system.pool, treasury, second, LANE)
        await call(system, "anvil_mine")  # the first payout, sent again by that turn, is mined again
        assert await recheck_settled_payouts(system.pool, treasury, LANE)
    finally:
        await treasury.aclose()
    assert result.outcome is PayoutOutcome.BLOCKED and "in flight 10000000" in result.detail
    assert [a["deposit_id"] for a in await system.pool.fetch(
        "SELECT p.deposit_id FROM payout_attempts a JOIN payouts p ON p.id = a.payout_id")] == [first]  # fmt: skip
    # A shortfall pauses the treasury's own lane (several treasuries: the others go on).
    assert await system.pool.fetchval("SELECT paused FROM treasury_lanes WHERE address = $1", treasury.address)
    assert (await system.deposit("ian", str(second)))["status"] == "processing"  # paid once there is USDC for it
    again = await payout_row(system, str(first))
    assert (again["tx_hash"], again["block_number"] is not None) == (settled["tx_hash"], True)
    assert len(await transfers_from(system, system.treasury_address)) == 2  # the drain, and the first payout
