"""Several treasuries, the pure parts: TREASURY_PRIVATE_KEY / TREASURY_ADDRESS as lists, which lane serves
which slot (and who stands in for a paused lane), the deposit's slot, and the ingester's rule that no
treasury's payout is a deposit."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from eth_account import Account

from kiota.errors import ConfigError
from kiota.payouts.lanes import FUNDS_FRESH_SECONDS, may_cover, served_slots, serving_lane, slot_of
from kiota.settings import WorkerSettings, load_settings
from kiota.store.payouts import TreasuryFunds
from kiota.treasury import Treasury
from kiota.usdc import DEPOSIT, TREASURY, TransferLog, classify
from tests.support import TREASURY_KEY, settings_kwargs

KEY_2 = "0x" + hashlib.sha256(b"kiota test treasury 2").hexdigest()
KEY_3 = "0x" + hashlib.sha256(b"kiota test treasury 3").hexdigest()
ADDRESSES = [str(Account.from_key(k).address) for k in (TREASURY_KEY, KEY_2, KEY_3)]


def worker(**changes: object) -> WorkerSettings:
    values: dict[str, object] = {"_env_file": None, **settings_kwargs("postgresql://x@127.0.0.1/kiota"), **changes}
    return load_settings(WorkerSettings, **values)


def test_one_key_stays_valid_exactly_as_today() -> None:
    settings = worker(treasury_private_key=TREASURY_KEY)
    assert [k.get_secret_value() for k in settings.treasury_keys] == [TREASURY_KEY]
    assert settings.treasury_addresses == ADDRESSES[:1]


def test_several_keys_are_several_treasuries_and_their_addresses_may_be_given_in_any_order() -> None:
    settings = worker(
        treasury_private_key=f"{TREASURY_KEY}, {KEY_2},{KEY_3}",
        treasury_address=",".join(reversed(ADDRESSES)).lower(),
    )
    assert [k.get_secret_value() for k in settings.treasury_keys] == [TREASURY_KEY, KEY_2, KEY_3]
    assert settings.treasury_addresses == ADDRESSES


def test_a_worker_without_keys_knows_every_treasury_by_address() -> None:
    settings = worker(worker_queues="chain", treasury_address=" , ".join(ADDRESSES))
    assert settings.treasury_addresses == ADDRESSES
    assert settings.treasury_keys == []


@pytest.mark.parametrize(
    ("key", "address", "said"),
    [
        (f"{TREASURY_KEY},{KEY_2}", ADDRESSES[0], "TREASURY_ADDRESS lists 1 addresses but TREASURY_PRIVATE_KEY has 2"),
        (TREASURY_KEY, ",".join(ADDRESSES[:2]), "TREASURY_ADDRESS lists 2 addresses but TREASURY_PRIVATE_KEY has 1"),
        (f"{TREASURY_KEY},{KEY_2}", f"{ADDRESSES[0]},{ADDRESSES[2]}", f"{ADDRESSES[2].lower()} is the address of none"),
        (TREASURY_KEY, ADDRESSES[1], f"TREASURY_ADDRESS {ADDRESSES[1].lower()} is the address of none"),
        (f"{TREASURY_KEY},{TREASURY_KEY}", None, "TREASURY_PRIVATE_KEY (Value error, lists one key twice)"),
        (None, f"{ADDRESSES[0]},{ADDRESSES[0].lower()}", "TREASURY_ADDRESS (Value error, lists one address twice)"),
    ],
)
def test_mismatched_key_and_address_lists_are_refused_clearly(key: str | None, address: str | None, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        worker(worker_queues="chain", treasury_private_key=key, treasury_address=address)
    message = str(caught.value)
    assert said in message
    assert "\n" not in message
    for secret in (TREASURY_KEY, KEY_2, KEY_3):  # a key never appears in the message
        assert secret.removeprefix("0x") not in message


def test_one_bad_key_among_several_is_refused_without_echoing_any() -> None:
    with pytest.raises(ConfigError) as caught:
        worker(treasury_private_key=f"{TREASURY_KEY},0xnot-a-key-secret-value")
    assert "TREASURY_PRIVATE_KEY" in str(caught.value)
    assert "not-a-key-secret-value" not in str(caught.value)
    assert TREASURY_KEY.removeprefix("0x") not in str(caught.value)


@pytest.mark.parametrize(
    ("slot", "paused", "lane"),
    [
        (0, [False], 0),
        (0, [True], None),
        (1, [False, False, False], 1),
        (1, [False, True, False], 2),  # the next running lane stands in
        (2, [False, True, True], 0),  # wrapping round
        (2, [True, True, True], None),
        (3, [False, False, False, True], 0),
    ],
)
def test_the_serving_lane_is_the_slots_own_else_the_next_running_one(
    slot: int, paused: list[bool], lane: int | None
) -> None:
    assert serving_lane(slot, paused) == lane


@pytest.mark.parametrize(
    ("paused", "served"),
    [
        ([False, False, False], [[0], [1], [2]]),
        ([False, True, False], [[0], [], [1, 2]]),
        ([True, False, False], [[], [0, 1], [2]]),
        ([True, True, True], [[], [], []]),
    ],
)
def test_every_slot_has_at_most_one_serving_lane(paused: list[bool], served: list[list[int]]) -> None:
    assert [served_slots(lane, paused) for lane in range(len(paused))] == served


@pytest.mark.parametrize(
    ("funds", "amount", "covers"),
    [
        (None, 10**12, True),  # never read: its lane reads it in its turn
        (TreasuryFunds(15_000_000, 1.0), 15_000_000, True),
        (TreasuryFunds(15_000_000, 1.0), 15_000_001, False),  # fresh and short by one micro-USDC
        (TreasuryFunds(15_000_000, FUNDS_FRESH_SECONDS + 1), 30_000_000, True),  # stale: tried, read again
        (TreasuryFunds(-5, 1.0), 1, False),  # more in flight than on chain (a reorg) covers nothing
    ],
)
def test_a_treasury_may_cover_a_payout_unless_a_fresh_reading_says_it_is_short(
    funds: TreasuryFunds | None, amount: int, covers: bool
) -> None:
    assert may_cover(funds, amount) is covers


def test_deposits_spread_evenly_over_the_slots() -> None:
    counts = [0, 0, 0, 0]
    for _ in range(4000):
        counts[slot_of(uuid.uuid4(), 4)] += 1
    assert all(850 < count < 1150 for count in counts), counts
    assert slot_of(uuid.uuid4(), 1) == 0


def test_a_treasury_knows_its_lanes_in_address_order() -> None:
    treasury = Treasury("http://127.0.0.1:1", KEY_2, 8453, "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913")
    assert treasury.lanes == (treasury.address,)  # alone, as one key has always been
    treasury.join(ADDRESSES)
    assert treasury.lanes == tuple(sorted(ADDRESSES, key=str.lower))


USDC = "0x833589fcd6edb6e08f4c7c32d4f71b54bda02913"


@pytest.mark.parametrize("sender", [a.lower() for a in ADDRESSES])
def test_no_treasurys_payout_is_a_deposit(sender: str) -> None:
    transfer = TransferLog(
        tx_hash="0x" + "ab" * 32, log_index=0, block_number=10, block_hash="0x" + "cd" * 32,
        token=USDC, sender=sender, recipient="0x" + "11" * 20, amount=5_000_000,
    )  # fmt: skip
    assert classify(transfer, USDC, tuple(ADDRESSES), set()) == TREASURY
    assert classify(transfer, USDC, ADDRESSES[0], set()) == (TREASURY if sender == ADDRESSES[0].lower() else DEPOSIT)
