"""Prometheus metrics, read from PostgreSQL so every process reports the same truth."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from api.deps import PoolDep
from kiota.sql import load_queries

router = APIRouter(tags=["operations"])

DEPOSIT_STATUSES = ("pending", "processing", "completed", "failed", "needs_review")
JOB_STATUSES = ("queued", "running", "retrying", "blocked", "succeeded", "failed")


@router.get("/metrics", include_in_schema=False)
async def metrics(pool: PoolDep) -> Response:
    snapshot = await pool.fetchrow(load_queries().metrics_snapshot)
    assert snapshot is not None
    registry = CollectorRegistry()
    deposits = Gauge("kiota_deposits", "Deposits by status", ["kind", "status"], registry=registry)
    for status in DEPOSIT_STATUSES:
        deposits.labels("mpesa", status).set(snapshot["deposits"].get(status, 0))
    jobs = Gauge("kiota_jobs", "Jobs in the PostgreSQL history by status", ["status"], registry=registry)
    for status in JOB_STATUSES:
        jobs.labels(status).set(snapshot["jobs"].get(status, 0))
    Gauge("kiota_review_items_open", "Money or events waiting for a person", registry=registry).set(
        snapshot["open_reviews"]
    )
    Gauge("kiota_payout_kill_switch", "1 when the payout kill switch is on", registry=registry).set(
        int(snapshot["kill_switch"])
    )
    Gauge("kiota_payout_lane_paused", "1 when the payout lane is paused (alert on it)", registry=registry).set(
        int(snapshot["lane_paused"])
    )
    Gauge(
        "kiota_payouts_cancelling",
        "Payouts given up on whose nonce is not filled yet (alert if it stays above 0)",
        registry=registry,
    ).set(snapshot["payouts_cancelling"])
    Gauge("kiota_workers_live", "Workers with a heartbeat in the last 90 s", registry=registry).set(
        snapshot["live_workers"]
    )
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
