"""The lane's tuning against arq's job timeout, the failpoints' `<name>@<n>`, the block pace, and when the owner looks
again and re-prices."""

from __future__ import annotations

import hashlib
import signal
from types import SimpleNamespace
from typing import cast

import pytest

from jobs.context import _treasuries
from jobs.worker import JOB_TIMEOUT_SECONDS
from kiota.payouts import LaneConfig
from kiota.payouts import failpoint as failpoints
from kiota.payouts import lane as lane_module
from kiota.payouts.lane import IN_FLIGHT_GRACE_SECONDS, QUICK_LOOK_SECONDS, QUICK_LOOKS, Pipeline
from kiota.payouts.terms import SignedItem
from kiota.records import Payout
from kiota.settings import WorkerSettings
from kiota.store.payouts import Payee
from kiota.treasury import AUTOMINE_LAG_SECONDS, BlockPace, SignedTx, Treasury
from tests.support import settings_kwargs

# What a payout job does besides the lane: M-Pesa's confirmation, the lane's wait, the last block's settling.
ROOM_FOR_THE_REST = 10


def test_the_owners_drain_stays_well_inside_the_job_timeout() -> None:
    config = LaneConfig()
    assert config.drain_seconds + config.watch_seconds + ROOM_FOR_THE_REST <= JOB_TIMEOUT_SECONDS
    assert config.lock_wait_seconds < config.drain_seconds


def test_the_in_flight_cap_is_a_setting_with_the_lanes_default() -> None:
    assert WorkerSettings.model_fields["payout_max_in_flight"].default == LaneConfig().max_in_flight


@pytest.mark.parametrize(
    ("wanted", "reached", "kills_at"),
    [
        ("after_broadcast", ["after_broadcast"], 1),
        ("after_broadcast@1", ["after_broadcast"], 1),
        ("after_broadcast@3", ["after_receipt", "after_broadcast"] * 3, 6),  # only its own passes count
        ("after_receipt@2", ["after_broadcast"] * 4, None),
    ],
)
def test_a_failpoint_kills_at_its_nth_pass(
    monkeypatch: pytest.MonkeyPatch, wanted: str, reached: list[str], kills_at: int | None
) -> None:
    kills: list[int] = []
    monkeypatch.setenv("KIOTA_FAILPOINT", wanted)
    monkeypatch.setattr(failpoints, "_reached", type(failpoints._reached)())
    monkeypatch.setattr(failpoints.os, "kill", lambda pid, sig: kills.append(sig))
    first_kill = None
    for i, name in enumerate(reached, start=1):
        failpoints.failpoint(name)
        if kills and first_kill is None:
            first_kill = i
    assert first_kill == kills_at
    assert set(kills) <= {signal.SIGKILL}


def test_the_block_pace_is_the_time_between_the_last_two_heads_that_differed() -> None:
    pace = BlockPace()
    pace.observe(100, now=10.0)
    pace.observe(100, now=10.5)  # the same head again: no block, no figure yet
    assert pace.seconds_per_block is None and not pace.faster_than(IN_FLIGHT_GRACE_SECONDS)
    pace.observe(101, now=12.0)  # Base: a block every 2 s, from the moment the last new head was seen
    assert pace.seconds_per_block == pytest.approx(2.0)
    assert not pace.faster_than(IN_FLIGHT_GRACE_SECONDS)
    pace.observe(99, now=12.1)  # a lower head (a reorg, a lagging node) is not a block
    assert pace.head == 101 and pace.seconds_per_block == pytest.approx(2.0)
    pace.observe(105, now=12.2)  # automine: a block per transaction, four in 0.2 s
    assert pace.seconds_per_block == pytest.approx(0.05)
    assert pace.faster_than(IN_FLIGHT_GRACE_SECONDS)


def test_a_workers_treasuries_share_one_pace_so_an_owner_of_one_lane_tells_it_for_the_others() -> None:
    # Two workers, four lanes: a process owns some lanes only. Its jobs of the others must still know that sends
    # wait for blocks (else each waited lock_wait_seconds in its slot, polling an owned lane every 50 ms).
    keys = ",".join("0x" + hashlib.sha256(f"pace {n}".encode()).hexdigest() for n in range(2))
    values = {**settings_kwargs("postgresql://127.0.0.1/none"), "treasury_private_key": keys}
    owned, other = _treasuries(WorkerSettings(_env_file=None, **values))  # type: ignore[arg-type]
    owned.pace.observe(7, now=0.0)
    owned.pace.sent(0.0, 7)
    owned.pace.observe(7, now=AUTOMINE_LAG_SECONDS)  # not mined as it was sent: 2-second blocks
    assert other.pace.waits_for_blocks()


