"""The treasury wallet on Base: fees, signing, broadcasting and receipts.

Only the worker builds a `Treasury`: it alone holds the private key. Signing is
local (eth-account); the node sees only raw signed transactions, sent over one
keep-alive JSON-RPC session, `kiota/chain_rpc.py` (why ours and not web3.py: the
figures at its top). Every RPC failure that may pass becomes `ChainUnavailable`,
which the job retries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from eth_utils.address import to_checksum_address

from kiota.chain_rpc import ChainReader
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
    fee_wei: int = 0  # gas used x effective gas price (+ the L1 fee on Base): for the fee metric


def transfer_calldata(to: str, amount: int) -> str:
    return "0x" + TRANSFER_SELECTOR + to.lower().removeprefix("0x").rjust(64, "0") + f"{amount:064x}"


# Whether a send was mined as it came: anvil's automine mines it a few ms after the send answers, so a head that has
# not moved this long after a send says the send waits for a block (Base's 2-second blocks), and one that moved
# within MINED_ON_SEND_SECONDS says it did not (on Base a block comes that soon after a send ~5% of the time; the
# next send is judged again). A later move tells nothing: a block may have come meanwhile.
AUTOMINE_LAG_SECONDS = 0.05
MINED_ON_SEND_SECONDS = 0.1


@dataclass(slots=True)
class BlockPace:
    """How fast this process has seen the chain's head move: seconds per block between the last two heads that
    differed (None before two have). A hint for waiting, never for money: a lane owner looks at the head every
    few tens of ms, so on a chain it watches the figure is close to the block time. It is not when nobody looked
    in between: on a chain that mines only when a transaction comes (anvil's automine) a quiet gap, or an owner
    busy settling, reads as one slow block. So whether a sent transaction waits for its block is told by the
    owner's last send instead: how soon after it the head moved, if it did (`waits_for_blocks`)."""

    head: int | None = None
    seen_at: float = 0.0
    seconds_per_block: float | None = None
    sent_at: float | None = None  # the last send not yet judged, and the head then
    head_at_send: int | None = None
    mined_on_send: bool | None = None  # what judged sends showed (None: none yet); see `_judged`
    last_verdict: bool | None = None  # the last judged send's

    def observe(self, head: int, now: float, asked_at: float | None = None) -> None:
        """The node said `head` at `now`, to a question asked at `asked_at` (default `now`). Several owners share
        the pace, so a reply may come late, after another owner's send: an answer to a question asked before the
        last send tells nothing of that send, and "not moved" counts from when it was asked."""
        asked_at = now if asked_at is None else asked_at
        if self.head is not None and head > self.head:
            self.seconds_per_block = (now - self.seen_at) / (head - self.head)
        if self.head is None or head > self.head:  # a lower head (a reorg, another node) is not a block
            self.head, self.seen_at = head, now
        if self.sent_at is not None and self.head_at_send is not None and asked_at >= self.sent_at:
            if head > self.head_at_send:
                if now - self.sent_at <= MINED_ON_SEND_SECONDS:
                    self._judged(mined=True)
                self.sent_at = None
            elif head == self.head_at_send and asked_at - self.sent_at >= AUTOMINE_LAG_SECONDS:
                self._judged(mined=False)
                self.sent_at = None
            # else too soon to tell, or a lower head (a reorg, another node): a later look tells

    def _judged(self, *, mined: bool) -> None:
        """A send's verdict. The first one sets the pace; after it, the pace changes only on two verdicts in a row
        that differ from it. On a chain of 2-second blocks a block comes within 100 ms of a send by chance (one send
        in twenty, or more: the head a send is judged against may be a poll old), and one such send read as
        "mined as sent" made every job wait in its slot for owned lanes until the next send was judged (B7 ×4 at
        100/s: 66/s in one run of two). Two in a row by chance are rare: sends come tens of ms apart, blocks 2 s."""
        if self.mined_on_send is None or mined == self.last_verdict:
            self.mined_on_send = mined
        self.last_verdict = mined

    def sent(self, now: float, head_before: int | None) -> None:
        """A lane owner just sent transactions, the head being `head_before` when it began (a replacement's own look
        after a send may have seen the send's block already): the next looks tell whether they waited for one."""
        self.sent_at, self.head_at_send = now, head_before

    def faster_than(self, seconds: float) -> bool:
        return self.seconds_per_block is not None and self.seconds_per_block < seconds

    def waits_for_blocks(self) -> bool:
        """Sends wait for their blocks, as this process judged them (`_judged`; False: not known yet)."""
        return self.mined_on_send is False


class Treasury:
    def __init__(self, rpc_url: str, private_key: str, chain_id: int, token_address: str) -> None:
        self._rpc = ChainReader(rpc_url)
        self.pace = BlockPace()  # as this process's lane owners saw the head move (one for all its treasuries)
        self._account: LocalAccount = Account.from_key(private_key)
        self.chain_id = chain_id
        self.token_address = to_checksum_address(token_address)
        # Every treasury of the service, this one included, each with its own lane (kiota/payouts/lanes.py);
        # the worker sets them all (`join`), alone it is its only lane.
        self.lanes: tuple[str, ...] = (self.address,)

    def join(self, addresses: list[str], pace: BlockPace | None = None) -> None:
        """This treasury is one of `addresses` (its own among them): deposits are spread over their lanes. `pace`:
        the one its process's other treasuries keep. The chain's pace is the chain's, not a lane's: a process that
        owns only some lanes still tells, for its jobs of the others, whether sends wait for blocks."""
        assert self.address in addresses, "a treasury is one of the service's treasuries"
        self.lanes = tuple(sorted(addresses, key=str.lower))
        if pace is not None:
            self.pace = pace

    @property
    def address(self) -> str:
        return str(self._account.address)

    async def aclose(self) -> None:
        await self._rpc.aclose()

    async def _call(self, method: str, *params: Any) -> Any:
        try:
            return await self._rpc.rpc(method, list(params))
        except ChainUnavailable as exc:
            raise ChainUnavailable(f"RPC failed: {exc}") from exc

    async def head(self) -> int:
        asked_at = time.monotonic()
        head = int(await self._call("eth_blockNumber"), 16)
        self.pace.observe(head, time.monotonic(), asked_at)
        return head

    async def fee_quote(self) -> Fees:
        # The pending block's base fee is what the next block will charge; "latest" may be stale.
        try:
            block = await self._call("eth_getBlockByNumber", "pending", False)
        except ChainUnavailable:
            block = None
        if not block:
            block = await self._call("eth_getBlockByNumber", "latest", False)
        tip = await self._call("eth_maxPriorityFeePerGas")
        return fees_for(int(block.get("baseFeePerGas") or "0x0", 16), int(tip, 16))

    async def eth_balance(self) -> int:
        return int(await self._call("eth_getBalance", self.address, "latest"), 16)

    async def usdc_balance(self, owner: str | None = None, block: int | str = "latest") -> int:
        holder = (owner or self.address).lower().removeprefix("0x").rjust(64, "0")
        tag = hex(block) if isinstance(block, int) else block
        raw = await self._call("eth_call", {"to": self.token_address, "data": "0x" + BALANCE_OF_SELECTOR + holder}, tag)
        return int(raw or "0x0", 16)

    async def usdc_balances(self, owners: list[str]) -> list[int]:
        """balanceOf for many owners in one JSON-RPC batch, at "latest"."""
        return await self._rpc.usdc_balances(self.token_address, owners)

    async def mined_nonce(self) -> int:
        """How many of our transactions are mined: any nonce below it is used, by us or not."""
        return int(await self._call("eth_getTransactionCount", self.address, "latest"), 16)

    async def pending_nonce(self) -> int:
        return int(await self._call("eth_getTransactionCount", self.address, "pending"), 16)

    def _sign(self, nonce: int, fees: Fees, to: str, data: str, gas: int) -> SignedTx:
        signed = self._account.sign_transaction(
            {
                "type": 2,
                "chainId": self.chain_id,
                "nonce": nonce,
                "to": to_checksum_address(to),
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
            await self._call("eth_sendRawTransaction", raw_tx)
        except ChainUnavailable as exc:
            refusal = _broadcast_refusal(str(exc))
            if refusal is not None:
                raise refusal from exc

    async def broadcast_many(self, raw_txs: list[str]) -> list[ChainUnavailable | None]:
        """Send many transactions in one JSON-RPC batch; each one's refusal (None: the node has it).
        A failure of the request itself raises ChainUnavailable: then none may have arrived."""
        try:
            answers = await self._rpc.batch("eth_sendRawTransaction", [[raw] for raw in raw_txs])
        except ChainUnavailable as exc:
            raise ChainUnavailable(f"RPC failed: {exc}") from exc
        return [None if error is None else _broadcast_refusal(str(error)) for _, error in answers]

    async def receipt(self, tx_hash: str) -> Receipt | None:
        return _receipt(tx_hash, await self._call("eth_getTransactionReceipt", tx_hash))

    async def receipts(self, tx_hashes: list[str]) -> list[Receipt | None]:
        """Receipts of many transactions in one JSON-RPC batch; None for one not mined (yet)."""
        try:
            answers = await self._rpc.batch("eth_getTransactionReceipt", [[tx_hash] for tx_hash in tx_hashes])
        except ChainUnavailable as exc:
            raise ChainUnavailable(f"RPC failed: {exc}") from exc
        errors = [error for _, error in answers if error is not None]
        if errors:
            raise ChainUnavailable(f"eth_getTransactionReceipt: {errors[0]}")
        return [_receipt(tx_hash, found) for tx_hash, (found, _) in zip(tx_hashes, answers, strict=True)]


def _broadcast_refusal(text: str) -> ChainUnavailable | None:
    """What a node's answer to eth_sendRawTransaction means: None when it has (or mined) the transaction."""
    lowered = text.lower()
    if any(benign in lowered for benign in _BENIGN_BROADCAST):
        return None  # the node has it, or mined it: the receipts will tell
    if any(low in lowered for low in _FEE_TOO_LOW):
        return FeeTooLow(f"broadcast refused: {text}")
    return ChainUnavailable(f"broadcast failed: {text}")


def _receipt(tx_hash: str, found: Any) -> Receipt | None:
    if not found:
        return None
    return Receipt(tx_hash, int(found["status"], 16) == 1, int(found["blockNumber"], 16), _fee_wei(found))


def _fee_wei(found: dict[str, Any]) -> int:
    """What the transaction cost in wei: gas used at its effective price, plus the L1 data fee an OP-stack
    chain (Base) adds to the receipt; 0 when the node leaves those fields out."""
    try:
        gas = int(found.get("gasUsed") or "0x0", 16) * int(found.get("effectiveGasPrice") or "0x0", 16)
        return gas + int(found.get("l1Fee") or "0x0", 16)
    except (TypeError, ValueError):
        return 0
