"""Fixtures over the real services: PostgreSQL, Redis (and, later, anvil).

One migrated template database per session; each test that asks for a
database gets its own copy (CREATE DATABASE … TEMPLATE), dropped afterwards.
Redis tests use their own logical database, flushed before each test.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from api.app import create_app
from kiota.db import create_pool
from kiota.migrate import migrate
from kiota.settings import Settings, WorkerSettings
from tests.support import ADMIN_DSN, REDIS_TEST_URL, TREASURY_KEY, settings_kwargs

_counter = itertools.count()


def dsn_for(database: str) -> str:
    return ADMIN_DSN.rsplit("/", 1)[0] + "/" + database


async def _drop(admin: asyncpg.Connection, name: str) -> None:
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
async def template_db() -> AsyncIterator[str]:
    name = f"kiota_tpl_{os.getpid()}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await _drop(admin, name)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await migrate(dsn_for(name))
        yield name
        await _drop(admin, name)
    finally:
        await admin.close()


@pytest.fixture
async def empty_database_url() -> AsyncIterator[str]:
    """A database that does not exist yet (for migration tests)."""
    name = f"kiota_e_{os.getpid()}_{next(_counter)}"
    yield dsn_for(name)
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await _drop(admin, name)
    finally:
        await admin.close()


@pytest.fixture
async def database_url(template_db: str) -> AsyncIterator[str]:
    name = f"kiota_t_{os.getpid()}_{next(_counter)}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
        yield dsn_for(name)
        await _drop(admin, name)
    finally:
        await admin.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    db = await create_pool(database_url, min_size=1, max_size=20)
    yield db
    await db.close()


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    client = Redis.from_url(REDIS_TEST_URL)
    await client.flushdb()
    yield REDIS_TEST_URL
    await client.flushdb()
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
