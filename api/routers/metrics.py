"""Prometheus metrics for the whole system, whichever API process a scrape reaches.

Any admin, viewer or operator (HTTP Basic, `api.admin_auth`). Three sources, so that every process
answers with the same truth (`kiota.metrics` says why):
- states PostgreSQL knows (deposits by status, jobs by status, open review items, the guards, the
  ingester's cursor): one query, kept `SNAPSHOT_TTL_SECONDS` per process and refreshed by one request at a
  time, with the chain's head read alongside it (for `kiota_scan_lag_blocks`). However often, and however
  many at once, scrapers ask, they cost at most one query and one RPC call per process per 15 s: they
  cannot starve the pool that Safaricom's webhook needs;
- every process's events, summed in Redis (jobs, durations, callbacks, Daraja and RPC errors, fees) and
  the newest treasury balances, with each queue's depth: one Redis round trip per scrape;
- nothing of this process's own memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from api.admin_auth import AdminUser
from api.deps import ResourcesDep
from kiota import metrics as events
from kiota.chain_rpc import ChainReader
from kiota.db import Pool
from kiota.errors import ChainUnavailable
from kiota.store import metrics as store

router = APIRouter(tags=["operations"])

DEPOSIT_STATUSES = ("pending", "processing", "completed", "failed", "needs_review")
JOB_STATUSES = ("queued", "running", "retrying", "blocked", "succeeded", "failed")
SNAPSHOT_TTL_SECONDS = 15.0
HEAD_TIMEOUT_SECONDS = 2.0  # a slow node must not hold the scrape


@dataclass(frozen=True, slots=True)
class Scraped:
    """The database snapshot and the chain's head read with it (None when the node did not answer)."""

    snapshot: store.Snapshot
    head: int | None

    @property
    def scan_lag(self) -> int | None:
        """Blocks between the chain's head and the ingester's last scanned block."""
        if self.head is None or self.snapshot.next_block is None:
            return None
        return max(self.head - (self.snapshot.next_block - 1), 0)


class SnapshotCache:
    """The last database snapshot and chain head, and when they were read; one refresh at a time (per process)."""

    def __init__(self, ttl_seconds: float = SNAPSHOT_TTL_SECONDS) -> None:
        self.ttl_seconds = ttl_seconds
        self._scraped: Scraped | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self, pool: Pool, chain_id: int, chain: ChainReader) -> Scraped:
        if self._scraped is not None and time.monotonic() - self._read_at < self.ttl_seconds:
            return self._scraped
        async with self._lock:  # the scrapes waiting here take the snapshot the first one read
            if self._scraped is None or time.monotonic() - self._read_at >= self.ttl_seconds:
                started = time.monotonic()  # the data is at most as old as the query's start
                snapshot = await store.snapshot(pool, chain_id)
                self._scraped, self._read_at = Scraped(snapshot, await _head(chain)), started
            return self._scraped


async def _head(chain: ChainReader) -> int | None:
    try:
        async with asyncio.timeout(HEAD_TIMEOUT_SECONDS):
            return await chain.head()
    except (ChainUnavailable, TimeoutError):  # the lag is left out; kiota_rpc_errors_total says why
        return None


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def database_families(scraped: Scraped) -> Iterator[Metric]:
    snapshot = scraped.snapshot
    deposits = GaugeMetricFamily("kiota_deposits", "Deposits by status", labels=["kind", "status"])
    for status in DEPOSIT_STATUSES:
        deposits.add_metric(["mpesa", status], snapshot.deposits.get(status, 0))
    yield deposits
    jobs = GaugeMetricFamily("kiota_job_states", "Jobs in the PostgreSQL history by status", labels=["status"])
    for status in JOB_STATUSES:
        jobs.add_metric([status], snapshot.jobs.get(status, 0))
    yield jobs
    yield _gauge("kiota_review_items_open", "Money or events waiting for a person", snapshot.open_reviews)
    yield _gauge("kiota_payout_kill_switch", "1 when the payout kill switch is on", int(snapshot.kill_switch))
    yield _gauge(
        "kiota_payout_lane_paused",
        "1 when a payout lane is paused: all of them, or one treasury's (alert on it)",
        int(snapshot.lane_paused),
    )
    lanes = GaugeMetricFamily(
        "kiota_treasury_lane_paused",
        "1 when this treasury's payout lane is paused (its shortfall)",
        labels=["treasury"],
    )
    for address, paused in sorted(snapshot.treasury_lanes.items()):
        lanes.add_metric([address], int(paused))
    yield lanes
    yield _gauge(
        "kiota_payouts_cancelling",
        "Payouts given up on whose nonce is not filled yet (alert if it stays above 0)",
        snapshot.payouts_cancelling,
    )
    yield _gauge(
        "kiota_payouts_too_large",
        "Deposits blocked as larger than every running treasury's free USDC (alert: top up one treasury)",
        snapshot.payouts_too_large,
    )
    yield _gauge("kiota_workers_live", "Workers with a heartbeat in the last 90 s", snapshot.live_workers)
    lag = GaugeMetricFamily(
        "kiota_scan_lag_blocks", "The chain's head minus the ingester's last scanned block (absent: the node is down)"
    )
    if scraped.scan_lag is not None:
        lag.add_metric([], scraped.scan_lag)
    yield lag


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: hashed by identity, as the registry needs
class _Families:
    """A collector of families already built: the registry renders them once."""

    families: list[Metric]

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


@router.get("/metrics", include_in_schema=False)
async def metrics(resources: ResourcesDep, admin: AdminUser) -> Response:
    scraped = await resources.metrics_cache.get(resources.pool, resources.settings.base_chain_id, resources.chain)
    read = await events.read(resources.queue)
    depth = GaugeMetricFamily("kiota_queue_depth", "Jobs waiting in each queue (arq's sorted set)", labels=["queue"])
    for queue, waiting in read.depths.items():
        depth.add_metric([queue], waiting)
    families = [*database_families(scraped), depth, *events.render_events(read.sums, read.last)]
    registry = CollectorRegistry(auto_describe=False)
    collector: Collector = _Families(families)
    registry.register(collector)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
