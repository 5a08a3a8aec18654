"""USDC-on-Base rules, pure: log decoding, classification, confirmations, range splitting, credits, intent ends."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from kiota.errors import InvalidInput
from kiota.money import parse_usdc

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
INTENT_OPEN = ("awaiting_payment", "confirming")


@dataclass(frozen=True, slots=True)
class TransferLog:
    tx_hash: str
    log_index: int
    block_number: int
    block_hash: str
    token: str
    sender: str
    recipient: str
    amount: int


def _address(topic: str) -> str:
    return "0x" + topic[-40:].lower()


def decode_transfer(log: dict[str, Any]) -> TransferLog | None:
    """A Transfer log as ours, or None when it is not a well-formed ERC-20 Transfer."""
    topics = log.get("topics") or []
    if len(topics) != 3 or str(topics[0]).lower() != TRANSFER_TOPIC or log.get("removed"):
        return None
    data = str(log.get("data") or "0x")
    if len(data) != 66:
        return None
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


def classify(transfer: TransferLog, treasury: str | None, own_tx_hashes: set[str]) -> str:
    """Our own money moving (a treasury payout) is never a deposit."""
    if treasury is not None and transfer.sender == treasury.lower():
        return "treasury"
    if transfer.tx_hash in own_tx_hashes:
        return "own_payout"
    return "deposit"


def latest_per_key(transfers: Iterable[TransferLog]) -> list[TransferLog]:
    """One transfer per (tx hash, log index), the last one seen, in first-seen order.

    A provider should never answer a log twice, but one statement cannot upsert the same key twice.
    """
    latest: dict[tuple[str, int], TransferLog] = {}
    for transfer in transfers:
        latest[(transfer.tx_hash, transfer.log_index)] = transfer
    return list(latest.values())


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
    id: UUID
    expected: int | None


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
    credits = []
    for transfer in due:
        intent = waiting.pop(transfer.user_id, None)
        if intent is not None:
            flags = payment_flags(intent.expected, transfer.amount)
        else:
            flags = ["late"] if transfer.user_id in recently_expired else ["unsolicited"]
        credits.append(Credit(transfer, intent.id if intent is not None else None, tuple(flags)))
    return credits


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
