"""Fixtures over the real services: PostgreSQL, Redis, anvil, the Daraja simulator, and our own API and worker.

- PostgreSQL: one migrated template database per session; each test that asks for a
  database gets its own copy (CREATE DATABASE … TEMPLATE), dropped afterwards.
- Redis: the session claims a logical database of its own (concurrent test runs must not
  flush each other's); a test's `redis_url` is flushed before and after it.
- anvil: one node per session, TestUSDC at the Base USDC address; a test's `chain` is a
  snapshot, reverted after it.
- `mpesa_system`: the whole M-Pesa system over these: the simulator, the API on a real port,
  and a real arq worker in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from arq.connections import ArqRedis
from arq.worker import Worker
from fastapi import FastAPI
from redis.asyncio import Redis
from web3.types import RPCEndpoint

from api.app import create_app
from jobs.context import WorkerContext, WorkerState, WorkerTuning
from jobs.outages import cancel_jobs_until_done, cancel_until_done
from jobs.worker import QueueWorker, build_workers, shutdown
from kiota.confirm import ConfirmTiming
from kiota.db import create_pool
from kiota.dev.chain import (
    BASE_USDC_ADDRESS,
    AnvilNode,
    Web3Client,
    connect,
    fund_eth,
    install_usdc,
    mint_usdc,
    revert,
    snapshot,
    start_anvil,
)
from kiota.dev.daraja_sim import running_simulator
from kiota.dev.daraja_sim_behaviour import DarajaSimulator, SimulatorConfig
from kiota.dev.serving import serve_in_background
from kiota.migrate import migrate
from kiota.payouts import LaneConfig
from kiota.queue import create_queue
from kiota.settings import Settings, WorkerSettings
from kiota.treasury import Treasury
from tests.support import (
    CALLBACK_TOKEN,
    REDIS_TEST_URL,
    TREASURY_KEY,
    admin_execute,
    bearer,
    dsn_for,
    free_port,
    settings_kwargs,
)

_counter = itertools.count()


def _drop(name: str) -> str:
    return f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'


@pytest.fixture(scope="session")
async def template_db() -> AsyncIterator[str]:
    name = f"kiota_tpl_{os.getpid()}"
    await admin_execute(_drop(name), f'CREATE DATABASE "{name}"')
    await migrate(dsn_for(name))
    yield name
    await admin_execute(_drop(name))


@pytest.fixture
async def empty_database_url() -> AsyncIterator[str]:
    """A database that does not exist yet (for migration tests)."""
    name = f"kiota_e_{os.getpid()}_{next(_counter)}"
    yield dsn_for(name)
    await admin_execute(_drop(name))


@pytest.fixture
async def database_url(template_db: str) -> AsyncIterator[str]:
    name = f"kiota_t_{os.getpid()}_{next(_counter)}"
    await admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield dsn_for(name)
    await admin_execute(_drop(name))


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    db = await create_pool(database_url, min_size=1, max_size=20)
    yield db
    await db.close()


@pytest.fixture(scope="session")
async def redis_base_url() -> AsyncIterator[str]:
    """A Redis database of this test session's own: concurrent test runs must not flush each other."""
    base = REDIS_TEST_URL.rsplit("/", 1)[0]
    for db in range(int(REDIS_TEST_URL.rsplit("/", 1)[1]), 16):
        client = Redis.from_url(f"{base}/{db}")
        claimed = await client.set("kiota-test-session", os.getpid(), nx=True, ex=3600)
        if claimed:
            try:
                yield f"{base}/{db}"
            finally:
                await client.flushdb()
                await client.aclose()
            return
        await client.aclose()
    raise RuntimeError("every Redis database from KIOTA_TEST_REDIS_URL's up is claimed by another test run")


@pytest.fixture
async def redis_url(redis_base_url: str) -> AsyncIterator[str]:
    client = Redis.from_url(redis_base_url)
    await client.flushdb()
    await client.set("kiota-test-session", os.getpid(), ex=3600)  # keep the claim across the flush
    yield redis_base_url
    await client.flushdb()
    await client.set("kiota-test-session", os.getpid(), ex=3600)
    await client.aclose()


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    return Settings(_env_file=None, **settings_kwargs(database_url, redis_url))  # type: ignore[call-arg]


