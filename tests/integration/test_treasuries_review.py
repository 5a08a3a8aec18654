"""An adversarial review of several treasuries (issue 14): each test is a way the merge could move money
wrongly or stop a worker, found by reading it, and shows it cannot (any longer)."""

from __future__ import annotations

import pytest

from jobs.context import WorkerTuning, build_context
from kiota.queue import create_queue
from kiota.settings import WorkerSettings
from tests.support import settings_kwargs


@pytest.mark.parametrize("address", [None, "0x00000000000000000000000000000000000000aa"])
async def test_a_worker_for_maintenance_only_starts_without_any_treasury(
    database_url: str, redis_url: str, address: str | None
) -> None:
    # The settings accept a maintenance-only worker with no key and no TREASURY_ADDRESS; its context must
    # start too (the merge read settings.treasury_addresses[0], an IndexError for it).
    values = {**settings_kwargs(database_url, redis_url), "worker_queues": "maintenance", "treasury_address": address}
    settings = WorkerSettings(_env_file=None, **values)  # type: ignore[arg-type]
    queue = create_queue(redis_url)
    try:
        context = await build_context(settings, WorkerTuning(), queue, pool_size=2)
        try:
            assert context.treasury is None and context.more_treasuries == ()
            assert context.scan_config.treasuries == ((address,) if address else ())
        finally:
            await context.aclose()
    finally:
        await queue.aclose(close_connection_pool=True)
