"""The outage rules without services: which failure is an outage, and that each is logged once.

The real thing (a worker process through Redis and PostgreSQL restarts) is tested in
tests/integration/test_outages.py; here the probes are plain functions the test switches.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from arq import Retry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError
from structlog.testing import capture_logs

from jobs import outages as outages_module
from jobs.context import RunningJob, WorkerState
from jobs.outages import POSTGRES, REDIS, Outages, outage_aware, service_behind
from kiota.errors import ChainUnavailable


def _raised_while(handling: BaseException, exc: BaseException) -> BaseException:
    try:
        try:
            raise handling
        except BaseException:
            raise exc  # noqa: B904 - the implicit context is the point
    except BaseException as raised:
        return raised


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RedisConnectionError("Connection closed by server."), (REDIS, True)),
        (RedisTimeoutError("Timeout reading from socket"), (REDIS, True)),
        (_raised_while(RedisConnectionError("reset"), WatchError("A ConnectionError occurred …")), (REDIS, True)),
        (WatchError("Watched variable changed."), None),  # a lost race, not an outage
        (ResponseError("WRONGTYPE"), None),
        (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"), (POSTGRES, True)),
        (asyncpg.AdminShutdownError("terminating connection due to administrator command"), (POSTGRES, True)),
        (asyncpg.CannotConnectNowError("the database system is starting up"), (POSTGRES, True)),
        (asyncpg.QueryCanceledError("canceling statement due to statement timeout"), None),
        (asyncpg.UniqueViolationError("duplicate key"), None),
        (ConnectionRefusedError(111, "Connect call failed"), (POSTGRES, False)),  # a probe decides
        (TimeoutError(), (POSTGRES, False)),
        (asyncpg.InterfaceError("connection is closed"), (POSTGRES, False)),
        (
            _raised_while(asyncpg.ConnectionDoesNotExistError("closed"), asyncpg.InternalClientError("state 11")),
            (POSTGRES, True),
        ),
        (_raised_while(ValueError("x"), asyncpg.InternalClientError("state 11")), (POSTGRES, False)),
        (ChainUnavailable("eth_blockNumber: ConnectError"), None),
        (Retry(defer=1), None),
        (ValueError("a bug"), None),
    ],
)
def test_which_failures_are_lost_connections(exc: BaseException, expected: tuple[str, bool] | None) -> None:
    assert service_behind(exc) == expected


class Switch:
    """A service the test takes down and brings back."""

    def __init__(self) -> None:
        self.up = True
        self.probes = 0

    async def probe(self) -> None:
        self.probes += 1
        if not self.up:
            raise ConnectionRefusedError(111, "Connect call failed")


@pytest.fixture(autouse=True)
def quick_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outages_module, "PROBE_SECONDS", 0.01)


def _lines(logs: list[dict[str, Any]], event: str, service: str) -> int:
    return sum(1 for line in logs if line["event"] == event and line.get("service") == service)


async def test_an_outage_is_logged_once_however_often_it_is_met_and_once_when_it_ends() -> None:
    redis, postgres = Switch(), Switch()
    outages = Outages({REDIS: redis.probe, POSTGRES: postgres.probe})
    backs: list[str] = []

    async def on_back() -> None:
        backs.append("hook")

    outages.on_back(POSTGRES, on_back)
    with capture_logs() as logs:
        postgres.up = False
        for _ in range(20):  # every job and cron tick that meets it
            assert await outages.assess(asyncpg.CannotConnectNowError("shutting down")) == (POSTGRES, True)
        assert outages.is_down(POSTGRES)
        assert not await outages.wait_up(POSTGRES, 0.05)
        postgres.up = True
        assert await outages.wait_up(POSTGRES, 2)
    assert _lines(logs, "service unreachable; the worker waits for it", POSTGRES) == 1
    assert _lines(logs, "service back; the worker resumes", POSTGRES) == 1
    assert backs == ["hook"]  # before it was declared back
    assert not outages.is_down(POSTGRES) and not outages.is_down(REDIS)
    await outages.aclose()


async def test_a_failure_that_may_be_postgresql_is_an_outage_only_if_the_probe_says_so() -> None:
    postgres = Switch()
    outages = Outages({REDIS: Switch().probe, POSTGRES: postgres.probe})
    with capture_logs() as logs:
        assert await outages.assess(ConnectionRefusedError(111, "elsewhere")) is None  # PostgreSQL answers
        # A lost connection to a PostgreSQL that answers again (it restarted): no outage, retry soon.
        assert await outages.assess(asyncpg.ConnectionDoesNotExistError("closed")) == (POSTGRES, False)
        postgres.up = False
        assert await outages.assess(ConnectionRefusedError(111, "refused")) == (POSTGRES, True)
    assert _lines(logs, "service unreachable; the worker waits for it", POSTGRES) == 1
    await outages.aclose()


async def test_with_a_supervisor_redis_is_back_only_when_the_worker_has_resumed() -> None:
    redis = Switch()
    outages = Outages({REDIS: redis.probe, POSTGRES: Switch().probe}, supervised=True)
    redis.up = False
    with capture_logs() as logs:
        assert await outages.assess(RedisConnectionError("Connection reset by peer")) == (REDIS, True)
        redis.up = True
        assert await asyncio.wait_for(outages.wait_reachable(REDIS), 2)
        assert outages.is_down(REDIS)  # reachable, but the running jobs are not back in Redis yet
        assert not await outages.wait_up(REDIS, 0.05)
        outages.mark_up(REDIS)  # what the resumed worker's start-up does
        assert await outages.wait_up(REDIS, 0)
    assert _lines(logs, "service back; the worker resumes", REDIS) == 1
    await outages.aclose()


async def test_stopping_ends_every_wait() -> None:
    redis = Switch()
    redis.up = False
    outages = Outages({REDIS: redis.probe, POSTGRES: Switch().probe}, supervised=True)
    outages.report(REDIS, RedisConnectionError("refused"))
    waiting = asyncio.create_task(outages.wait_up(REDIS, 60))
    await asyncio.sleep(0.02)
    outages.stopping.set()
    assert await asyncio.wait_for(waiting, 1) is False
    assert await asyncio.wait_for(outages.wait_reachable(REDIS), 1) is False
    await outages.aclose()


def _job_ctx(outages: Outages) -> dict[str, Any]:
    return {
        WorkerState.KEY: WorkerState(outages),
        "job_id": "complete_mpesa_deposit:d1",
        "score": 1_700_000_000_000,
        "enqueue_time": datetime.now(UTC),
    }


def _running(ctx: dict[str, Any]) -> dict[str, RunningJob]:
    state = WorkerState.of(ctx)
    assert state is not None
    return state.running


async def test_a_job_that_meets_an_outage_waits_for_the_service_then_runs_again() -> None:
    postgres = Switch()
    outages = Outages({REDIS: Switch().probe, POSTGRES: postgres.probe})
    seen: dict[str, Any] = {}

    async def complete_mpesa_deposit(ctx: dict[str, Any], deposit_id: str) -> str:
        seen.update(_running(ctx))
        postgres.up = False
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")

    job = outage_aware(complete_mpesa_deposit)
    assert job.__name__ == "complete_mpesa_deposit"  # arq registers it under this name
    ctx = _job_ctx(outages)

    async def back_soon() -> None:
        await asyncio.sleep(0.1)
        postgres.up = True

    bringing_back = asyncio.create_task(back_soon())
    with pytest.raises(Retry) as retry:
        await job(ctx, "d1")
    await bringing_back
    assert retry.value.defer_score == 0  # at once: the service is back
    assert seen["complete_mpesa_deposit:d1"].args == ("d1",)  # known to be running while it ran...
    assert _running(ctx) == {}  # ...and no longer
    await outages.aclose()


async def test_a_cron_tick_during_an_outage_is_skipped_and_a_bug_still_fails() -> None:
    postgres = Switch()
    postgres.up = False
    outages = Outages({REDIS: Switch().probe, POSTGRES: postgres.probe})

    async def sweep_tick(ctx: dict[str, Any]) -> str:
        raise ConnectionRefusedError(111, "Connect call failed")

    async def scan_chain_tick(ctx: dict[str, Any]) -> str:
        raise KeyError("a bug")

    ctx = {WorkerState.KEY: WorkerState(outages)}
    assert await outage_aware(sweep_tick, cron=True)(ctx) == "skipped: postgresql unavailable"
    with pytest.raises(KeyError):
        await outage_aware(scan_chain_tick, cron=True)(ctx)
    await outages.aclose()
