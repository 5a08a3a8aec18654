"""`kiota worker` through Redis and PostgreSQL outages: it stays up, says so once, resumes within 5 s.

Real processes: `kiota worker` as a subprocess, the API in this process, the Daraja simulator and
anvil, on a PRIVATE Redis and a PRIVATE PostgreSQL (tests/services.py) that these tests stop and
start again; the shared servers are never touched. Blocks come every second, so payouts are in
flight when a service goes away. Each deposit must end completed exactly once: one payout row,
one on-chain transfer, one completion entry in the ledger.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from web3.types import RPCEndpoint

from api.app import create_app
from kiota.db import MAY_PASS, UNAVAILABLE, close_pool, create_pool
from kiota.dev.chain import BASE_USDC_ADDRESS, AnvilNode, Web3Client, fund_eth, mine, mint_usdc, usdc_balance
from kiota.dev.daraja_sim import running_simulator
from kiota.dev.daraja_sim_behaviour import Scenario, SimulatorConfig
from kiota.dev.serving import serve_in_background
from kiota.ledger import user_account
from kiota.migrate import migrate
from kiota.queue import create_queue
from kiota.settings import WorkerSettings
from kiota.store.ledger import balance
from tests.conftest import TREASURY_USDC, MpesaSystem
from tests.integration.test_mpesa_flow import transfers_from
from tests.services import PrivatePostgres, PrivateRedis, private_postgres, private_redis
from tests.support import CALLBACK_TOKEN, TREASURY_KEY, free_port, settings_kwargs

REPO = Path(__file__).resolve().parents[2]
UNREACHABLE = "service unreachable; the worker waits for it"
BACK = "service back; the worker resumes"
RESUME_SECONDS = 5.0  # the contract's bound: from the service back to work done again
AMOUNT_KES = 1295  # 10 USDC at 129.50
AMOUNT_USDC = 10_000_000


@dataclass
class Deposit:
    user: str
    deposit_id: str
    checkout_request_id: str


@dataclass
class OutageRig:
    system: MpesaSystem
    postgres: PrivatePostgres
    redis: PrivateRedis
    log_path: Path
    worker: asyncio.subprocess.Process | None = None

    async def start_worker(self, *, wait_until_started: bool = True) -> None:
        env = self.system.env(KIOTA_LOG_FORMAT="json")
        with self.log_path.open("ab") as log:
            self.worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "kiota.cli", "worker",
                cwd=REPO, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        if wait_until_started:
            await self.heartbeat_after(datetime.now(UTC) - timedelta(hours=1), seconds=30)

    def alive(self) -> bool:
        assert self.worker is not None
        return self.worker.returncode is None

    async def stop_worker(self, seconds: float = 60) -> int | None:
        worker, self.worker = self.worker, None
        if worker is None:
            return None
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(worker.wait(), seconds)
        except TimeoutError:
            worker.kill()
            await worker.wait()
            raise

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events_named(self, event: str) -> list[dict[str, Any]]:
        records = (json.loads(line) for line in self.log_text().splitlines() if line.startswith("{"))
        return [record for record in records if record.get("event") == event]

    def events(self, event: str, service: str) -> list[dict[str, Any]]:
        return [record for record in self.events_named(event) if record.get("service") == service]

    async def logged(self, event: str, seconds: float) -> None:
        async with asyncio.timeout(seconds):
            while not self.events_named(event):
                await asyncio.sleep(0.05)

    async def heartbeat_after(self, since: datetime, seconds: float) -> datetime:
        """When the worker next said it is alive in PostgreSQL (its start-up and resumes do)."""
        async with asyncio.timeout(seconds):
            while True:
                assert self.alive(), self.log_text()[-3000:]
                seen = await _quietly(self.system.pool.fetchval("SELECT max(seen_at) FROM worker_heartbeats"))
                if seen is not None and seen >= since:
                    return seen  # type: ignore[no-any-return]
                await asyncio.sleep(0.05)


async def _quietly(query: Any) -> Any:
    """A read that may meet the outage the test made (it is then simply not done yet)."""
    try:
        return await query
    except Exception:
        return None


@pytest.fixture
async def rig(anvil: AnvilNode, chain: Web3Client, tmp_path: Path) -> AsyncIterator[OutageRig]:
    from eth_account import Account

    treasury = Account.from_key(TREASURY_KEY).address
    await fund_eth(chain, treasury, 10 * 10**18)
    await mint_usdc(chain, BASE_USDC_ADDRESS, treasury, TREASURY_USDC)
    sim_config = SimulatorConfig(consumer_key="test-consumer-key", consumer_secret="test-consumer-secret")
    api_port = free_port()
    async with private_postgres() as postgres, private_redis() as redis, running_simulator(sim_config) as sim:
        database_url = postgres.dsn("kiota")
        await migrate(database_url)
        values = {
            **settings_kwargs(database_url, redis.url()),
            "mpesa_base_url": sim.base_url,
            "base_rpc_url": anvil.rpc_url,
            "public_base_url": f"http://127.0.0.1:{api_port}",
            "mpesa_query_after_seconds": 2,  # callbacks refused during an outage are found by the STK query
        }
        settings = WorkerSettings(_env_file=None, treasury_private_key=TREASURY_KEY, **values)  # type: ignore[call-arg]
        pool = await create_pool(database_url, min_size=0)
        queue = create_queue(redis.url())
        rig: OutageRig | None = None
        try:
            async with (
                serve_in_background(create_app(settings), port=api_port) as api_url,
                httpx.AsyncClient(base_url=api_url, timeout=15) as http,
            ):
                system = MpesaSystem(
                    settings, api_url, http, sim.simulator, sim.base_url, pool, chain, treasury,
                    f"{api_url}/api/v1/deposit/mpesa-callback/{CALLBACK_TOKEN}", queue,
                )  # fmt: skip
                system.simulator.set_scenario(Scenario(outcome="none"), default=True)  # callbacks sent by hand
                rig = OutageRig(system, postgres, redis, tmp_path / "worker.log")
                try:
                    yield rig
                finally:
                    await rig.stop_worker()
        finally:
            if rig is not None and rig.log_path.exists():
                print(rig.log_text()[-20000:])  # the worker's log, shown when a test fails
            await _mine_per_transaction(chain)
            await queue.aclose(close_connection_pool=True)
            await close_pool(pool)


async def _mine_every_second(w3: Web3Client) -> None:
    """Blocks every second (Base makes one every two): payouts are in flight when a service goes."""
    await w3.provider.make_request(RPCEndpoint("evm_setIntervalMining"), [1])


async def _mine_on_demand(w3: Web3Client) -> None:
    """No block until the test mines one."""
    await w3.provider.make_request(RPCEndpoint("evm_setIntervalMining"), [0])
    await w3.provider.make_request(RPCEndpoint("evm_setAutomine"), [False])


async def _mine_per_transaction(w3: Web3Client) -> None:
    """anvil's default again (automine), for the tests after this one."""
    await w3.provider.make_request(RPCEndpoint("evm_setIntervalMining"), [0])
    await w3.provider.make_request(RPCEndpoint("evm_setAutomine"), [True])


