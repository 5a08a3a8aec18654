"""B2 — M-Pesa completions per second of one `kiota worker` process, on-chain payout included.

N deposits are brought to `processing` by the product's own ingest (`ingest_callback`, in this
process: raw callback, deposit move, journal entry and job row in one transaction), their jobs
enqueued, and only then one `kiota worker` is started; the clock runs from its start-up
heartbeat to the moment every deposit is `completed` (USDC transferred on anvil, confirmed,
credited in the ledger) and every job's run is recorded as succeeded (the lane's owner pays
other deposits before their own jobs run; those runs are part of the work).

Two baselines from the same run:
- a no-op arq job with the worker's own settings (bench/noop_worker.py), same protocol;
- a raw signed-transfer loop on the same anvil: sign (eth-account), send_raw_transaction,
  wait for the receipt, one after the other — the chain's ceiling for sequential payouts.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from eth_account import Account
from redis.asyncio import Redis
from web3.exceptions import TransactionNotFound

from bench import procstat
from bench.callbacks import AMOUNT_KES, success_callback
from bench.model import Result, Row, ratio
from bench.noop_worker import READY_KEY
from bench.rpc_client import described
from bench.system import (
    REPO,
    PendingDeposit,
    Stack,
    bench_pool,
    flush_redis,
    insert_pending,
    kiota_worker,
    make_users,
    py_spy,
    python_child,
    xact_commits,
)
from kiota.callbacks import ingest_callback
from kiota.dev.chain import BASE_USDC_ADDRESS, connect, mint_usdc
from kiota.job_history import enqueue
from kiota.job_names import JobName
from kiota.queue import create_queue
from kiota.treasury import TRANSFER_GAS_LIMIT, fees_for, transfer_calldata

GOAL_RATIO = 0.1
# anvil's well-known account 1: not the treasury, so the raw loop never touches the lane's nonces.
RAW_SENDER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
RAW_RECIPIENT = "0x000000000000000000000000000000000000bEEF"


# The lane pays in turns: the payouts of one turn are signed in one transaction (one now()).
_LANE_TURNS = """
SELECT count(*) AS turns,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY n) AS median_batch, max(n) AS max_batch,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY turn_s) AS median_turn_s, sum(turn_s) AS total_s
FROM (SELECT a.created_at, count(*) AS n, max(extract(epoch FROM p.settled_at - a.created_at)) AS turn_s
      FROM payout_attempts a JOIN payouts p ON p.id = a.payout_id
      WHERE p.status = 'confirmed' GROUP BY a.created_at) turns
"""
_LANE_WAITS = """
SELECT count(*) FILTER (WHERE p.created_at < j.first_run_at) AS before_job, count(*) AS n
FROM payouts p JOIN jobs j ON j.deposit_id = p.deposit_id
"""


@dataclass(frozen=True)
class B2Size:
    deposits: int
    noop_jobs: int
    raw_transfers: int
    deadline_s: float


@dataclass
class Measured:
    count: int
    wall_s: float
    cpu: dict[str, float]

    @property
    def rate(self) -> float:
        return self.count / self.wall_s if self.wall_s > 0 else 0.0


async def _apply_callbacks(pool: asyncpg.Pool, deposits: list[PendingDeposit]) -> list[str]:
    """The product's ingest, called directly: returns the job ids it recorded."""
    jobs: list[str] = []
    gate = asyncio.Semaphore(8)

    async def one(deposit: PendingDeposit) -> None:
        body = success_callback(deposit.checkout_request_id, deposit.amount_kes, deposit.receipt)
        async with gate:
            applied = await ingest_callback(pool, body, "127.0.0.1")
        assert applied.disposition == "succeeded" and applied.enqueue_job_id, applied
        jobs.append(applied.enqueue_job_id)

    await asyncio.gather(*(one(d) for d in deposits))
    return jobs


async def _wait(condition: Any, deadline: float, alive: Any) -> None:
    while not await condition():
        alive()
        if time.perf_counter() > deadline:
            raise RuntimeError("a B2 measurement did not finish before its deadline")
        await asyncio.sleep(0.01)


