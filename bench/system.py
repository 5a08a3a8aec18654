"""The whole Kiota system, assembled for benchmarks: databases, Redis, anvil, and the processes.

It mirrors tests/conftest.py's `mpesa_system` (the same settings from tests.support, the same
chain helpers, the same treasury funding) with one difference that matters when measuring:
`kiota api` and `kiota worker` run as separate processes, started exactly as in production, so
that neither shares an interpreter with the load generator or with this harness.

The benchmarks deliver callbacks themselves. The payout job asks Daraja's STK query to confirm each
success before it pays (kiota/confirm.py), so the stack serves the Daraja simulator in this process,
and `insert_pending` seeds it with each deposit's push, paid: the query is in the measured path.

Everything started here is stopped here: databases `kiota_bench_<pid>_*` (a migrated template,
then a fresh copy per benchmark), Redis db 7 (flushed before and after), one anvil, and the
child processes (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO

import asyncpg
import httpx
from eth_account import Account
from redis.asyncio import Redis

from bench.callbacks import checkout_id, receipt_no
from bench.rpc_client import worker_module
from kiota.db import create_pool
from kiota.dev.chain import (
    BASE_USDC_ADDRESS,
    AnvilNode,
    Web3Client,
    connect,
    fund_eth,
    install_usdc,
    mint_usdc,
    start_anvil,
)
from kiota.dev.daraja_sim import running_simulator
from kiota.dev.daraja_sim_behaviour import DarajaSimulator, SimulatorConfig
from kiota.hdwallet import ExtendedPublicKey
from kiota.migrate import migrate
from kiota.money import kes_to_usdc
from kiota.process import stop as stop_process
from kiota.users import ensure_user
from tests.support import ADMIN_DSN, CALLBACK_TOKEN, TEST_XPUB, TREASURY_KEY, base_env, dsn_for, free_port

REPO = Path(__file__).resolve().parents[1]
WORKER_TUNING = ("QUEUE_CONCURRENCY_PAYOUTS", "PAYOUT_MAX_IN_FLIGHT")
REDIS_BENCH_URL = os.environ.get("KIOTA_BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
DB_PREFIX = "kiota_bench_"
KES_PER_USD = Decimal("129.50")
TREASURY_ETH_WEI = 100 * 10**18
TREASURY_USDC_MICRO = 1_000_000 * 10**6
CALLBACK_PATH = f"/api/v1/deposit/mpesa-callback/{CALLBACK_TOKEN}"
STOP_GRACE_SECONDS = 15.0


async def _drop(admin: asyncpg.Connection, name: str) -> None:
    assert name.startswith(DB_PREFIX) and name.replace("_", "").isalnum(), name
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def drop_stale_databases(admin: asyncpg.Connection) -> list[str]:
    """Databases left by an earlier run that died (its pid no longer exists)."""
    names = await admin.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'kiota\\_bench\\_%'")
    dropped = []
    for row in names:
        pid = row["datname"].removeprefix(DB_PREFIX).split("_", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            await _drop(admin, row["datname"])
            dropped.append(row["datname"])
    return dropped


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def flush_redis(url: str) -> None:
    client = Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


@dataclass
class Stack:
    run_dir: Path
    tag: str
    template: str
    redis_url: str
    anvil: AnvilNode
    anvil_log: Path
    treasury_address: str
    simulator: DarajaSimulator
    simulator_url: str
    # A diagnosis only (`--synchronous-commit off`): set on each benchmark database, never on the server.
    synchronous_commit: str | None = None
    # The worker's TREASURY_PRIVATE_KEY, comma-separated when several (B7 --treasuries N); each funded on `anvil`.
    treasury_keys: tuple[str, ...] = (TREASURY_KEY,)

    @contextlib.asynccontextmanager
    async def database(self, suffix: str) -> AsyncIterator[str]:
        """A fresh copy of the migrated template for one benchmark; dropped afterwards."""
        name = f"{DB_PREFIX}{self.tag}_{suffix}"
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            await _drop(admin, name)
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
            if self.synchronous_commit is not None:
                assert self.synchronous_commit in ("on", "off")
                await admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = {self.synchronous_commit}')
        finally:
            await admin.close()
        try:
            yield dsn_for(name)
        finally:
            admin = await asyncpg.connect(ADMIN_DSN)
            try:
                await _drop(admin, name)
            finally:
                await admin.close()

    def env(self, database_url: str, *, port: int | None = None, worker: bool = False) -> dict[str, str]:
        """The environment of `kiota api` / `kiota worker` (only PATH comes from outside)."""
        env = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": str(REPO),
            **base_env(database_url, self.redis_url),
            "BASE_RPC_URL": self.anvil.rpc_url,
            "BASE_USDC_ADDRESS": BASE_USDC_ADDRESS,
            "MPESA_BASE_URL": self.simulator_url,
            "KIOTA_LOG_FORMAT": "json",
        }
        if port is not None:
            env["PORT"] = str(port)
            env["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"
        if worker:
            env["TREASURY_PRIVATE_KEY"] = ",".join(self.treasury_keys)  # only the worker signs
            # The worker's tuning may be tried from outside, e.g.
            # `QUEUE_CONCURRENCY_PAYOUTS=60 .venv/bin/python -m bench --only B7`.
            env.update({name: os.environ[name] for name in WORKER_TUNING if name in os.environ})
        return env

    def anvil_rpcs(self) -> list[str]:
        """The RPC methods anvil served so far, in order (it logs one line per call)."""
        lines = (line.strip() for line in _read_lines(self.anvil_log))
        return [line for line in lines if line.startswith(("eth_", "anvil_", "evm_", "net_", "web3_"))]

    def anvil_rpc_count(self) -> int:
        return len(self.anvil_rpcs())


def _read_lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines()


def last_error(log: Path) -> str:
    """The last line of a child's log that mentions an error (for a failure message)."""
    lines = (
        [line for line in _read_lines(log) if "error" in line.lower() or "Traceback" in line] if log.exists() else []
    )
    return lines[-1][:1000] if lines else "(none)"


