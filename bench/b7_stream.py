"""B7 — a steady stream of M-Pesa callbacks against Base's 2-second blocks: the highest offered rate whose
callback → completed latency stays under 8 s (four blocks) at p99.

    .venv/bin/python -m bench --only B7                    one treasury (5–9 minutes on 2 cores)
    .venv/bin/python -m bench --only B7 --treasuries 4     four treasuries (TREASURY_PRIVATE_KEY=k1,k2,k3,k4)
    .venv/bin/python -m bench --only B7 --treasuries 4 --workers 2    and two `kiota worker` processes
    .venv/bin/python -m bench --only B7 --b7-rates 20,40   another ladder of offered rates (callbacks/s)

Each step of the ladder: a flushed Redis database, a fresh copy of the migrated database holding `rate × 40 s`
pending deposits (the Daraja simulator knows their pushes as paid), `kiota api` and one `kiota worker` (or N) started
as processes against an anvil with `--block-time 2`, then their success callbacks POSTed to the API at the
offered rate, open loop (each at its due time, whatever the answers before it), for 40 s. The latency of a
deposit runs from the moment its callback was sent (the harness's wall clock) to its `completed_at` in
PostgreSQL (same machine, same clock). Stragglers get 20 s after the last callback; one still not completed
then counts with its latency's lower bound (so a p99 it decides is reported as "≥"). Each step also says where
the time went: callback → M-Pesa confirmed and confirmed → completed, the deposit jobs' runs, how long their first
runs waited for a slot, and how much slot time a deposit took (the lane owners' runs apart). Achieved completions/s
are the completions between 8 s after the first callback and the stream's end (the first blocks fill the
pipeline), divided by those 32 s (16 blocks). The search starts at 20/s on the ladder 5, 10, 20, 40, 60, 100,
150/s and climbs while a step meets p99 < 8 s, or descends while it misses; the figure is the highest rate that
met it.

Baseline, same run: the same stream (same treasuries, same 40 s) on the automine anvil of the other benches
(every transaction mined as it arrives, so a lane never waits for a block; plus an empty block every 0.5 s, so
that a wait for one is never endless: automine alone stalled today's lane) at 150/s offered, above what one
worker completes on this machine: its achieved rate is the worker's ceiling without block waits, and the
figure's ratio says how much of it survives 2-second blocks.

Several treasuries: N funded keys go to the worker comma-separated in TREASURY_PRIVATE_KEY. Code that takes
one key only refuses that at start-up; B7 then reports "not supported by this code" instead of a figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import math
import os
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
from eth_account import Account

from bench import procstat
from bench.callbacks import AMOUNT_KES, success_callback
from bench.loadgen import HEADERS, percentile
from bench.model import Result, Row, ratio
from bench.system import (
    CALLBACK_PATH,
    Child,
    Stack,
    bench_pool,
    flush_redis,
    fund_treasuries,
    insert_pending,
    kiota_api,
    kiota_workers,
    make_users,
)
from kiota.dev.chain import BASE_USDC_ADDRESS, connect, install_usdc, start_anvil
from kiota.job_names import JobName
from tests.support import TREASURY_KEY, free_port

RATES = (5, 10, 20, 40, 60, 100, 150)  # offered callbacks/s: the ladder searched
START_RATE = 20  # the search starts here: up while a rate passes, down while it fails
BLOCK_TIME_S = 2
DURATION_S = 40.0
STEADY_FROM_S = 8.0  # achieved completions/s are counted from here to the stream's end
DRAIN_S = 20.0  # after the last callback, the stragglers get this long
P99_LIMIT_S = 8.0  # four blocks
AUTOMINE_RATE = 150
GOALS = {1: 40.0, 4: 100.0}  # issue 14: deposits/s by treasury count
HEARTBEAT_S = 0.5  # the automine baseline: an empty block this often, so that no wait for a block is endless
CONNECTIONS = 128  # the harness's keep-alive connections to the API (open loop: a late answer blocks nothing)

_OUTCOMES = """
SELECT d.id, d.status, extract(epoch FROM d.processing_since) AS ingested,
       extract(epoch FROM d.confirmed_at) AS confirmed, extract(epoch FROM d.completed_at) AS done
FROM deposits d
"""
# The deposits' jobs: where a deposit's time goes when the job stage, not the lanes, backs up.
_JOBS = """
SELECT count(*) AS jobs, coalesce(sum(j.runs), 0) AS runs,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM j.first_run_at - j.enqueued_at)) AS wait_p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM j.first_run_at - j.enqueued_at)) AS wait_p99,
       a.busy_s, a.first_runs_s, a.owners_s, a.owners
