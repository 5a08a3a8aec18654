"""B6 — the chain ingester: RPC calls and wall time of one `scan_round` as deposit addresses grow.

    .venv/bin/python -m bench.b6_ingester              (about three minutes on 2 cores)
    .venv/bin/python -m bench --only B6                the same
    .venv/bin/python -m bench.b6_ingester --reps 3     fewer repetitions per size
    .venv/bin/python -m bench.b6_ingester --no-write   print only; bench/RESULTS-ingester.md is left alone

For each size N (10, 1,000, 10,000, 100,000 deposit addresses) a fresh set of 1,000 USDC Transfers is
minted on a local anvil, packed 20 to a block over 50 blocks (automine off, `anvil_mine`): 800 to
the N deposit addresses, spread evenly over them (at 10,000, 800 distinct ones), and 200 to
addresses that are nobody's, so that local matching has something to reject. Then 15 empty
blocks, so every transfer is confirmed. A round is measured on a fresh copy of a database holding
N users (inserted in bulk, one in ten with an open intent) whose cursor is set so that the round
scans exactly that set and its empty blocks: it sees, matches and credits all 800 deposits. The
same range is then scanned again on the same copy (all already credited: the steady rescan).

Each measured round follows a warm-up round over the empty blocks only, with the same pool and
reader, so statements are prepared and the HTTP connection is open, as in a long-lived worker.
The sizes are measured in order, each on its own chain range (a round always scans up to the
head), and N = 10 once more at the end, which says how much the machine drifted in between.

At each size, the RSS of a real `kiota worker` process (INTENT_POLL_SECONDS=1) is read from /proc
after it has run a few scan rounds over that size's database, the first over its 1,000-transfer
set. Round time, RPC calls and RSS are each given as a ratio against N = 10 in the same run.
Figures are reported, never asserted.

The deposit addresses derive from the tests' xpub (kiota/hdwallet.py, ~0.1 ms each): 100,000 are
derived once in a process pool and kept in bench/.cache/ (not in git), keyed by the xpub.

Everything started here is stopped here: databases kiota_bench6_<pid>_*, one anvil on a free port,
Redis db 6 (flushed before and after), the worker process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import structlog
from eth_account import Account
from redis.asyncio import Redis

from bench.rpc_client import described, reader_class, rpc_client, worker_module
from kiota.chain_rpc import ChainReader
from kiota.chain_web3 import Web3ChainReader
from kiota.db import create_pool
from kiota.dev.chain import BASE_USDC_ADDRESS, AnvilNode, anvil_binary, install_usdc, start_anvil
from kiota.dev.chain import connect as connect_web3
from kiota.hdwallet import ExtendedPublicKey
from kiota.ingester import RoundReport, ScanConfig, scan_round
from kiota.logging import configure_logging
from kiota.migrate import migrate
from kiota.process import stop
from kiota.sql import load_queries
from kiota.usdc import TRANSFER_TOPIC, decode_transfer
from tests.support import ADMIN_DSN, TEST_XPUB, TREASURY_KEY, admin_execute, base_env, dsn_for, free_port

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "RESULTS-ingester.md"
COMMAND = ".venv/bin/python -m bench.b6_ingester"
REDIS_URL = os.environ.get("KIOTA_BENCH6_REDIS_URL", "redis://127.0.0.1:6379/6")
PREFIX = f"kiota_bench6_{os.getpid()}_"

SIZES = (10, 1_000, 10_000, 100_000)
BASELINE = 10  # every ratio is against this size, measured in the same run
CACHE = REPO / "bench" / ".cache"
DERIVE_CHUNK = 5_000
BLOCKS = 50
PER_BLOCK = 20
TO_DEPOSIT_PER_BLOCK = 16  # the other 4 of each block go to addresses that are nobody's
EMPTY_BLOCKS_AFTER = 15  # more than the rescan window: all confirmed, and the warm-up round sees none
INTENT_EVERY = 10  # one user in ten has an open deposit intent
CHAIN_ID = 8453
CONFIRMATIONS = 2
RESCAN = 12  # ScanConfig's rescan_blocks: max(12, CONFIRMATIONS + 2)
MINT_SELECTOR = "0x40c10f19"  # mint(address,uint256) of TestUSDC
MINT_GAS = 100_000  # given, so anvil does not estimate each one
WORKER_ROUNDS = 4
WORKER_DEADLINE_S = 45.0
TIME_LIMIT_S = 420.0

GOAL_CALLS_RATIO = 1.2
GOAL_ROUND_S = 1.0
GOAL_RSS_MB = 200.0

INSERT_USERS = """
INSERT INTO users (id, address_index, deposit_address)
SELECT * FROM unnest($1::text[], $2::int[], $3::text[])
"""
# sql/queries/users.sql `insert_user_accounts`, for many users in one statement.
INSERT_ACCOUNTS = """
INSERT INTO accounts (code, kind, user_id, asset, normal_side)
SELECT 'user:' || id || ':USDC', 'user', id, 'USDC', 'C' FROM unnest($1::text[]) AS id
"""
INSERT_INTENTS = """
INSERT INTO deposit_intents (id, user_id, status, deposit_address, expires_at)
SELECT gen_random_uuid(), id, 'awaiting_payment', address, now() + interval '1 hour'
FROM unnest($1::text[], $2::text[]) AS t (id, address)
"""
SET_ADDRESS_SEQUENCE = "SELECT setval('user_address_index_seq', $1)"
ALL_ADDRESSES = "SELECT id, lower(deposit_address) AS address FROM users"  # local matching, timed apart


def say(message: str) -> None:
    print(f"b6: {message}", flush=True)


# --- deposit addresses --------------------------------------------------------------------------


def _derive_range(xpub: str, start: int, stop: int) -> list[str]:
    key = ExtendedPublicKey.parse(xpub)
    return [key.child_address(i) for i in range(start, stop)]


def deposit_addresses(xpub: str, count: int) -> list[str]:
    """Children 0 … count-1 of `xpub`, from bench/.cache when derived before (in a process pool if not)."""
    path = CACHE / f"b6-addresses-{hashlib.sha256(xpub.encode()).hexdigest()[:16]}-{count}.txt"
    if path.exists():
        cached = path.read_text().split()
        if len(cached) == count:
            return cached
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        chunks = pool.map(_derive_range, *zip(*[(xpub, i, min(i + DERIVE_CHUNK, count))
                                                for i in range(0, count, DERIVE_CHUNK)], strict=True))  # fmt: skip
        addresses = [address for chunk in chunks for address in chunk]
    CACHE.mkdir(exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text("\n".join(addresses) + "\n")
    temporary.replace(path)
    return addresses


# --- databases ----------------------------------------------------------------------------------


def _create(name: str, template: str | None = None) -> str:
    assert name.startswith(PREFIX) and name.replace("_", "").isalnum(), name
    return f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")


def _drop(name: str) -> str:
    assert name.startswith(PREFIX) and name.replace("_", "").isalnum(), name
    return f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'


async def drop_ours() -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        rows = await admin.fetch("SELECT datname FROM pg_database WHERE starts_with(datname, $1)", PREFIX)
        for row in rows:
            await admin.execute(_drop(row["datname"]))
    finally:
        await admin.close()


async def make_size_template(base: str, size: int, addresses: list[str]) -> str:
    """A database with `size` users, their USDC accounts and one open intent in INTENT_EVERY."""
    name = f"{PREFIX}n{size}"
    await admin_execute(_create(name, base))
    conn = await asyncpg.connect(dsn_for(name))
    try:
        ids = [f"u{i}" for i in range(size)]
        async with conn.transaction():
            await conn.execute(INSERT_USERS, ids, list(range(size)), addresses[:size])
            await conn.execute(INSERT_ACCOUNTS, ids)
            await conn.execute(INSERT_INTENTS, ids[::INTENT_EVERY], addresses[:size:INTENT_EVERY])
            await conn.execute(SET_ADDRESS_SEQUENCE, size - 1)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return name


async def set_cursor(pool: asyncpg.Pool, next_block: int) -> None:
    await pool.execute(load_queries().store_cursor, CHAIN_ID, next_block)


# --- the chain ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chain:
    url: str
    http: httpx.AsyncClient
    sender: str

    async def call(self, method: str, *params: Any) -> Any:
        answer = (await self.http.post(self.url, json=_request(0, method, list(params)))).json()
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    async def batch(self, calls: list[tuple[str, list[Any]]]) -> None:
        payload = [_request(i, method, params) for i, (method, params) in enumerate(calls)]
        answers = (await self.http.post(self.url, json=payload)).json()
        errors = [a["error"] for a in answers if "error" in a]
        if errors or len(answers) != len(calls):
            raise RuntimeError(f"batch of {len(calls)}: {len(answers)} answers, errors {errors[:3]}")

    async def head(self) -> int:
        return int(await self.call("eth_blockNumber"), 16)


def _request(request_id: int, method: str, params: list[Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


@dataclass(frozen=True)
class TransferSet:
    first_block: int
    last_block: int
    head: int
    transfers: int
    to_deposit: int
    recipients: int  # distinct deposit addresses paid
    mint_seconds: float


def recipients_for(addresses: list[str], rng: random.Random) -> tuple[list[str], int]:
    """Recipients of one set, shuffled: 800 spread over the deposit addresses, 200 strangers."""
    paid = BLOCKS * TO_DEPOSIT_PER_BLOCK
    n = len(addresses)
    indexes = rng.sample(range(n), paid) if n >= paid else [i % n for i in range(paid)]
    strangers = ["0x" + rng.randbytes(20).hex() for _ in range(BLOCKS * (PER_BLOCK - TO_DEPOSIT_PER_BLOCK))]
    recipients = [addresses[i] for i in indexes] + strangers
    rng.shuffle(recipients)
    return recipients, len(set(indexes))


async def mint_set(chain: Chain, addresses: list[str], rng: random.Random) -> TransferSet:
    started = time.perf_counter()
    recipients, distinct = recipients_for(addresses, rng)
    nonce = int(await chain.call("eth_getTransactionCount", chain.sender, "pending"), 16)
    first = await chain.head() + 1
    for block in range(BLOCKS):
        calls: list[tuple[str, list[Any]]] = []
        for to in recipients[block * PER_BLOCK : (block + 1) * PER_BLOCK]:
            data = MINT_SELECTOR + to[2:].lower().rjust(64, "0") + f"{rng.randint(1, 500) * 10**5:064x}"
            tx = {
                "from": chain.sender,
                "to": BASE_USDC_ADDRESS,
                "data": data,
                "gas": hex(MINT_GAS),
                "nonce": hex(nonce),
            }
            calls.append(("eth_sendTransaction", [tx]))
            nonce += 1
        await chain.batch(calls)
        await chain.call("anvil_mine", "0x1")
    await chain.call("anvil_mine", hex(EMPTY_BLOCKS_AFTER))
    head = await chain.head()
    logs = await chain.call(
        "eth_getLogs",
        {"fromBlock": hex(first), "toBlock": hex(head), "address": BASE_USDC_ADDRESS, "topics": [TRANSFER_TOPIC]},
    )
    blocks = {log["blockNumber"] for log in logs}
    if len(logs) != len(recipients) or len(blocks) != BLOCKS:
        raise RuntimeError(f"minted {len(logs)} transfers in {len(blocks)} blocks, wanted {len(recipients)}")
    last = head - EMPTY_BLOCKS_AFTER
    return TransferSet(
        first, last, head, len(logs), BLOCKS * TO_DEPOSIT_PER_BLOCK, distinct, time.perf_counter() - started
    )


# --- one round ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundSample:
    seconds: float
    calls: int  # every JSON-RPC call scan_round made, the balance cache's eth_calls included
    reported_calls: int  # RoundReport.rpc_calls, counted before the round's commit
    report: RoundReport


@dataclass
class SizeResult:
    size: int
    label: str
    tset: TransferSet
    fresh: list[RoundSample] = field(default_factory=list)
    rescan: list[RoundSample] = field(default_factory=list)
    worker: WorkerFigures | None = None


async def timed_round(pool: asyncpg.Pool, reader: ChainReader, config: ScanConfig) -> RoundSample:
    calls_before = reader.calls
    started = time.perf_counter()
    async with asyncio.timeout(60):
        report = await scan_round(pool, reader, config)
    seconds = time.perf_counter() - started
    if report is None:
        raise RuntimeError("the node looked lagging: no round")
    return RoundSample(seconds, reader.calls - calls_before, report.rpc_calls, report)


@contextlib.asynccontextmanager
async def database_copy(template: str, suffix: str) -> Any:
    name = f"{PREFIX}{suffix}"
    await admin_execute(_drop(name), _create(name, template))
    # One connection: a round is sequential, and the breakdown logs every statement on it.
    pool = await create_pool(dsn_for(name), min_size=1, max_size=1)
    try:
        yield pool
    finally:
        await pool.close()
        await admin_execute(_drop(name))


async def warm_up(pool: asyncpg.Pool, reader: ChainReader, config: ScanConfig, tset: TransferSet) -> None:
    """A round over the empty blocks after the set only: statements prepared, HTTP connection open."""
    await set_cursor(pool, tset.head + 1)
    report = await scan_round(pool, reader, config)
    assert report is not None and report.matched == 0 and report.start > tset.last_block, report


async def measure_size(result: SizeResult, template: str, reader: ChainReader, config: ScanConfig, reps: int) -> None:
    tset = result.tset
    for rep in range(reps):
        async with database_copy(template, f"{result.label}_r{rep}") as pool:
            await warm_up(pool, reader, config, tset)
            await set_cursor(pool, tset.first_block + RESCAN)  # the round starts at the set's first block
            fresh = await timed_round(pool, reader, config)
            await set_cursor(pool, tset.first_block + RESCAN)
            rescan = await timed_round(pool, reader, config)
        expected = (tset.first_block, tset.head, tset.to_deposit, tset.to_deposit)
        got = (fresh.report.start, fresh.report.end, fresh.report.matched, fresh.report.credited)
        if got != expected:
            raise RuntimeError(f"N={result.size}: round (start, end, matched, credited) = {got}, wanted {expected}")
        result.fresh.append(fresh)
        result.rescan.append(rescan)


# --- where the time of one round goes --------------------------------------------------------------


class TimedReader(ChainReader):
    """A ChainReader that also adds up the wall time of its calls, per method (their `rpc`s: a batch is not timed)."""

    def __init__(self, rpc_url: str) -> None:
        super().__init__(rpc_url)
        self.spent: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)

    async def rpc(self, method: str, params: list[Any]) -> Any:
        started = time.perf_counter()
        try:
            return await super().rpc(method, params)
        finally:
            self.spent[method] += time.perf_counter() - started
            self.count[method] += 1


class TimedWeb3Reader(TimedReader, Web3ChainReader):
    """The same, on web3.py (KIOTA_BENCH_RPC=web3)."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Breakdown:
    size: int
    seconds: float
    cpu: dict[str, float]  # CPU seconds during the round: this process, its PostgreSQL backend, anvil
    rpc: dict[str, tuple[int, float]]
    sql: dict[str, tuple[int, float]]
    logs_bytes: int
    json_decode_s: float
    match_s: float


