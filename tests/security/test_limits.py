"""Abuse limits against the real system: the API on a port, the Daraja simulator, PostgreSQL and Redis.

The attacks of issue 11: one user pushing PIN prompts to phone after phone, many users pushing one
phone, concurrent initiates racing the pending cap, a second API process, Redis down. Every test
counts what the simulator received (the pushes that went out) and the rows PostgreSQL holds: a
refused request pushes nothing and records nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from structlog.testing import capture_logs

from api.app import create_app
from kiota.dev.daraja_sim_behaviour import Scenario
from kiota.dev.serving import serve_in_background
from kiota.limiter import Limiter
from kiota.settings import Settings
from tests.conftest import MpesaSystem
from tests.support import bearer, free_port

# The contract's defaults (tests/support.py raises them for the other tests).
CONTRACT_LIMITS = {
    "limit_initiate_per_user": "10/hour",
    "limit_initiate_per_phone": "5/hour",
    "limit_intents_per_user": "30/hour",
    "limit_per_ip": "600/minute",
}
PHONE = "254708374149"


def phone(n: int) -> str:
    return f"2547083741{n:02d}"


async def initiate(http: httpx.AsyncClient, user: str, to: str, amount: int = 100, **headers: str) -> httpx.Response:
    return await http.post(
        "/api/v1/deposit/initiate", json={"amount_kes": amount, "phone": to}, headers={**bearer(user), **headers}
    )


async def deposit_count(system: MpesaSystem) -> int:
    count: int = await system.pool.fetchval("SELECT count(*) FROM deposits")
    return count


def assert_too_many(response: httpx.Response, *, at_most: int) -> None:
    assert response.status_code == 429, response.text
    assert set(response.json()) == {"detail"}
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= at_most, retry_after


@asynccontextmanager
async def another_api(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """A second API process's app: its own pools and limiter, on its own port, the same Redis and database."""
    app = create_app(settings)
    async with (
        serve_in_background(app, port=free_port()) as url,
        httpx.AsyncClient(base_url=url, timeout=15) as http,
    ):
        yield app, http


@pytest.fixture
async def system(mpesa_system: MpesaSystem) -> MpesaSystem:
    """Pushes stay pending (the simulator sends no callback) unless a test says otherwise."""
    mpesa_system.simulator.set_scenario(Scenario(outcome="none"), default=True)
    return mpesa_system


@pytest.mark.system_settings(**CONTRACT_LIMITS)
async def test_one_user_cannot_ring_phone_after_phone(system: MpesaSystem) -> None:
    # The attack on main: 8 PIN prompts to 8 phones in a row, all 202, all sent to Daraja.
    answers = [await initiate(system.http, "mallory", phone(n)) for n in range(8)]
    assert [a.status_code for a in answers] == [202] * 3 + [429] * 5
    for refused in answers[3:]:
        assert_too_many(refused, at_most=60)
        assert "at most 3" in refused.json()["detail"]
    assert len(system.simulator.pushes) == 3
    assert await deposit_count(system) == 3


@pytest.mark.system_settings(**CONTRACT_LIMITS)
async def test_a_user_may_push_ten_times_an_hour(system: MpesaSystem) -> None:
    # Each push fails at once (the customer cancels), so the pending cap never bites: the hourly one does.
    system.simulator.set_scenario(Scenario(outcome=1032, delay_seconds=0.02), default=True)
    codes = []
    for n in range(12):
        answer = await initiate(system.http, "eve", phone(n))
        codes.append(answer.status_code)
        if answer.status_code == 202:
            await system.wait_status("eve", answer.json()["deposit_id"], "failed")
        else:
            assert_too_many(answer, at_most=3600)
    assert codes == [202] * 10 + [429] * 2
    assert len(system.simulator.pushes) == 10
    assert await deposit_count(system) == 10