def test_whether_a_send_waits_for_its_block_is_told_by_how_soon_the_head_moves_after_it() -> None:
    """A deposit's job leaves an owned lane at once only on a chain whose blocks a send waits for. The time between
    heads cannot tell it: on automine a quiet gap, or an owner busy settling, reads as a slow block (B2 fell to a
    quarter when the job trusted it)."""
    base = BlockPace()
    assert not base.waits_for_blocks()  # no send seen yet: not known
    base.observe(100, now=10.0)
    base.sent(10.0, head_before=100)
    base.observe(100, now=10.01)  # too soon to tell: automine mines a few ms after the send answers
    assert not base.waits_for_blocks()
    base.observe(100, now=10.3)  # a late look still tells: the head has not moved
    assert base.waits_for_blocks()
    base.sent(11.0, head_before=100)
    base.observe(101, now=11.5)  # a move long after a send tells nothing (a block came meanwhile)
    assert base.waits_for_blocks()
    base.sent(12.0, head_before=101)
    base.observe(99, now=12.2)  # a lower head (a reorg, another node) tells nothing either
    assert base.waits_for_blocks()

    automine = BlockPace()
    automine.observe(7, now=0.0)
    automine.observe(7, now=5.0)  # nobody sent for 5 s
    automine.sent(5.0, head_before=7)
    automine.observe(7, now=5.001)  # not yet mined
    automine.observe(8, now=5.004)  # mined as it was sent
    assert not automine.waits_for_blocks()
    assert automine.seconds_per_block == pytest.approx(5.004)  # what the time between heads would have said

    # One pace for a process's owners: another owner's look, asked before this send and answered late (a busy
    # loop), still says the old head; it tells nothing of the send. Its own later look does.
    shared = BlockPace()
    shared.observe(7, now=0.0)
    shared.sent(1.0, head_before=7)
    shared.observe(7, now=1.2, asked_at=0.99)
    assert shared.sent_at == 1.0 and not shared.waits_for_blocks()
    shared.observe(8, now=1.21, asked_at=1.2)  # mined on send (its reply seen late: not within 100 ms of the send)
    assert not shared.waits_for_blocks()
    shared.sent(2.0, head_before=8)
    shared.observe(8, now=2.1, asked_at=2.03)  # asked only 30 ms after the send: too soon to say it waited
    assert not shared.waits_for_blocks()
    shared.observe(8, now=2.2, asked_at=2.06)
    assert shared.waits_for_blocks()


def test_one_send_that_looks_mined_by_chance_does_not_change_the_pace() -> None:
    # 2-second blocks: a block that comes within 100 ms of one send is chance, not automine. Two in a row change it.
    pace = BlockPace()
    pace.observe(10, now=0.0)
    pace.sent(0.5, head_before=10)
    pace.observe(10, now=0.6)
    assert pace.waits_for_blocks()
    pace.sent(1.95, head_before=10)
    pace.observe(11, now=2.0)  # the block came 50 ms after this send
    assert pace.waits_for_blocks()
    pace.sent(2.05, head_before=11)
    pace.observe(11, now=2.15)  # the next send waits again
    pace.sent(3.95, head_before=11)
    pace.observe(12, now=3.99)
    assert pace.waits_for_blocks()
    pace.sent(4.0, head_before=12)
    pace.observe(13, now=4.01)  # two in a row: the chain mines as it is sent now
    assert not pace.waits_for_blocks()


@pytest.mark.parametrize(("seconds_per_block", "quick"), [(2.0, False), (0.05, True)])
def test_after_a_send_the_owner_looks_again_within_ms_only_on_a_chain_that_mines_as_it_is_sent(
    seconds_per_block: float, quick: bool
) -> None:
    treasury = Treasury.__new__(Treasury)  # no RPC here: only its pace is read
    treasury.pace = BlockPace(head=1, seen_at=0.0, seconds_per_block=seconds_per_block)
    pipeline = Pipeline(None, treasury, LaneConfig())  # type: ignore[arg-type]
    poll = LaneConfig().poll_seconds
    assert pipeline._next_look() == poll  # nothing sent: a poll
    pipeline._sent(head_before=1)
    looks = [pipeline._next_look() for _ in range(QUICK_LOOKS + 2)]
    if quick:  # a few quick looks, then polls again (a transaction the node never mines does not spin the owner)
        assert looks == [QUICK_LOOK_SECONDS] * QUICK_LOOKS + [poll, poll]
    else:  # Base's 2-second blocks: never sooner than a poll
        assert looks == [poll] * (QUICK_LOOKS + 2)


@pytest.mark.parametrize("first", [0, 10])  # a treasury's very first nonce is 0: "one below" is -1, no sentinel
async def test_the_lowest_nonce_is_re_priced_only_after_blocks_in_which_the_chain_took_none_of_ours(
    monkeypatch: pytest.MonkeyPatch, first: int
) -> None:
    """Automine mines a batch one transaction (one block) at a time: the lowest unmined nonce of a batch sent five
    blocks ago is not passed over while the chain is still taking the batch. Three blocks without progress are."""
    replaced: list[int] = []

    async def replace(conn: object, treasury: object, payout: object, signed: SimpleNamespace) -> SimpleNamespace:
        replaced.append(signed.nonce)
        return signed

    monkeypatch.setattr(lane_module, "replace", replace)
    batch = [
        SignedItem(cast(Payee, None), cast(Payout, SimpleNamespace(id=n)), cast(SignedTx, SimpleNamespace(nonce=n)))
        for n in range(first, first + 26)
    ]
    pipeline = Pipeline(None, cast(Treasury, None), LaneConfig(replace_after_blocks=3))  # type: ignore[arg-type]
    pipeline.head = 100
    pipeline._add_in_flight(batch)
    for head, mined in ((105, first + 5), (107, first + 5)):  # five of ours mined by 105; none since, for two blocks
        pipeline.head = head
        pipeline.in_flight = [item for item in batch if item.signed.nonce >= mined]
        await pipeline._bump_lowest(mined)
    assert replaced == []
    pipeline.head = 108  # the third block that took none of ours
    await pipeline._bump_lowest(first + 5)
    assert replaced == [first + 5]

    # An owner that takes the lane over knows of no progress: the blocks since the sending count alone.
    resumed = Pipeline(None, cast(Treasury, None), LaneConfig(replace_after_blocks=3))  # type: ignore[arg-type]
    resumed.head, resumed.in_flight, resumed.sent_at = 108, batch[5:], {item.payout.id: 100 for item in batch}
    await resumed._bump_lowest(first + 5)
    assert replaced == [first + 5, first + 5]
