"""The job statuses the API shows, from the table's, and the filter each asks for; the jobs' own log lines."""

from __future__ import annotations

import uuid

import pytest

from kiota.job_view import JOB_STATUSES, JobFilter, job_filter, shown_status
from kiota.logging import JobLogs

DEPOSIT = uuid.UUID(int=7)


@pytest.mark.parametrize(
    ("stored", "last_outcome", "shown"),
    [
        ("queued", None, "queued"),
        ("queued", "failed", "queued"),  # an operator's retry
        ("running", None, "active"),
        ("running", "deferred", "active"),
        ("retrying", "deferred", "deferred"),  # it waits: no failure
        ("retrying", "failed", "retrying"),
        ("retrying", None, "retrying"),
        ("blocked", "blocked", "blocked"),
        ("succeeded", "succeeded", "succeeded"),
        ("failed", "failed", "failed"),
        ("cancelled", None, "cancelled"),
    ],
)
def test_the_shown_status(stored: str, last_outcome: str | None, shown: str) -> None:
    assert shown_status(stored, last_outcome) == shown


def test_an_unknown_stored_status_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValueError, match="paused"):
        shown_status("paused", None)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, JobFilter(None, None, "f", DEPOSIT, None)),
        ("queued", JobFilter("queued", None, "f", DEPOSIT, None)),
        ("active", JobFilter("running", None, "f", DEPOSIT, None)),
        ("deferred", JobFilter("retrying", True, "f", DEPOSIT, None)),
        ("retrying", JobFilter("retrying", False, "f", DEPOSIT, None)),
        ("blocked", JobFilter("blocked", None, "f", DEPOSIT, None)),
        ("succeeded", JobFilter("succeeded", None, "f", DEPOSIT, None)),
        ("failed", JobFilter("failed", None, "f", DEPOSIT, None)),
        ("cancelled", JobFilter("cancelled", None, "f", DEPOSIT, None)),
    ],
)
def test_the_filter_for_a_shown_status(status: str | None, expected: JobFilter) -> None:
    assert job_filter(status, "f", DEPOSIT) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("shown", JOB_STATUSES)
def test_a_filter_finds_what_it_shows(shown: str) -> None:
    """The filter is the inverse of the mapping: a row it selects shows the status asked for."""
    found = job_filter(shown)  # type: ignore[arg-type]
    assert found.status is not None
    last_outcome = {True: "deferred", False: "failed", None: None}[found.deferred]
    assert shown_status(found.status, last_outcome) == shown


def test_a_jobs_lines_are_its_own_info_and_above_bounded_and_taken_once() -> None:
    logs = JobLogs(per_job=3, jobs=2)
    logs(None, "info", {"event": "a", "level": "debug", "job_id": "j1"})
    for n in range(5):
        logs(None, "info", {"event": f"line {n}", "level": "info", "job_id": "j1", "job_try": 1, "amount": n})
    logs(None, "info", {"event": "no job", "level": "info"})
    logs(None, "error", {"event": "GET /api/v1/deposit/mpesa-callback/s3cret failed", "level": "error", "job_id": "j2"})
    assert logs.take("j1") == [
        {"event": f"line {n}", "level": "info", "amount": n} for n in (2, 3, 4)
    ]  # the newest, without the ids
    assert logs.take("j1") == []
    assert logs.take("j2") == [{"event": "GET /api/v1/deposit/mpesa-callback/[redacted]", "level": "error"}]


def test_jobs_that_never_end_do_not_keep_their_lines_forever() -> None:
    logs = JobLogs(per_job=3, jobs=2)
    for job_id in ("j1", "j2", "j3"):
        logs(None, "info", {"event": "x", "level": "warning", "job_id": job_id})
    assert logs.take("j1") == [] and logs.take("j3") != []
