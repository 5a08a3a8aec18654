"""`python -m bench`: run Kiota's benchmarks and record the figures in bench/RESULTS.md.

    .venv/bin/python -m bench                 B1, B2 and B4 (under 5 minutes on 2 cores)
    .venv/bin/python -m bench --quick         smaller counts, for a smoke run (~1 minute)
    .venv/bin/python -m bench --only B1,B4    some of them (the others keep their last figures)
    .venv/bin/python -m bench --only B6       the ingester at 10 … 100,000 addresses (bench/b6_ingester.py, ~3 min;
                                              its figures go to bench/RESULTS-ingester.md)
    .venv/bin/python -m bench --only B7       B7, the callback stream on 2-second blocks (5-9 minutes; not in the
                                              default set); --treasuries 4 gives the worker four treasury keys
    .venv/bin/python -m bench --profile       also run py-spy on `kiota api` (B1) and `kiota worker` (B2),
                                              print where the time goes; RESULTS.md is then left alone
    .venv/bin/python -m bench --only B1 --synchronous-commit off
                                              a diagnosis (is the WAL flush the limit?); print only
    .venv/bin/python -m bench.diagnose        round trips and their time for one callback and one payout

It starts what it needs and stops it again: databases kiota_bench_<pid>_*, Redis db 7 (flushed),
one anvil, `kiota api` / `kiota worker` / baseline processes. PostgreSQL and Redis themselves
must already be running (scripts/setup starts them).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import asyncpg
import structlog
from redis.asyncio import Redis

from bench import procstat, report
from bench.b1_ingest import B1Size, run_b1
from bench.b2_completions import B2Size, run_b2
from bench.b4_latency import B4Size, run_b4
from bench.b7_stream import RATES, run_b7
from bench.model import Result
from bench.pyspy_summary import summarise_profile
from bench.system import REPO, Stack, bench_stack, dsn_for
from kiota.dev.chain import anvil_binary

BENCHES = ("B1", "B2", "B4", "B7")
DEFAULT = ("B1", "B2", "B4")  # B7 takes minutes of its own: `--only B7`
APART = {"B6": "bench.b6_ingester"}  # only with --only: own set-up, own process, own results file
TIME_LIMIT_SECONDS = 285.0
B7_TIME_LIMIT_SECONDS = 720.0
QUIET_CORES = 0.25  # background CPU above this before a run is reported as a warning


@dataclass(frozen=True)
class Sizes:
    b1: B1Size
    b2: B2Size
    b4: B4Size


FULL = Sizes(
    B1Size(count=6000, bare_count=30000, warmup=300, concurrency=32, serial_count=400, serial_warmup=30, deadline_s=45),
    B2Size(deposits=500, noop_jobs=5000, raw_transfers=500, deadline_s=90),
    B4Size(deposits=30, warmup=3),
)
QUICK = Sizes(
    B1Size(count=800, bare_count=5000, warmup=100, concurrency=32, serial_count=100, serial_warmup=10, deadline_s=20),
    B2Size(deposits=60, noop_jobs=600, raw_transfers=60, deadline_s=30),
    B4Size(deposits=10, warmup=2),
)


def _selected(only: str | None) -> list[str]:
    if not only:
        return list(DEFAULT)
    names = [name.strip().upper() for name in only.split(",") if name.strip()]
    known = (*BENCHES, *APART)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"bench: unknown benchmark {', '.join(unknown)} (choose from {', '.join(known)})")
    return [name for name in known if name in names]


async def _software(stack: Stack) -> str:
    conn = await asyncpg.connect(dsn_for(stack.template))
    try:
        postgres = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    redis = Redis.from_url(stack.redis_url)
    try:
        redis_version = (await redis.info("server"))["redis_version"]
    finally:
        await redis.aclose()
    proc = await asyncio.create_subprocess_exec(
        str(anvil_binary()), "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    anvil = out.decode().splitlines()[0].removeprefix("anvil Version: ") if out else "?"
    packages = ", ".join(
        f"{name} {version(name)}" for name in ("uvicorn", "uvloop", "httptools", "fastapi", "asyncpg", "arq", "web3")
    )
    return f"PostgreSQL {postgres}, Redis {redis_version}, anvil {anvil}; {packages}"


def code_version() -> str:
    """The commit measured, and whether the product's files differ from it (another engineer may be editing)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "kiota", "api", "jobs", "sql"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    if not changed:
        return f"{head} (product files as committed)"
    files = ", ".join(line[3:] for line in changed)
    return f"{head} + uncommitted changes to {len(changed)} product files ({files})"


@dataclass(frozen=True)
class B7Options:
    treasuries: int
    rates: tuple[float, ...]
    workers: int = 1


