"""The chain RPC's HTTP transport (aiohttp) against hostile answers from a real local server: what a provider, or
whatever sits in front of it, may answer instead of JSON-RPC."""

from __future__ import annotations

import contextlib
import gc
import warnings
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from kiota.chain_rpc import MAX_RETRY_AFTER_SECONDS, ChainReader, _retry_after
from kiota.errors import ChainUnavailable
from tests.support import free_port


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_not_followed(status: int) -> None:
    """A signed transaction is never re-sent to another address, nor turned into a GET whose answer reads as a
    result (aiohttp follows redirects unless told not to; httpx did not)."""
    elsewhere: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": "/elsewhere"})

    async def other(request: web.Request) -> web.Response:
        elsewhere.append(request.method)
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": "0x1"})

    app = web.Application()
    app.router.add_post("/", moved)
    app.router.add_route("*", "/elsewhere", other)
    async with serving(app) as url:
        reader = ChainReader(url)
        try:
            with pytest.raises(ChainUnavailable, match=f"HTTP {status}"):
                await reader.rpc("eth_sendRawTransaction", ["0x02"])
        finally:
            await reader.aclose()
    assert elsewhere == []


async def test_a_body_that_is_not_json_is_chain_unavailable() -> None:
    async def html(request: web.Request) -> web.Response:
        return web.Response(status=200, body=b"\xff<html>gateway</html>", content_type="text/html")

    app = web.Application()
    app.router.add_post("/", html)
    async with serving(app) as url:
        reader = ChainReader(url)
        try:
            with pytest.raises(ChainUnavailable, match="HTTP 200"):
                await reader.head()
        finally:
            await reader.aclose()


def test_retry_after_is_believed_in_plain_seconds_and_only_up_to_a_cap() -> None:
    assert _retry_after("2", 0) == 2.0
    assert _retry_after("3600", 0) == MAX_RETRY_AFTER_SECONDS
    assert _retry_after("\u00b2", 1) == 0.4  # a superscript two: a digit to str.isdigit, not to float()
    assert _retry_after("Wed, 21 Oct 2026 07:28:00 GMT", 2) == 0.8
    assert _retry_after("", 0) == 0.2


async def test_a_reader_used_after_it_is_closed_answers_and_leaves_no_session_open() -> None:
    """A job that began before its treasury was swapped out and closed goes on using it (the suite's tests swap
    them under a running worker). Each such call gets a session of its own, closed after it: a session left open
    warns when it is collected, in whatever test runs then (seen in the suite, from test_nonce_filler.py)."""

    async def head(request: web.Request) -> web.Response:
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": "0x10"})

    app = web.Application()
    app.router.add_post("/", head)
    async with serving(app) as url:
        reader = ChainReader(url)
        assert await reader.rpc("eth_blockNumber", []) == "0x10"
        await reader.aclose()
        assert await reader.rpc("eth_blockNumber", []) == "0x10"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del reader
            gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
