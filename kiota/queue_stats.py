"""Each queue as the dashboard shows it: counts by state, processing and failure rates, depth over hours.

- Counts come from the job history (`jobs`), by the contract's status words (`kiota.job_view`).
- Rates are of the last hour, from the attempts that ended in it (`job_attempts.finished_at`): attempts
  ended per minute, failed attempts per minute, and the share that failed. A minute series of each
  feeds a sparkline.
- Depth is sampled, not derived: the workers' heartbeat writes each queue's waiting and running jobs once
  a minute (`queue_depth_samples`, migration 0017; `sample_depth`). The job rows cannot tell what a queue
  held at 3 a.m.: a retry re-stamps a job's `enqueued_at`, a job waiting for its retry is not "waiting"
  in any timestamp, and a cleaned history is gone. A minute in which no worker ran has no sample, and
  shows as nothing waiting.

The arithmetic (buckets, rates) is pure and tested by tables; `queue_overview` reads and assembles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from kiota.db import Executor
from kiota.job_names import Queue
from kiota.job_view import DEFERRED, JOB_STATUSES, JobStatus, shown_status
from kiota.records import QueueDepthSample
from kiota.store import jobs as store
from kiota.store import queues as queue_store

RATE_MINUTES = 60  # the window of the rates: the last hour
DEPTH_HOURS = 6  # the window of the depth chart
DEPTH_BUCKET_MINUTES = 10  # one point of it: the most waiting in these minutes
_TENTH = Decimal("0.1")


def minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def bucket_series(
    points: Iterable[tuple[datetime, int]], start: datetime, bucket: timedelta, buckets: int
) -> list[int]:
    """`buckets` values from `start` (oldest first), each the largest point in its bucket (0 when none);
    points outside the window are left out. The largest, not the sum: a depth sampled twice is one depth."""
    series = [0] * buckets
    for moment, value in points:
        index = (moment - start) // bucket
        if 0 <= index < buckets:
            series[index] = max(series[index], value)
    return series


def per_minute(total: int, minutes: int) -> Decimal:
    """A count over `minutes` as a rate per minute, to a tenth (Decimal: no floats on our pages)."""
    if minutes <= 0:
        raise ValueError("a rate needs a window of at least one minute")
    return (Decimal(total) / minutes).quantize(_TENTH, ROUND_HALF_UP)


def failure_percent(failed: int, ended: int) -> Decimal | None:
    """The share of ended attempts that failed, in percent to a tenth; None when none ended."""
    if ended == 0:
        return None
    return (Decimal(100 * failed) / ended).quantize(_TENTH, ROUND_HALF_UP)


def status_counts(groups: Iterable[tuple[str, bool, int]]) -> dict[JobStatus, int]:
    """Every status word with its count, from (stored status, latest attempt deferred, count) groups."""
    counts: dict[JobStatus, int] = dict.fromkeys(JOB_STATUSES, 0)
    for stored, deferred, n in groups:
        counts[shown_status(stored, DEFERRED if deferred else None)] += n
    return counts


@dataclasses.dataclass(frozen=True, slots=True)
class QueueCard:
    """One queue on the dashboard."""

    queue: Queue
    counts: Mapping[JobStatus, int]
    processed_per_minute: Decimal  # attempts ended per minute over the last hour
    failed_per_minute: Decimal
    failure_percent: Decimal | None
    processed: list[int]  # per minute, the last hour, oldest first
    failed: list[int]
    depth: list[int]  # the most waiting per DEPTH_BUCKET_MINUTES, the last DEPTH_HOURS, oldest first
    paused: bool = False  # held by an operator (kiota/queues.py): its jobs wait, none lost


def queue_cards(
    now: datetime,
    counts: list[tuple[str, str, bool, int]],
    minutes: list[tuple[str, datetime, int, int]],
    samples: list[QueueDepthSample],
    pauses: Mapping[str, bool],
) -> list[QueueCard]:
    """The cards, one per queue in `Queue`'s order, from what `queue_overview` read."""
    rate_start = minute_of(now) - timedelta(minutes=RATE_MINUTES - 1)
    depth_buckets = DEPTH_HOURS * 60 // DEPTH_BUCKET_MINUTES
    depth_start = minute_of(now) - timedelta(minutes=DEPTH_BUCKET_MINUTES * depth_buckets - 1)
    cards = []
    for queue in Queue:
        ended = [(m, n) for q, m, n, _ in minutes if q == queue]
        failed = [(m, f) for q, m, _, f in minutes if q == queue]
        processed_series = bucket_series(ended, rate_start, timedelta(minutes=1), RATE_MINUTES)
        failed_series = bucket_series(failed, rate_start, timedelta(minutes=1), RATE_MINUTES)
        depth = [(s.at, s.waiting) for s in samples if s.queue == queue]
        cards.append(
            QueueCard(
                queue=queue,
                counts=status_counts((status, deferred, n) for q, status, deferred, n in counts if q == queue),
                processed_per_minute=per_minute(sum(processed_series), RATE_MINUTES),
                failed_per_minute=per_minute(sum(failed_series), RATE_MINUTES),
                failure_percent=failure_percent(sum(failed_series), sum(processed_series)),
                processed=processed_series,
                failed=failed_series,
                depth=bucket_series(depth, depth_start, timedelta(minutes=DEPTH_BUCKET_MINUTES), depth_buckets),
                paused=pauses.get(queue.value, False),
            )
        )
    return cards


async def queue_overview(db: Executor, now: datetime) -> list[QueueCard]:
    """Every queue's card as of `now` (four statements)."""
    counts = await store.job_counts(db)
    minutes = await store.attempt_minutes(db, minute_of(now) - timedelta(minutes=RATE_MINUTES - 1))
    samples = await store.depth_samples(db, now - timedelta(hours=DEPTH_HOURS))
    pauses = {state.queue: state.paused for state in await queue_store.queue_states(db)}
    return queue_cards(now, counts, minutes, samples, pauses)


async def sample_depth(db: Executor) -> None:
    """This minute's depth of every queue, for the charts (the heartbeat calls it; one row a minute)."""
    await store.record_depth_sample(db, [queue.value for queue in Queue])