def _statement_name(query: str, names: dict[str, str]) -> str:
    if query.strip() in names:
        return names[query.strip()]
    words = query.split()
    if "pg_advisory_unlock_all" in query:
        return "(pool release: reset query)"
    return f"({' '.join(words[:2])})" if words else "(empty)"


async def json_and_matching(
    reader: ChainReader, tset: TransferSet, addresses: dict[str, str]
) -> tuple[int, float, float]:
    """The same eth_getLogs answer the round got: its size, JSON decoding alone, decoding + matching alone."""
    params = {"fromBlock": hex(tset.first_block), "toBlock": hex(tset.head), "address": BASE_USDC_ADDRESS.lower(),
              "topics": [TRANSFER_TOPIC]}  # fmt: skip
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(reader.rpc_url, json=_request(1, "eth_getLogs", [params]))
    started = time.perf_counter()
    logs = response.json()["result"]
    json_s = time.perf_counter() - started
    started = time.perf_counter()
    matched = [t for t in map(decode_transfer, logs) if t is not None and t.recipient in addresses]
    match_s = time.perf_counter() - started
    assert len(matched) == tset.to_deposit, len(matched)
    return len(response.content), json_s, match_s


async def breakdown(size: int, template: str, tset: TransferSet, config: ScanConfig, anvil: AnvilNode) -> Breakdown:
    names = {load_queries()[name]: name for name in load_queries().names()}
    statements: list[Any] = []  # asyncpg's LoggedQuery records
    reader = TimedWeb3Reader(anvil.rpc_url) if rpc_client() == "web3" else TimedReader(anvil.rpc_url)
    try:
        async with database_copy(template, f"n{size}_breakdown") as pool:
            await warm_up(pool, reader, config, tset)
            await set_cursor(pool, tset.first_block + RESCAN)
            reader.spent.clear()
            reader.count.clear()
            async with pool.acquire() as conn:
                conn.add_query_logger(statements.append)
                pids = {"bench process": os.getpid(), "its PostgreSQL backend": conn.get_server_pid(),
                        "anvil": anvil.process.pid}  # fmt: skip
            await asyncio.sleep(0)  # the logger's callbacks run soon after a statement
            statements.clear()  # the release of that acquire is not part of the round
            before = {role: cpu_seconds(pid) for role, pid in pids.items()}
            sample = await timed_round(pool, reader, config)
            cpu = {role: cpu_seconds(pid) - before[role] for role, pid in pids.items()}
            await asyncio.sleep(0)  # the query logger's last callbacks
            round_statements = statements[:]
            addresses = {r["address"]: r["id"] for r in await pool.fetch(ALL_ADDRESSES)}
        size_bytes, json_s, match_s = await json_and_matching(reader, tset, addresses)
    finally:
        await reader.aclose()
    sql: dict[str, tuple[int, float]] = {}
    for record in round_statements:
        name = _statement_name(record.query, names)
        count, spent = sql.get(name, (0, 0.0))
        sql[name] = (count + 1, spent + record.elapsed)
    rpc = {method: (reader.count[method], reader.spent[method]) for method in reader.count}
    return Breakdown(size, sample.seconds, cpu, rpc, sql, size_bytes, json_s, match_s)