@contextlib.asynccontextmanager
async def bench_stack(run_dir: Path) -> AsyncIterator[Stack]:
    """A migrated template database, a flushed Redis db, anvil with USDC and a funded treasury."""
    tag = str(os.getpid())
    template = f"{DB_PREFIX}{tag}_tpl"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await drop_stale_databases(admin)
        await _drop(admin, template)
        await admin.execute(f'CREATE DATABASE "{template}"')
    finally:
        await admin.close()
    anvil_log = run_dir / "anvil.log"
    try:
        await migrate(dsn_for(template))
        await flush_redis(REDIS_BENCH_URL)
        treasury = Account.from_key(TREASURY_KEY).address
        daraja = base_env(dsn_for(template))  # the simulator takes the credentials the processes present
        sim_config = SimulatorConfig(daraja["MPESA_CONSUMER_KEY"], daraja["MPESA_CONSUMER_SECRET"])
        async with (
            start_anvil(free_port(), log_path=anvil_log) as node,
            connect(node.rpc_url) as w3,
            running_simulator(sim_config) as sim,
        ):
            await install_usdc(w3, BASE_USDC_ADDRESS)
            await fund_treasuries(w3, [treasury])
            yield Stack(run_dir, tag, template, REDIS_BENCH_URL, node, anvil_log, treasury, sim.simulator, sim.base_url)
    finally:
        await flush_redis(REDIS_BENCH_URL)
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            await _drop(admin, template)
        finally:
            await admin.close()


async def fund_treasuries(w3: Web3Client, addresses: Sequence[str]) -> None:
    """Gas and USDC for each treasury, as the tests fund theirs (USDC must already be installed)."""
    for address in addresses:
        await fund_eth(w3, address, TREASURY_ETH_WEI)
        await mint_usdc(w3, BASE_USDC_ADDRESS, address, TREASURY_USDC_MICRO)


# --- child processes ---------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        if self.process.returncode is not None:
            tail = "\n".join(_read_lines(self.log_path)[-20:])
            raise RuntimeError(f"{self.name} exited with code {self.process.returncode}; log tail:\n{tail}")


def _open_log(path: Path) -> IO[bytes]:
    return path.open("ab")


@contextlib.asynccontextmanager
async def python_child(
    name: str, module: str, args: Sequence[str], env: dict[str, str], run_dir: Path
) -> AsyncIterator[Child]:
    """`python -m module args` in its own session, its output in run_dir/<name>.log; stopped on exit."""
    log = _open_log(run_dir / f"{name}.log")
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            *args,
            env=env,
            cwd=run_dir,  # no stray .env is read
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the harness only; it stops its children in order
        )
        child = Child(name, process, run_dir / f"{name}.log")
        try:
            yield child
        finally:
            await stop(child)
    finally:
        log.close()


@contextlib.asynccontextmanager
async def py_spy(pid: int, output: Path | None, seconds_limit: float = 120) -> AsyncIterator[None]:
    """Sample `pid` with py-spy (Python frames) for the block; nothing when `output` is None.

    It attaches to a running process, so the profile covers the measured window only, not the start-up.
    """
    if output is None:
        yield
        return
    py_spy_bin = Path(sys.executable).with_name("py-spy")
    # --nonblocking: sample without pausing the process, so the profile costs it little (and so no --native:
    # py-spy must pause a process to unwind C frames, which cut B1's throughput thirty-fold when tried).
    options = ["--format", "raw", "--rate", "200", "--nonblocking", "--duration", f"{seconds_limit:.0f}"]
    log = _open_log(output.with_suffix(".log"))
    try:
        process = await asyncio.create_subprocess_exec(
            str(py_spy_bin), "record", *options, "--pid", str(pid), "-o", str(output),
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        await asyncio.sleep(0.3)  # py-spy attaches
        try:
            yield
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGINT)  # py-spy writes its profile on Ctrl-C
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
    finally:
        log.close()


