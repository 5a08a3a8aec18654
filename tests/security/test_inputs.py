"""Inputs and settings that could move money wrongly, and the admin surface.

The expected USDC amount of an intent (huge, zero, malformed), token claims (issuer, audience),
the JWT secret's length, the rate's sanity band (checked by `kiota api` and `kiota worker` at
start), and `/metrics`: admin credentials, and database reads cached so scrapes cannot starve
the pool.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from fastapi import FastAPI
from structlog.testing import capture_logs

from api.app import create_app
from api.routers.metrics import SNAPSHOT_TTL_SECONDS, SnapshotCache
from kiota.errors import ConfigError
from kiota.settings import Settings, WorkerSettings
from tests.support import ADMIN_AUTH, JWT_SECRET, TREASURY_KEY, base_env, bearer, settings_kwargs

INTENT = "/api/v1/deposit/intent/create"


@asynccontextmanager
async def app_with(database_url: str, redis_url: str, **changes: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process API whose settings differ from the tests' by `changes` (None removes a setting)."""
    values = {**settings_kwargs(database_url, redis_url), **changes}
    settings = Settings(_env_file=None, **{k: v for k, v in values.items() if v is not None})  # type: ignore[arg-type]
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kiota.test") as http,
    ):
        http.app = app  # type: ignore[attr-defined]
        yield http


# ------------------------------------------------------------------------------- expected_amount_usdc

REFUSED_AMOUNTS: list[Any] = [
    "0",  # was taken as "no amount"
    "0.0",
    "0.000000",
    "99999999999999999999999",  # was a 500: int64 overflow in PostgreSQL
    "1000000.000001",
    "1000001",
    "9" * 40,
    "-1",
    "-0.5",
    "1e3",
    "1E-3",
    " 25.50",
    "25.50 ",
    "25,50",
    "1.0000001",  # 7 decimals
    "",
    "NaN",
    "Infinity",
    "0x10",
    "١٢",  # Arabic-Indic digits
    "２５",  # fullwidth digits
    "25.50'; DROP TABLE intents; --",
    1,  # numbers, never: a decimal string
    25.5,
    True,
    [],
    {},
]


@pytest.mark.parametrize("amount", REFUSED_AMOUNTS, ids=[repr(a)[:30] for a in REFUSED_AMOUNTS])
async def test_a_bad_expected_amount_is_a_422_and_creates_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool, amount: Any
) -> None:
    answer = await client.post(INTENT, json={"expected_amount_usdc": amount}, headers=bearer("amy"))
    assert answer.status_code == 422, answer.text
    assert "detail" in answer.json()
    assert await pool.fetchval("SELECT count(*) FROM deposit_intents") == 0


@pytest.mark.parametrize(
    ("amount", "kept"),
    [
        ("0.000001", "0.000001"),  # the smallest amount there is
        ("25.50", "25.500000"),
        ("1000000", "1000000.000000"),  # the bound itself
        ("1000000.000000", "1000000.000000"),
        (None, None),  # absent
    ],
)
async def test_a_good_expected_amount_is_kept(client: httpx.AsyncClient, amount: str | None, kept: str | None) -> None:
    answer = await client.post(INTENT, json={"expected_amount_usdc": amount}, headers=bearer(f"u-{amount}"))
    assert answer.status_code == 201, answer.text
    read = await client.get(f"/api/v1/deposit/intents/{answer.json()['intent_id']}", headers=bearer(f"u-{amount}"))
    assert read.json()["expected_amount_usdc"] == kept


# ------------------------------------------------------------------------------------- token claims

ISSUER = "https://id.kiota.example"
AUDIENCE = "kiota-app"


def token(**claims: Any) -> dict[str, str]:
    claims = {"sub": "tess", "exp": int(time.time()) + 600, **claims}
    return {"Authorization": "Bearer " + jwt.encode(claims, JWT_SECRET, algorithm="HS256")}


async def test_issuer_and_audience_are_checked_when_set(database_url: str, redis_url: str) -> None:
    async with app_with(database_url, redis_url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE) as http:
        assert (await http.get("/api/v1/portfolio", headers=token(iss=ISSUER, aud=AUDIENCE))).status_code == 200
        for claims in (
            {},
            {"iss": ISSUER},
            {"aud": AUDIENCE},
            {"iss": "https://evil.example", "aud": AUDIENCE},
            {"iss": ISSUER, "aud": "another-app"},
        ):
            answer = await http.get("/api/v1/portfolio", headers=token(**claims))
            assert answer.status_code == 401, claims
            assert answer.headers["www-authenticate"] == "Bearer"