FROM jobs j,
     LATERAL (SELECT coalesce(extract(epoch FROM sum(t.duration)), 0) AS busy_s,
                     coalesce(extract(epoch FROM sum(t.duration) FILTER (WHERE t.attempt = 1)), 0) AS first_runs_s,
                     coalesce(extract(epoch FROM sum(t.duration) FILTER (WHERE t.duration > $2)), 0) AS owners_s,
                     count(*) FILTER (WHERE t.duration > $2) AS owners
              FROM job_attempts t JOIN jobs k ON k.id = t.job_id WHERE k.function = $1) a
WHERE j.function = $1
GROUP BY a.busy_s, a.first_runs_s, a.owners_s, a.owners
"""
# A run that held its slot longer than this owned a lane (it signs for `LaneConfig.drain_seconds`).
OWNER_RUN = datetime.timedelta(seconds=2)
# Payouts per block and treasury: how full each lane's blocks were.
_LANE_BLOCKS = """
SELECT from_address, sum(n) AS payouts, count(*) AS blocks,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY n) AS median_per_block, max(n) AS max_per_block
FROM (SELECT from_address, block_number, count(*) AS n FROM payouts
      WHERE status = 'confirmed' AND purpose = 'deposit' GROUP BY from_address, block_number) per_block
GROUP BY from_address ORDER BY from_address
"""


def treasury_keys(count: int) -> tuple[str, ...]:
    """The tests' treasury first, then keys of our own (random-looking, so none is a test deposit address)."""
    extra = ("0x" + hashlib.sha256(f"kiota bench treasury {i}".encode()).hexdigest() for i in range(2, count + 1))
    return (TREASURY_KEY, *extra)


class NotSupported(Exception):
    """The code under test refused the worker's configuration (several treasury keys)."""


@dataclass
class StreamRun:
    chain: str
    offered: float
    count: int
    ok: int
    statuses: dict[str, int]
    achieved: float
    completed: int
    p50_s: float
    p99_s: float
    p99_lower_bound: bool  # the p99 rank fell on a deposit not completed by the cut-off
    max_s: float
    ingest_p50_ms: float
    deposit_statuses: dict[str, int]
    lanes: list[dict[str, Any]]
    cpu: str
    stages: str  # where the time went: confirmation, payout, and the deposits' jobs

    @property
    def passed(self) -> bool:
        return self.ok == self.count and not self.p99_lower_bound and self.p99_s < P99_LIMIT_S

    def p99_text(self) -> str:
        return f"{'≥ ' if self.p99_lower_bound else ''}{self.p99_s:.1f} s"

    def describe(self) -> str:
        refused = {k: v for k, v in self.statuses.items() if k != "200"}
        lanes = "; ".join(
            f"{lane['from_address'][:8]}…: {lane['payouts']} payouts in {lane['blocks']} blocks "
            f"(median {lane['median_per_block']:.0f}, max {lane['max_per_block']} per block)"
            for lane in self.lanes
        )
        return (
            f"{self.chain}, {self.offered:g}/s offered for {DURATION_S:.0f} s ({self.count} callbacks"
            f"{f', refused {refused}' if refused else ''}): achieved {self.achieved:.1f}/s; callback → completed "
            f"p50 {self.p50_s:.2f} s, p99 {self.p99_text()}, max {'≥ ' if self.completed < self.count else ''}"
            f"{self.max_s:.1f} s; {self.completed} of {self.count} completed by {DRAIN_S:.0f} s after the last "
            f"callback {self.deposit_statuses}; callback → processing committed p50 {self.ingest_p50_ms:.0f} ms; "
            f"lanes: {lanes or 'none'}; {self.stages}; CPU in cores during the stream: {self.cpu}. "
            f"{'PASS' if self.passed else 'FAIL'} (p99 < {P99_LIMIT_S:.0f} s)."
        )


async def _send_stream(
    url: str, bodies: list[bytes], rate: float, alive: Sequence[Any]
) -> tuple[list[float], Counter[str]]:
    """POST body i at first + i / rate (open loop); returns each one's wall-clock send time and the answers."""
    sent = [math.nan] * len(bodies)
    statuses: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(i: int) -> None:
            sent[i] = time.time()
            try:
                async with session.post(url, data=bodies[i], headers=HEADERS) as answer:
                    await answer.read()
                    statuses[str(answer.status)] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                statuses[type(exc).__name__] += 1

        tasks: list[asyncio.Task[None]] = []
        start = time.monotonic()
        checked = start
        for i in range(len(bodies)):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
            if time.monotonic() - checked > 1.0:
                checked = time.monotonic()
                for check in alive:
                    check()
        await asyncio.gather(*tasks)
    return sent, statuses