async def _payouts(stack: Stack, dsn: str, pool: asyncpg.Pool, size: B2Size, profile: Path | None) -> dict[str, Any]:
    users = await make_users(pool, 8)
    deposits = await insert_pending(
        pool, users, f"B2X{stack.tag}", size.deposits, AMOUNT_KES, simulator=stack.simulator
    )
    job_ids = await _apply_callbacks(pool, deposits)
    ids = {str(d.id) for d in deposits}
    await flush_redis(stack.redis_url)
    queue = create_queue(stack.redis_url)
    try:
        for job_id in job_ids:  # the API's path: kiota.job_history.enqueue after the commit
            assert await enqueue(queue, JobName.COMPLETE_MPESA_DEPOSIT, job_id, job_id.split(":", 1)[1])
    finally:
        await queue.aclose(close_connection_pool=True)
    assert len(ids) == len(job_ids)
    commits_before = await xact_commits(dsn)

    async def all_completed() -> bool:  # paid and credited, and every job's run recorded as finished
        done = await pool.fetchval("SELECT count(*) FROM deposits WHERE status = 'completed'")
        finished = await pool.fetchval("SELECT count(*) FROM jobs WHERE id = ANY($1) AND status = 'succeeded'", job_ids)
        return bool(done >= size.deposits and finished >= len(job_ids))

    async with kiota_worker(stack, dsn, pool) as worker, py_spy(worker.pid, profile):
        rpc_before, before, started = stack.anvil_rpc_count(), procstat.snapshot(), time.perf_counter()
        await _wait(all_completed, started + size.deadline_s, worker.check_alive)
        wall = time.perf_counter() - started
        after, rpcs = procstat.snapshot(), Counter(stack.anvil_rpcs()[rpc_before:])
        cpu = procstat.cpu_by_role(before, after, {worker.pid: "worker", os.getpid(): "harness"})
    await asyncio.sleep(0.5)  # the worker's backends have exited and flushed their statistics
    commits = await xact_commits(dsn) - commits_before
    lane = await pool.fetchrow(_LANE_TURNS)
    waits = await pool.fetchrow(_LANE_WAITS)
    jobs = await pool.fetchrow(
        "SELECT sum(runs) AS runs, count(*) FILTER (WHERE status = 'succeeded') AS succeeded FROM jobs"
    )
    statuses = dict(await pool.fetch("SELECT status, count(*) FROM deposits GROUP BY status"))
    return {
        "measured": Measured(size.deposits, wall, cpu),
        "rpcs": rpcs,
        "paid_before_job": int(waits["before_job"] or 0),
        "commits": commits,
        "turns": int(lane["turns"] or 0),
        "median_batch": float(lane["median_batch"] or 0),
        "max_batch": int(lane["max_batch"] or 0),
        "median_turn_s": float(lane["median_turn_s"] or 0),
        "lane_total_s": float(lane["total_s"] or 0),
        "runs": int(jobs["runs"] or 0),
        "succeeded": int(jobs["succeeded"] or 0),
        "statuses": statuses,
    }


async def _noop(stack: Stack, size: B2Size) -> Measured:
    await flush_redis(stack.redis_url)
    queue = create_queue(stack.redis_url)
    redis = Redis.from_url(stack.redis_url)
    keys = [f"arq:job:noop:{i}" for i in range(size.noop_jobs)]
    try:
        for i in range(size.noop_jobs):
            await queue.enqueue_job("noop", str(uuid.uuid4()), _job_id=f"noop:{i}")
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "REDIS_URL": stack.redis_url}
        async with python_child("noop-worker", "bench.noop_worker", [], env, stack.run_dir) as worker:

            async def ready() -> bool:
                return bool(await redis.exists(READY_KEY))

            async def drained() -> bool:
                return not await redis.exists(*keys)

            await _wait(ready, time.perf_counter() + 30, worker.check_alive)
            before, started = procstat.snapshot(), time.perf_counter()
            await _wait(drained, started + size.deadline_s, worker.check_alive)
            wall = time.perf_counter() - started
            cpu = procstat.cpu_by_role(before, procstat.snapshot(), {worker.pid: "worker", os.getpid(): "harness"})
    finally:
        await queue.aclose(close_connection_pool=True)
        await redis.flushdb()
        await redis.aclose()
    return Measured(size.noop_jobs, wall, cpu)


async def _raw_transfers(stack: Stack, size: B2Size) -> tuple[Measured, int]:
    sender = Account.from_key(RAW_SENDER_KEY)
    async with connect(stack.anvil.rpc_url) as w3:
        await mint_usdc(w3, BASE_USDC_ADDRESS, sender.address, 10**12)
        nonce = await w3.eth.get_transaction_count(sender.address, "pending")
        pending = await w3.eth.get_block("pending")
        fees = fees_for(int(pending.get("baseFeePerGas", 0)), int(await w3.eth.max_priority_fee))
        rpc_before, before, started = stack.anvil_rpc_count(), procstat.snapshot(), time.perf_counter()
        for i in range(size.raw_transfers):
            signed = sender.sign_transaction(
                {
                    "type": 2,
                    "chainId": stack.anvil.chain_id,
                    "nonce": nonce + i,
                    "to": BASE_USDC_ADDRESS,
                    "value": 0,
                    "data": transfer_calldata(RAW_RECIPIENT, 1),
                    "gas": TRANSFER_GAS_LIMIT,
                    "maxFeePerGas": fees.max_fee_per_gas,
                    "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
                }
            )
            tx_hash = await w3.eth.send_raw_transaction(signed.raw_transaction)
            while True:
                try:
                    receipt = await w3.eth.get_transaction_receipt(tx_hash)
                    break
                except TransactionNotFound:
                    await asyncio.sleep(0.002)
            assert receipt["status"] == 1
        wall = time.perf_counter() - started
        cpu = procstat.cpu_by_role(before, procstat.snapshot(), {os.getpid(): "harness"})
        rpcs = stack.anvil_rpc_count() - rpc_before
    return Measured(size.raw_transfers, wall, cpu), rpcs