async def test_without_an_audience_a_token_minted_for_another_is_refused(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/portfolio", headers=token())).status_code == 200
    assert (await client.get("/api/v1/portfolio", headers=token(aud="another-app"))).status_code == 401


async def test_the_worker_settings_cannot_serve_the_api(database_url: str, redis_url: str) -> None:
    """The worker has no JWT secret: an API built from its settings refuses to start (an empty HMAC key)."""
    values = {k: v for k, v in settings_kwargs(database_url, redis_url).items() if k != "jwt_secret"}
    settings = WorkerSettings(_env_file=None, treasury_private_key=TREASURY_KEY, **values)  # type: ignore[arg-type]
    app = create_app(settings)
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        async with app.router.lifespan_context(app):
            pass


@pytest.mark.parametrize(("trusted", "warned"), [("", True), ("10.0.0.0/8", False)])
async def test_a_public_api_without_trusted_proxies_says_so_at_start(
    database_url: str, redis_url: str, trusted: str, warned: bool
) -> None:
    values = {**settings_kwargs(database_url, redis_url), "public_base_url": "https://kiota.example", **{
        "trusted_proxy_ips": trusted}}  # fmt: skip
    app = create_app(Settings(_env_file=None, **values))  # type: ignore[arg-type]
    with capture_logs() as events:
        async with app.router.lifespan_context(app):
            pass
    assert any("TRUSTED_PROXY_IPS" in event["event"] for event in events) is warned


# ------------------------------------------------------------------------- refused at process start


async def _start(command: str, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kiota.cli",
        command,
        cwd=cwd,
        env={"PATH": os.environ["PATH"], **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, (out + err).decode()


@pytest.mark.parametrize(
    ("command", "change", "named"),
    [
        ("api", {"JWT_SECRET": "x" * 31}, "JWT_SECRET"),
        ("api", {"KES_PER_USD": "12950"}, "KES_PER_USD"),  # the decimal point dropped
        ("worker", {"KES_PER_USD": "1.2950", "TREASURY_PRIVATE_KEY": TREASURY_KEY}, "KES_PER_USD"),
        ("api", {"LIMIT_INITIATE_PER_PHONE": "lots"}, "LIMIT_INITIATE_PER_PHONE"),
    ],
)
async def test_dangerous_settings_stop_the_process_with_one_line(
    database_url: str, tmp_path: Path, command: str, change: dict[str, str], named: str
) -> None:
    code, output = await _start(command, {**base_env(database_url), **change}, tmp_path)
    assert code == 2, output
    (line,) = output.strip().splitlines()
    assert line.startswith("kiota: invalid setting") and named in line, line
    assert "x" * 31 not in line


# ------------------------------------------------------------------------------------------ /metrics


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ADMIN = basic(*ADMIN_AUTH)
WRONG = [
    {},
    basic(ADMIN_AUTH[0], "wrong-password"),
    basic("someone", ADMIN_AUTH[1]),
    basic(ADMIN_AUTH[0], ADMIN_AUTH[1] + "x"),
    basic(ADMIN_AUTH[0], ADMIN_AUTH[1][:-1]),
    basic("", ""),
    {"Authorization": "Basic !!!not-base64"},
    {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
    bearer("ops-admin"),  # an app user's token is not an admin's credential
]


async def test_metrics_need_admin_credentials(client: httpx.AsyncClient) -> None:
    for headers in WRONG:
        answer = await client.get("/metrics", headers=headers)
        assert answer.status_code == 401, (headers, answer.text)
        assert answer.headers["www-authenticate"].startswith("Basic"), headers
        assert "kiota_" not in answer.text
    answer = await client.get("/metrics", headers=ADMIN)
    assert answer.status_code == 200
    assert 'kiota_deposits{kind="mpesa",status="pending"} 0.0' in answer.text


async def test_the_admin_surface_is_closed_when_its_credentials_are_unset(database_url: str, redis_url: str) -> None:
    for unset in ({"admin_username": None, "admin_password": None}, {"admin_password": None}, {"admin_username": None}):
        async with app_with(database_url, redis_url, **unset) as http:
            for headers in [*WRONG, ADMIN, basic("", ""), basic(ADMIN_AUTH[0], "")]:
                answer = await http.get("/metrics", headers=headers)
                assert answer.status_code == 401, (unset, headers)
                assert answer.headers["www-authenticate"].startswith("Basic")


def _app(client: httpx.AsyncClient) -> FastAPI:
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    app = transport.app
    assert isinstance(app, FastAPI)
    return app


async def test_metrics_read_the_database_at_most_once_per_ttl(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    assert SNAPSHOT_TTL_SECONDS <= 15
    resources = _app(client).state.resources
    resources.metrics_cache = SnapshotCache(ttl_seconds=1.0)
    assert "kiota_payout_kill_switch 0.0" in (await client.get("/metrics", headers=ADMIN)).text
    await pool.execute("UPDATE payout_guards SET kill_switch = true")
    # Within the TTL every scrape, however many at once, is the snapshot already read.
    answers = await asyncio.gather(*(client.get("/metrics", headers=ADMIN) for _ in range(20)))
    assert all("kiota_payout_kill_switch 0.0" in a.text for a in answers)
    await asyncio.sleep(1.1)
    assert "kiota_payout_kill_switch 1.0" in (await client.get("/metrics", headers=ADMIN)).text


async def test_concurrent_scrapes_hold_one_database_connection(client: httpx.AsyncClient, database_url: str) -> None:
    """While the snapshot query is slow (its table locked), 20 scrapes wait for it in the process, not in the pool."""
    blocker = await asyncpg.connect(database_url)
    observer = await asyncpg.connect(database_url)  # outside the transaction: its statistics are not frozen

    async def waiting_on_the_lock() -> int:
        count: int = await observer.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return count

    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("LOCK TABLE payout_guards IN ACCESS EXCLUSIVE MODE")
        scrapes = [asyncio.create_task(client.get("/metrics", headers=ADMIN)) for _ in range(20)]
        for _ in range(100):  # until the first snapshot query waits for the lock
            if await waiting_on_the_lock():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # time for any other scrape to reach PostgreSQL too
        assert await waiting_on_the_lock() == 1
        await transaction.rollback()
        answers = await asyncio.gather(*scrapes)
        assert [a.status_code for a in answers] == [200] * 20
    finally:
        await blocker.close()
        await observer.close()
