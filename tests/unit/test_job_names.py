"""The queued jobs' names: written once (kiota/job_names.py), stored outside Python, registered by the worker."""

from __future__ import annotations

from jobs.worker import FUNCTIONS
from kiota.deposits import complete_job_id
from kiota.job_names import JobName, MaintenanceRun
from kiota.sweeper import query_job_id


def test_job_names_are_stored_values() -> None:
    """PostgreSQL's `jobs.function` and Redis hold these strings: they never change."""
    assert {name.value for name in JobName} == {"complete_mpesa_deposit", "query_mpesa_deposit"}
    assert complete_job_id("d1") == "complete_mpesa_deposit:d1"
    assert query_job_id("d1") == "query_mpesa_deposit:d1"
    assert {name.value for name in MaintenanceRun} == {"scan_chain", "reenqueue_orphans"}  # maintenance_runs.name


def test_the_worker_registers_each_job_under_its_name() -> None:
    """`outage_aware` puts a running job back in Redis under its function's name: it must be the registered one."""
    assert {f.name for f in FUNCTIONS} == set(JobName)
    for f in FUNCTIONS:
        assert f.coroutine.__name__ == f.name
