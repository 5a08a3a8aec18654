"""Our JSON-RPC batches against a real anvil: the lane sends a turn's transactions and reads their
receipts in one request each, so each answer must come back in its place, with its own error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest_asyncio

from kiota.chain_rpc import ChainReader
from kiota.dev import chain
from kiota.dev.chain import BASE_USDC_ADDRESS, AnvilNode
from kiota.dev.rpc_proxy import ProxyConfig, running_rpc_proxy
from kiota.treasury import Fees, FeeTooLow, Treasury
from tests.support import TREASURY_KEY, free_port

RECIPIENT = "0x" + "ab" * 20


@pytest_asyncio.fixture
async def node() -> AsyncIterator[AnvilNode]:
    async with chain.start_anvil(free_port()) as anvil:
        async with chain.connect(anvil.rpc_url) as w3:
            await chain.install_usdc(w3, BASE_USDC_ADDRESS)
            treasury = Treasury(anvil.rpc_url, TREASURY_KEY, 8453, BASE_USDC_ADDRESS)
            await chain.fund_eth(w3, treasury.address, 10**18)
            await chain.mint_usdc(w3, BASE_USDC_ADDRESS, treasury.address, 100_000_000)
            await treasury.aclose()
        yield anvil


async def test_a_turn_sent_and_read_in_batches_gets_each_answer_in_its_place(node: AnvilNode) -> None:
    treasury = Treasury(node.rpc_url, TREASURY_KEY, 8453, BASE_USDC_ADDRESS)
    try:
        nonce, fees = await treasury.pending_nonce(), await treasury.fee_quote()
        first = treasury.sign_transfer(RECIPIENT, 1, nonce, fees)
        second = treasury.sign_transfer(RECIPIENT, 2, nonce + 1, fees)
        underpriced = treasury.sign_transfer(RECIPIENT, 3, nonce + 2, Fees(1, 1))
        assert await treasury.broadcast_many([first.raw_tx, second.raw_tx]) == [None, None]
        # Sent again (the node mined them: "nonce too low") they are not refusals; fees below the
        # base fee are FeeTooLow (re-sign higher); bytes that are no transaction are a plain failure.
        again = await treasury.broadcast_many([first.raw_tx, underpriced.raw_tx, "0x1234", second.raw_tx])
        assert again[0] is None and again[3] is None
        assert isinstance(again[1], FeeTooLow)
        assert again[2] is not None and not isinstance(again[2], FeeTooLow)
        # Automine mines as the transactions arrive, yet a receipt may lag the send by a moment on a busy machine.
        deadline = time.monotonic() + 10
        while True:
            receipts = await treasury.receipts([second.tx_hash, underpriced.tx_hash, first.tx_hash])
            if (receipts[0] and receipts[2]) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    finally:
        await treasury.aclose()
    assert receipts[1] is None  # never entered the pool
    assert receipts[0] is not None and receipts[0].succeeded and receipts[0].tx_hash == second.tx_hash
    assert receipts[2] is not None and receipts[2].succeeded and receipts[2].tx_hash == first.tx_hash
    assert receipts[0].block_number >= receipts[2].block_number  # nonce order (anvil may mine a batch in one block)


async def test_a_rate_limited_batch_is_sent_again_and_balances_come_back_in_order(node: AnvilNode) -> None:
    treasury = Treasury(node.rpc_url, TREASURY_KEY, 8453, BASE_USDC_ADDRESS)
    owners = [treasury.address, RECIPIENT, "0x" + "cd" * 20]
    async with running_rpc_proxy(node.rpc_url, ProxyConfig(rate_limit_every=1)) as proxy:
        reader = ChainReader(proxy.url)
        try:
            proxy.state.configure(rate_limit_every=2)  # the first request passes, the second gets a 429
            assert await reader.head() > 0
            balances = await reader.usdc_balances(BASE_USDC_ADDRESS, owners)
        finally:
            await reader.aclose()
            await treasury.aclose()
        assert proxy.state.requests == 3  # the head, the refused batch, the same batch again
        assert proxy.state.calls["eth_call"] == 2 * len(owners)
    assert balances == [100_000_000, 0, 0]
