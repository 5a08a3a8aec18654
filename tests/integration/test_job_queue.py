"""The queue edge against a real Redis: many jobs in one round trip, under arq's own rules."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from arq.worker import Worker, func

from kiota.job_history import enqueue_many
from kiota.queue import create_queue


async def noop_job(ctx: dict[str, Any], deposit_id: str) -> str:
    return deposit_id


async def test_enqueue_many_keeps_arqs_rule_and_arq_runs_its_jobs(redis_url: str) -> None:
    queue = create_queue(redis_url)
    try:
        await queue.enqueue_job("noop_job", "held", _job_id="noop_job:held")  # a job Redis holds
        await queue.set("arq:result:noop_job:done", b"x")  # a result Redis keeps
        enqueued = await enqueue_many(
            queue,
            "noop_job",
            [("noop_job:held", ("again",)), ("noop_job:done", ("again",)), ("noop_job:new", ("new",))],
        )
        assert enqueued == 1  # refused while the job or its result exists, as arq's enqueue_job does
        assert {m.decode() for m in await queue.zrange("arq:queue", 0, -1)} == {"noop_job:held", "noop_job:new"}
        ours, arqs = await queue.get("arq:job:noop_job:new"), await queue.get("arq:job:noop_job:held")
        assert ours is not None and arqs is not None
        mine, theirs = json.loads(ours), json.loads(arqs)
        assert set(mine) == set(theirs) and mine["f"] == "noop_job" and mine["a"] == ["new"] and mine["k"] == {}
        assert 0 < await queue.pttl("arq:job:noop_job:new") <= queue.expires_extra_ms
        worker = Worker(
            functions=[func(noop_job, name="noop_job")],
            redis_pool=create_queue(redis_url),
            burst=True,
            poll_delay=0,
            keep_result=60,
            job_serializer=queue.job_serializer,
            job_deserializer=queue.job_deserializer,
            handle_signals=False,
        )
        try:
            await worker.main()
        finally:
            await worker.close()
        assert worker.jobs_complete == 2 and worker.jobs_failed == 0
        assert await queue.exists("arq:result:noop_job:new")
    finally:
        await queue.aclose(close_connection_pool=True)


async def test_a_running_job_put_back_after_redis_restarted_empty_is_held_as_arq_holds_it(redis_url: str) -> None:
    from jobs.outages import RunningJob, restore_running_jobs

    queue = create_queue(redis_url)
    try:
        # Redis (flushed by the fixture) came back empty while noop_job:r was running here.
        running = {"noop_job:r": RunningJob("noop_job", ("r",), {}, score=1_000, enqueue_time_ms=900)}
        assert await restore_running_jobs(queue, running, in_progress_seconds=50) == 1
        assert 0 < await queue.pttl("arq:in-progress:noop_job:r") <= 50_000  # no other worker starts it
        assert await queue.zscore("arq:queue", "noop_job:r") == 1_000  # its place, for arq's retry arithmetic
        raw = await queue.get("arq:job:noop_job:r")
        assert raw is not None and json.loads(raw)["a"] == ["r"]
        assert await restore_running_jobs(queue, running, in_progress_seconds=50) == 1  # twice: nothing doubled
        assert await queue.zcard("arq:queue") == 1
        await queue.delete("arq:in-progress:noop_job:r")  # the run ended with a retry: arq frees the key...
        worker = Worker(
            functions=[func(noop_job, name="noop_job")],
            redis_pool=create_queue(redis_url),
            burst=True,
            poll_delay=0,
            keep_result=60,
            job_serializer=queue.job_serializer,
            job_deserializer=queue.job_deserializer,
            handle_signals=False,
        )
        try:
            await worker.main()  # ...and the job runs again from what was put back
        finally:
            await worker.close()
        assert worker.jobs_complete == 1 and worker.jobs_failed == 0
    finally:
        await queue.aclose(close_connection_pool=True)


async def test_a_worker_claims_a_job_in_one_round_trip_under_arqs_rule(redis_url: str) -> None:
    """QueueWorker's claim (jobs/worker.py `_CLAIM`) keeps arq's rule: a due, queued job not in progress anywhere
    is claimed once, marked in progress for the in-progress timeout; a deferred, a gone or a begun one is not.
    Two workers racing for the same jobs start each once."""
    from arq.worker import func as arq_func

    from jobs.worker import QueueWorker
    from kiota.job_names import Queue, arq_queue_name
    from kiota.queue import deserialize_job, serialize_job

    queue = create_queue(redis_url)
    name = arq_queue_name(Queue.PAYOUTS)

    def worker() -> QueueWorker:
        return QueueWorker(
            Queue.PAYOUTS,
            ctx={},
            functions=[arq_func(noop_job, name="noop_job")],
            redis_pool=queue,
            job_serializer=serialize_job,
            job_deserializer=deserialize_job,
            handle_signals=False,
            job_timeout=40,
        )

    first, second = worker(), worker()
    try:
        await queue.enqueue_job("noop_job", "due", _job_id="noop_job:due", _queue_name=name)
        await queue.enqueue_job("noop_job", "later", _job_id="noop_job:later", _queue_name=name, _defer_by=60)
        score = await queue.zscore(name, "noop_job:due")
        assert await first._claim("noop_job:due") == score
        assert 49_000 < await queue.pttl("arq:in-progress:noop_job:due") <= 50_000  # job_timeout + 10 s
        assert await second._claim("noop_job:due") is None  # begun by the first
        assert await first._claim("noop_job:later") is None  # not due
        assert await first._claim("noop_job:gone") is None  # not queued
        assert not await queue.exists("arq:in-progress:noop_job:later", "arq:in-progress:noop_job:gone")

        ids = [f"noop_job:race{n}" for n in range(30)]
        for job_id in ids:
            await queue.enqueue_job("noop_job", job_id, _job_id=job_id, _queue_name=name)
        claims = await asyncio.gather(*(w._claim(job_id) for job_id in ids for w in (first, second)))
        assert sum(claim is not None for claim in claims) == len(ids)
    finally:
        await queue.aclose(close_connection_pool=True)