async def run_b2(stack: Stack, size: B2Size, profile: Path | None) -> Result:
    result = Result("B2", "M-Pesa completions per worker process, on-chain payout included")
    async with stack.database("b2") as dsn:
        pool = await bench_pool(dsn)
        try:
            payouts = await _payouts(stack, dsn, pool, size, profile)
        finally:
            await pool.close()
    await flush_redis(stack.redis_url)
    noop = await _noop(stack, size)
    raw, raw_rpcs = await _raw_transfers(stack, size)

    paid: Measured = payouts["measured"]
    n = paid.count
    vs_noop, vs_raw = ratio(paid.rate, noop.rate), ratio(paid.rate, raw.rate)
    result.rows += [
        Row("B2", "completions/s, one worker process", f"{paid.rate:.1f}/s", f"{noop.rate:.0f}/s no-op arq job",
            vs_noop, f"≥ {GOAL_RATIO} of no-op", vs_noop is not None and vs_noop >= GOAL_RATIO),
        Row("B2", "completions/s vs raw sequential signed transfers", f"{paid.rate:.1f}/s",
            f"{raw.rate:.0f}/s raw transfers", vs_raw, "", None),
    ]  # fmt: skip
    roles = ("worker", "postgres", "anvil", "redis", "harness")
    rpcs: Counter[str] = payouts["rpcs"]
    mix = ", ".join(f"{method} {count / n:.1f}" for method, count in rpcs.most_common())
    result.setup = (
        f"{n} deposits of {AMOUNT_KES} KES brought to processing by the product's ingest, their jobs enqueued, then "
        "one `kiota worker` started (poll_delay 0.05 s, max_jobs 20, production LaneConfig); timed from its start-up "
        f"heartbeat to all {n} completed and their {n} jobs recorded as succeeded. "
        f"No-op baseline: {noop.count} jobs, same worker settings and protocol. "
        f"Raw baseline: {raw.count} USDC transfers signed with eth-account and sent one after the other to the same "
        "anvil (automine: one block per transaction). "
        f"The worker's JSON-RPC client: {described()}."
    )
    result.notes += [
        f"Payouts: {n} completions in {paid.wall_s:.2f} s; deposits by status {payouts['statuses']}; "
        f"{payouts['succeeded']} jobs succeeded. "
        f"CPU in cores: {procstat.cores(paid.cpu, paid.wall_s, roles)}.",
        f"The treasury lane (one advisory lock per treasury) pays in turns: {payouts['turns']} turns for {n} "
        f"payouts, median {payouts['median_batch']:.0f} per turn (max {payouts['max_batch']}); a turn takes "
        f"{payouts['median_turn_s'] * 1000:.0f} ms (median) from signing to its last settlement; turns add up to "
        f"{payouts['lane_total_s']:.2f} s of the {paid.wall_s:.2f} s.",
        f"Per completion: {rpcs.total() / n:.1f} JSON-RPC calls to anvil ({mix}; raw loop: "
        f"{raw_rpcs / raw.count:.1f} per transfer) over one keep-alive HTTP session, and "
        f"≈{payouts['commits'] / n:.1f} PostgreSQL commits (pg_stat_database xact_commit: a statement outside an "
        "explicit transaction, and each pool release's reset, is one).",
        f"{payouts['paid_before_job']} of {n} payouts were made before their own job started (in another job's "
        f"turn); {payouts['runs']} runs for {n} jobs (a job whose deposit the lane's owner paid stops waiting and "
        "finds it completed).",
        f"No-op: {noop.count} jobs in {noop.wall_s:.2f} s; "
        f"CPU in cores: {procstat.cores(noop.cpu, noop.wall_s, roles)}.",
        f"Raw transfers: {raw.count} in {raw.wall_s:.2f} s ({raw.wall_s / raw.count * 1000:.2f} ms each); "
        f"CPU in cores: {procstat.cores(raw.cpu, raw.wall_s, roles)}.",
    ]
    return result