async def _run(
    names: list[str],
    sizes: Sizes,
    run_dir: Path,
    profile_dir: Path | None,
    synchronous_commit: str | None,
    b7: B7Options,
) -> tuple[list[Result], str]:
    results: list[Result] = []
    limit = TIME_LIMIT_SECONDS + (B7_TIME_LIMIT_SECONDS if "B7" in names else 0)
    async with asyncio.timeout(limit), bench_stack(run_dir) as stack:
        stack.synchronous_commit = synchronous_commit
        software = await _software(stack)
        for name in names:
            started = time.monotonic()
            print(f"bench: {name} …", flush=True)
            if name == "B1":
                results.append(await run_b1(stack, sizes.b1, profile_dir))
            elif name == "B2":
                profile = profile_dir / "b2-kiota-worker.txt" if profile_dir else None
                results.append(await run_b2(stack, sizes.b2, profile))
            elif name == "B4":
                results.append(await run_b4(stack, sizes.b4))
            else:
                results.append(await run_b7(stack, b7.treasuries, b7.rates, b7.workers))
            print(f"bench: {name} done in {time.monotonic() - started:.0f} s", flush=True)
    return results, software


# --- entry point -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated: B1,B2,B4,B7 (default B1,B2,B4)")
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    parser.add_argument("--profile", action="store_true", help="py-spy the API (B1) and the worker (B2)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    parser.add_argument(
        "--synchronous-commit",
        choices=["on", "off"],
        help="diagnosis: set it on the benchmark databases (the goals are for the server's setting); print only",
    )
    parser.add_argument("--treasuries", type=int, default=1, help="B7: treasury keys given to the worker")
    parser.add_argument(
        "--b7-rates",
        default=",".join(f"{r:g}" for r in RATES),
        help="B7: offered callbacks/s, climbed until one misses p99 < 8 s",
    )
    parser.add_argument("--workers", type=int, default=1, help="B7: `kiota worker` processes on the same Redis")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (printed path)")
    args = parser.parse_args(argv)
    names = _selected(args.only)
    for name in [name for name in names if name in APART]:
        names.remove(name)
        write = ["--no-write"] if args.no_write else []
        apart = subprocess.run([sys.executable, "-m", APART[name], *write], check=False)
        if apart.returncode or not names:
            return apart.returncode
    if args.treasuries < 1:
        raise SystemExit("bench: --treasuries must be at least 1")
    b7 = B7Options(args.treasuries, tuple(float(r) for r in args.b7_rates.split(",") if r.strip()), args.workers)
    # The harness calls product functions (ingest) that log; only warnings matter here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    run_dir = Path(tempfile.mkdtemp(prefix="kiota-bench-"))
    profile_dir = None
    if args.profile:
        if not Path(sys.executable).with_name("py-spy").exists():
            raise SystemExit("bench: --profile needs py-spy in the venv: .venv/bin/pip install py-spy")
        profile_dir = run_dir / "profiles"
        profile_dir.mkdir()
    command = " ".join([".venv/bin/python -m bench", *(argv if argv is not None else sys.argv[1:])])
    run_id, started = report.now_id(), time.monotonic()
    print(f"bench: {command} — {', '.join(names)}; logs in {run_dir}", flush=True)
    busy, top = procstat.background()
    background = f"{busy:.2f} cores busy in the second before the run ({top or 'nothing'})"
    if busy > QUIET_CORES:
        print(f"bench: warning: the machine is not quiet: {background}; figures will be noisier", flush=True)
    try:
        sizes = QUICK if args.quick else FULL
        results, software = asyncio.run(_run(names, sizes, run_dir, profile_dir, args.synchronous_commit, b7))
    except BaseException:
        print(f"bench: failed; the processes' logs are in {run_dir}", file=sys.stderr)
        raise
    run = {
        "date": run_id,
        "command": command,
        "quick": args.quick,
        "wall_s": time.monotonic() - started,
        "machine": report.machine(),
        "software": software,
        "background": background,
        "code": code_version(),
    }
    if args.profile or args.no_write or args.synchronous_commit:
        store = {"runs": {run_id: run}, "benches": {r.bench: {"run": run_id, **asdict(r)} for r in results}}
        print(report.render(store))
    else:
        text = report.render(report.record(run, results))
        report.write_markdown(text)
        print(text)
        print(f"bench: wrote {report.RESULTS_MD.relative_to(REPO)} and {report.RESULTS_JSON.relative_to(REPO)}")
    if profile_dir is not None:
        for path in sorted(profile_dir.glob("*.txt")):
            print(summarise_profile(path))
        print(f"bench: raw profiles (flamegraph-ready) in {profile_dir}")
    elif not args.keep_logs:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