async def initiate(system: MpesaSystem, count: int) -> list[Deposit]:
    deposits = []
    for i in range(count):
        user = f"out{i}"
        response = await system.initiate(user, AMOUNT_KES, phone=f"2547083741{i:02d}")
        assert response.status_code == 202, response.text
        body = response.json()
        deposits.append(Deposit(user, body["deposit_id"], body["checkout_request_id"]))
    return deposits


async def send_callbacks(system: MpesaSystem, deposits: Sequence[Deposit]) -> list[int | None]:
    """Daraja's success callbacks; the status codes the API answered (None: no answer at all)."""
    answers = [await system.simulator.send_callback(d.checkout_request_id, "success") for d in deposits]
    return [a.status_code for a in answers]


async def wait_completed(system: MpesaSystem, deposits: Sequence[Deposit], seconds: float) -> dict[str, datetime]:
    ids = [d.deposit_id for d in deposits]
    query = "SELECT id::text, status, completed_at FROM deposits WHERE id = ANY($1::uuid[])"
    rows: list[Any] = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                rows = await _quietly(system.pool.fetch(query, ids)) or []
                if len(rows) == len(ids) and all(r["status"] == "completed" for r in rows):
                    return {r["id"]: r["completed_at"] for r in rows}
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"not all completed within {seconds} s: {[dict(r) for r in rows]}") from None