async def stop(child: Child) -> None:
    await stop_process(child.process, grace=STOP_GRACE_SECONDS)


async def wait_http(url: str, child: Child, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=2) as http:
        while True:
            child.check_alive()
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(url)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} was not ready within {seconds:.0f} s")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def kiota_api(stack: Stack, database_url: str) -> AsyncIterator[tuple[Child, str]]:
    """`kiota api` on a free port; yields once /health/ready answers 200."""
    port = free_port()
    env = stack.env(database_url, port=port)
    async with python_child("kiota-api", "kiota.cli", ["api"], env, stack.run_dir) as child:
        base_url = f"http://127.0.0.1:{port}"
        await wait_http(f"{base_url}/health/ready", child)
        yield child, base_url


@contextlib.asynccontextmanager
async def bare_api(stack: Stack) -> AsyncIterator[tuple[Child, str]]:
    port = free_port()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "PORT": str(port)}
    async with python_child("bare-api", "bench.bare_app", [], env, stack.run_dir) as child:
        base_url = f"http://127.0.0.1:{port}"
        await wait_http(f"{base_url}/ready", child)
        yield child, base_url


@contextlib.asynccontextmanager
async def kiota_worker(stack: Stack, database_url: str, pool: asyncpg.Pool, number: int = 1) -> AsyncIterator[Child]:
    """`kiota worker` (the `number`-th on this database); yields once its start-up heartbeat is in PostgreSQL
    (pool, treasury and all built)."""
    env = stack.env(database_url, worker=True)
    name = "kiota-worker" if number == 1 else f"kiota-worker-{number}"
    async with python_child(name, worker_module(), ["worker"], env, stack.run_dir) as child:
        deadline = time.monotonic() + 30
        # The benchmark's database is fresh: its heartbeats are this worker's and the ones started before it.
        while await pool.fetchval("SELECT count(*) FROM worker_heartbeats") < number:
            child.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("kiota worker did not start within 30 s")
            await asyncio.sleep(0.05)
        yield child


@contextlib.asynccontextmanager
async def kiota_workers(stack: Stack, database_url: str, pool: asyncpg.Pool, count: int) -> AsyncIterator[list[Child]]:
    """`count` `kiota worker` processes on the same Redis and database, as production scales (each stopped on exit)."""
    async with contextlib.AsyncExitStack() as children:
        workers = [
            await children.enter_async_context(kiota_worker(stack, database_url, pool, n + 1)) for n in range(count)
        ]
        yield workers


# --- deposits ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingDeposit:
    id: uuid.UUID
    index: int
    checkout_request_id: str
    receipt: str
    amount_kes: int


async def bench_pool(database_url: str) -> asyncpg.Pool:
    return await create_pool(database_url, min_size=1, max_size=10)


async def make_users(pool: asyncpg.Pool, count: int) -> list[str]:
    xpub = ExtendedPublicKey.parse(TEST_XPUB)
    users = [f"bench-user-{i}" for i in range(count)]
    for user in users:
        await ensure_user(pool, user, xpub)
    return users


_INSERT_PENDING = """
INSERT INTO deposits (id, user_id, status, amount_kes, kes_per_usd, amount_usdc, phone_masked,
                      checkout_request_id, merchant_request_id, next_query_at)
SELECT d.id, d.user_id, 'pending', $3, $4, $5, '2547****4149', d.checkout, '29115-34620561-1', now() + interval '1 hour'
FROM unnest($1::uuid[], $2::text[], $6::text[]) AS d (id, user_id, checkout)
"""


async def insert_pending(
    pool: asyncpg.Pool,
    users: list[str],
    prefix: str,
    count: int,
    amount_kes: int,
    start: int = 0,
    simulator: DarajaSimulator | None = None,
) -> list[PendingDeposit]:
    """`count` deposits as `initiate` leaves them after an accepted push, in one statement; with
    `simulator`, their pushes are known to it as paid, so the STK query confirms their successes."""
    deposits = [
        PendingDeposit(uuid.uuid4(), i, checkout_id(prefix, i), receipt_no(i), amount_kes)
        for i in range(start, start + count)
    ]
    quote = kes_to_usdc(amount_kes, KES_PER_USD)
    await pool.execute(
        _INSERT_PENDING,
        [d.id for d in deposits],
        [users[d.index % len(users)] for d in deposits],
        amount_kes,
        KES_PER_USD,
        quote.amount_usdc_micro,
        [d.checkout_request_id for d in deposits],
    )
    for d in deposits if simulator is not None else []:
        simulator.seed_push(d.checkout_request_id, amount_kes)
    return deposits


async def show(pool: asyncpg.Pool, setting: str) -> str:
    assert setting.replace("_", "").isalnum()
    return str(await pool.fetchval(f"SHOW {setting}"))


async def xact_commits(database_url: str) -> int:
    """Transactions committed in the database so far (flushed by backends when they exit)."""
    conn = await asyncpg.connect(database_url)
    try:
        name = database_url.rsplit("/", 1)[1]
        return int(await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = $1", name))
    finally:
        await conn.close()