@pytest.mark.system_settings(**CONTRACT_LIMITS)
async def test_many_users_cannot_ring_one_phone_without_end(system: MpesaSystem) -> None:
    # The attack on main: 5 users pushed one phone, all 202. Now the phone rings 5 times an hour at most.
    answers = [await initiate(system.http, f"crowd-{n}", PHONE) for n in range(7)]
    assert [a.status_code for a in answers] == [202] * 5 + [429] * 2
    for refused in answers[5:]:
        assert_too_many(refused, at_most=3600)
    assert len(system.simulator.pushes) == 5
    assert {push.phone for push in system.simulator.pushes} == {PHONE}
    assert await deposit_count(system) == 5
    # Another phone is not affected, nor are the users themselves.
    assert (await initiate(system.http, "crowd-0", phone(1))).status_code == 202


@pytest.mark.system_settings(**CONTRACT_LIMITS)
async def test_concurrent_initiates_cannot_pass_the_pending_cap_together(system: MpesaSystem) -> None:
    answers = await asyncio.gather(*(initiate(system.http, "racer", phone(n)) for n in range(8)))
    assert sorted(a.status_code for a in answers) == [202] * 3 + [429] * 5
    assert len(system.simulator.pushes) == 3
    assert await system.pool.fetchval("SELECT count(*) FROM deposits WHERE user_id = 'racer'") == 3
    # With two pending, two at once: one passes.
    await system.pool.execute("UPDATE deposits SET status = 'failed' WHERE id = (SELECT id FROM deposits LIMIT 1)")
    answers = await asyncio.gather(*(initiate(system.http, "racer", phone(10 + n)) for n in range(2)))
    assert sorted(a.status_code for a in answers) == [202, 429]
    assert await system.pool.fetchval("SELECT count(*) FROM deposits WHERE status = 'pending'") == 3


@pytest.mark.system_settings(**{**CONTRACT_LIMITS, "limit_initiate_per_user": "2/hour"})
async def test_a_replayed_answer_is_neither_refused_nor_counted(system: MpesaSystem) -> None:
    first = await initiate(system.http, "ivy", phone(1), **{"Idempotency-Key": "k1"})
    assert first.status_code == 202
    for _ in range(3):  # replays of a stored answer: the same answer, and no count
        replay = await initiate(system.http, "ivy", phone(1), **{"Idempotency-Key": "k1"})
        assert (replay.status_code, replay.json()) == (202, first.json())
        assert replay.headers["idempotent-replayed"] == "true"
    second = await initiate(system.http, "ivy", phone(2), **{"Idempotency-Key": "k2"})
    assert second.status_code == 202  # the replays did not use the second push
    third = await initiate(system.http, "ivy", phone(3), **{"Idempotency-Key": "k3"})
    assert_too_many(third, at_most=3600)
    # The refused key is not kept: the same key is refused again (not 409), and may run once there is room.
    again = await initiate(system.http, "ivy", phone(3), **{"Idempotency-Key": "k3"})
    assert_too_many(again, at_most=3600)
    # The limit full, a stored answer is still replayed.
    replay = await initiate(system.http, "ivy", phone(1), **{"Idempotency-Key": "k1"})
    assert (replay.status_code, replay.json()) == (202, first.json())
    assert len(system.simulator.pushes) == 2
    assert await system.pool.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = 'k3'") == 0


@pytest.mark.system_settings(**CONTRACT_LIMITS)
async def test_a_second_api_process_shares_the_counters(system: MpesaSystem) -> None:
    async with another_api(system.settings) as (_, other):
        apis = [system.http, other]
        answers = [await initiate(apis[n % 2], f"pair-{n}", PHONE) for n in range(7)]
        assert [a.status_code for a in answers] == [202] * 5 + [429] * 2
        assert len(system.simulator.pushes) == 5