async def assert_paid_exactly_once(system: MpesaSystem, deposits: Sequence[Deposit]) -> None:
    ids = [d.deposit_id for d in deposits]
    payouts = await system.pool.fetch(
        "SELECT deposit_id::text, count(*) AS n FROM payouts WHERE purpose = 'deposit' GROUP BY deposit_id"
    )
    assert {r["deposit_id"]: r["n"] for r in payouts} == dict.fromkeys(ids, 1)
    completions = await system.pool.fetch(
        "SELECT idempotency_key FROM journal_entries WHERE idempotency_key LIKE 'mpesa:%:completed'"
    )
    assert sorted(r["idempotency_key"] for r in completions) == sorted(f"mpesa:{i}:completed" for i in ids)
    assert await system.pool.fetchval("SELECT count(*) FROM journal_entries") == 2 * len(ids)  # received + completed
    assert len(await transfers_from(system, system.treasury_address)) == len(ids)  # the money, on chain
    for d in deposits:
        address = await system.pool.fetchval("SELECT deposit_address FROM users WHERE id = $1", d.user)
        assert await usdc_balance(system.w3, BASE_USDC_ADDRESS, address) == AMOUNT_USDC
        assert await balance(system.pool, user_account(d.user, "USDC")) == AMOUNT_USDC


async def payouts_sent(system: MpesaSystem, more_than: int) -> None:
    """Until the lane has signed and sent more payouts than `more_than` (the others wait for the lane)."""
    async with asyncio.timeout(20):
        while await system.pool.fetchval("SELECT count(*) FROM payout_attempts") <= more_than:
            await asyncio.sleep(0.05)


def assert_no_traceback(rig: OutageRig) -> None:
    """No line of the worker's log carries a traceback: an outage is weather, never a crash."""
    lines = [line for line in rig.log_text().splitlines() if "Traceback" in line]
    assert not lines, lines[0][:5000]


@pytest.mark.slow
async def test_redis_restarted_under_load_the_worker_stays_up_and_every_deposit_completes_once(
    rig: OutageRig, chain: Web3Client
) -> None:
    system = rig.system
    await _mine_every_second(chain)
    await rig.start_worker()
    deposits = await initiate(system, 8)
    before, in_flight, during = deposits[:3], deposits[3:6], deposits[6:]
    assert await send_callbacks(system, before) == [200] * 3
    await wait_completed(system, before, 20)

    # These payouts are signed and sent, and wait for a block that comes only after the outage:
    # the job paying them runs through it.
    await _mine_on_demand(chain)
    assert await send_callbacks(system, in_flight) == [200] * 3
    await payouts_sent(system, more_than=len(before))
    await rig.redis.stop()  # Redis goes away, and comes back empty: it keeps nothing on disk
    # PostgreSQL records these callbacks (200); their enqueue fails: only a resumed worker pays them.
    assert await send_callbacks(system, during) == [200] * 2
    await asyncio.sleep(2)
    assert rig.alive()
    assert len(rig.events(UNREACHABLE, "redis")) == 1

    back = datetime.now(UTC)  # from the restart command: the service's own start-up counts against us
    await rig.redis.start()
    await _mine_every_second(chain)
    # The resumed worker's start-up: running jobs put back in Redis, what PostgreSQL holds re-enqueued.
    assert await rig.heartbeat_after(back, RESUME_SECONDS) - back < timedelta(seconds=RESUME_SECONDS)
    done = await wait_completed(system, deposits, 30)
    first_after = min(at for at in done.values() if at > back)
    assert first_after - back < timedelta(seconds=RESUME_SECONDS), (back, first_after)
    assert all(done[d.deposit_id] > back for d in during)

    await assert_paid_exactly_once(system, deposits)
    assert rig.alive()
    [resumed] = [e for e in rig.events_named("worker resumed")]
    assert resumed["running"] >= 1  # the lane owner's job, put back in Redis while it ran
    assert len(rig.events(UNREACHABLE, "redis")) == 1
    assert len(rig.events(BACK, "redis")) == 1
    assert not rig.events(UNREACHABLE, "postgresql")
    assert_no_traceback(rig)
    assert await rig.stop_worker() == 0


