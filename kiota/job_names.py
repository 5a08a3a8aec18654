"""The names of the queued jobs and of the maintenance runs, written once.

Each name is stored twice outside Python: in PostgreSQL (`jobs.function`, the durable history)
and in Redis (arq's job data), and a job's id is its name and its deposit (`complete_job_id`).
So the values never change; the worker registers its functions under these names
(`jobs/worker.py`), and the services that record and enqueue jobs use them.
"""

from __future__ import annotations

from enum import StrEnum

from kiota.errors import InvalidInput


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

    @classmethod
    def parse(cls, text: str) -> list[Queue]:
        """`payouts,chain` as queues, in the enum's order, each once; an unknown name is refused (InvalidInput)."""
        names = {part.strip() for part in text.split(",") if part.strip()}
        unknown = names - {q.value for q in cls}
        if unknown or not names:
            raise InvalidInput(f"queues are one or more of {', '.join(cls)} (comma-separated), got {text!r}")
        return [q for q in cls if q.value in names]


# arq's keys: each queue is its own sorted set, `arq:queue:<name>`; the job and in-progress keys are
# shared (`arq:job:<id>`), so a job id is unique across queues. Before queues were named, every job went
# to arq's default `arq:queue`, which a worker's start-up empties into these (`jobs/worker.py`).
ARQ_QUEUE_PREFIX = "arq:queue:"

# Each job's queue, written once: the enqueues and the workers read it here.
JOB_QUEUES: dict[str, Queue] = {
    JobName.COMPLETE_MPESA_DEPOSIT: Queue.PAYOUTS,
    JobName.QUERY_MPESA_DEPOSIT: Queue.PAYOUTS,
    "lane_upkeep_tick": Queue.PAYOUTS,
    "scan_chain_tick": Queue.CHAIN,
    "sweep_tick": Queue.MAINTENANCE,
}


def queue_of(function: str) -> Queue:
    """The queue a job of `function` goes to."""
    return JOB_QUEUES[function]


ARQ_DEFAULT_QUEUE = "arq:queue"  # arq's own default: no job of ours goes there any more


def arq_queue_name(queue: Queue) -> str:
    """The Redis sorted set of `queue`'s jobs."""
    return ARQ_QUEUE_PREFIX + queue.value


def arq_queue_of(function: str) -> str:
    """The Redis sorted set a job of `function` waits in (arq's default for a function not ours)."""
    queue = JOB_QUEUES.get(function)
    return ARQ_DEFAULT_QUEUE if queue is None else arq_queue_name(queue)
