"""Stopping a busy worker on real Redis (jobs/outages.py `supervise`, jobs/worker.py `QueueWorker`): a SIGTERM while
every slot is taken and more jobs wait."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from arq.worker import func

from jobs.outages import POSTGRES, REDIS, Outages, supervise
from jobs.worker import QueueWorker
from kiota.job_names import Queue, arq_queue_name
from kiota.queue import create_queue, deserialize_job, serialize_job


async def test_a_worker_stopped_while_starting_a_batch_starts_no_more_and_its_running_jobs_end_first(
    redis_url: str,
) -> None:
    """arq reads up to 100 waiting jobs and starts them one after the other, a few Redis round trips each. A SIGTERM
    in the middle of that went on starting the rest after the stop had counted the jobs to wait for: the process
    then closed its pool under them (B7 saw five fail with "pool is closing" at one stop)."""
    started: list[int] = []
    ended: list[int] = []
    first = asyncio.Event()

    async def slow(ctx: dict[str, Any], n: int) -> None:
        started.append(n)
        first.set()
        await asyncio.sleep(0.5)
        ended.append(n)

    queue = create_queue(redis_url)
    name = arq_queue_name(Queue.PAYOUTS)
    jobs = 100
    for n in range(jobs):
        await queue.enqueue_job("slow", n, _queue_name=name)

    async def answers() -> None:
        return None

    ctx: dict[str, Any] = {}

    def workers() -> list[QueueWorker]:
        return [
            QueueWorker(
                Queue.PAYOUTS,
                ctx=ctx,
                functions=[func(slow, name="slow")],
                redis_pool=queue,
                job_serializer=serialize_job,
                job_deserializer=deserialize_job,
                handle_signals=False,
                max_jobs=jobs,
                poll_delay=0.05,
            )
        ]

    supervisor = asyncio.create_task(supervise(workers, Outages({REDIS: answers, POSTGRES: answers}), 10))
    try:
        await asyncio.wait_for(first.wait(), 10)
        os.kill(os.getpid(), signal.SIGTERM)  # supervise's handler takes it, while the batch is being started
        await asyncio.wait_for(asyncio.shield(supervisor), 15)
        at_the_end = sorted(ended)
    finally:
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)
        waiting = await queue.zcard(name)
        await queue.aclose(close_connection_pool=True)
    assert at_the_end == sorted(started)  # before: jobs started after the stop were still running here
    assert 0 < len(started) < jobs and waiting == jobs - len(started)  # the rest left for the next worker
