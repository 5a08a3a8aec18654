"""The local chain tooling: a real anvil with TestUSDC at the Base USDC address.

One anvil serves the whole module; every test that takes `w3` starts from the same state: the
fixture snapshots the chain before the test and reverts after it.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import pytest_asyncio
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3.exceptions import ContractLogicError
from web3.types import TxParams, Wei

from kiota.dev import chain
from kiota.dev.chain import BASE_USDC_ADDRESS, AnvilError, AnvilNode, Web3Client
from tests.support import free_port

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
ZERO_TOPIC = "0x" + "00" * 32
ONE_ETH = 10**18


def address_topic(address: str) -> str:
    return "0x" + address.lower().removeprefix("0x").rjust(64, "0")


@pytest_asyncio.fixture(scope="module")
async def anvil() -> AsyncIterator[AnvilNode]:
    async with chain.start_anvil(free_port()) as node:
        yield node


@pytest_asyncio.fixture(scope="module")
async def module_w3(anvil: AnvilNode) -> AsyncIterator[Web3Client]:
    async with chain.connect(anvil.rpc_url) as w3:
        await chain.install_usdc(w3, BASE_USDC_ADDRESS)
        yield w3


@pytest_asyncio.fixture
async def w3(module_w3: Web3Client) -> AsyncIterator[Web3Client]:
    snap = await chain.snapshot(module_w3)
    yield module_w3
    await chain.revert(module_w3, snap)


@pytest_asyncio.fixture
async def funded(w3: Web3Client) -> LocalAccount:
    """A fresh key with gas money and 100 USDC, the way a depositor's wallet looks."""
    account: LocalAccount = Account.create()
    await chain.fund_eth(w3, account.address, ONE_ETH)
    await chain.mint_usdc(w3, BASE_USDC_ADDRESS, account.address, 100_000_000)
    return account


async def signed_transfer(
    w3: Web3Client, sender: LocalAccount, to: str, amount_micro: int, gas: int | None = None
) -> dict[str, Any]:
    """Send an EIP-1559 USDC transfer signed locally, as a real wallet would; returns the receipt."""
    token = chain.usdc_contract(w3, BASE_USDC_ADDRESS)
    base_fee = (await w3.eth.get_block("latest"))["baseFeePerGas"]
    params: TxParams = {
        "from": sender.address,
        "chainId": await w3.eth.chain_id,
        "nonce": await w3.eth.get_transaction_count(sender.address),
        "maxPriorityFeePerGas": Wei(1_000_000),
        "maxFeePerGas": Wei(2 * base_fee + 1_000_000),
    }
    if gas is not None:
        params["gas"] = gas
    tx = await token.functions.transfer(w3.to_checksum_address(to), amount_micro).build_transaction(params)
    signed = sender.sign_transaction(cast(dict[str, Any], tx))  # web3 and eth-account type a tx differently
    tx_hash = await w3.eth.send_raw_transaction(signed.raw_transaction)
    return dict(await w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10))


async def test_chain_id_is_base(w3: Web3Client) -> None:
    assert await w3.eth.chain_id == 8453


async def test_token_metadata_matches_usdc(w3: Web3Client) -> None:
    token = chain.usdc_contract(w3, BASE_USDC_ADDRESS)
    assert await token.functions.symbol().call() == "USDC"
    assert await token.functions.name().call() == "USD Coin"
    assert await token.functions.decimals().call() == 6
    assert await token.functions.totalSupply().call() == 0


async def test_mint_emits_transfer_from_zero_address(w3: Web3Client) -> None:
    holder = Account.create().address
    tx_hash = await chain.mint_usdc(w3, BASE_USDC_ADDRESS, holder, 2_500_000)

    receipt = await w3.eth.get_transaction_receipt(tx_hash)
    assert receipt["status"] == 1
    [log] = receipt["logs"]
    assert log["address"] == BASE_USDC_ADDRESS
    assert [t.to_0x_hex() for t in log["topics"]] == [TRANSFER_TOPIC, ZERO_TOPIC, address_topic(holder)]
    assert int.from_bytes(log["data"], "big") == 2_500_000
    assert await chain.usdc_balance(w3, BASE_USDC_ADDRESS, holder) == 2_500_000