async def _measure(
    pool: asyncpg.Pool, url: str, bodies: list[bytes], rate: float, api: Child, workers: list[Child]
) -> tuple[list[float], Counter[str], float, str]:
    """The stream, then the stragglers' wait: send times, answers, the cut-off (wall clock) and CPU by role."""
    before = procstat.snapshot()
    started = time.perf_counter()
    alive = (api.check_alive, *(worker.check_alive for worker in workers))
    sent, statuses = await _send_stream(url + CALLBACK_PATH, bodies, rate, alive)
    cutoff = max(sent) + DRAIN_S
    while time.time() < cutoff:
        if await pool.fetchval("SELECT count(*) FROM deposits WHERE status = 'completed'") >= len(bodies):
            break
        for check in alive:
            check()
        await asyncio.sleep(0.2)
    cut = min(time.time(), cutoff)
    wall = time.perf_counter() - started
    roles = {api.pid: "api", os.getpid(): "harness", **{worker.pid: "worker" for worker in workers}}
    spent = procstat.cpu_by_role(before, procstat.snapshot(), roles)
    return sent, statuses, cut, procstat.cores(spent, wall, ("api", "worker", "postgres", "anvil", "redis", "harness"))


@contextlib.asynccontextmanager
async def _heartbeat(rpc_url: str | None) -> AsyncIterator[None]:
    """With an automine anvil: an empty block every HEARTBEAT_S while the stream runs. Automine makes a block
    only when a transaction arrives, so a lane that waits for one (a confirmation, a transaction anvil holds in
    its pool) would wait until the next payout, which it may be the one to send: seen on 10de8b7, the lane
    stalled for 40 s, to the end of the run, with its 20 newest transactions in anvil's pool ("already imported"
    when re-sent)."""
    if rpc_url is None:
        yield
        return

    async def beat() -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                await asyncio.sleep(HEARTBEAT_S)
                request = {"jsonrpc": "2.0", "id": 1, "method": "evm_mine", "params": []}
                async with session.post(rpc_url, json=request) as answer:
                    await answer.read()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # a heartbeat that failed raises its error here


async def _stream(
    stack: Stack, chain: str, rate: float, suffix: str, heartbeat: bool = False, workers: int = 1
) -> StreamRun:
    count = round(rate * DURATION_S)
    async with stack.database(suffix) as dsn:
        pool = await bench_pool(dsn)
        try:
            users = await make_users(pool, 16)
            # A step that missed leaves its jobs queued: the next step's worker must not inherit them.
            await flush_redis(stack.redis_url)
            prefix = f"B7{suffix.upper().replace('_', '')}X{stack.tag}"
            deposits = await insert_pending(pool, users, prefix, count, AMOUNT_KES, simulator=stack.simulator)
            bodies = [success_callback(d.checkout_request_id, d.amount_kes, d.receipt) for d in deposits]
            started_worker = False
            try:
                async with kiota_api(stack, dsn) as (api, url), kiota_workers(stack, dsn, pool, workers) as children:
                    started_worker = True
                    async with _heartbeat(stack.anvil.rpc_url if heartbeat else None):
                        sent, statuses, cut, cpu = await _measure(pool, url, bodies, rate, api, children)
            except RuntimeError as exc:
                if not started_worker and len(stack.treasury_keys) > 1 and "TREASURY_PRIVATE_KEY" in str(exc):
                    raise NotSupported(str(exc).rsplit("\n", 1)[-1].strip()) from exc
                raise
            rows = {row["id"]: row for row in await pool.fetch(_OUTCOMES)}
            lanes = [dict(row) for row in await pool.fetch(_LANE_BLOCKS)]
            jobs = await pool.fetchrow(_JOBS, JobName.COMPLETE_MPESA_DEPOSIT.value, OWNER_RUN)
        finally:
            await pool.close()

    first = min(sent)
    latencies: list[float] = []
    ingests: list[float] = []
    completions: list[float] = []
    for deposit, at in zip(deposits, sent, strict=True):
        row = rows[deposit.id]
        if row["done"] is not None:
            latencies.append(float(row["done"]) - at)
            completions.append(float(row["done"]))
        else:
            latencies.append(cut - at)  # a lower bound: not completed by the cut-off
        if row["ingested"] is not None:
            ingests.append((float(row["ingested"]) - at) * 1000)
    ordered = sorted(latencies)
    p99 = percentile(ordered, 99)
    censored = sorted(cut - at for d, at in zip(deposits, sent, strict=True) if rows[d.id]["done"] is None)
    steady = sum(1 for t in completions if first + STEADY_FROM_S <= t <= first + DURATION_S)
    to_confirmed = sorted(
        float(rows[d.id]["confirmed"]) - at for d, at in zip(deposits, sent, strict=True) if rows[d.id]["confirmed"]
    )
    to_paid = sorted(
        float(row["done"]) - float(row["confirmed"]) for row in rows.values() if row["done"] and row["confirmed"]
    )
    return StreamRun(
        chain=chain,
        offered=rate,
        count=count,
        ok=statuses.get("200", 0),
        statuses=dict(statuses),
        achieved=steady / (DURATION_S - STEADY_FROM_S),
        completed=len(completions),
        p50_s=percentile(ordered, 50),
        p99_s=p99,
        p99_lower_bound=bool(censored) and p99 >= censored[0],
        max_s=ordered[-1],
        ingest_p50_ms=statistics.median(ingests) if ingests else math.nan,
        deposit_statuses=dict(Counter(str(row["status"]) for row in rows.values())),
        lanes=lanes,
        cpu=cpu,
        stages=_stages(to_confirmed, to_paid, jobs),
    )


