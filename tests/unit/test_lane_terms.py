"""The lane's tuning against arq's job timeout, and the failpoints' `<name>@<n>`."""

from __future__ import annotations

import signal

import pytest

from jobs.worker import JOB_TIMEOUT_SECONDS
from kiota.payouts import LaneConfig
from kiota.payouts import failpoint as failpoints
from kiota.settings import WorkerSettings

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
