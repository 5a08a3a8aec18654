"""The baseline for B2: an arq worker whose only job does nothing, with `kiota worker`'s settings.

`python -m bench.noop_worker` reads REDIS_URL; poll delay, max jobs, timeout, serializer, hooks,
gc.freeze and logging are the ones jobs/worker.py gives the real worker. It sets `bench:noop:ready` once started.
"""

from __future__ import annotations

import os
from typing import Any

from arq.worker import Worker, func

from jobs.worker import on_job_end, on_job_start, queue_options
from kiota.logging import configure_logging
from kiota.process import freeze_what_lives_forever
from kiota.queue import redis_settings

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
        **queue_options(),
    )


if __name__ == "__main__":
    configure_logging()
    worker = build()
    freeze_what_lives_forever()  # as jobs/worker.py's run_worker does
    worker.run()
