from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from kiota.usdc import (
    TRANSFER_TOPIC,
    DueTransfer,
    OpenIntent,
    TransferLog,
    classify,
    confirmations,
    decide_credits,
    decode_transfer,
    intent_end,
    latest_per_key,
    next_ranges,
    payment_flags,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
PAST, FUTURE = NOW - timedelta(seconds=1), NOW + timedelta(hours=1)


@pytest.mark.parametrize(
    ("credited", "expires_at", "checks", "expected"),
    [
        (True, PAST, 120, "confirmed"),  # all three due: confirmed wins
        (False, PAST, 120, "ttl"),  # ttl and max_checks due: ttl wins
        (False, FUTURE, 120, "max_checks"),
        (False, FUTURE, 119, None),
        (False, NOW, 0, "ttl"),  # expires exactly now
        (True, FUTURE, 0, "confirmed"),
    ],
)
def test_intent_ends_in_the_contracts_order(credited: bool, expires_at: datetime, checks: int, expected: str) -> None:
    assert intent_end(credited=credited, expires_at=expires_at, now=NOW, checks=checks, max_checks=120) == expected


@pytest.mark.parametrize(
    ("start", "end", "error", "expected"),
    [
        (0, 99, {"code": -32005, "data": {"from": "0x0", "to": "0x9"}}, ((0, 9), (10, 99))),
        (10, 99, {"code": -32005, "data": {"from": "0xA", "to": "0x13", "limit": 10000}}, ((10, 19), (20, 99))),
        (0, 99, {"code": -32600, "message": "up to a 10 block range"}, ((0, 49), (50, 99))),
        (0, 99, {"code": -32005, "data": {"from": "0x5", "to": "0x9"}}, ((0, 49), (50, 99))),  # not ours: halve
        (0, 99, {"code": -32005, "data": {"from": "0x0", "to": "0x63"}}, ((0, 49), (50, 99))),  # no progress: halve
        (0, 1, None, ((0, 0), (1, 1))),
    ],
)
def test_refused_ranges_split_by_suggestion_or_halves(
    start: int, end: int, error: dict[str, Any] | None, expected: tuple[tuple[int, int], tuple[int, int]]
) -> None:
    assert next_ranges(start, end, error) == expected


@pytest.mark.parametrize(
    ("expected", "received", "flags"),
    [(None, 5, []), (5, 5, []), (5, 4, ["underpaid"]), (5, 6, ["overpaid"])],
)
def test_payment_flags(expected: int | None, received: int, flags: list[str]) -> None:
    assert payment_flags(expected, received) == flags


def _log(**changes: Any) -> dict[str, Any]:
    log = {
        "address": "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
        "topics": [TRANSFER_TOPIC, "0x" + "00" * 12 + "aa" * 20, "0x" + "00" * 12 + "BB" * 20],
        "data": "0x" + f"{25_500_000:064x}",
        "transactionHash": "0xABC",
        "logIndex": "0x3",
        "blockNumber": "0x10",
        "blockHash": "0xDEF",
    }
    log.update(changes)
    return log


def test_decode_transfer() -> None:
    transfer = decode_transfer(_log())
    assert transfer == TransferLog("0xabc", 3, 16, "0xdef", "0x833589fcd6edb6e08f4c7c32d4f71b54bda02913",
                                   "0x" + "aa" * 20, "0x" + "bb" * 20, 25_500_000)  # fmt: skip


@pytest.mark.parametrize(
    "changes",
    [{"topics": [TRANSFER_TOPIC]}, {"topics": ["0x" + "11" * 32, "0x0", "0x0"]}, {"data": "0x"}, {"removed": True}],
)
def test_decode_refuses_what_is_not_a_transfer(changes: dict[str, Any]) -> None:
    assert decode_transfer(_log(**changes)) is None


def test_classify_and_confirmations() -> None:
    transfer = decode_transfer(_log())
    assert transfer is not None
    assert classify(transfer, "0x" + "AA" * 20, set()) == "treasury"
    assert classify(transfer, "0x" + "cc" * 20, {"0xabc"}) == "own_payout"
    assert classify(transfer, None, set()) == "deposit"
    assert [confirmations(10, b) for b in (10, 9, 11)] == [1, 2, 0]


I1, I2 = UUID(int=1), UUID(int=2)


def _due(n: int, user: str, amount: int) -> DueTransfer:
    return DueTransfer(n, f"0x{n:064x}", 0, user, amount)


@pytest.mark.parametrize(
    ("due", "intents", "recently_expired", "expected"),
    [
        # (user, amount) in chain order → (intent completed, flags)
        ([("a", 5)], {"a": (I1, None)}, set(), [(I1, ())]),
        ([("a", 5)], {"a": (I1, 5)}, set(), [(I1, ())]),
        ([("a", 4)], {"a": (I1, 5)}, set(), [(I1, ("underpaid",))]),
        ([("a", 6)], {"a": (I1, 5)}, set(), [(I1, ("overpaid",))]),
        ([("a", 5)], {}, set(), [(None, ("unsolicited",))]),
        ([("a", 5)], {}, {"a"}, [(None, ("late",))]),
        ([("a", 5)], {"a": (I1, 5)}, {"a"}, [(I1, ())]),  # an open intent wins over an expired one
        # a user's first transfer takes the intent; the next ones in the round are without one
        ([("a", 5), ("a", 7)], {"a": (I1, 5)}, set(), [(I1, ()), (None, ("unsolicited",))]),
        ([("a", 3), ("a", 7)], {"a": (I1, 5)}, {"a"}, [(I1, ("underpaid",)), (None, ("late",))]),
        # users do not share intents
        ([("a", 5), ("b", 5), ("c", 5)], {"a": (I1, 5), "b": (I2, 9)}, {"c"},
         [(I1, ()), (I2, ("underpaid",)), (None, ("late",))]),
        ([("b", 1), ("a", 2), ("b", 3)], {"b": (I2, None)}, set(),
         [(I2, ()), (None, ("unsolicited",)), (None, ("unsolicited",))]),
        ([], {"a": (I1, 5)}, {"a"}, []),
    ],
)  # fmt: skip
def test_credits_are_decided_in_chain_order(
    due: list[tuple[str, int]],
    intents: dict[str, tuple[UUID, int | None]],
    recently_expired: set[str],
    expected: list[tuple[UUID | None, tuple[str, ...]]],
) -> None:
    transfers = [_due(n, user, amount) for n, (user, amount) in enumerate(due)]
    credits = decide_credits(transfers, {u: OpenIntent(*i) for u, i in intents.items()}, recently_expired)
    assert [c.transfer for c in credits] == transfers
    assert [(c.intent_id, c.flags) for c in credits] == expected


def test_one_row_per_transfer_key_the_last_seen() -> None:
    first = decode_transfer(_log())
    assert first is not None
    moved = replace(first, block_number=17, block_hash="0xfed")
    other = replace(first, log_index=4)
    assert latest_per_key([first, other, moved]) == [moved, other]
    assert latest_per_key([]) == []
