"""The treasury wallet on Base: fees, signing, broadcasting and receipts (web3.py adapter).

Only the worker builds a `Treasury`: it alone holds the private key. Signing is
local (eth-account); the node sees only raw signed transactions. Every RPC
failure that may pass becomes `ChainUnavailable`, which the job retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import TransactionNotFound, Web3Exception, Web3RPCError

from kiota.errors import ChainUnavailable


class FeeTooLow(ChainUnavailable):
    """The node refused the transaction's fees; nothing entered the pool, so a re-sign is safe."""


TRANSFER_SELECTOR = "a9059cbb"  # transfer(address,uint256)
BALANCE_OF_SELECTOR = "70a08231"  # balanceOf(address)
# A USDC transfer on Base costs ~40-65k gas (proxy + implementation); a fixed limit
# keeps signing free of an estimate round-trip and is refunded when unused.
TRANSFER_GAS_LIMIT = 100_000
SELF_SEND_GAS_LIMIT = 21_000
MIN_TIP_WEI = 1_000_000  # 0.001 gwei: Base's usual priority fee
MAX_FEE_CAP_WEI = 200 * 10**9  # never offer more than 200 gwei per gas, whatever the market says
# Answers that mean "offer more": the same nonce is re-signed with higher fees at once.
_FEE_TOO_LOW = ("less than block base fee", "underpriced", "fee too low", "max fee per gas less than")
# Answers to a re-broadcast that mean "the node already has (or mined) it".
_BENIGN_BROADCAST = ("already known", "nonce too low", "known transaction", "already imported")


@dataclass(frozen=True, slots=True)
class Fees:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int

    def bumped(self, fresh: Fees) -> Fees:
        """At least 12.5% above the last offer (nodes require ≥10% to replace), and at least the market."""
        tip = max(-(-self.max_priority_fee_per_gas * 1125 // 1000) + 1, fresh.max_priority_fee_per_gas)
        cap = max(-(-self.max_fee_per_gas * 1125 // 1000) + 1, fresh.max_fee_per_gas)
        return Fees(
            max_fee_per_gas=min(max(cap, tip), MAX_FEE_CAP_WEI), max_priority_fee_per_gas=min(tip, MAX_FEE_CAP_WEI)
        )


def fees_for(base_fee: int, tip: int) -> Fees:
    """EIP-1559: base fee × 2 + tip, so the offer survives several full blocks; capped."""
    tip = max(tip, MIN_TIP_WEI)
    return Fees(
        max_fee_per_gas=min(base_fee * 2 + tip, MAX_FEE_CAP_WEI), max_priority_fee_per_gas=min(tip, MAX_FEE_CAP_WEI)
    )


@dataclass(frozen=True, slots=True)
class SignedTx:
    tx_hash: str
    raw_tx: str
    nonce: int
    fees: Fees
    gas_limit: int


@dataclass(frozen=True, slots=True)
class Receipt:
    tx_hash: str
    succeeded: bool
    block_number: int


def transfer_calldata(to: str, amount: int) -> str:
    return "0x" + TRANSFER_SELECTOR + to.lower().removeprefix("0x").rjust(64, "0") + f"{amount:064x}"


class Treasury:
    def __init__(self, rpc_url: str, private_key: str, chain_id: int, token_address: str) -> None:
        self.w3: AsyncWeb3[AsyncHTTPProvider] = AsyncWeb3(AsyncHTTPProvider(rpc_url, request_kwargs={"timeout": 10}))
        self._account: LocalAccount = Account.from_key(private_key)
        self.chain_id = chain_id
        self.token_address = AsyncWeb3.to_checksum_address(token_address)

    @property
    def address(self) -> str:
        return str(self._account.address)

    async def aclose(self) -> None:
        await self.w3.provider.disconnect()

    async def _call(self, coroutine: Any) -> Any:
        try:
            return await coroutine
        except (aiohttp.ClientError, TimeoutError, OSError, Web3RPCError, Web3Exception) as exc:
            raise ChainUnavailable(f"RPC failed: {type(exc).__name__}: {exc}") from exc

    async def head(self) -> int:
        return int(await self._call(self.w3.eth.get_block_number()))

    async def fee_quote(self) -> Fees:
        # The pending block's base fee is what the next block will charge; "latest" may be stale.
        try:
            block = await self._call(self.w3.eth.get_block("pending"))
        except ChainUnavailable:
            block = await self._call(self.w3.eth.get_block("latest"))
        tip = await self._call(self.w3.eth.max_priority_fee)
        return fees_for(int(block.get("baseFeePerGas", 0)), int(tip))

    async def eth_balance(self) -> int:
        return int(await self._call(self.w3.eth.get_balance(self._account.address)))

    async def usdc_balance(self, owner: str | None = None, block: int | str = "latest") -> int:
        holder = (owner or self.address).lower().removeprefix("0x").rjust(64, "0")
        raw = await self._call(
            self.w3.eth.call(
                {"to": self.token_address, "data": HexStr("0x" + BALANCE_OF_SELECTOR + holder)},
                block,  # type: ignore[arg-type]
            )
        )
        return int.from_bytes(bytes(raw), "big")

    async def mined_nonce(self) -> int:
        """How many of our transactions are mined: any nonce below it is used, by us or not."""
        return int(await self._call(self.w3.eth.get_transaction_count(self._account.address, "latest")))

    async def pending_nonce(self) -> int:
        return int(await self._call(self.w3.eth.get_transaction_count(self._account.address, "pending")))

    def _sign(self, nonce: int, fees: Fees, to: str, data: str, gas: int) -> SignedTx:
        signed = self._account.sign_transaction(
            {
                "type": 2,
                "chainId": self.chain_id,
                "nonce": nonce,
                "to": AsyncWeb3.to_checksum_address(to),
                "value": 0,
                "data": HexStr(data),
                "gas": gas,
                "maxFeePerGas": fees.max_fee_per_gas,
                "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
            }
        )
        return SignedTx("0x" + bytes(signed.hash).hex(), "0x" + bytes(signed.raw_transaction).hex(), nonce, fees, gas)

    def sign_transfer(self, to: str, amount: int, nonce: int, fees: Fees) -> SignedTx:
        return self._sign(nonce, fees, self.token_address, transfer_calldata(to, amount), TRANSFER_GAS_LIMIT)

    def sign_self_send(self, nonce: int, fees: Fees) -> SignedTx:
        """A zero-value send to ourselves: fills a nonce that a cancelled payout abandoned."""
        return self._sign(nonce, fees, self.address, "0x", SELF_SEND_GAS_LIMIT)

    async def broadcast(self, raw_tx: str) -> None:
        try:
            await self.w3.eth.send_raw_transaction(HexStr(raw_tx))
        except Web3RPCError as exc:
            text = str(exc).lower()
            if any(benign in text for benign in _BENIGN_BROADCAST):
                return  # the node has it, or mined it: the receipts will tell
            if any(low in text for low in _FEE_TOO_LOW):
                raise FeeTooLow(f"broadcast refused: {exc}") from exc
            raise ChainUnavailable(f"broadcast refused: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError, Web3Exception) as exc:
            raise ChainUnavailable(f"broadcast failed: {type(exc).__name__}: {exc}") from exc

    async def receipt(self, tx_hash: str) -> Receipt | None:
        try:
            found = await self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return None
        except (aiohttp.ClientError, TimeoutError, OSError, Web3RPCError, Web3Exception) as exc:
            raise ChainUnavailable(f"receipt lookup failed: {type(exc).__name__}: {exc}") from exc
        return Receipt(tx_hash, int(found["status"]) == 1, int(found["blockNumber"]))