# --- a real worker's memory ----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerFigures:
    rss_idle_mb: float  # after start-up, before its first round ended
    rss_mb: float  # after WORKER_ROUNDS rounds
    hwm_mb: float  # peak RSS of its whole life
    rounds: int
    first_round: dict[str, Any]
    scan_jobs: list[str]  # its rounds as scan_rounds holds them (arq no longer logs a line per job)


def proc_status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


async def flush_redis() -> None:
    client = Redis.from_url(REDIS_URL)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


def worker_env(dsn: str, anvil_url: str) -> dict[str, str]:
    return {
        **base_env(dsn, REDIS_URL),
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),  # the code of this checkout, not whichever the venv's editable install names
        "BASE_RPC_URL": anvil_url,
        "TREASURY_PRIVATE_KEY": TREASURY_KEY,
        "INTENT_POLL_SECONDS": "1",
        "DEPOSIT_CONFIRMATIONS_REQUIRED": str(CONFIRMATIONS),
        "KIOTA_LOG_FORMAT": "json",
    }


async def worker_memory(template: str, tset: TransferSet, anvil_url: str) -> WorkerFigures:
    await flush_redis()
    name = f"{PREFIX}worker"
    await admin_execute(_drop(name), _create(name, template))
    pool = await create_pool(dsn_for(name), min_size=1, max_size=2)
    with tempfile.TemporaryDirectory(prefix="kiota-b6-") as run_dir:
        log_path = Path(run_dir) / "worker.log"
        try:
            await set_cursor(pool, tset.first_block + RESCAN)  # its first round ingests the size's 1,000-transfer set
            with log_path.open("wb") as log:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", worker_module(), "worker", env=worker_env(dsn_for(name), anvil_url),
                    stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT, cwd=run_dir,
                )  # fmt: skip
            try:
                idle, rounds = await _watch_worker(process, pool, log_path)
                rss, hwm = proc_status_mb(process.pid, "VmRSS"), proc_status_mb(process.pid, "VmHWM")
            finally:
                await stop(process, grace=20)
            rows = await pool.fetch(
                "SELECT from_block, to_block, rpc_calls, transfers, finished_at - started_at AS took"
                " FROM scan_rounds ORDER BY id"
            )
        finally:
            await pool.close()
            await admin_execute(_drop(name))
            await flush_redis()
        jobs = [
            f"{r['took'].total_seconds():6.2f}s blocks {r['from_block']}-{r['to_block']} "
            f"transfers={r['transfers']} rpc_calls={r['rpc_calls']}"
            for r in rows
        ]
    first = dict(rows[0]) if rows else {}
    return WorkerFigures(idle, rss, hwm, rounds, first, jobs)


