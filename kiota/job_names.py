"""The names of the queued jobs and of the maintenance runs, written once.

Each name is stored twice outside Python: in PostgreSQL (`jobs.function`, the durable history)
and in Redis (arq's job data), and a job's id is its name and its deposit (`complete_job_id`).
So the values never change; the worker registers its functions under these names
(`jobs/worker.py`), and the services that record and enqueue jobs use them.
"""

from __future__ import annotations

from enum import StrEnum


class JobName(StrEnum):
    COMPLETE_MPESA_DEPOSIT = "complete_mpesa_deposit"  # confirm a paid deposit, then pay it out in USDC
    QUERY_MPESA_DEPOSIT = "query_mpesa_deposit"  # a callback is late: ask Daraja's STK query

    def job_id(self, key: object) -> str:
        """The job's id for what it serves (one job per deposit and name): arq refuses a second."""
        return f"{self.value}:{key}"


class MaintenanceRun(StrEnum):
    """A periodic task that any worker may run but only one at a time does, claimed by its name in
    PostgreSQL (`maintenance_runs.name`): the values never change either."""

    SCAN_CHAIN = "scan_chain"  # one ingester round (jobs/chain.py)
    REENQUEUE_ORPHANS = "reenqueue_orphans"  # the sweeper's look for work Redis lost (kiota/sweeper.py)


class Queue(StrEnum):
    """The queue a job belongs to (`jobs.queue`, CHECKed by migration 0014): the values never change."""

    PAYOUTS = "payouts"  # M-Pesa completions and STK queries
    CHAIN = "chain"  # the ingester's scan rounds
    MAINTENANCE = "maintenance"  # the sweeper