def _stages(to_confirmed: list[float], to_paid: list[float], jobs: asyncpg.Record | None) -> str:
    """Callback → M-Pesa confirmed, confirmed → completed (both sorted, in s), and the deposits' jobs' runs."""

    def spread(values: list[float]) -> str:
        return f"p50 {percentile(values, 50):.2f} s, p99 {percentile(values, 99):.2f} s" if values else "none"

    text = f"callback → M-Pesa confirmed {spread(to_confirmed)}; confirmed → completed {spread(to_paid)}"
    if jobs is None or not jobs["jobs"]:
        return text
    return (
        f"{text}; deposit jobs: {jobs['runs']} runs for {jobs['jobs']}, first run {jobs['wait_p50'] or 0:.2f} s "
        f"(p50) / {jobs['wait_p99'] or 0:.2f} s (p99) after enqueue; job slot per deposit "
        f"{float(jobs['busy_s']) / jobs['jobs']:.3f} s: first runs {float(jobs['first_runs_s']) / jobs['jobs']:.3f} s "
        "(the owners' among them), "
        f"{jobs['owners']} runs that owned a lane (> {OWNER_RUN.total_seconds():g} s) "
        f"{float(jobs['owners_s']) / jobs['jobs']:.3f} s"
    )


@contextlib.asynccontextmanager
async def _block_time_chain(stack: Stack, keys: tuple[str, ...]) -> AsyncIterator[Stack]:
    """The stack with its own anvil mining a block every 2 s, USDC installed and every treasury funded."""
    log = stack.run_dir / "anvil-block-time.log"
    addresses = [Account.from_key(key).address for key in keys]
    async with start_anvil(free_port(), block_time=BLOCK_TIME_S, log_path=log) as node, connect(node.rpc_url) as w3:
        await install_usdc(w3, BASE_USDC_ADDRESS)
        await fund_treasuries(w3, addresses)
        yield dataclasses.replace(stack, anvil=node, anvil_log=log, treasury_address=addresses[0], treasury_keys=keys)


async def _fund_on_automine(stack: Stack, keys: tuple[str, ...]) -> Stack:
    extra = [Account.from_key(key).address for key in keys if key not in stack.treasury_keys]
    if extra:
        async with connect(stack.anvil.rpc_url) as w3:
            await fund_treasuries(w3, extra)
    return dataclasses.replace(stack, treasury_keys=keys)


def _search(rates: Sequence[float], runs: list[StreamRun]) -> Iterator[float]:
    """The offered rates to try, given the runs so far (appended by the caller between steps): from the first
    rate at or above START_RATE, up while each passes, or down while each fails; so the answer is the highest
    passing rate below the lowest failing one."""
    ladder = sorted(set(rates))
    index = next((i for i, rate in enumerate(ladder) if rate >= START_RATE), len(ladder) - 1)
    yield ladder[index]
    step = 1 if runs[-1].passed else -1
    index += step
    while 0 <= index < len(ladder) and runs[-1].passed == (step == 1):
        yield ladder[index]
        index += step


def _label(treasuries: int, workers: int = 1) -> str:
    label = f"{treasuries} treasur{'y' if treasuries == 1 else 'ies'}"
    return label if workers == 1 else f"{label}, {workers} worker processes"


