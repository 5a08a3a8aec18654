"""USDC-on-Base rules, pure: log decoding, classification, confirmations, range splitting, credits, intent ends.

What a Transfer log to a deposit address is (`classify`) decides whether it is ever credited. Credited, as
USDC arriving at the address: an ordinary transfer, a mint (from the zero address) and a `transferFrom` by
a third party (the log names the owner as `from`; who sent the transaction does not matter). Recorded and
never credited: our own money moving (treasury, own_payout), a zero-value log and a self-transfer (they
add nothing), and a log not emitted by the token contract (the RPC query filters by address, but the
provider's answer is not trusted). An amount above `MAX_CREDIT_MICRO` is recorded and sent to review.

A transfer's identity (`TransferKey`) does not depend on where its block puts it: a reorg may mine the same
transaction again behind other logs, and its block-level log index changes. It is the transaction, the log's
content (token, from, to, amount) and its order among identical logs of that transaction (`seq`): what the
transaction itself emits, wherever it is mined.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from kiota.errors import InvalidInput
from kiota.money import parse_usdc

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
INTENT_OPEN = ("awaiting_payment", "confirming")
ZERO_ADDRESS = "0x" + "00" * 20

# The largest transfer credited automatically: 10^15 micro-units, one billion USDC. Postings are bigint
# (at most about 9.2 × 10^18), so a credit must fit with room to spare for balances summed from many of
# them; no real deposit comes near it (all the USDC on Base is a few billion). A larger log is recorded
# and listed for review, never credited and never allowed to fail the round.
MAX_CREDIT_MICRO = 10**15

# Kinds of transfer log. Only DEPOSIT is credited; the others are recorded with the kind as their reason.
DEPOSIT = "deposit"
TREASURY = "treasury"  # from our treasury: an M-Pesa payout, already booked
OWN_PAYOUT = "own_payout"  # a transaction of our payout lane
ZERO_VALUE = "zero_value"  # anyone can send 0 to any address: it adds nothing
SELF_TRANSFER = "self_transfer"  # from the deposit address to itself: it adds nothing
FOREIGN_CONTRACT = "foreign_contract"  # not emitted by the token contract: another contract's look-alike
TOO_LARGE = "too_large"  # above MAX_CREDIT_MICRO: listed for review at its confirmations


@dataclass(frozen=True, slots=True)
class TransferKey:
    """What one transfer is, wherever its transaction is mined (the module docstring says why)."""

    tx_hash: str
    token: str
    sender: str
    recipient: str
    amount: int
    seq: int  # its order among the identical logs (same token, from, to, amount) of its transaction


@dataclass(frozen=True, slots=True)
class TransferLog:
    tx_hash: str
    log_index: int  # in its block: it changes when a reorg mines the transaction again behind other logs
    block_number: int
    block_hash: str
    token: str
    sender: str
    recipient: str
    amount: int
    seq: int = 0  # set by `identify`, which sees the transaction's other logs

    @property
    def key(self) -> TransferKey:
        return TransferKey(self.tx_hash, self.token, self.sender, self.recipient, self.amount, self.seq)


def _address(topic: str) -> str:
    return "0x" + topic[-40:].lower()


def decode_transfer(log: object) -> TransferLog | None:
    """A Transfer log as ours, or None when it is not a well-formed ERC-20 Transfer.

    The provider's answer is not trusted: anything malformed (a field missing, not hex) is None, never
    an exception that would stop the round.
    """
    if not isinstance(log, dict):
        return None
    topics = log.get("topics") or []
    if not isinstance(topics, list) or len(topics) != 3 or str(topics[0]).lower() != TRANSFER_TOPIC:
        return None
    data = str(log.get("data") or "0x")
    if log.get("removed") or len(data) != 66:
        return None
    try:
        return TransferLog(
            tx_hash=str(log["transactionHash"]).lower(),
            log_index=int(log["logIndex"], 16),
            block_number=int(log["blockNumber"], 16),
            block_hash=str(log["blockHash"]).lower(),
            token=str(log["address"]).lower(),
            sender=_address(str(topics[1])),
            recipient=_address(str(topics[2])),
            amount=int(data, 16),
        )
    except (KeyError, TypeError, ValueError):
        return None


def classify(transfer: TransferLog, token: str, treasury: str | tuple[str, ...] | None, own_tx_hashes: set[str]) -> str:
    """What a log to a deposit address is; only DEPOSIT is ever credited (the module docstring says why).

    The first that applies wins: a foreign contract's log is not USDC at all; a log that adds nothing is
    ignored whoever sent it; our own money moving is never a deposit; then the amount's bound.
    """
    if transfer.token != token.lower():
        return FOREIGN_CONTRACT
    if transfer.amount == 0:
        return ZERO_VALUE
    if transfer.sender == transfer.recipient:
        return SELF_TRANSFER
    treasuries = (treasury,) if isinstance(treasury, str) else treasury or ()  # one, or all of several
    if any(transfer.sender == t.lower() for t in treasuries):
        return TREASURY
    if transfer.tx_hash in own_tx_hashes:
        return OWN_PAYOUT
    if transfer.amount > MAX_CREDIT_MICRO:
        return TOO_LARGE
    return DEPOSIT


def identify(transfers: Iterable[TransferLog]) -> list[TransferLog]:
    """The transfers of an answer, once each, numbered (`seq`) among the identical logs of their transaction.

    A log answered twice (same transaction and index) counts once, the last seen. A transaction's logs all
    come from one block; an answer that shows one transaction in two blocks (its ranges served by nodes on
    different forks) keeps the highest block's: numbering both would make one transfer two. First-seen order.
    """
    latest: dict[tuple[str, int], TransferLog] = {}
    for transfer in transfers:
        latest[(transfer.tx_hash, transfer.log_index)] = transfer
    block_of: dict[str, tuple[int, str]] = {}
    for t in latest.values():
        block = (t.block_number, t.block_hash)
        block_of[t.tx_hash] = max(block_of.get(t.tx_hash, block), block)
    kept = [t for t in latest.values() if (t.block_number, t.block_hash) == block_of[t.tx_hash]]
    seq: dict[tuple[str, str, str, str, int], int] = {}
    numbered: dict[tuple[str, int], TransferLog] = {}
    for t in sorted(kept, key=lambda t: (t.tx_hash, t.log_index)):
        content = (t.tx_hash, t.token, t.sender, t.recipient, t.amount)
        numbered[(t.tx_hash, t.log_index)] = replace(t, seq=seq.get(content, 0))
        seq[content] = seq.get(content, 0) + 1
    return [numbered[(t.tx_hash, t.log_index)] for t in kept]


def confirmations(head: int, block: int) -> int:
    return max(0, head - block + 1)


def next_ranges(start: int, end: int, error: dict[str, Any] | None) -> tuple[tuple[int, int], tuple[int, int]]:
    """Split a refused range: the provider's suggested range when it gives one, else halves."""
    data = (error or {}).get("data")
    if isinstance(data, dict) and "from" in data and "to" in data:
        try:
            suggested_from, suggested_to = int(str(data["from"]), 16), int(str(data["to"]), 16)
        except ValueError:
            suggested_from, suggested_to = start, start - 1
        if suggested_from == start and start <= suggested_to < end:
            return (start, suggested_to), (suggested_to + 1, end)
    middle = (start + end) // 2
    return (start, middle), (middle + 1, end)


