from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from kiota.usdc import (
    MAX_CREDIT_MICRO,
    TRANSFER_TOPIC,
    ZERO_ADDRESS,
    DueTransfer,
    OpenIntent,
    TransferKey,
    TransferLog,
    classify,
    confirmations,
    decide_credit,
    decide_credits,
    decode_transfer,
    gone_verdict,
    identify,
    intent_end,
    next_ranges,
    payment_flags,
    payout_finality,
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
    [
        {"topics": [TRANSFER_TOPIC]},
        {"topics": ["0x" + "11" * 32, "0x0", "0x0"]},
        {"data": "0x"},
        {"removed": True},
        # a provider's answer is not trusted: malformed fields are no transfer, never an exception
        {"data": "0x" + "zz" * 32},
        {"logIndex": None},
        {"logIndex": "three"},
        {"blockNumber": 16},
        {"topics": "not a list"},
        {"topics": None, "data": None},
    ],
)
def test_decode_refuses_what_is_not_a_transfer(changes: dict[str, Any]) -> None:
    assert decode_transfer(_log(**changes)) is None


@pytest.mark.parametrize("log", [None, [], "0x", 7, {}])
def test_decode_refuses_what_is_not_a_log(log: Any) -> None:
    assert decode_transfer(log) is None


def test_decode_refuses_a_log_without_a_field() -> None:
    for field in ("transactionHash", "logIndex", "blockNumber", "blockHash", "address"):
        log = _log()
        del log[field]
        assert decode_transfer(log) is None, field


USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
TREASURY = "0x" + "AA" * 20
DEPOSIT_ADDRESS = "0x" + "bb" * 20


def _transfer(**changes: Any) -> TransferLog:
    base = TransferLog("0xabc", 3, 16, "0xdef", USDC.lower(), "0x" + "cc" * 20, DEPOSIT_ADDRESS, 25_500_000)
    return replace(base, **changes)


@pytest.mark.parametrize(
    ("changes", "own", "kind"),
    [
        ({}, set(), "deposit"),
        ({"sender": ZERO_ADDRESS}, set(), "deposit"),  # a mint is USDC arriving at the address
        # a transferFrom by a third party logs the owner as sender: the same as any transfer
        ({"sender": "0x" + "dd" * 20}, set(), "deposit"),
        ({"amount": MAX_CREDIT_MICRO}, set(), "deposit"),
        ({"amount": MAX_CREDIT_MICRO + 1}, set(), "too_large"),
        ({"amount": 2**256 - 1}, set(), "too_large"),
        ({"amount": 0}, set(), "zero_value"),
        ({"amount": 0, "sender": ZERO_ADDRESS}, set(), "zero_value"),  # a zero mint adds nothing either
        ({"sender": DEPOSIT_ADDRESS}, set(), "self_transfer"),
        ({"token": "0x" + "ee" * 20}, set(), "foreign_contract"),
        ({"token": "0x" + "ee" * 20, "amount": 0}, set(), "foreign_contract"),  # not ours, whatever it says
        ({"token": "0x" + "ee" * 20, "sender": TREASURY.lower()}, set(), "foreign_contract"),
        ({"sender": TREASURY.lower()}, set(), "treasury"),
        ({"sender": TREASURY.lower(), "amount": 0}, set(), "zero_value"),
        ({}, {"0xabc"}, "own_payout"),
        ({"amount": MAX_CREDIT_MICRO + 1}, {"0xabc"}, "own_payout"),
    ],
)
def test_what_a_log_to_a_deposit_address_is(changes: dict[str, Any], own: set[str], kind: str) -> None:
    assert classify(_transfer(**changes), USDC, TREASURY, own) == kind


def test_classify_without_a_treasury_and_confirmations() -> None:
    assert classify(_transfer(sender=TREASURY.lower()), USDC, None, set()) == "deposit"
    assert [confirmations(10, b) for b in (10, 9, 11)] == [1, 2, 0]


def test_the_bound_fits_the_ledger_with_room_for_balances() -> None:
    bigint = 2**63 - 1
    assert MAX_CREDIT_MICRO * 9000 < bigint  # nine thousand of the largest credits still sum in a bigint
    assert MAX_CREDIT_MICRO >= 10**6 * 10**6 * 1000  # a thousand times the largest intent (1,000,000 USDC)


def _receipt_log(**changes: Any) -> dict[str, Any]:
    return _log(**{"topics": [TRANSFER_TOPIC, "0x" + "00" * 12 + "cc" * 20, "0x" + "00" * 12 + "bb" * 20],
                   **changes})  # fmt: skip


# The credited transfer the verdicts are about: log 3 of 0xabc, the first of its content in its transaction.
KEY = TransferKey("0xabc", USDC.lower(), "0x" + "cc" * 20, DEPOSIT_ADDRESS, 25_500_000, 0)
OTHER_BLOCK, OUR_BLOCK = {"hash": "0xF00", "number": "0x10"}, {"hash": "0xDEF", "number": "0x10"}


