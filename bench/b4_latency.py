"""B4 — callback → completed latency, one deposit at a time, on an idle queue.

`kiota api` and `kiota worker` run as processes; for each pending deposit the harness POSTs
its success callback and polls PostgreSQL (every 5 ms) until the deposit is `completed`. The
database's own timestamps split each latency into phases: callback committed → job started
(queue pick-up), job started → payout row (guards, lane lock), payout row → completed (sign,
broadcast, receipt, settlement).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from bench.callbacks import AMOUNT_KES, success_callback
from bench.loadgen import percentile
from bench.model import Result, Row
from bench.system import CALLBACK_PATH, Stack, bench_pool, insert_pending, kiota_api, kiota_worker, make_users

GOAL_P50_MS = 300.0
POLL_SECONDS = 0.005
GAP_SECONDS = 0.1  # between deposits, so the queue is idle when the next callback arrives


@dataclass(frozen=True)
class B4Size:
    deposits: int
    warmup: int


_PHASES = """
SELECT d.id,
       extract(epoch FROM j.first_run_at - d.processing_since) * 1000 AS pickup_ms,
       extract(epoch FROM p.created_at - j.first_run_at) * 1000 AS to_lane_ms,
       extract(epoch FROM d.completed_at - p.created_at) * 1000 AS lane_ms
FROM deposits d JOIN jobs j ON j.deposit_id = d.id JOIN payouts p ON p.deposit_id = d.id
WHERE d.id = ANY($1::uuid[])
"""


def _median(values: list[float]) -> float:
    return percentile(sorted(values), 50)


async def run_b4(stack: Stack, size: B4Size) -> Result:
    result = Result("B4", "callback → completed latency, idle queue")
    totals: list[float] = []
    acks: list[float] = []
    async with stack.database("b4") as dsn:
        pool = await bench_pool(dsn)
        try:
            users = await make_users(pool, 4)
            count = size.warmup + size.deposits
            deposits = await insert_pending(
                pool, users, f"B4X{stack.tag}", count, AMOUNT_KES, simulator=stack.simulator
            )
            async with (
                kiota_api(stack, dsn) as (api, url),
                kiota_worker(stack, dsn, pool) as worker,
                httpx.AsyncClient(timeout=10) as http,
            ):
                for n, deposit in enumerate(deposits):
                    body = success_callback(deposit.checkout_request_id, deposit.amount_kes, deposit.receipt)
                    started = time.perf_counter()
                    answer = await http.post(
                        url + CALLBACK_PATH, content=body, headers={"content-type": "application/json"}
                    )
                    acked = time.perf_counter()
                    assert answer.status_code == 200, answer.text
                    while await pool.fetchval("SELECT status FROM deposits WHERE id = $1", deposit.id) != "completed":
                        api.check_alive()
                        worker.check_alive()
                        if time.perf_counter() - started > 10:
                            raise RuntimeError(f"deposit {deposit.id} did not complete within 10 s")
                        await asyncio.sleep(POLL_SECONDS)
                    if n >= size.warmup:
                        totals.append((time.perf_counter() - started) * 1000)
                        acks.append((acked - started) * 1000)
                    await asyncio.sleep(GAP_SECONDS)
            phases = await pool.fetch(_PHASES, [d.id for d in deposits[size.warmup :]])
        finally:
            await pool.close()

    ordered = sorted(totals)
    p50, p95 = percentile(ordered, 50), percentile(ordered, 95)
    result.rows.append(
        Row("B4", f"callback → completed, p50 / p95 over {len(totals)}", f"{p50:.0f} / {p95:.0f} ms",
            f"{percentile(sorted(acks), 50):.1f} ms callback answer (p50)", None,
            f"p50 < {GOAL_P50_MS:.0f} ms", p50 < GOAL_P50_MS)
    )  # fmt: skip
    result.setup = (
        f"{size.deposits} deposits (+{size.warmup} warm-up), one at a time, {GAP_SECONDS * 1000:.0f} ms apart; "
        f"`kiota api` and `kiota worker` as processes; completion seen by polling PostgreSQL every "
        f"{POLL_SECONDS * 1000:.0f} ms (so figures include up to that much detection delay)."
    )
    pickup = [float(r["pickup_ms"]) for r in phases]
    to_lane = [float(r["to_lane_ms"]) for r in phases]
    lane = [float(r["lane_ms"]) for r in phases]
    result.notes += [
        f"Total: min {ordered[0]:.0f}, p50 {p50:.0f}, p95 {p95:.0f}, max {ordered[-1]:.0f} ms.",
        f"Phase medians (PostgreSQL timestamps, each a transaction's start): callback committed → job started "
        f"{_median(pickup):.0f} ms (max {max(pickup):.0f}; the worker polls Redis every 50 ms); job started → "
        f"payout row {_median(to_lane):.0f} ms; payout row → completed {_median(lane):.0f} ms (max {max(lane):.0f}).",
    ]
    return result
