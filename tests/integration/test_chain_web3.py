"""The web3.py reader (kiota/chain_web3.py, which B2 and B6 measure with KIOTA_BENCH_RPC=web3) against a real
anvil: it must answer as our ChainReader does, so that the treasury and the ingester run on it unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

import kiota.treasury
from kiota.chain_rpc import ChainReader
from kiota.chain_web3 import Web3ChainReader
from kiota.dev import chain
from kiota.dev.chain import BASE_USDC_ADDRESS, AnvilNode
from kiota.dev.rpc_proxy import ProxyConfig, running_rpc_proxy
from kiota.errors import ChainUnavailable
from kiota.treasury import Fees, FeeTooLow, Treasury
from tests.support import TREASURY_KEY, free_port

RECIPIENTS = ["0x" + "ab" * 20, "0x" + "cd" * 20]


@pytest_asyncio.fixture
async def node() -> AsyncIterator[AnvilNode]:
    """Anvil with USDC, a funded treasury and two transfers from it, mined in two blocks."""
    async with chain.start_anvil(free_port()) as anvil:
        async with chain.connect(anvil.rpc_url) as w3:
            await chain.install_usdc(w3, BASE_USDC_ADDRESS)
            treasury = Treasury(anvil.rpc_url, TREASURY_KEY, 8453, BASE_USDC_ADDRESS)
            try:
                await chain.fund_eth(w3, treasury.address, 10**18)
                await chain.mint_usdc(w3, BASE_USDC_ADDRESS, treasury.address, 100_000_000)
                nonce, fees = await treasury.pending_nonce(), await treasury.fee_quote()
                for i, recipient in enumerate(RECIPIENTS):
                    await treasury.broadcast(treasury.sign_transfer(recipient, i + 1, nonce + i, fees).raw_tx)
            finally:
                await treasury.aclose()
        yield anvil


@pytest_asyncio.fixture
async def readers(node: AnvilNode) -> AsyncIterator[tuple[ChainReader, Web3ChainReader]]:
    ours, theirs = ChainReader(node.rpc_url), Web3ChainReader(node.rpc_url)
    try:
        yield ours, theirs
    finally:
        await ours.aclose()
        await theirs.aclose()


async def test_it_reads_what_ours_reads(readers: tuple[ChainReader, Web3ChainReader]) -> None:
    ours, theirs = readers
    head = await ours.head()
    assert await theirs.head() == head
    assert await theirs.usdc_balances(BASE_USDC_ADDRESS, [*RECIPIENTS, "0x" + "ef" * 20]) == [1, 2, 0]
    logs = await ours.transfer_logs(BASE_USDC_ADDRESS.lower(), 0, head)  # lower-case, as the ingester asks
    assert len(logs) == 3  # the mint and the two transfers
    assert await theirs.transfer_logs(BASE_USDC_ADDRESS.lower(), 0, head) == logs
    assert type(logs[0]) is dict and type(logs[0]["topics"]) is list  # JSON, as the ingester decodes it
    blocks = [[hex(n), False] for n in range(head + 1)]
    assert await theirs.batch("eth_getBlockByNumber", blocks) == await ours.batch("eth_getBlockByNumber", blocks)
    calls_before = theirs.calls
    await theirs.batch("eth_getTransactionReceipt", [[log["transactionHash"]] for log in logs])
    assert theirs.calls == calls_before + 1  # a batch is one request


async def test_errors_are_ours(node: AnvilNode, readers: tuple[ChainReader, Web3ChainReader]) -> None:
    _, theirs = readers
    with pytest.raises(ChainUnavailable, match="eth_getBalance"):
        await theirs.rpc("eth_getBalance", ["not an address", "latest"])
    answers = await theirs.batch("eth_getBalance", [[RECIPIENTS[0], "latest"], ["not an address", "latest"]])
    assert answers[0] == ("0x0", None)
    assert answers[1][0] is None and answers[1][1] is not None  # that item's error, the other answered
    async with running_rpc_proxy(node.rpc_url, ProxyConfig(max_log_range=2)) as proxy:
        split = Web3ChainReader(proxy.url)
        try:
            head = await split.head()
            assert len(await split.transfer_logs(BASE_USDC_ADDRESS, 0, head)) == 3  # refused, split, read
        finally:
            await split.aclose()
    gone = Web3ChainReader(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(ChainUnavailable):
            await gone.head()
    finally:
        await gone.aclose()


async def test_the_treasury_runs_on_it(node: AnvilNode, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kiota.treasury, "ChainReader", Web3ChainReader)  # as bench/web3_worker.py does
    treasury = Treasury(node.rpc_url, TREASURY_KEY, 8453, BASE_USDC_ADDRESS)
    try:
        nonce, fees = await treasury.pending_nonce(), await treasury.fee_quote()
        first = treasury.sign_transfer(RECIPIENTS[0], 5, nonce, fees)
        underpriced = treasury.sign_transfer(RECIPIENTS[0], 6, nonce + 1, Fees(1, 1))
        assert await treasury.broadcast_many([first.raw_tx]) == [None]
        again = await treasury.broadcast_many([first.raw_tx, underpriced.raw_tx, "0x1234"])
        assert again[0] is None and isinstance(again[1], FeeTooLow)
        assert again[2] is not None and not isinstance(again[2], FeeTooLow)
        receipts = await treasury.receipts([first.tx_hash, underpriced.tx_hash])
        for _ in range(50):  # automine mines it at once, but on a busy machine its receipt was once not yet readable
            if receipts[0] is not None:
                break
            await asyncio.sleep(0.1)
            receipts = await treasury.receipts([first.tx_hash, underpriced.tx_hash])
        assert receipts[0] is not None and receipts[0].succeeded and receipts[1] is None
        assert await treasury.usdc_balance(RECIPIENTS[0]) == 1 + 5
        assert await treasury.mined_nonce() == nonce + 1
    finally:
        await treasury.aclose()
