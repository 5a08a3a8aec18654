"""The load generator for B1, run in its own process: `python -m bench.loadgen --url … --count …`.

It POSTs callback bodies `bench.callbacks.callback_for(prefix, amount, i)` for i in
[start, start + warmup + count) over `concurrency` keep-alive connections (aiohttp), each
connection sending its next request as soon as the previous answer arrived (a closed loop).
The first `warmup` requests are not measured. It stops at `--deadline` seconds whatever is
left, and prints one JSON object: requests/s, latency percentiles, statuses, and the CPU
each process used during the measured part.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench import procstat
from bench.callbacks import callback_for

HEADERS = {"content-type": "application/json"}


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    unsent: int = 0


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


async def drive(
    session: aiohttp.ClientSession, url: str, bodies: list[bytes], concurrency: int, deadline: float
) -> Tally:
    tally = Tally()
    queue = iter(bodies)

    async def connection() -> None:
        for body in queue:
            if time.monotonic() > deadline:
                tally.unsent += 1
                continue
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=HEADERS) as answer:
                    await answer.read()
                    status = str(answer.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            tally.latencies.append(time.perf_counter() - started)
            tally.statuses[status] += 1

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return tally


async def run(args: argparse.Namespace) -> dict[str, Any]:
    total = args.warmup + args.count
    bodies = [callback_for(args.prefix, args.amount, i) for i in range(args.start, args.start + total)]
    deadline = time.monotonic() + args.deadline
    roles = {int(pid): role for pid, role in (item.split("=") for item in args.role)}
    roles[os.getpid()] = "loadgen"
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        await drive(session, args.url, bodies[: args.warmup], args.concurrency, deadline)
        before = procstat.snapshot()
        started = time.perf_counter()
        tally = await drive(session, args.url, bodies[args.warmup :], args.concurrency, deadline)
        wall = time.perf_counter() - started
        after = procstat.snapshot()
    done = sorted(tally.latencies)
    ok = tally.statuses.get("200", 0)
    spent = procstat.cpu_by_role(before, after, roles)
    return {
        "url_kind": args.label,
        "concurrency": args.concurrency,
        "sent": len(done),
        "ok": ok,
        "unsent": tally.unsent,
        "statuses": dict(tally.statuses),
        "wall_s": wall,
        "rps": ok / wall if wall > 0 else 0.0,
        "p50_ms": percentile(done, 50) * 1000,
        "p90_ms": percentile(done, 90) * 1000,
        "p99_ms": percentile(done, 99) * 1000,
        "max_ms": (done[-1] if done else float("nan")) * 1000,
        "cpu_s": spent,
        "loadgen_cpu_total_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.loadgen")
    parser.add_argument("--url", required=True)
    parser.add_argument("--label", default="")
    parser.add_argument("--prefix", required=True, help="CheckoutRequestID prefix of the batch")
    parser.add_argument("--amount", type=int, required=True)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds; what is left is not sent")
    parser.add_argument("--role", action="append", default=[], help="pid=name, to name a process's CPU")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # the same client either way; uvloop only makes it cheaper
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
