"""Bodies over 64 KiB: 413 on every route, before authentication and before the rest is read.

In process, the app is called as an ASGI server would call it, with a `receive` that counts the
bytes handed over: the proof that the rest of a 2 MB body is never read. Over a real socket
(uvicorn on a free port), the 413 arrives while the client still holds most of its body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from kiota.dev.serving import serve_in_background
from kiota.settings import Settings
from tests.support import CALLBACK_TOKEN, bearer, free_port

LIMIT = 64 * 1024
TWO_MB = 2 * 1024 * 1024
CHUNK = 16 * 1024


@dataclass
class Exchange:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    pulled: int = 0  # body bytes the app took from the "server"


async def call(
    app: FastAPI,
    method: str,
    path: str,
    *,
    body_size: int,
    content_length: int | None,
    headers: dict[str, str] | None = None,
) -> Exchange:
    """One request straight into the ASGI app; `content_length` None: sent chunked (no header)."""
    exchange = Exchange()
    remaining = body_size
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal remaining
        if remaining > 0:
            size = min(CHUNK, remaining)
            remaining -= size
            exchange.pulled += size
            return {"type": "http.request", "body": b" " * size, "more_body": remaining > 0}
        if exchange.pulled == 0 and body_size == 0:
            exchange.pulled = 0
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()  # the body is over: the client waits for its answer
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
            exchange.headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            exchange.body += message.get("body", b"")
            if not message.get("more_body", False):
                done.set()

    raw_headers = [(b"host", b"kiota.test"), (b"content-type", b"application/json")]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if content_length is None:
        raw_headers.append((b"transfer-encoding", b"chunked"))
    else:
        raw_headers.append((b"content-length", str(content_length).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": raw_headers,
        "client": ("198.51.100.7", 40000),
        "server": ("kiota.test", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), 10)
    return exchange


# Routes the schema does not document (include_in_schema=False), and paths no route has.
HIDDEN = [
    ("POST", f"/api/v1/deposit/mpesa-callback/{CALLBACK_TOKEN}"),
    ("POST", "/api/v1/deposit/mpesa-callback/wrong-token-0123456789"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/admin/csrf"),
    ("POST", "/api/v1/admin/kill-switch"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("POST", "/no/such/route"),
]


def every_route(app: FastAPI) -> list[tuple[str, str]]:
    found = list(HIDDEN)
    for path, operations in app.openapi()["paths"].items():
        path = path.replace("{deposit_id}", "5f0c1a2e-0000-4000-8000-000000000000")
        path = path.replace("{intent_id}", "5f0c1a2e-0000-4000-8000-000000000001")
        path = path.replace("{job_id}", "complete_mpesa_deposit:5f0c1a2e-0000-4000-8000-000000000002")
        assert "{" not in path, path
        found += [(method.upper(), path) for method in operations]
    assert ("POST", "/api/v1/deposit/initiate") in found and ("GET", "/api/v1/portfolio") in found
    return found


async def users(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM users")
    return count


async def test_every_route_refuses_a_declared_2_mb_body_without_reading_a_byte(
    app: FastAPI, pool: asyncpg.Pool
) -> None:
    for method, path in every_route(app):
        for headers in ({}, bearer("alice")):
            exchange = await call(app, method, path, body_size=TWO_MB, content_length=TWO_MB, headers=headers)
            assert exchange.status == 413, (method, path, exchange.status, exchange.body)
            assert exchange.pulled == 0, (method, path)
            assert set(json.loads(exchange.body)) == {"detail"}
    assert await users(pool) == 0  # no token was even looked at: no user was created


@pytest.mark.parametrize("declared", [None, 10, LIMIT], ids=["chunked", "content-length-lies-small", "at-the-limit"])
async def test_every_route_counts_real_bytes_and_stops_reading_at_the_limit(
    app: FastAPI, pool: asyncpg.Pool, declared: int | None
) -> None:
    for method, path in every_route(app):
        exchange = await call(app, method, path, body_size=TWO_MB, content_length=declared, headers=bearer("bob"))
        assert exchange.status == 413, (method, path, exchange.status, exchange.body)
        assert LIMIT < exchange.pulled <= LIMIT + CHUNK, (method, path, exchange.pulled)  # not 2 MB
    assert await users(pool) == 0


async def test_a_body_at_the_limit_reaches_the_route_whole(app: FastAPI, client: httpx.AsyncClient) -> None:
    document = b'{"expected_amount_usdc": "25.50"}'
    exact = document + b" " * (LIMIT - len(document))
    json_type = {"Content-Type": "application/json"}
    answer = await client.post("/api/v1/deposit/intent/create", content=exact, headers=bearer("carol") | json_type)
    assert answer.status_code == 201, answer.text
    assert (await client.get(f"/api/v1/deposit/intents/{answer.json()['intent_id']}", headers=bearer("carol"))).json()[
        "expected_amount_usdc"
    ] == "25.500000"

    async def chunks() -> AsyncIterator[bytes]:
        other = b'{"expected_amount_usdc": "1.00"}'
        padded = other + b" " * (LIMIT - len(other))
        for start in range(0, LIMIT, 1000):
            yield padded[start : start + 1000]

    answer = await client.post("/api/v1/deposit/intent/create", content=chunks(), headers=bearer("dan") | json_type)
    assert answer.status_code == 201, answer.text
    over = await client.post("/api/v1/deposit/intent/create", content=exact + b" ", headers=bearer("erin") | json_type)
    assert over.status_code == 413


async def test_the_webhook_follows_the_same_rule(app: FastAPI, pool: asyncpg.Pool) -> None:
    path = f"/api/v1/deposit/mpesa-callback/{CALLBACK_TOKEN}"
    for declared in (TWO_MB, None, 10):
        exchange = await call(app, "POST", path, body_size=TWO_MB, content_length=declared)
        assert exchange.status == 413
        assert exchange.pulled <= LIMIT + CHUNK
    assert await pool.fetchval("SELECT count(*) FROM mpesa_callbacks") == 0


# ---------------------------------------------------------------------------------- over a real socket


@pytest.fixture
async def api_url(settings: Settings) -> AsyncIterator[str]:
    async with serve_in_background(create_app(settings), port=free_port()) as url:
        yield url


async def _status_line(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readline(), 5)


async def _open(api_url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = api_url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def test_a_declared_2_mb_body_is_answered_before_it_is_sent(api_url: str) -> None:
    reader, writer = await _open(api_url)
    try:
        writer.write(
            b"POST /api/v1/deposit/initiate HTTP/1.1\r\nHost: kiota.test\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {TWO_MB}\r\n\r\n".encode()
            + b" " * 1024
        )
        await writer.drain()
        # Only 1 KiB of the 2 MB was sent, and no token at all: the answer is already there.
        assert await _status_line(reader) == b"HTTP/1.1 413 Request Entity Too Large\r\n"
    finally:
        writer.close()


async def test_a_chunked_2_mb_body_is_answered_once_it_passes_64_kib(api_url: str) -> None:
    reader, writer = await _open(api_url)
    try:
        writer.write(
            b"POST /api/v1/deposit/initiate HTTP/1.1\r\nHost: kiota.test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        sent = 0
        chunk = b" " * 8192
        while sent <= LIMIT + len(chunk):  # a little past the limit, of the 2 MB this client has
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
        await writer.drain()
        assert await _status_line(reader) == b"HTTP/1.1 413 Request Entity Too Large\r\n"
        assert sent < TWO_MB // 20
    finally:
        writer.close()


async def test_an_honest_client_streaming_2_mb_gets_its_413(api_url: str) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(TWO_MB // CHUNK):
            yield b" " * CHUNK

    async with httpx.AsyncClient(base_url=api_url, timeout=15) as http:
        for content in (body(), b" " * TWO_MB):
            answer = await http.post("/api/v1/deposit/initiate", content=content)
            assert answer.status_code == 413, answer.text
            assert set(answer.json()) == {"detail"}
        assert (await http.get("/health")).status_code == 200  # the connection, or a new one, still serves