async def run_b7(stack: Stack, treasuries: int, rates: Sequence[float] = RATES, workers: int = 1) -> Result:
    name = ("B7" if treasuries == 1 else f"B7x{treasuries}") + ("" if workers == 1 else f"w{workers}")
    label = _label(treasuries, workers)
    result = Result(name, f"a steady callback stream on 2-second blocks, {label}")
    keys = treasury_keys(treasuries)
    goal = GOALS.get(treasuries)
    goal_text = f"≥ {goal:.0f}/s" if goal else ""
    what = f"highest offered rate with callback → completed p99 < {P99_LIMIT_S:.0f} s, anvil --block-time 2, {label}"
    runs: list[StreamRun] = []
    try:
        async with _block_time_chain(stack, keys) as chain:
            for rate in _search(rates, runs):
                if runs:  # what the last step's worker left in the mempool is mined before the next one signs
                    await asyncio.sleep(2 * BLOCK_TIME_S)
                print(f"bench: B7 {label}, --block-time {BLOCK_TIME_S}, {rate:g}/s offered …", flush=True)
                run = await _stream(chain, f"--block-time {BLOCK_TIME_S}", rate, f"b7_{round(rate)}", workers=workers)
                print(f"bench:   {run.describe()}", flush=True)
                runs.append(run)
    except NotSupported as refused:
        result.rows.append(Row("B7", what, "not supported by this code", "", None, goal_text, False))
        result.notes.append(
            f"`kiota worker` refused {treasuries} comma-separated keys in TREASURY_PRIVATE_KEY at start-up: {refused}"
        )
        return result

    print(f"bench: B7 {label}, baseline: automine, {AUTOMINE_RATE}/s offered …", flush=True)
    funded = await _fund_on_automine(stack, keys)
    automine = await _stream(funded, "automine", AUTOMINE_RATE, "b7_auto", heartbeat=True, workers=workers)
    print(f"bench:   {automine.describe()}", flush=True)

    best = max((run for run in runs if run.passed), key=lambda run: run.offered, default=None)
    failed = min((run for run in runs if not run.passed), key=lambda run: run.offered, default=None)
    baseline = f"{automine.achieved:.1f}/s achieved on automine at {AUTOMINE_RATE}/s offered"
    if best is not None:
        figure = f"{best.offered:g}/s (achieved {best.achieved:.1f}/s, p50 {best.p50_s:.1f} s, p99 {best.p99_text()})"
        result.rows.append(
            Row("B7", what, figure, baseline, ratio(best.offered, automine.achieved), goal_text,
                None if goal is None else best.offered >= goal)
        )  # fmt: skip
    else:
        result.rows.append(
            Row("B7", what, f"none (the lowest, {min(rates):g}/s, missed)", baseline, 0.0, goal_text,
                None if goal is None else False)
        )  # fmt: skip
    if failed is not None:
        result.rows.append(
            Row("B7", f"the lowest offered rate that missed, {label}", f"{failed.offered:g}/s offered: achieved "
                f"{failed.achieved:.1f}/s, p99 {failed.p99_text()}", baseline, ratio(failed.achieved,
                automine.achieved), "", None)
        )  # fmt: skip
    result.setup = (
        f"Offered rates tried: {', '.join(f'{run.offered:g}' for run in runs)}/s (ladder "
        f"{', '.join(f'{r:g}' for r in sorted(rates))}/s, from {START_RATE}/s up while p99 < {P99_LIMIT_S:.0f} s, "
        "down while not); "
        f"each a {DURATION_S:.0f}-s open-loop stream of Daraja success callbacks for pending deposits (a fresh "
        f"database each), POSTed to `kiota api`, paid by {workers} `kiota worker` "
        f"process{'' if workers == 1 else 'es'} (production settings; TREASURY_PRIVATE_KEY = {_label(treasuries)}, "
        f"each funded) on anvil --block-time {BLOCK_TIME_S}. Latency: callback "
        f"sent (harness clock) → deposits.completed_at (PostgreSQL); stragglers get {DRAIN_S:.0f} s after the "
        f"last callback, and count with a lower bound if still not completed. Achieved: completions from "
        f"{STEADY_FROM_S:.0f} s after the first callback to the stream's end ÷ {DURATION_S - STEADY_FROM_S:.0f} s. "
        f"Baseline: the same stream, same treasuries, on the automine anvil (plus an empty block every "
        f"{HEARTBEAT_S:g} s) at {AUTOMINE_RATE}/s offered (more than one worker completes here): the worker's "
        "ceiling when no payout waits for a block."
    )
    result.notes += [run.describe() for run in runs]
    result.notes.append("Baseline: " + automine.describe())
    return result