@pytest.mark.parametrize(
    ("receipt", "block", "verdict"),
    [
        ({"logs": [_receipt_log()]}, None, "present"),
        ({"logs": [_receipt_log(logIndex="0x1"), _receipt_log(logIndex="0x3", data="0x" + f"{1:064x}")]}, None,
         "present"),  # found by what it is: another log of another amount does not hide it
        ({"logs": [_receipt_log(logIndex="0x4")]}, None, "present"),  # mined again behind another log: the same
        ({"logs": [_receipt_log(logIndex="0x9", blockHash="0xF00", blockNumber="0x11")]}, OTHER_BLOCK, "present"),
        # the receipt exists without it: mined again, reverted or different; the node proves it gone
        ({"logs": []}, None, "gone"),
        ({"logs": [_receipt_log(address="0x" + "ee" * 20)]}, None, "gone"),
        ({"logs": [_receipt_log(data="0x" + f"{1:064x}")]}, None, "gone"),
        ({"logs": [_receipt_log(topics=[TRANSFER_TOPIC, "0x" + "00" * 32, "0x" + "00" * 12 + "cd" * 20])]}, None,
         "gone"),
        ({"logs": ["garbage", None]}, None, "gone"),
        ({"logs": [_receipt_log(transactionHash="0xDDD")]}, None, "gone"),  # another transaction's log
        # a null receipt proves something only with another block at the transfer's height
        (None, OTHER_BLOCK, "replaced"),
        (None, OUR_BLOCK, "unknown"),  # the node has our block, yet no receipt: not a reorg it can show
        (None, {"hash": "0xdef"}, "unknown"),  # hashes compared without case
        (None, None, "unknown"),  # a node behind a load balancer that lacks the block: wait
        (None, {}, "unknown"),
        (None, {"hash": None}, "unknown"),
        (None, "garbage", "unknown"),
        ({}, None, "unknown"),  # not a receipt: nothing proven
        ("garbage", OTHER_BLOCK, "unknown"),
    ],
)  # fmt: skip
def test_a_credited_log_is_gone_only_when_the_node_proves_it(receipt: Any, block: Any, verdict: str) -> None:
    assert gone_verdict(receipt, block, KEY, "0xdef") == verdict


def test_the_second_of_two_identical_logs_is_found_by_its_order_not_its_index() -> None:
    second = replace(KEY, seq=1)
    one = {"logs": [_receipt_log(logIndex="0x7")]}
    two = {"logs": [_receipt_log(logIndex="0x8"), _receipt_log(logIndex="0x7")]}  # any order in the answer
    assert [gone_verdict(r, None, k, "0xdef") for r in (one, two) for k in (KEY, second)] == [
        "present", "gone", "present", "present",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("receipt_block", "succeeded", "nonce_used", "head", "expected"),
    [
        (10, True, True, 10, "waiting"),  # one confirmation
        (10, True, True, 11, "final"),  # two
        (10, True, True, 30, "final"),
        (12, True, True, 11, "waiting"),  # a node behind the receipt's block: not final
        (10, False, True, 30, "reverted"),  # mined again after a reorg, and reverted this time
        (None, False, False, 30, "gone"),  # in no block, nonce free: send the same bytes again
        (None, False, True, 30, "nonce_taken"),
    ],
)
def test_a_settled_payout_is_final_at_the_required_confirmations(
    receipt_block: int | None, succeeded: bool, nonce_used: bool, head: int, expected: str
) -> None:
    state = payout_finality(
        receipt_block=receipt_block, succeeded=succeeded, nonce_used=nonce_used, head=head, required=2
    )
    assert state == expected


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


def test_one_transfer_per_identity_numbered_among_identical_logs() -> None:
    first = _transfer(log_index=3)
    again = replace(first)  # the same log answered twice: once
    twin = _transfer(log_index=5)  # identical content, later in the transaction: the second of its kind
    other = _transfer(log_index=4, amount=1)
    elsewhere = _transfer(tx_hash="0xbcd", log_index=1)
    assert identify([first, twin, other, again, elsewhere]) == [
        replace(first, seq=0), replace(twin, seq=1), replace(other, seq=0), replace(elsewhere, seq=0),
    ]  # fmt: skip
    assert identify([]) == []


def test_a_transaction_mined_again_behind_another_log_keeps_its_identity() -> None:
    """Its block-level log indices all move; what it emits, and in which order, does not."""
    logs = [_transfer(log_index=0), _transfer(log_index=1, amount=7), _transfer(log_index=2)]
    moved = [replace(t, log_index=t.log_index + 1, block_number=17, block_hash="0xfed") for t in logs]
    assert [t.key for t in identify(moved)] == [t.key for t in identify(logs)]
    assert [t.key.seq for t in identify(logs)] == [0, 0, 1]


def test_a_transaction_shown_in_two_blocks_counts_once() -> None:
    """Ranges served by nodes on two forks: one transaction's log at index 0 in one block, 1 in another.
    Numbering both would make one transfer two; the highest block's logs are kept."""
    old = _transfer(log_index=0, block_number=16, block_hash="0xaaa")
    new = _transfer(log_index=1, block_number=18, block_hash="0xbbb")
    unrelated = _transfer(tx_hash="0xbcd", log_index=0, block_number=16, block_hash="0xaaa")
    assert identify([old, unrelated, new]) == [unrelated, new]
    assert identify([new, old]) == [new]


def test_one_credit_decided_alone_matches_the_round() -> None:
    transfer = _due(0, "a", 4)
    assert decide_credit(transfer, OpenIntent(I1, 5), set()).flags == ("underpaid",)
    assert decide_credit(transfer, None, {"a"}).intent_id is None
    assert decide_credits([transfer], {"a": OpenIntent(I1, 5)}, set()) == [
        decide_credit(transfer, OpenIntent(I1, 5), set())
    ]


def test_a_reversal_takes_the_users_credit_back_into_suspense() -> None:
    from kiota.ledger import SUSPENSE_USDC, Direction, usdc_received, usdc_reversed, user_account

    credit = usdc_received(8453, "0xABC", 3, "u1", 7)
    reversal = usdc_reversed(credit.key, "u1", 7)
    assert reversal.key == credit.key + ":reversed" == "usdc:8453:0xabc:3:reversed"
    assert {(p.account, p.direction, p.amount) for p in reversal.postings} == {
        (user_account("u1", "USDC"), Direction.DEBIT, 7),
        (SUSPENSE_USDC, Direction.CREDIT, 7),
    }
