"""The HTTP edge: health, authentication, the portfolio, and Idempotency-Key."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from api.app import create_app
from api.deps import CurrentUser
from api.idempotency import IdempotencyDep
from kiota.settings import Settings
from tests.support import JWT_SECRET, TEST_CHILDREN, bearer, settings_kwargs

# Computed at import; tests may run long after, so "valid" means years ahead.
FAR_FUTURE = int(time.time()) + 10 * 365 * 86400


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.headers["x-request-id"]


async def test_ready_when_postgres_and_redis_answer(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "postgres": "ok", "redis": "ok"}


@pytest.mark.parametrize(
    ("database", "redis", "down"),
    [
        ("postgresql://postgres@127.0.0.1:1/nothing", None, "postgres"),
        (None, "redis://127.0.0.1:1/0", "redis"),
    ],
)
async def test_not_ready_when_a_dependency_is_down(
    database_url: str, redis_url: str, database: str | None, redis: str | None, down: str
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, **settings_kwargs(database or database_url, redis or redis_url)
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/health/ready")
            assert (await http.get("/health")).status_code == 200
    assert response.status_code == 503
    assert response.json()[down].startswith("error")


def _token(claims: dict[str, Any], key: str = JWT_SECRET, algorithm: str = "HS256") -> dict[str, str]:
    return {"Authorization": "Bearer " + jwt.encode(claims, key, algorithm=algorithm)}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer not-a-token"},
        _token({"sub": "u", "exp": 1}),  # expired
        _token({"sub": "u", "exp": FAR_FUTURE}, key="forged-forged-forged-forged-forged"),
        _token({"sub": "u"}),  # no exp
        {"Authorization": "Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1IiwiZXhwIjo0MTAyNDQ0ODAwfQ."},
    ],
    ids=["missing", "basic", "garbage", "expired", "forged", "no-exp", "alg-none"],
)
async def test_bad_tokens_get_401_and_create_no_user(
    client: httpx.AsyncClient, app: FastAPI, headers: dict[str, str]
) -> None:
    response = await client.get("/api/v1/portfolio", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert await app.state.resources.pool.fetchval("SELECT count(*) FROM users") == 0


async def test_first_sight_creates_the_user_with_an_empty_portfolio(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/portfolio", headers=bearer("alice"))
    assert response.status_code == 200
    assert response.json() == {
        "user_id": "alice",
        "deposit_address": TEST_CHILDREN[0],
        "balances": {"USDC": "0.000000"},
    }
    second = await client.get("/api/v1/portfolio", headers=bearer("bob"))
    assert second.json()["deposit_address"] == TEST_CHILDREN[1]
    again = await client.get("/api/v1/portfolio", headers=bearer("alice"))
    assert again.json()["deposit_address"] == TEST_CHILDREN[0]


class EchoBody(BaseModel):
    value: int


@pytest.fixture
async def idem_client(settings: Settings) -> Any:
    """The app with a test-only route that uses the Idempotency-Key dependency."""
    app = create_app(settings)
    calls: list[int] = []
    gate, started = asyncio.Event(), asyncio.Event()

    @app.post("/test/echo")
    async def echo(body: EchoBody, user: CurrentUser, idem: IdempotencyDep) -> Any:
        async def handler() -> tuple[int, Any]:
            calls.append(body.value)
            if body.value == 13:
                started.set()
                await gate.wait()
            if body.value == 500:
                return 502, {"detail": "upstream refused"}
            return 201, {"value": body.value, "call": len(calls), "user": user.id}

        return await idem.run(handler)

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http, calls, (gate, started)


async def test_the_same_key_and_body_replays_the_first_answer(idem_client: Any) -> None:
    http, calls, _ = idem_client
    headers = {**bearer("alice"), "Idempotency-Key": "k1"}
    first = await http.post("/test/echo", json={"value": 7}, headers=headers)
    # Same meaning, other key order/white space: still the same body.
    second = await http.post(
        "/test/echo", content=b'{ "value" : 7 }', headers={**headers, "content-type": "application/json"}
    )
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json() == {"value": 7, "call": 1, "user": "alice"}
    assert second.headers["idempotent-replayed"] == "true"
    assert calls == [7]


async def test_the_same_key_with_another_body_is_409(idem_client: Any) -> None:
    http, calls, _ = idem_client
    headers = {**bearer("alice"), "Idempotency-Key": "k2"}
    assert (await http.post("/test/echo", json={"value": 1}, headers=headers)).status_code == 201
    conflict = await http.post("/test/echo", json={"value": 2}, headers=headers)
    assert conflict.status_code == 409
    assert "another request body" in conflict.json()["detail"]
    assert calls == [1]


async def test_keys_are_scoped_per_user(idem_client: Any) -> None:
    http, calls, _ = idem_client
    a = await http.post("/test/echo", json={"value": 1}, headers={**bearer("alice"), "Idempotency-Key": "k"})
    b = await http.post("/test/echo", json={"value": 1}, headers={**bearer("bob"), "Idempotency-Key": "k"})
    assert a.json()["user"] == "alice" and b.json()["user"] == "bob"
    assert calls == [1, 1]


async def test_a_request_while_the_first_is_in_flight_is_409(idem_client: Any) -> None:
    http, _calls, (gate, started) = idem_client
    headers = {**bearer("alice"), "Idempotency-Key": "k3"}
    first = asyncio.create_task(http.post("/test/echo", json={"value": 13}, headers=headers))
    await asyncio.wait_for(started.wait(), 5)
    during = await http.post("/test/echo", json={"value": 13}, headers=headers)
    assert during.status_code == 409
    assert "in flight" in during.json()["detail"]
    gate.set()
    assert (await first).status_code == 201
    after = await http.post("/test/echo", json={"value": 13}, headers=headers)
    assert after.status_code == 201 and after.json()["call"] == 1


async def test_a_5xx_first_answer_is_not_kept(idem_client: Any) -> None:
    http, calls, _ = idem_client
    headers = {**bearer("alice"), "Idempotency-Key": "k4"}
    assert (await http.post("/test/echo", json={"value": 500}, headers=headers)).status_code == 502
    assert (await http.post("/test/echo", json={"value": 500}, headers=headers)).status_code == 502
    assert calls == [500, 500]


async def test_without_a_key_every_request_runs(idem_client: Any) -> None:
    http, calls, _ = idem_client
    for _ in range(2):
        assert (await http.post("/test/echo", json={"value": 3}, headers=bearer("alice"))).status_code == 201
    assert calls == [3, 3]


async def test_an_overlong_key_is_422(idem_client: Any) -> None:
    http, calls, _ = idem_client
    response = await http.post(
        "/test/echo", json={"value": 3}, headers={**bearer("alice"), "Idempotency-Key": "x" * 256}
    )
    assert response.status_code == 422
    assert calls == []
