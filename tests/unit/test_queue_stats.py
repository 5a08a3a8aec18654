"""The dashboard's queue arithmetic (kiota/queue_stats.py): buckets, rates, counts by status, cards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from kiota.job_names import Queue
from kiota.job_view import JOB_STATUSES
from kiota.queue_stats import (
    DEPTH_BUCKET_MINUTES,
    DEPTH_HOURS,
    RATE_MINUTES,
    bucket_series,
    failure_percent,
    per_minute,
    queue_cards,
    status_counts,
)
from kiota.records import QueueDepthSample

T0 = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


@pytest.mark.parametrize(
    ("points", "bucket", "buckets", "series"),
    [
        ([], MINUTE, 3, [0, 0, 0]),
        ([(T0, 2), (T0 + MINUTE, 5)], MINUTE, 3, [2, 5, 0]),
        ([(T0 + 2 * MINUTE, 7)], MINUTE, 3, [0, 0, 7]),
        ([(T0 - MINUTE, 9), (T0 + 3 * MINUTE, 9)], MINUTE, 3, [0, 0, 0]),  # outside the window
        ([(T0, 2), (T0 + 30 * timedelta(seconds=1), 6)], MINUTE, 2, [6, 0]),  # two in a bucket: the largest
        ([(T0 + 9 * MINUTE, 4), (T0 + 10 * MINUTE, 1)], 10 * MINUTE, 2, [4, 1]),
    ],
)
def test_points_fall_in_their_bucket(
    points: list[tuple[datetime, int]], bucket: timedelta, buckets: int, series: list[int]
) -> None:
    assert bucket_series(points, T0, bucket, buckets) == series


@pytest.mark.parametrize(
    ("total", "minutes", "rate"),
    [(0, 60, "0.0"), (60, 60, "1.0"), (1, 60, "0.0"), (3, 60, "0.1"), (90, 60, "1.5"), (7, 1, "7.0")],
)
def test_a_count_over_a_window_is_a_rate_per_minute(total: int, minutes: int, rate: str) -> None:
    assert per_minute(total, minutes) == Decimal(rate)


def test_a_rate_needs_a_window() -> None:
    with pytest.raises(ValueError, match="at least one minute"):
        per_minute(1, 0)


@pytest.mark.parametrize(
    ("failed", "ended", "percent"), [(0, 0, None), (0, 5, "0.0"), (1, 3, "33.3"), (2, 3, "66.7"), (4, 4, "100.0")]
)
def test_the_share_that_failed(failed: int, ended: int, percent: str | None) -> None:
    assert failure_percent(failed, ended) == (None if percent is None else Decimal(percent))


def test_counts_are_by_the_contracts_status_words() -> None:
    counts = status_counts(
        [("queued", False, 2), ("running", False, 1), ("retrying", True, 3), ("retrying", False, 4),
         ("failed", False, 5), ("cancelled", False, 6)]
    )  # fmt: skip
    assert list(counts) == list(JOB_STATUSES)
    assert counts == {"queued": 2, "active": 1, "deferred": 3, "retrying": 4, "blocked": 0, "succeeded": 0,
                      "failed": 5, "cancelled": 6}  # fmt: skip


def test_each_queue_gets_its_card_from_what_was_read() -> None:
    now = T0 + timedelta(seconds=30)
    minutes = [("payouts", T0, 4, 1), ("payouts", T0 - 10 * MINUTE, 2, 0), ("chain", T0, 60, 0),
               ("payouts", T0 - 2 * timedelta(hours=1), 99, 99)]  # fmt: skip  # the last: outside the hour
    samples = [QueueDepthSample("payouts", T0 - 5 * MINUTE, 3, 1), QueueDepthSample("payouts", T0, 8, 0),
               QueueDepthSample("payouts", T0 - timedelta(hours=7), 50, 0)]  # fmt: skip
    counts = [("payouts", "failed", False, 2), ("chain", "succeeded", False, 9)]
    cards = queue_cards(now, counts, minutes, samples, {"chain": True})
    assert [card.queue for card in cards] == list(Queue)
    payouts, chain, maintenance = cards
    assert payouts.counts["failed"] == 2 and chain.counts["succeeded"] == 9 and sum(maintenance.counts.values()) == 0
    assert len(payouts.processed) == RATE_MINUTES and payouts.processed[-1] == 4 and payouts.processed[-11] == 2
    assert sum(payouts.processed) == 6 and sum(payouts.failed) == 1
    assert payouts.processed_per_minute == Decimal("0.1") and payouts.failure_percent == Decimal("16.7")
    assert chain.processed_per_minute == Decimal("1.0") and chain.failure_percent == Decimal("0.0")
    assert maintenance.failure_percent is None
    assert len(payouts.depth) == DEPTH_HOURS * 60 // DEPTH_BUCKET_MINUTES
    assert payouts.depth[-1] == 8 and sum(payouts.depth) == 8  # 3 and 8 share the last ten minutes; 50 is too old
    assert (payouts.paused, chain.paused, maintenance.paused) == (False, True, False)
