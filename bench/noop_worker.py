"""The baseline for B2: an arq worker whose only job does nothing, with `kiota worker`'s settings.

`python -m bench.noop_worker` reads REDIS_URL; poll delay, max jobs, timeout, serializer, hooks and
logging are the ones jobs/worker.py gives the real worker. It sets `bench:noop:ready` once started.
"""

from __future__ import annotations

import os
from typing import Any

from arq.worker import Worker, func

from jobs.worker import (
    JOB_COMPLETION_WAIT_SECONDS,
    JOB_TIMEOUT_SECONDS,
    MAX_JOBS,
    POLL_DELAY_SECONDS,
    on_job_end,
    on_job_start,
)
from kiota.logging import configure_logging
from kiota.queue import deserialize_job, redis_settings, serialize_job

READY_KEY = "bench:noop:ready"


async def noop(ctx: dict[str, Any], deposit_id: str) -> str:
    return "ok"


async def startup(ctx: dict[str, Any]) -> None:
    await ctx["redis"].set(READY_KEY, str(os.getpid()))


def build() -> Worker:
    return Worker(
        functions=[func(noop, max_tries=10_000, keep_result=0)],
        redis_settings=redis_settings(os.environ["REDIS_URL"]),
        on_startup=startup,
        on_job_start=on_job_start,
        on_job_end=on_job_end,
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
        job_timeout=JOB_TIMEOUT_SECONDS,
        poll_delay=POLL_DELAY_SECONDS,
        max_jobs=MAX_JOBS,
        job_completion_wait=JOB_COMPLETION_WAIT_SECONDS,
        keep_result=0,
    )


if __name__ == "__main__":
    configure_logging()
    build().run()