@pytest.fixture
def worker_settings(database_url: str, redis_url: str) -> WorkerSettings:
    return WorkerSettings(  # type: ignore[call-arg]
        _env_file=None, treasury_private_key=TREASURY_KEY, **settings_kwargs(database_url, redis_url)
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kiota.test") as http:
        yield http


# --- the chain: one anvil per session, a snapshot reverted after each test ------------------------


@pytest.fixture(scope="session")
async def anvil() -> AsyncIterator[AnvilNode]:
    async with start_anvil(free_port()) as node, connect(node.rpc_url) as w3:
        await install_usdc(w3, BASE_USDC_ADDRESS)
        yield node


@pytest.fixture
async def chain(anvil: AnvilNode) -> AsyncIterator[Web3Client]:
    async with connect(anvil.rpc_url) as w3:
        snap = await snapshot(w3)
        yield w3
        await w3.provider.make_request(RPCEndpoint("evm_setAutomine"), [True])
        await revert(w3, snap)


# --- the whole M-Pesa system: simulator, API on a real port, a real arq worker -------------------


@dataclass
class MpesaSystem:
    settings: WorkerSettings
    api_url: str
    http: httpx.AsyncClient
    simulator: DarajaSimulator
    simulator_url: str
    pool: asyncpg.Pool
    w3: Web3Client
    treasury_address: str
    callback_url: str
    queue: ArqRedis
    workers: list[QueueWorker] = dataclasses.field(default_factory=list)  # one per queue, sharing one ctx
    _worker_tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    _worker_redis: ArqRedis | None = None

    @property
    def worker(self) -> Worker | None:
        """The running worker (its first queue worker: they share their `ctx`), or None."""
        return self.workers[0] if self.workers else None

    async def initiate(self, user: str, amount_kes: int, phone: str = "254708374149", **headers: str) -> httpx.Response:
        return await self.http.post(
            "/api/v1/deposit/initiate",
            json={"amount_kes": amount_kes, "phone": phone},
            headers={**bearer(user), **headers},
        )

    async def deposit(self, user: str, deposit_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/api/v1/deposits/{deposit_id}", headers=bearer(user))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def wait_status(self, user: str, deposit_id: str, *statuses: str, seconds: float = 20) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            body = await self.deposit(user, deposit_id)
            if body["status"] in statuses:
                return body
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"deposit stayed {body['status']}, wanted {statuses}: {body}")
            await asyncio.sleep(0.05)

    async def review_reason(self, deposit_id: str) -> str:
        """Why a deposit is in review, as operators read it (the app is shown a sentence for users)."""
        reason = await self.pool.fetchval("SELECT review_reason FROM deposits WHERE id = $1::uuid", deposit_id)
        return str(reason)

    async def start_worker(self, queues: str | None = None) -> Worker:
        """The real arq workers (one per queue) in this process, their lane waits and backoffs shortened for
        tests; `queues`: a subset, as `kiota worker --queues`."""
        assert not self.workers
        settings = self.settings if queues is None else self.settings.model_copy(update={"worker_queues": queues})
        ctx: dict[str, Any] = {}
        self._worker_redis = create_queue(settings.redis_url)
        self.workers = build_workers(
            settings,
            self._worker_redis,
            ctx,
            tuning=WorkerTuning(
                lane=LaneConfig(poll_seconds=0.02, watch_seconds=3),
                backoff_base_seconds=0.05,
                query_backoff_seconds=0.5,
                confirm_timing=ConfirmTiming(backoff_base_seconds=0.1, backoff_max_seconds=0.5),
            ),
        )
        self._worker_tasks = [asyncio.create_task(worker.async_run()) for worker in self.workers]
        async with asyncio.timeout(20):  # until its start-up (and start-up sweep) is done
            while (state := WorkerState.of(ctx)) is None or not state.started:
                assert not any(task.done() for task in self._worker_tasks), self._worker_tasks
                await asyncio.sleep(0.01)
        return self.workers[0]

    @property
    def context(self) -> WorkerContext:
        """The running worker's context: its pool, clients and tuning."""
        assert self.worker is not None
        return WorkerContext.of(self.worker.ctx)

    def use_treasury(self, treasury: Treasury) -> Treasury:
        """Give the worker's next jobs `treasury` (e.g. one behind a failing RPC); returns the one they had."""
        assert self.worker is not None
        context = self.context
        self.worker.ctx[WorkerContext.KEY] = dataclasses.replace(context, treasury=treasury)
        return context.treasury

    async def stop_worker(self) -> None:
        if not self.workers:
            return
        workers, tasks = self.workers, self._worker_tasks
        self.workers, self._worker_tasks = [], []
        # arq's close() cancels the running jobs, then gathers them: a job cancelled while it
        # fetches or finishes itself ends cancelled, the gather raises CancelledError out of
        # close() and its shutdown never runs (a leaked worker, and every later test broken).
        # So the jobs are cancelled and reaped here first; close() then finds none. The shutdown
        # is the process's, once for its queue workers.
        for worker in workers:
            worker.handle_sig(signal.SIGUSR1)
        # Asked until they end: one cancel can be lost inside redis-py, and a job that goes on would hang here.
        await reap_saying_where_stuck(workers)
        for worker in workers:
            worker.tasks.clear()
        # Their poll loops end before any closes the Redis client they share (a close ends it for all).
        await cancel_until_done(tasks)
        try:
            for worker in workers:
                await worker.close()
        finally:
            await shutdown(workers[0].ctx)
            # Each close() closed the Redis client they share, and the shutdown's last metrics flush opened it
            # again: closed for good here, as `kiota worker` does after its shutdown (jobs/worker.py serve).
            if self._worker_redis is not None:
                await self._worker_redis.aclose(close_connection_pool=True)

    def env(self, **extra: str) -> dict[str, str]:
        """This system's configuration as the environment of a `kiota worker` process."""
        values = self.settings.model_dump()
        env = {"PATH": os.environ["PATH"]}
        for name, value in values.items():
            if value is None:
                continue
            secret = getattr(value, "get_secret_value", None)
            env[name.upper()] = str(secret() if secret else value)
        return {**env, **extra}


async def reap_saying_where_stuck(workers: Sequence[Worker], after: float = 20.0) -> None:
    """`cancel_jobs_until_done`, printing where each job still stands after `after` seconds: a job that will not
    end fails its test by timeout, and the stacks say which and why."""
    jobs = [job for worker in workers for job in worker.job_tasks.values()]
    reaping = asyncio.ensure_future(cancel_jobs_until_done(workers))
    if not (await asyncio.wait({reaping}, timeout=after))[0]:
        for job in jobs:
            if not job.done():
                job.print_stack(file=sys.stderr)
    await reaping


TREASURY_USDC = 1_000_000 * 10**6
PORT_TRIES = 3


@contextlib.asynccontextmanager
async def serve_api_on_a_free_port(
    settings_on: Callable[[int], WorkerSettings],
) -> AsyncIterator[tuple[WorkerSettings, str]]:
    """The API on a port chosen before its settings (they name its public URL, where Daraja calls back); chosen
    again when another process took it in between (the test runs' processes pick free ports at once)."""
    for attempt in range(1, PORT_TRIES + 1):
        port = free_port()
        settings = settings_on(port)
        serving = contextlib.AsyncExitStack()
        try:
            api_url = await serving.enter_async_context(serve_in_background(create_app(settings), port=port))
        except RuntimeError:  # uvicorn could not bind
            await serving.aclose()
            if attempt == PORT_TRIES:
                raise
            continue
        async with serving:
            yield settings, api_url
        return


@pytest.fixture
async def mpesa_system(
    request: pytest.FixtureRequest, database_url: str, redis_url: str, anvil: AnvilNode, chain: Web3Client
) -> AsyncIterator[MpesaSystem]:
    """The whole M-Pesa system. Markers: `system_settings(**overrides)`; `no_worker` (the test starts one)."""
    from eth_account import Account

    treasury = Account.from_key(TREASURY_KEY).address
    await fund_eth(chain, treasury, 10 * 10**18)
    await mint_usdc(chain, BASE_USDC_ADDRESS, treasury, TREASURY_USDC)
    sim_config = SimulatorConfig(
        consumer_key="test-consumer-key", consumer_secret="test-consumer-secret", callback_delay_seconds=0.3
    )
    overrides = request.node.get_closest_marker("system_settings")
    async with running_simulator(sim_config) as sim:

        def settings_on(api_port: int) -> WorkerSettings:
            values = {
                **settings_kwargs(database_url, redis_url),
                "mpesa_base_url": sim.base_url,
                "base_rpc_url": anvil.rpc_url,
                "public_base_url": f"http://127.0.0.1:{api_port}",
                "mpesa_query_after_seconds": 3600,
                **(overrides.kwargs if overrides else {}),
            }
            return WorkerSettings(_env_file=None, treasury_private_key=TREASURY_KEY, **values)  # type: ignore[call-arg]

        pool = await create_pool(database_url)
        queue = create_queue(redis_url)
        system: MpesaSystem | None = None
        try:
            async with (
                serve_api_on_a_free_port(settings_on) as (settings, api_url),
                httpx.AsyncClient(base_url=api_url, timeout=15) as http,
            ):
                system = MpesaSystem(
                    settings, api_url, http, sim.simulator, sim.base_url, pool, chain, treasury,
                    f"{api_url}/api/v1/deposit/mpesa-callback/{CALLBACK_TOKEN}", queue,
                )  # fmt: skip
                if not request.node.get_closest_marker("no_worker"):
                    await system.start_worker()
                yield system
        finally:
            if system is not None:
                await system.stop_worker()
            await queue.aclose(close_connection_pool=True)
            await pool.close()