@pytest.mark.slow
async def test_postgres_restarted_under_load_the_worker_stays_up_and_every_deposit_completes_once(
    rig: OutageRig, chain: Web3Client
) -> None:
    system = rig.system
    await _mine_every_second(chain)
    await rig.start_worker()
    deposits = await initiate(system, 9)
    before, in_flight, during, after = deposits[:3], deposits[3:6], deposits[6:8], deposits[8:]
    assert await send_callbacks(system, before) == [200] * 3
    await wait_completed(system, before, 20)

    # These payouts are signed and sent, and wait for a block that comes only after the outage.
    await _mine_on_demand(chain)
    assert await send_callbacks(system, in_flight) == [200] * 3
    await payouts_sent(system, more_than=len(before))
    await rig.postgres.stop()  # PostgreSQL goes away (a fast shutdown ends every session)
    # Nothing can be recorded: no callback gets a 200. Daraja does not send again; the STK query will.
    answers = await send_callbacks(system, during)
    assert all(code is None or code >= 500 for code in answers), answers
    await asyncio.sleep(2)
    assert rig.alive()

    back = datetime.now(UTC)
    await rig.postgres.start()
    await _mine_every_second(chain)
    # The worker's first sign of life after the outage: it takes its liveness lock again and says so.
    assert await rig.heartbeat_after(back, RESUME_SECONDS) - back < timedelta(seconds=RESUME_SECONDS)
    async with asyncio.timeout(RESUME_SECONDS):  # the API's pool reconnects too
        while await send_callbacks(system, after) != [200]:
            await asyncio.sleep(0.1)
    done = await wait_completed(system, deposits, 40)
    first_after = min(at for at in done.values() if at > back)
    assert first_after - back < timedelta(seconds=RESUME_SECONDS), (back, first_after)
    assert all(done[d.deposit_id] > back for d in in_flight)  # they were in flight through the outage

    await assert_paid_exactly_once(system, deposits)
    assert rig.alive()
    assert len(rig.events(UNREACHABLE, "postgresql")) == 1
    assert len(rig.events(BACK, "postgresql")) == 1
    assert not rig.events(UNREACHABLE, "redis")
    # Nor does a job that met a connection PostgreSQL's shutdown left unusable ("cannot switch to state 12;
    # another operation (2) is in progress", kiota/db.py MAY_PASS): it is retried, never taken for a crash.
    assert_no_traceback(rig)
    assert await rig.stop_worker() == 0


@pytest.mark.slow
async def test_a_worker_started_during_an_outage_waits_and_sigterm_during_one_lets_its_job_finish(
    rig: OutageRig, chain: Web3Client
) -> None:
    system = rig.system
    await rig.redis.stop()
    await rig.postgres.stop()
    await rig.start_worker(wait_until_started=False)
    await asyncio.sleep(3)
    assert rig.alive()
    assert len(rig.events(UNREACHABLE, "redis")) == 1
    await rig.redis.start()  # it gets as far as PostgreSQL
    await asyncio.sleep(2)
    assert rig.alive()
    assert len(rig.events(UNREACHABLE, "postgresql")) == 1
    back = datetime.now(UTC)
    await rig.postgres.start()
    assert await rig.heartbeat_after(back, RESUME_SECONDS) - back < timedelta(seconds=RESUME_SECONDS)
    await rig.logged("worker started", seconds=RESUME_SECONDS)
    assert len(rig.events(BACK, "redis")) == 1 and len(rig.events(BACK, "postgresql")) == 1

    # A payout waits for its block (none is mined until the test says so) when Redis goes away,
    # then SIGTERM comes: the running job must finish before the worker exits.
    await _mine_on_demand(chain)
    [deposit] = await initiate(system, 1)
    assert await send_callbacks(system, [deposit]) == [200]
    await payouts_sent(system, more_than=0)
    await rig.redis.stop()
    await asyncio.sleep(1)
    assert rig.worker is not None
    rig.worker.send_signal(signal.SIGTERM)
    await asyncio.sleep(1.5)
    assert rig.alive()  # waiting for its job
    await mine(chain)
    assert await rig.stop_worker(seconds=30) == 0
    await wait_completed(system, [deposit], 1)
    await assert_paid_exactly_once(system, [deposit])
    assert len(rig.events(UNREACHABLE, "redis")) == 2  # one line per outage
    assert_no_traceback(rig)


async def test_a_connection_the_server_ended_while_idle_fails_as_weather_not_as_a_crash(pool: Any) -> None:
    """PostgreSQL ending an idle connection (as a restart does to all of them) sends it an unsolicited FATAL
    error. Whatever the next statement on it then raises (the connection gone, or asyncpg's protocol stuck
    consuming that error: "another operation (2) is in progress") is one that a job retries (MAY_PASS) and
    the API answers with 503 (UNAVAILABLE), never one taken for a crash that sends a deposit to review.
    (Here, the pauses of a few milliseconds give InternalClientError; the others, InterfaceError.)"""
    for pause in (0.0, 0.0, 0.001, 0.005, 0.02, 0.1):
        async with pool.acquire() as idle:
            pid = await idle.fetchval("SELECT pg_backend_pid()")
            assert await pool.fetchval("SELECT pg_terminate_backend($1)", pid)
            await asyncio.sleep(pause)
            with pytest.raises(Exception) as failure:
                await idle.fetchval("SELECT 1")
        assert isinstance(failure.value, MAY_PASS) and isinstance(failure.value, UNAVAILABLE), repr(failure.value)