async def _watch_worker(process: asyncio.subprocess.Process, pool: asyncpg.Pool, log: Path) -> tuple[float, int]:
    """Sample its RSS until it has run WORKER_ROUNDS rounds; the RSS while it had run none."""
    idle = 0.0
    deadline = time.monotonic() + WORKER_DEADLINE_S
    while True:
        if process.returncode is not None:
            raise RuntimeError(f"kiota worker exited with code {process.returncode}; its log ends:\n{_tail(log)}")
        rounds = int(await pool.fetchval("SELECT count(*) FROM scan_rounds"))
        if rounds == 0:
            idle = proc_status_mb(process.pid, "VmRSS")
        if rounds >= WORKER_ROUNDS:
            return idle, rounds
        if time.monotonic() > deadline:
            raise RuntimeError(f"kiota worker ran {rounds} scan rounds in {WORKER_DEADLINE_S:.0f} s")
        await asyncio.sleep(0.1)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


# --- the machine and the report ----------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown",
    )  # fmt: skip
    mem_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    anvil = subprocess.run([str(anvil_binary()), "--version"], capture_output=True, text=True, check=False)
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "anvil": anvil.stdout.splitlines()[0] if anvil.stdout else "unknown",
        "load": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "code": _code_version(),
    }


def _code_version() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    changed = [line[3:] for line in git("status", "--porcelain", "--", "kiota", "jobs", "sql").splitlines()]
    return f"commit {git('rev-parse', '--short', 'HEAD')}" + (
        f" with uncommitted changes in {', '.join(changed)}" if changed else " (kiota/, jobs/, sql/ unmodified)"
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def med(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def render_table(results: list[SizeResult]) -> list[str]:
    lines = [
        "| deposit addresses | transfers in range (to deposit addresses / distinct paid) | matched / credited "
        "| RPC calls: RoundReport | RPC calls: all, incl. balance cache | round ms, median (min) "
        "| rescan of same range ms, median (min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        fresh, rescan = r.fresh, r.rescan
        lines.append(
            f"| {r.label.removeprefix('n').replace('_', ' ')} | {r.tset.transfers} ({r.tset.to_deposit} / "
            f"{r.tset.recipients}) | {fresh[0].report.matched} / {fresh[0].report.credited} "
            f"| {med(s.reported_calls for s in fresh):g} | {med(s.calls for s in fresh):g} "
            f"| {ms(med(s.seconds for s in fresh))} ({ms(min(s.seconds for s in fresh))}) "
            f"| {ms(med(s.seconds for s in rescan))} ({ms(min(s.seconds for s in rescan))}) |"
        )
    return lines


def render_breakdown(b: Breakdown) -> list[str]:
    lines = [
        f"Round at {b.size:,} addresses: {ms(b.seconds)} ms wall; CPU during it: "
        + ", ".join(f"{role} {ms(spent)} ms" for role, spent in b.cpu.items())
        + ".",
        "",
        "| part | count | ms |",
        "|---|---|---|",
    ]
    for method, (count, spent) in sorted(b.rpc.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"| RPC {method} (HTTP + anvil + JSON decode) | {count} | {ms(spent)} |")
    sql_total = sum(spent for _, spent in b.sql.values())
    sql_count = sum(count for count, _ in b.sql.values())
    lines.append(f"| SQL, all statements (round trips, sequential) | {sql_count} | {ms(sql_total)} |")
    shown = sorted(b.sql.items(), key=lambda kv: -kv[1][1])[:10]
    shown += [
        (name, b.sql[name])
        for name in ("deposit_addresses_among",)
        if name in b.sql and (name, b.sql[name]) not in shown
    ]
    for name, (count, spent) in shown:
        lines.append(f"| &nbsp;&nbsp;SQL {name} | {count} | {spent * 1000:.1f} |")
    rest = b.seconds - sql_total - sum(spent for _, spent in b.rpc.values())
    lines.append(f"| the rest (Python between awaits: decoding, ledger entries, logging, event loop) | | {ms(rest)} |")
    lines += [
        "",
        f"The eth_getLogs answer is {b.logs_bytes / 1024:.0f} KiB; decoding its JSON alone takes "
        f"{b.json_decode_s * 1000:.1f} ms, and decoding + matching its 1,000 logs against the address set "
        f"{b.match_s * 1000:.2f} ms.",
    ]
    return lines


def _of(result: SizeResult, what: str) -> float:
    """A size's median figure: round seconds, RPC calls (all / reported), or the worker's peak RSS in MB."""
    if what == "rss":
        return max(result.worker.rss_mb, result.worker.hwm_mb) if result.worker else float("nan")
    return med(getattr(s, what) for s in result.fresh)


def render_ratios(results: list[SizeResult]) -> list[str]:
    base = next(r for r in results if r.label == f"n{BASELINE}")
    lines = [
        f"Each figure with its ratio against {BASELINE} addresses, measured in the same run:",
        "",
        "| deposit addresses | round ms, median | × | RPC calls per round (all) | × | worker RSS MB, peak | × |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.label == f"n{BASELINE}_again":
            continue
        row = [f"{r.size:,}"]
        for what, shown in (("seconds", lambda v: ms(v)), ("calls", lambda v: f"{v:g}"), ("rss", lambda v: f"{v:.0f}")):
            value, against = _of(r, what), _of(base, what)
            row += [shown(value), f"{value / against:.2f}×"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def render(
    info: dict[str, str], results: list[SizeResult], breakdowns: list[Breakdown], setup: dict[str, float], reps: int,
    total_s: float,
) -> str:  # fmt: skip
    by_label = {r.label: r for r in results}
    small, large = by_label[f"n{BASELINE}"], by_label[f"n{max(SIZES)}"]
    calls_all = _of(large, "calls") / _of(small, "calls")
    calls_reported = _of(large, "reported_calls") / _of(small, "reported_calls")
    large_s = _of(large, "seconds")
    top = f"{max(SIZES):,}"
    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, `{COMMAND}` ({reps} repetitions per size, "
        f"{total_s:.0f} s in all).",
        "",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} memory, Linux {info['kernel']}, "
        f"Python {info['python']}, {info['anvil']}, PostgreSQL and Redis local; load average before: {info['load']}.",
        f"Code measured: {info['code']}. JSON-RPC client: {described()}.",
        f"Set-up: {setup['derive_s']:.1f} s to derive (or read from bench/.cache) {top} deposit addresses, "
        f"{setup['mint_s']:.1f} s per 1,000-transfer set minted (median).",
        "",
        *render_table(results),
        "",
        *render_ratios(results),
        "",
        "| goal | measured | met |",
        "|---|---|---|",
        f"| RPC calls at {top} ≤ {GOAL_CALLS_RATIO}× calls at {BASELINE} | RoundReport.rpc_calls: "
        f"{calls_reported:.2f}×; all calls of scan_round: {calls_all:.2f}× | {_met(calls_reported <= GOAL_CALLS_RATIO)}"
        f" / {_met(calls_all <= GOAL_CALLS_RATIO)} |",
        f"| round at {top} < {GOAL_ROUND_S:g} s | {ms(large_s)} ms median | {_met(large_s < GOAL_ROUND_S)} |",
    ]
    worker = large.worker
    if worker is not None:
        lines.append(
            f"| worker RSS at {top} < {GOAL_RSS_MB:g} MB | {worker.rss_mb:.0f} MB after {worker.rounds} rounds "
            f"(idle before its first round: {worker.rss_idle_mb:.0f} MB; peak VmHWM {worker.hwm_mb:.0f} MB) "
            f"| {_met(max(worker.rss_mb, worker.hwm_mb) < GOAL_RSS_MB)} |"
        )
    for b in breakdowns:
        lines += ["", *render_breakdown(b)]
    if worker is not None:
        first = worker.first_round
        lines += [
            "",
            f"The worker's first recorded round at {top} (scan_rounds): blocks {first.get('from_block')}-"
            f"{first.get('to_block')}, {first.get('transfers')} transfers, {first.get('rpc_calls')} RPC calls "
            "recorded. Its rounds as scan_rounds holds them (duration, blocks, transfers, RPC calls):",
            "",
            *(f"    {line}" for line in worker.scan_jobs[:8]),
        ]
    return "\n".join(lines)


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


BEGIN = "<!-- b6:figures:begin (written by bench/b6_ingester.py; the rest of this file is kept) -->"
END = "<!-- b6:figures:end -->"
HEADER = "# B6 — the chain ingester at 10 … 100,000 deposit addresses\n\n"


def write_results(figures: str) -> None:
    block = f"{BEGIN}\n{figures}\n{END}"
    if RESULTS.exists():
        text = RESULTS.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            text = head + block + rest.split(END, 1)[1]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
    else:
        text = HEADER + block + "\n\n## Notes\n"
    RESULTS.write_text(text)


# --- the run -------------------------------------------------------------------------------------


def quiet_logging() -> None:
    """Logs as the worker writes them (structlog JSON, libraries' lines through the same renderer),
    sent nowhere: their formatting still costs, as in the worker."""
    configure_logging(json=True)
    sink = open(os.devnull, "w")  # lives as long as the process
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sink))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sink)


async def run(reps: int) -> str:
    started = time.perf_counter()
    info = machine()
    await drop_ours()
    base = f"{PREFIX}base"
    await admin_execute(_create(base))
    await migrate(dsn_for(base))
    derive_started = time.perf_counter()
    addresses = deposit_addresses(TEST_XPUB, max(SIZES))
    setup = {"derive_s": time.perf_counter() - derive_started}
    templates = {size: await make_size_template(base, size, addresses) for size in SIZES}
    say(f"databases ready ({time.perf_counter() - started:.1f} s)")
    treasury = Account.from_key(TREASURY_KEY).address
    config = ScanConfig(CHAIN_ID, BASE_USDC_ADDRESS, treasury, CONFIRMATIONS, 120, RESCAN)
    rng = random.Random(6)  # test data, the same every run
    results: list[SizeResult] = []
    breakdowns: list[Breakdown] = []
    async with start_anvil(free_port()) as node, httpx.AsyncClient(timeout=30) as http:
        async with connect_web3(node.rpc_url) as w3:
            await install_usdc(w3, BASE_USDC_ADDRESS)
        accounts = (await http.post(node.rpc_url, json=_request(0, "eth_accounts", []))).json()["result"]
        chain = Chain(node.rpc_url, http, accounts[0])  # anvil's unlocked account 0 mints
        await chain.call("evm_setAutomine", False)
        reader = reader_class()(node.rpc_url)
        try:
            for size, label in [*((s, f"n{s}") for s in SIZES), (10, "n10_again")]:
                tset = await mint_set(chain, addresses[:size], rng)
                result = SizeResult(size, label, tset)
                await measure_size(result, templates[size], reader, config, reps)
                results.append(result)
                say(f"{label}: round median {ms(med(s.seconds for s in result.fresh))} ms, "
                    f"calls {[s.calls for s in result.fresh]} ({time.perf_counter() - started:.0f} s)")  # fmt: skip
                if size in (BASELINE, max(SIZES)) and label == f"n{size}":
                    breakdowns.append(await breakdown(size, templates[size], tset, config, node))
                if label == f"n{size}":
                    result.worker = worker = await worker_memory(templates[size], tset, node.rpc_url)
                    say(f"{label}: worker RSS {worker.rss_mb:.0f} MB, peak {worker.hwm_mb:.0f} MB")
        finally:
            await reader.aclose()
    setup["mint_s"] = med(r.tset.mint_seconds for r in results)
    return render(info, results, breakdowns, setup, reps, time.perf_counter() - started)


async def main_async(reps: int, write: bool) -> int:
    try:
        async with asyncio.timeout(TIME_LIMIT_S):
            figures = await run(reps)
    finally:
        await drop_ours()
    print(figures)
    if write:
        write_results(figures)
        say(f"figures written to {RESULTS.relative_to(REPO)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.b6_ingester", description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="measured rounds per size (default 5)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS-ingester.md alone")
    args = parser.parse_args()
    quiet_logging()  # the logging set-up also routes uncaught exceptions to its (silenced) logger
    try:
        return asyncio.run(main_async(max(1, args.reps), not args.no_write))
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
