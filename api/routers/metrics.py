"""Prometheus metrics, read from PostgreSQL so every process reports the same truth.

Any admin, viewer or operator (HTTP Basic, `api.admin_auth`). The database snapshot is kept for `SNAPSHOT_TTL_SECONDS`
per process and refreshed by one request at a time, so however often (and however many at once)
scrapers ask, they cost at most one query per process per 15 s: they cannot starve the pool that
Safaricom's webhook needs.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from api.admin_auth import AdminUser
from api.deps import PoolDep, ResourcesDep
from kiota.db import Pool
from kiota.store import metrics as store

router = APIRouter(tags=["operations"])

DEPOSIT_STATUSES = ("pending", "processing", "completed", "failed", "needs_review")
JOB_STATUSES = ("queued", "running", "retrying", "blocked", "succeeded", "failed")
SNAPSHOT_TTL_SECONDS = 15.0


class SnapshotCache:
    """The last database snapshot and when it was read; one refresh at a time (per process)."""

    def __init__(self, ttl_seconds: float = SNAPSHOT_TTL_SECONDS) -> None:
        self.ttl_seconds = ttl_seconds
        self._snapshot: store.Snapshot | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self, pool: Pool) -> store.Snapshot:
        if self._snapshot is not None and time.monotonic() - self._read_at < self.ttl_seconds:
            return self._snapshot
        async with self._lock:  # the scrapes waiting here take the snapshot the first one read
            if self._snapshot is None or time.monotonic() - self._read_at >= self.ttl_seconds:
                started = time.monotonic()  # the data is at most as old as the query's start
                self._snapshot, self._read_at = await store.snapshot(pool), started
            return self._snapshot


@router.get("/metrics", include_in_schema=False)
async def metrics(pool: PoolDep, resources: ResourcesDep, admin: AdminUser) -> Response:
    snapshot = await resources.metrics_cache.get(pool)
    registry = CollectorRegistry()
    deposits = Gauge("kiota_deposits", "Deposits by status", ["kind", "status"], registry=registry)
    for status in DEPOSIT_STATUSES:
        deposits.labels("mpesa", status).set(snapshot.deposits.get(status, 0))
    jobs = Gauge("kiota_jobs", "Jobs in the PostgreSQL history by status", ["status"], registry=registry)
    for status in JOB_STATUSES:
        jobs.labels(status).set(snapshot.jobs.get(status, 0))
    Gauge("kiota_review_items_open", "Money or events waiting for a person", registry=registry).set(
        snapshot.open_reviews
    )
    Gauge("kiota_payout_kill_switch", "1 when the payout kill switch is on", registry=registry).set(
        int(snapshot.kill_switch)
    )
    Gauge("kiota_payout_lane_paused", "1 when the payout lane is paused (alert on it)", registry=registry).set(
        int(snapshot.lane_paused)
    )
    Gauge(
        "kiota_payouts_cancelling",
        "Payouts given up on whose nonce is not filled yet (alert if it stays above 0)",
        registry=registry,
    ).set(snapshot.payouts_cancelling)
    Gauge("kiota_workers_live", "Workers with a heartbeat in the last 90 s", registry=registry).set(
        snapshot.live_workers
    )
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