def payment_flags(expected: int | None, received: int) -> list[str]:
    if expected is None or expected == received:
        return []
    return ["underpaid"] if received < expected else ["overpaid"]


@dataclass(frozen=True, slots=True)
class DueTransfer:
    """A confirmed deposit transfer, not yet credited."""

    id: int
    tx_hash: str
    log_index: int
    user_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class OpenIntent:
    """An open intent as a credit completes it: its expected amount, if any."""

    id: UUID
    expected: int | None


@dataclass(frozen=True, slots=True)
class IntentAge:
    """An open intent as its end is decided (`intent_end`): when it expires, and how many rounds checked it."""

    id: UUID
    expires_at: datetime
    checks: int


@dataclass(frozen=True, slots=True)
class Credit:
    transfer: DueTransfer
    intent_id: UUID | None  # the intent this credit completes
    flags: tuple[str, ...]


def decide_credits(
    due: Sequence[DueTransfer], open_intents: Mapping[str, OpenIntent], recently_expired: Collection[str]
) -> list[Credit]:
    """What each due transfer's credit does, taken in chain order (block, log index).

    A user's first transfer completes their open intent, flagged against its expected amount; any
    other is credited without one: `late` when an intent of theirs expired in the last 24 h, else
    `unsolicited`.
    """
    waiting = dict(open_intents)
    return [decide_credit(t, waiting.pop(t.user_id, None), recently_expired) for t in due]