async def test_signed_eip1559_transfer_moves_balance(w3: Web3Client, funded: LocalAccount) -> None:
    recipient = Account.create().address

    receipt = await signed_transfer(w3, funded, recipient, 40_000_000)

    assert receipt["status"] == 1
    assert receipt["type"] == 2
    [log] = receipt["logs"]
    assert [t.to_0x_hex() for t in log["topics"]] == [
        TRANSFER_TOPIC,
        address_topic(funded.address),
        address_topic(recipient),
    ]
    assert int.from_bytes(log["data"], "big") == 40_000_000
    assert await chain.usdc_balance(w3, BASE_USDC_ADDRESS, funded.address) == 60_000_000
    assert await chain.usdc_balance(w3, BASE_USDC_ADDRESS, recipient) == 40_000_000


async def test_transfer_beyond_balance_reverts(w3: Web3Client, funded: LocalAccount) -> None:
    recipient = Account.create().address
    token = chain.usdc_contract(w3, BASE_USDC_ADDRESS)

    with pytest.raises(ContractLogicError, match="insufficient balance"):
        await token.functions.transfer(recipient, 100_000_001).estimate_gas({"from": funded.address})
    # Mined anyway with a fixed gas limit, it fails on chain and logs nothing.
    receipt = await signed_transfer(w3, funded, recipient, 100_000_001, gas=100_000)

    assert receipt["status"] == 0
    assert receipt["logs"] == []
    assert await chain.usdc_balance(w3, BASE_USDC_ADDRESS, funded.address) == 100_000_000


async def test_revert_restores_balances(w3: Web3Client, funded: LocalAccount) -> None:
    recipient = Account.create().address
    snap = await chain.snapshot(w3)
    await signed_transfer(w3, funded, recipient, 1_000_000)
    assert await chain.usdc_balance(w3, BASE_USDC_ADDRESS, recipient) == 1_000_000

    await chain.revert(w3, snap)

    assert await chain.usdc_balance(w3, BASE_USDC_ADDRESS, recipient) == 0
    assert await chain.usdc_balance(w3, BASE_USDC_ADDRESS, funded.address) == 100_000_000
    with pytest.raises(AnvilError, match="refused snapshot"):
        await chain.revert(w3, snap)  # anvil forgets a snapshot once it is used


async def test_mine_advances_head_and_finality_trails_by_two(w3: Web3Client) -> None:
    start = await w3.eth.block_number
    await chain.mine(w3, 5)

    assert await w3.eth.block_number == start + 5
    # --slots-in-an-epoch 1: "finalized" is two blocks behind the head.
    assert (await w3.eth.get_block("finalized"))["number"] == start + 3


async def test_busy_port_is_refused_before_launch(anvil: AnvilNode) -> None:
    with pytest.raises(AnvilError, match="already in use"):
        async with chain.start_anvil(anvil.port):
            pass


def test_artifact_is_runtime_code_of_current_source() -> None:
    artifact = chain.load_usdc_artifact()
    source = (chain.repo_root() / "contracts" / "TestUSDC.sol").read_bytes()
    assert artifact["source_sha256"] == hashlib.sha256(source).hexdigest(), "run contracts/compile.mjs"
    assert artifact["deployedBytecode"].startswith("0x6080")
    assert {f["name"] for f in chain.load_usdc_abi() if f["type"] == "function"} >= {
        "transfer",
        "transferFrom",
        "approve",
        "allowance",
        "balanceOf",
        "totalSupply",
        "mint",
    }


async def test_transfer_from_spends_allowance(w3: Web3Client) -> None:
    # list(): web3 types eth.accounts as a 1-tuple, which defeats unpacking a slice.
    owner, spender, recipient = list(await w3.eth.accounts)[1:4]
    token = chain.usdc_contract(w3, BASE_USDC_ADDRESS)
    await chain.mint_usdc(w3, BASE_USDC_ADDRESS, owner, 5_000_000)
    await token.functions.approve(spender, 3_000_000).transact({"from": owner})

    await token.functions.transferFrom(owner, recipient, 2_000_000).transact({"from": spender})

    assert await token.functions.allowance(owner, spender).call() == 1_000_000
    assert await chain.usdc_balance(w3, BASE_USDC_ADDRESS, recipient) == 2_000_000
    with pytest.raises(ContractLogicError, match="insufficient allowance"):
        await token.functions.transferFrom(owner, recipient, 1_000_001).estimate_gas({"from": spender})
