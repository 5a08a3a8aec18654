"""How the job history reads to an operator (the jobs API): the status a job shows, and the filter a status asks for.

The `jobs` table keeps its own states (`queued | running | retrying | blocked | succeeded | failed`, which
the sweeper and the workers act on); the contract's are finer. The mapping, written once:

    stored        latest attempt    shown
    queued        any               queued
    running       any               active
    retrying      deferred          deferred   (it waits, for a lock or a transaction to be mined: no failure)
    retrying      anything else     retrying   (it failed and is retried after a backoff)
    blocked       any               blocked
    succeeded     any               succeeded
    failed        any               failed
    cancelled     any               cancelled  (an operator cancelled it waiting: kiota/job_actions.py)
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime
from typing import Any, Literal, get_args

from kiota.job_names import Queue

JobStatus = Literal["queued", "active", "deferred", "retrying", "blocked", "succeeded", "failed", "cancelled"]
JOB_STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)


DEFERRED = "deferred"  # an attempt's outcome when the job waits (`job_attempts.outcome`)
_SHOWN = {"queued": "queued", "running": "active", "blocked": "blocked", "succeeded": "succeeded",
          "failed": "failed", "cancelled": "cancelled"}  # fmt: skip


def shown_status(stored: str, last_outcome: str | None) -> JobStatus:
    """The contract's status of a job stored as `stored` whose latest attempt ended `last_outcome`."""
    if stored == "retrying":
        return "deferred" if last_outcome == DEFERRED else "retrying"
    shown = _SHOWN.get(stored)
    if shown is None:
        raise ValueError(f"unknown job status {stored!r}")
    return shown  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True, slots=True)
class JobFilter:
    """What `GET /api/v1/jobs` and the dashboard's job list ask for, in the table's terms (None: any)."""

    status: str | None = None
    deferred: bool | None = None  # for a stored 'retrying': waiting (True) or failed (False)
    function: str | None = None
    deposit_id: uuid.UUID | None = None
    intent_id: uuid.UUID | None = None
    queue: Queue | None = None
    since: datetime | None = None  # enqueued at or after
    until: datetime | None = None  # enqueued before
    search: str | None = None  # a substring of the job's id or of its deposit's id


def job_filter(
    status: JobStatus | None,
    function: str | None = None,
    deposit_id: uuid.UUID | None = None,
    intent_id: uuid.UUID | None = None,
    **narrower: Any,
) -> JobFilter:
    """The filter for a shown status: the inverse of `shown_status`. `narrower`: JobFilter's queue, since,
    until and search (the dashboard's)."""
    match status:
        case None:
            stored, deferred = None, None
        case "deferred" | "retrying":
            stored, deferred = "retrying", status == "deferred"
        case "active":
            stored, deferred = "running", None
        case _:
            stored, deferred = status, None
    return JobFilter(stored, deferred, function, deposit_id, intent_id, **narrower)


@dataclasses.dataclass(frozen=True, slots=True)
class TickRun:
    """A cron tick being recorded: which, on what queue, by whom, since when."""

    job_id: str
    function: str
    queue: Queue
    worker_id: str | None
    started_at: datetime