def decide_credit(transfer: DueTransfer, intent: OpenIntent | None, recently_expired: Collection[str]) -> Credit:
    """One transfer's credit: it completes `intent` (the user's open one, if still waiting), else flagged."""
    if intent is not None:
        flags = payment_flags(intent.expected, transfer.amount)
    else:
        flags = ["late"] if transfer.user_id in recently_expired else ["unsolicited"]
    return Credit(transfer, intent.id if intent is not None else None, tuple(flags))


def intent_end(*, credited: bool, expires_at: datetime, now: datetime, checks: int, max_checks: int) -> str | None:
    """When several ends are due at once, the first that applies wins: confirmed, ttl, max_checks."""
    if credited:
        return "confirmed"
    if now >= expires_at:
        return "ttl"
    if checks >= max_checks:
        return "max_checks"
    return None


MAX_EXPECTED_USDC_MICRO = 1_000_000 * 10**6


def expected_amount(text: str | None) -> int | None:
    """An intent's optional expected amount in micro-units: absent, or > 0 and ≤ 1,000,000 USDC.

    Zero is refused, not taken as "absent"; an amount beyond the bound is refused before it can
    reach a bigint column.
    """
    if text is None:
        return None
    micro = parse_usdc(text)
    if not 0 < micro <= MAX_EXPECTED_USDC_MICRO:
        raise InvalidInput("expected_amount_usdc must be more than 0 and at most 1000000")
    return micro


def transfer_in_receipt(receipt: object, key: TransferKey) -> bool:
    """Whether a transaction's receipt (as a node answers it) holds this transfer, found by what it is and
    not by its log index (which a reorg may change)."""
    if not isinstance(receipt, dict) or not isinstance(receipt.get("logs"), list):
        return False
    logs = [t for t in map(decode_transfer, receipt["logs"]) if t is not None and t.tx_hash == key.tx_hash]
    return any(t.key == key for t in identify(logs))


# What a node says of a credited transfer missing from a round's logs (`gone_verdict`).
PRESENT = "present"  # its receipt holds it: the logs answer was incomplete; nothing to do
GONE = "gone"  # its receipt exists without it (mined again, reverted or different): reverse now
REPLACED = "replaced"  # no receipt, and the node has its block's height with another hash: reverse when
# two consecutive rounds say so (a load balancer may mix nodes within a round)
UNKNOWN = "unknown"  # no receipt, and no proof its block was replaced (a node behind it): wait


def gone_verdict(receipt: object, block: object, key: TransferKey, block_hash: str) -> str:
    """A credited transfer that a round's logs lack, judged by its receipt and by the block the node has at
    the transfer's height (`block`, None when the receipt exists and it was not asked for). A node behind a
    load balancer that lacks the block answers a null receipt and a null block: that proves nothing."""
    if receipt is not None:
        if not isinstance(receipt, dict) or not isinstance(receipt.get("logs"), list):
            return UNKNOWN
        return PRESENT if transfer_in_receipt(receipt, key) else GONE
    if isinstance(block, dict) and isinstance(block.get("hash"), str) and block["hash"].lower() != block_hash.lower():
        return REPLACED
    return UNKNOWN


# What a settled payout's re-check finds (`payout_finality`).
PAYOUT_FINAL = "final"  # mined, successful, with the required confirmations
PAYOUT_WAITING = "waiting"  # mined, successful, not yet enough confirmations (its block may have moved)
PAYOUT_GONE = "gone"  # in no block, and its nonce is free: send the same signed bytes again
PAYOUT_REVERTED = "reverted"  # mined again after a reorg, but reverted: the money did not move
PAYOUT_NONCE_TAKEN = "nonce_taken"  # in no block, and its nonce is used by another transaction


def payout_finality(*, receipt_block: int | None, succeeded: bool, nonce_used: bool, head: int, required: int) -> str:
    """A settled payout looked at again: `receipt_block` is the block of a receipt of any of its attempts
    (None: none has one); `nonce_used` whether the treasury's mined nonce is past the payout's."""
    if receipt_block is not None:
        if not succeeded:
            return PAYOUT_REVERTED
        return PAYOUT_FINAL if confirmations(head, receipt_block) >= required else PAYOUT_WAITING
    return PAYOUT_NONCE_TAKEN if nonce_used else PAYOUT_GONE
