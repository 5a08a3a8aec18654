"""Where one callback's and one payout's time goes, measured in-process: `python -m bench.diagnose`.

Not a benchmark: it wraps asyncpg's and the Treasury's methods with timers (so it changes
nothing in the product and measures round trips, not throughput), then prints
- per callback ingest (`ingest_callback`): PostgreSQL round trips, by statement, and their time;
- per uncontended payout (`pay_deposit`): SQL and RPC calls and their time;
- one JSON-RPC call through web3 (new TCP connection each time) vs plain aiohttp with keep-alive.
It uses the same stack as the benchmarks (its own databases, Redis db 7, anvil), and stops it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import structlog

from bench.callbacks import AMOUNT_KES, success_callback
from bench.system import Stack, bench_pool, bench_stack, insert_pending, make_users
from kiota.callbacks import ingest_callback
from kiota.confirm import confirm_success
from kiota.dev.chain import BASE_USDC_ADDRESS
from kiota.payouts import LaneConfig, pay_deposit
from kiota.treasury import Treasury
from tests.support import TREASURY_KEY

WARMUP, MEASURED = 20, 100


class Meter:
    """Counts and times calls to wrapped async methods, by a label each call chooses."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()

    def reset(self) -> None:
        self.calls.clear()
        self.seconds.clear()

    def wrap(self, owner: type, name: str, label: Callable[[tuple[Any, ...]], str]) -> None:
        original = getattr(owner, name)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                key = label(args)
                self.calls[key] += 1
                self.seconds[key] += time.perf_counter() - started

        setattr(owner, name, timed)

    def report(self, per: int) -> str:
        rows = [
            f"    {key:<28} {self.calls[key] / per:5.1f} calls  {self.seconds[key] / per * 1000:6.2f} ms"
            for key, _ in self.calls.most_common()
        ]
        return "\n".join(rows)


def _statement(args: tuple[Any, ...]) -> str:
    """`INSERT`, `SELECT`, … of a query; `simple` when sent without arguments (BEGIN, COMMIT, the reset)."""
    if "pg_advisory_unlock_all" in str(args[1]):
        return "sql pool reset on release"
    lines = [line for line in str(args[1]).splitlines() if line.strip() and not line.strip().startswith("--")]
    word = lines[0].split()[0].upper().rstrip(";") if lines else "?"
    return f"sql {word}" + (" (simple)" if len(args) == 2 else "")


async def _timed_loop(count: int, step: Callable[[int], Awaitable[None]]) -> list[float]:
    spent = []
    for i in range(count):
        started = time.perf_counter()
        await step(i)
        spent.append(time.perf_counter() - started)
    return spent


async def ingest(stack: Stack, meter: Meter) -> str:
    async with stack.database("diag_ingest") as dsn:
        pool = await bench_pool(dsn)
        try:
            users = await make_users(pool, 2)
            deposits = await insert_pending(pool, users, "DIAGI", WARMUP + MEASURED, AMOUNT_KES)

            async def one(i: int) -> None:
                if i == WARMUP:
                    meter.reset()
                d = deposits[i]
                await ingest_callback(pool, success_callback(d.checkout_request_id, d.amount_kes, d.receipt), None)

            spent = (await _timed_loop(WARMUP + MEASURED, one))[WARMUP:]
            return (
                f"ingest_callback, one at a time: median {statistics.median(spent) * 1000:.2f} ms; "
                f"{meter.calls.total() / MEASURED:.1f} PostgreSQL round trips per callback "
                f"({meter.seconds.total() / MEASURED * 1000:.2f} ms waiting on them):\n{meter.report(MEASURED)}"
            )
        finally:
            await pool.close()


async def payout(stack: Stack, meter: Meter) -> str:
    async with stack.database("diag_payout") as dsn:
        pool = await bench_pool(dsn)
        treasury = Treasury(stack.anvil.rpc_url, TREASURY_KEY, stack.anvil.chain_id, BASE_USDC_ADDRESS)
        try:
            users = await make_users(pool, 2)
            deposits = await insert_pending(pool, users, "DIAGP", WARMUP + MEASURED, AMOUNT_KES)
            for d in deposits:
                await ingest_callback(pool, success_callback(d.checkout_request_id, d.amount_kes, d.receipt), None)
                # The lane pays confirmed successes only; the STK query's cost is not this diagnosis's.
                await confirm_success(pool, None, d.id, required=False)

            async def one(i: int) -> None:
                if i == WARMUP:
                    meter.reset()
                result = await pay_deposit(pool, treasury, deposits[i].id, LaneConfig())
                assert result.outcome.value == "completed", result

            spent = (await _timed_loop(WARMUP + MEASURED, one))[WARMUP:]
            return (
                f"pay_deposit, uncontended, automine: median {statistics.median(spent) * 1000:.1f} ms per payout:\n"
                f"{meter.report(MEASURED)}"
            )
        finally:
            await treasury.aclose()
            await pool.close()


async def rpc(stack: Stack) -> str:
    treasury = Treasury(stack.anvil.rpc_url, TREASURY_KEY, stack.anvil.chain_id, BASE_USDC_ADDRESS)
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}
    lines = []
    try:
        for label, call in (
            ("web3 eth_blockNumber", treasury.head),
            ("web3 balanceOf (eth_call)", treasury.usdc_balance),
        ):
            spent = await _timed_loop(WARMUP + MEASURED, lambda _, call=call: call())
            lines.append(f"    {label:<40} {statistics.median(spent[WARMUP:]) * 1000:.2f} ms")
    finally:
        await treasury.aclose()
    async with aiohttp.ClientSession() as session:

        async def plain(_: int) -> None:
            async with session.post(stack.anvil.rpc_url, json=body) as answer:
                await answer.json()

        spent = await _timed_loop(WARMUP + MEASURED, plain)
    lines.append(
        f"    {'plain aiohttp keep-alive eth_blockNumber':<40} {statistics.median(spent[WARMUP:]) * 1000:.2f} ms"
    )
    return "one JSON-RPC call to anvil, median:\n" + "\n".join(lines)


async def main() -> None:
    meter = Meter()
    run_dir = Path(tempfile.mkdtemp(prefix="kiota-diagnose-"))
    async with bench_stack(run_dir) as stack:
        for method in ("execute", "fetch", "fetchval", "fetchrow"):
            meter.wrap(asyncpg.Connection, method, _statement)
        for method in ("_call", "broadcast", "receipt"):
            meter.wrap(Treasury, method, lambda args, m=method: f"rpc via Treasury.{m}")
        print(await ingest(stack, meter), flush=True)
        meter.reset()
        print(await payout(stack, meter), flush=True)
        print(await rpc(stack), flush=True)
    shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main())
