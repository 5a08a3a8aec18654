"""Stopping a worker's jobs (jobs/outages.py `cancel_jobs_until_done`) against arq's own shape of a run: `run_job`
waits for the job's task with `asyncio.wait_for`, and a cancel can be lost inside the job (redis-py's timeouts)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from arq.worker import Worker

from jobs.outages import cancel_jobs_until_done, cancel_until_done


class ArqShaped:
    """What `cancel_jobs_until_done` reads of an arq Worker: `tasks` (each job's `run_job`) and `job_tasks` (the
    job's own task, which `run_job` waits for with `wait_for` and forgets when that wait ends)."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.job_tasks: dict[str, asyncio.Task[Any]] = {}
        self.job_ended = asyncio.Event()

    def start(self, job_id: str) -> None:
        async def job() -> None:
            try:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:  # lost, as inside redis-py: the job goes on
                    pass
                await asyncio.sleep(3600)
            finally:
                self.job_ended.set()

        async def run_job() -> None:
            self.job_tasks[job_id] = task = asyncio.ensure_future(job())
            try:
                await asyncio.wait_for(task, 60)
            except asyncio.CancelledError:
                pass  # arq: "cancelled, will be run again"
            finally:
                del self.job_tasks[job_id]

        self.tasks[job_id] = asyncio.ensure_future(run_job())


async def test_a_job_that_loses_its_first_cancel_is_cancelled_again_until_it_ends() -> None:
    worker = ArqShaped()
    worker.start("j1")
    await asyncio.sleep(0.01)
    worker.tasks["j1"].cancel()  # arq's handle_sig: one cancel of each run

    await asyncio.wait_for(cancel_jobs_until_done([cast(Worker, worker)], every=0.05), 5)

    assert worker.job_ended.is_set() and worker.tasks["j1"].done()


async def test_cancelling_only_the_runs_leaves_the_job_running_alone() -> None:
    """Why the job's own task is cancelled: the runs end, and the job does not."""
    worker = ArqShaped()
    worker.start("j1")
    await asyncio.sleep(0.01)
    job = worker.job_tasks["j1"]
    worker.tasks["j1"].cancel()

    await asyncio.wait_for(cancel_until_done(list(worker.tasks.values()), every=0.05), 5)

    assert not job.done() and not worker.job_ended.is_set()
    job.cancel()  # its lost cancel is behind it: this one ends it
    await asyncio.gather(job, return_exceptions=True)