@pytest.mark.system_settings(**{**CONTRACT_LIMITS, "limit_per_ip": "6/minute"})
async def test_every_route_but_the_webhook_counts_per_address_across_processes(system: MpesaSystem) -> None:
    async with another_api(system.settings) as (_, other):
        apis = [system.http, other]
        paths = ["/health", "/api/v1/portfolio", "/health/ready", "/metrics", "/no/such/route", "/api/v1/deposits"]
        answers = [await apis[n % 2].get(path, headers=bearer("ann")) for n, path in enumerate(paths)]
        assert all(a.status_code != 429 for a in answers), [(a.status_code, a.text) for a in answers]
        for http in apis:
            for path in ("/health", "/api/v1/portfolio"):
                assert_too_many(await http.get(path, headers=bearer("ann")), at_most=60)
        # Safaricom's webhook is never throttled by address: its token and allowlist guard it.
        malformed = await system.http.post(system.callback_url, content=b"{}")
        assert malformed.status_code == 400


@pytest.mark.system_settings(**CONTRACT_LIMITS)
async def test_with_redis_down_no_push_goes_out_and_the_rest_goes_on(system: MpesaSystem) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with another_api(system.settings) as (app, http):
        working = app.state.resources.limiter
        app.state.resources.limiter = Limiter(closed)
        try:
            with capture_logs() as events:
                refused = await initiate(http, "olga", PHONE, **{"Idempotency-Key": "during-outage"})
                portfolio = await http.get("/api/v1/portfolio", headers=bearer("olga"))
                intent = await http.post("/api/v1/deposit/intent/create", json={}, headers=bearer("olga"))
        finally:
            await app.state.resources.limiter.aclose()
            app.state.resources.limiter = working
        assert refused.status_code == 503, refused.text
        assert set(refused.json()) == {"detail"}
        assert system.simulator.pushes == []
        assert await deposit_count(system) == 0
        assert portfolio.status_code == 200  # the per-address limit fails open...
        assert intent.status_code == 201  # ...and so does the intents limit: neither rings a phone
        messages = [e["event"] for e in events]
        assert "rate limiter unavailable: request refused" in messages
        assert "rate limiter unavailable: request allowed unlimited" in messages
        # Redis back: the same Idempotency-Key runs (the refusal did not keep it).
        answer = await initiate(http, "olga", PHONE, **{"Idempotency-Key": "during-outage"})
        assert answer.status_code == 202, answer.text
        assert len(system.simulator.pushes) == 1


async def test_a_refused_push_is_never_recorded(system: MpesaSystem) -> None:
    """The pending cap refuses before the row is written, whatever the rate limits say."""
    for n in range(3):
        assert (await initiate(system.http, "zed", phone(n))).status_code == 202
    before: list[Any] = await system.pool.fetch("SELECT id FROM deposits ORDER BY id")
    refused = await initiate(system.http, "zed", phone(9))
    assert_too_many(refused, at_most=60)
    assert await system.pool.fetch("SELECT id FROM deposits ORDER BY id") == before
    assert len(system.simulator.pushes) == 3


@asynccontextmanager
async def in_process(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        yield http


async def test_the_address_is_the_one_our_trusted_proxy_saw(settings: Settings) -> None:
    behind_proxy = settings.model_copy(update={"limit_per_ip": "2/minute", "trusted_proxy_ips": "127.0.0.1/32"})
    async with in_process(behind_proxy) as http:

        async def health(forwarded: str) -> int:
            return (await http.get("/health", headers={"X-Forwarded-For": forwarded})).status_code

        assert [await health("203.0.113.1") for _ in range(3)] == [200, 200, 429]
        assert await health("203.0.113.2") == 200  # another client behind the same proxy
        # A client cannot make itself new: what it writes left of the proxy's hop is not its address.
        assert await health("10.9.9.9, 203.0.113.1") == 429
        assert await health("198.51.100.77, 203.0.113.1") == 429
    direct = settings.model_copy(update={"limit_per_ip": "2/minute", "trusted_proxy_ips": ""})
    async with in_process(direct) as http:
        # No trusted proxy: X-Forwarded-For is not read, the peer is the client.
        answers = [
            (await http.get("/health", headers={"X-Forwarded-For": f"203.0.113.{n}"})).status_code for n in range(3)
        ]
        assert answers == [200, 200, 429]
