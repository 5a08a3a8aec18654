"""B1 — callback ingest: requests/s and latency of distinct valid success callbacks, vs a bare endpoint.

Every callback names its own pending deposit (created beforehand in one SQL statement), so each
one is applied for real: the raw callback stored, the deposit moved to processing, a journal
entry booked, a job row written, all in one transaction; then the job is enqueued in Redis.
The worker is OFF: the jobs stay in Redis and no payout competes for the CPU.

Both servers run as separate uvicorn processes, the load generator in a third; the bare
endpoint is measured before and after Kiota, and the baseline is their mean.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.callbacks import AMOUNT_KES
from bench.model import Result, Row, ratio
from bench.system import (
    CALLBACK_PATH,
    REPO,
    Stack,
    bare_api,
    bench_pool,
    insert_pending,
    kiota_api,
    last_error,
    make_users,
    py_spy,
    show,
    xact_commits,
)

GOAL_RATIO = 0.4
GOAL_P99_MS = 50.0


@dataclass(frozen=True)
class B1Size:
    count: int  # measured callbacks of the closed-loop run
    bare_count: int  # measured requests of each bare closed-loop run (it is ~20 times faster)
    warmup: int
    concurrency: int
    serial_count: int  # measured requests of the one-connection run (service time)
    serial_warmup: int
    deadline_s: float  # per load-generator run


async def loadgen(
    stack: Stack, url: str, label: str, prefix: str, *, start: int, count: int, warmup: int, concurrency: int,
    deadline: float, roles: dict[int, str],
) -> dict[str, Any]:  # fmt: skip
    args = [
        "--url", url, "--label", label, "--prefix", prefix, "--amount", str(AMOUNT_KES),
        "--start", str(start), "--count", str(count), "--warmup", str(warmup),
        "--concurrency", str(concurrency), "--deadline", str(deadline),
        *(f"--role={pid}={role}" for pid, role in roles.items()),
    ]  # fmt: skip
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.loadgen", *args, env=env, cwd=stack.run_dir,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), deadline + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"the load generator failed ({proc.returncode}): {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    return result


def _line(run: dict[str, Any]) -> str:
    extra = f", unsent {run['unsent']}" if run["unsent"] else ""
    bad = {k: v for k, v in run["statuses"].items() if k != "200"}
    return (
        f"{run['rps']:.0f} req/s, p50 {run['p50_ms']:.1f} ms, p90 {run['p90_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms, "
        f"max {run['max_ms']:.1f} ms ({run['ok']} × 200{', other: ' + str(bad) if bad else ''}{extra})"
    )


def _per_request(run: dict[str, Any]) -> str:
    spent = run["cpu_s"]
    parts = [f"{role} {spent[role] / max(run['ok'], 1) * 1000:.3f}" for role in ("api", "postgres", "loadgen")
             if spent.get(role)]  # fmt: skip
    return ", ".join(parts) + " ms"


def _cores(run: dict[str, Any]) -> str:
    from bench.procstat import cores

    return cores(run["cpu_s"], run["wall_s"], ("api", "postgres", "loadgen", "redis"))


async def run_b1(stack: Stack, size: B1Size, profile_dir: Path | None) -> Result:
    result = Result("B1", "callback ingest (kiota api process ← load generator process)")
    closed, serial = size.warmup + size.count, size.serial_warmup + size.serial_count
    prefix = f"B1X{stack.tag}"
    async with stack.database("b1") as dsn:
        pool = await bench_pool(dsn)
        try:
            users = await make_users(pool, 8)
            await insert_pending(pool, users, prefix, closed + serial, AMOUNT_KES)
            settings = {name: await show(pool, name) for name in ("synchronous_commit", "fsync", "wal_sync_method")}
            print(f"B1: SHOW synchronous_commit on the app's database → {settings['synchronous_commit']}", flush=True)

            def common(start: int, serial_run: bool, bare: bool = False) -> dict[str, Any]:
                return {
                    "start": start,
                    "count": size.serial_count if serial_run else (size.bare_count if bare else size.count),
                    "warmup": size.serial_warmup if serial_run else size.warmup,
                    "concurrency": 1 if serial_run else size.concurrency,
                    "deadline": size.deadline_s,
                }

            async with bare_api(stack) as (bare, url):
                roles = {bare.pid: "api"}
                bare_first = await loadgen(stack, f"{url}/echo", "bare", prefix, roles=roles, **common(0, False, True))
                bare_serial = await loadgen(stack, f"{url}/echo", "bare", prefix, roles=roles, **common(0, True))
            commits_before = await xact_commits(dsn)
            profile = profile_dir / "b1-kiota-api.txt" if profile_dir else None
            async with kiota_api(stack, dsn) as (api, url):
                roles = {api.pid: "api"}
                async with py_spy(api.pid, profile):
                    kiota = await loadgen(stack, url + CALLBACK_PATH, "kiota", prefix, roles=roles, **common(0, False))
                kiota_serial = await loadgen(
                    stack, url + CALLBACK_PATH, "kiota", prefix, roles=roles, **common(closed, True)
                )
            await asyncio.sleep(0.5)  # the API's backends have exited and flushed their statistics
            commits = await xact_commits(dsn) - commits_before
            async with bare_api(stack) as (bare, url):
                bare_second = await loadgen(
                    stack, f"{url}/echo", "bare", prefix, roles={bare.pid: "api"}, **common(0, False, True)
                )
            applied = await pool.fetchval("SELECT count(*) FROM deposits WHERE status = 'processing'")
            entries = await pool.fetchval("SELECT count(*) FROM journal_entries WHERE kind = 'mpesa_received'")
            redis = Redis.from_url(stack.redis_url)
            try:
                queued = await redis.zcard("arq:queue")
                await redis.flushdb()
            finally:
                await redis.aclose()
        finally:
            await pool.close()

    for run, child_log in ((kiota, "kiota-api.log"), (kiota_serial, "kiota-api.log"), (bare_first, "bare-api.log")):
        if run["ok"] != run["sent"] or run["unsent"]:
            raise RuntimeError(
                f"B1: {run['url_kind']} answered {run['statuses']} ({run['unsent']} unsent): not a measurement; "
                f"last error in {child_log}: {last_error(stack.run_dir / child_log)}"
            )
    base_rps = (bare_first["rps"] + bare_second["rps"]) / 2
    share = ratio(kiota["rps"], base_rps)
    met = share is not None and share >= GOAL_RATIO and kiota["p99_ms"] < GOAL_P99_MS
    c = size.concurrency
    result.rows += [
        Row("B1", f"callbacks/s, {c} connections", f"{kiota['rps']:.0f}/s", f"{base_rps:.0f}/s bare", share,
            f"≥ {GOAL_RATIO} of bare", met),
        Row("B1", f"callback latency p50 / p99, {c} connections",
            f"{kiota['p50_ms']:.1f} / {kiota['p99_ms']:.1f} ms",
            f"{(bare_first['p50_ms'] + bare_second['p50_ms']) / 2:.1f} / "
            f"{(bare_first['p99_ms'] + bare_second['p99_ms']) / 2:.1f} ms bare",
            None, f"p99 < {GOAL_P99_MS:.0f} ms", kiota["p99_ms"] < GOAL_P99_MS),
        Row("B1", "callback latency p50 / p99, 1 connection (service time; ratio = Kiota p50 ÷ bare p50)",
            f"{kiota_serial['p50_ms']:.1f} / {kiota_serial['p99_ms']:.1f} ms",
            f"{bare_serial['p50_ms']:.1f} / {bare_serial['p99_ms']:.1f} ms bare",
            ratio(kiota_serial["p50_ms"], bare_serial["p50_ms"]), "", None),
    ]  # fmt: skip
    total = closed + serial
    result.setup = (
        f"{size.count} measured callbacks (+{size.warmup} warm-up) over {c} keep-alive connections, then "
        f"{size.serial_count} (+{size.serial_warmup}) over one; each for its own pending deposit. The bare endpoint "
        f"gets the same bodies, {size.bare_count} requests per run, once before and once after Kiota. "
        f"PostgreSQL: synchronous_commit={settings['synchronous_commit']} (SHOW on the app's database), "
        f"fsync={settings['fsync']}, wal_sync_method={settings['wal_sync_method']}. Worker OFF: the jobs stay "
        "queued in Redis, so no payout competes."
    )
    result.notes += [
        f"Kiota, {c} connections: {_line(kiota)}. CPU in cores: {_cores(kiota)}.",
        f"Bare before: {_line(bare_first)}. CPU: {_cores(bare_first)}. (At ~1 core each, the bare server and the "
        "load generator limit this baseline together: a faster client would raise it, so the ratio is if anything "
        "generous to Kiota.)",
        f"Bare after: {_line(bare_second)}. CPU: {_cores(bare_second)}.",
        f"One connection: Kiota {_line(kiota_serial)}; bare {_line(bare_serial)}.",
        f"CPU per request, {c} connections (less noisy than rates on a shared machine): Kiota {_per_request(kiota)}; "
        f"bare {_per_request(bare_first)} before, {_per_request(bare_second)} after.",
        f"Closed loop: latency ≈ connections ÷ throughput (Little's law): {c} ÷ {kiota['rps']:.0f}/s = "
        f"{c / kiota['rps'] * 1000:.0f} ms mean, vs {kiota_serial['p50_ms']:.1f} ms of service time on one "
        "connection; the rest is queueing for the API's one event loop and for the group being committed.",
        f"Applied for real: {applied} of {total} deposits in processing, {entries} journal entries, "
        f"{queued} jobs queued in Redis (worker off); ≈{commits / max(total, 1):.2f} PostgreSQL commits per "
        "callback (pg_stat_database xact_commit: a group of callbacks is two, its read and its apply, so "
        f"≈{2 * total / max(commits, 1):.1f} callbacks per group on average, the one-connection run's groups "
        "of one included).",
    ]
    return result
