"""Our JSON-RPC client for Base: one keep-alive aiohttp session, calls counted, providers' limits handled.

The ingester reads logs and balances through it and the treasury sends its transactions
through it. Failures that may pass become `ChainUnavailable`; a 429 waits (`Retry-After`)
and tries again; an `eth_getLogs` range a provider refuses is split (the range it suggests,
else halves). Every failure is counted in `kiota_rpc_errors_total` by kind (`kiota.metrics`).
"""

# Why ours and not web3.py (issue 12 item 5, measured 2026-12-07; figures in bench/RESULTS.md,
# "web3.py vs chain_rpc"). kiota/chain_web3.py puts AsyncWeb3(AsyncHTTPProvider) behind this same
# interface (a kept aiohttp session, batch requests) and KIOTA_BENCH_RPC=web3 runs B2 and B6 on it.
# The rule was: keep web3.py if it costs at most 10% on both. It does not on B6:
# - with web3's default middleware, B6's round at 10,000 addresses takes 2.4x ours (567 vs 235 ms,
#   medians of 3 interleaved pairs): its validation middleware asks for the chain id before every
#   eth_call, batched ones included, 0.3 ms of CPU each, 300 ms per batch of 800 balances;
# - without it (web3 at its best for us), 1.11x by the median of 12 interleaved pairs' ratios (1.04x by
#   the runs' medians, 259 vs 248 ms: a close call on a noisy machine), and 1.7-2.3x the CPU of the round in
#   every pair (130 vs 70 ms);
# - on B2 it costs nothing: completions/s 57.1 vs 56.0 (medians of 4 pairs, within the noise of a
#   shared machine) with 9% less worker CPU per completion (8.5 vs 9.4 ms: aiohttp is cheaper than httpx).
# It would also lose two things this client does: web3 raises on an HTTP error status before reading
# the body (Alchemy refuses a wide eth_getLogs range with HTTP 400 and a JSON-RPC error naming the
# range to ask), and its batch requests are never retried (a 429 here waits Retry-After and resends).
# Its default session closes the connection after each request (TCPConnector(force_close=True)).
#
# Why aiohttp and not httpx (issue 14, measured 2026-12-07 with py-spy on the worker in B7): httpx and
# httpcore were 23% of the worker's CPU, a share of it a failed `import sniffio` that httpcore retries at
# every lock, event and close. The timeouts are httpx's as they were (3 s to connect, 10 s waiting for a
# pooled connection and between bytes of an answer) plus 30 s for the whole call: aiohttp has no write timeout,
# and a provider that stops reading a large batch would hold the lane past its job's timeout. Redirects are not
# followed, as httpx did not: aiohttp would re-send a POST as a GET, or a signed transaction to another host.

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from kiota import metrics
from kiota.errors import ChainUnavailable, KiotaError
from kiota.usdc import TRANSFER_TOPIC, next_ranges

MAX_429_RETRIES = 5
MIN_RANGE_SPLITS = 64  # a provider refusing even one block is broken, not strict
TIMEOUT = aiohttp.ClientTimeout(total=30.0, connect=10.0, sock_connect=3.0, sock_read=10.0)
MAX_RETRY_AFTER_SECONDS = 10.0  # a provider's Retry-After, believed up to this (the lane's lock is held meanwhile)


class RangeRefused(KiotaError):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("message")))
        self.error = error


def is_range_refusal(error: dict[str, Any]) -> bool:
    message = str(error.get("message", "")).lower()
    return error.get("code") == -32005 or any(
        word in message for word in ("block range", "range", "exceed", "too many", "limit")
    )


def _failed(kind: str) -> None:
    metrics.tally.count(metrics.RPC_ERRORS, kind)


def _retry_after(header: str, attempt: int) -> float:
    """Seconds to wait after a 429: the provider's Retry-After in seconds (capped), else a doubling back-off."""
    if header.isascii() and header.isdecimal():
        return min(float(header), MAX_RETRY_AFTER_SECONDS)
    return 0.2 * 2.0**attempt


class ChainReader:
    """A JSON-RPC reader that counts its calls and handles providers' limits."""

    def __init__(self, rpc_url: str) -> None:
        self.rpc_url = rpc_url
        self._session: aiohttp.ClientSession | None = None  # made on first use: aiohttp binds it to the loop
        self._closed = False
        self.calls = 0

    async def aclose(self) -> None:
        """Close the keep-alive session. A caller still holding the reader (a job that began before its treasury
        was swapped out) may go on using it: each later call has a session of its own, closed after it. Else a
        call during or after the close would open a session that nobody closes (it warns when collected)."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _request(self, payload: Any) -> tuple[int, str, bytes]:
        """One POST: the status, the Retry-After header and the whole body."""
        if self._closed:
            async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
                return await self._send(session, payload)
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        return await self._send(self._session, payload)

    async def _send(self, session: aiohttp.ClientSession, payload: Any) -> tuple[int, str, bytes]:
        async with session.post(self.rpc_url, json=payload, allow_redirects=False) as response:
            return response.status, response.headers.get("retry-after", ""), await response.read()

    async def _post(self, what: str, payload: Any) -> tuple[int, Any]:
        """One HTTP request (a 429 waits and tries again): the status and the decoded body, or None."""
        for attempt in range(MAX_429_RETRIES + 1):
            self.calls += 1
            try:
                status, retry_after, body = await self._request(payload)
            except (aiohttp.ClientError, TimeoutError) as exc:
                _failed("transport")
                raise ChainUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
            if status == 429:
                _failed("rate_limited")
            if status == 429 and attempt < MAX_429_RETRIES:
                await asyncio.sleep(_retry_after(retry_after, attempt))
                continue
            try:
                return status, json.loads(body)
            except ValueError:
                return status, None
        raise ChainUnavailable(f"{what}: rate limited")

    async def rpc(self, method: str, params: list[Any]) -> Any:
        status, body = await self._post(method, {"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        if not isinstance(body, dict) or (status >= 400 and "error" not in body):
            _failed("http")
            raise ChainUnavailable(f"{method}: HTTP {status}")
        # Some providers (Alchemy's free tier) refuse a wide range with HTTP 400 and an error body.
        if "error" in body:
            error: dict[str, Any] = body["error"]
            if method == "eth_getLogs" and is_range_refusal(error):
                _failed("range_refused")
                raise RangeRefused(error)
            _failed("rpc_error")
            raise ChainUnavailable(f"{method}: {error}")
        return body.get("result")

    async def batch(self, method: str, params: list[list[Any]]) -> list[tuple[Any, dict[str, Any] | None]]:
        """The same method for many parameter lists in one JSON-RPC batch (one HTTP request, one counted
        call): each answer as (result, error), in the order asked. A transport failure or an answer
        that is not a batch raises ChainUnavailable; an error in one item is that item's."""
        if not params:
            return []
        payload = [{"jsonrpc": "2.0", "id": i, "method": method, "params": p} for i, p in enumerate(params)]
        status, body = await self._post(f"{method} batch", payload)
        if not isinstance(body, list):
            _failed("http")
            raise ChainUnavailable(f"{method} batch: HTTP {status}, not a batch answer")
        answers = {item.get("id"): item for item in body if isinstance(item, dict)}
        if set(answers) != set(range(len(params))):
            _failed("bad_answer")
            raise ChainUnavailable(f"{method} batch: {len(answers)} answers for {len(params)} calls")
        return [(answers[i].get("result"), answers[i].get("error")) for i in range(len(params))]

    async def head(self) -> int:
        return int(await self.rpc("eth_blockNumber", []), 16)

    async def usdc_balance(self, token: str, owner: str) -> int:
        return (await self.usdc_balances(token, [owner]))[0]

    async def usdc_balances(self, token: str, owners: list[str]) -> list[int]:
        """balanceOf for many owners in one JSON-RPC batch (one HTTP request, one counted call)."""
        calls = [
            [{"to": token, "data": "0x70a08231" + o.lower().removeprefix("0x").rjust(64, "0")}, "latest"]
            for o in owners
        ]
        answers = await self.batch("eth_call", calls)
        errors = [error for _, error in answers if error is not None]
        if errors:
            _failed("rpc_error")
            raise ChainUnavailable(f"balanceOf batch failed: {errors[0]}")
        try:
            return [int(result, 16) for result, _ in answers]
        except (TypeError, ValueError) as exc:
            raise ChainUnavailable(f"balanceOf batch: not a balance: {exc}") from exc

    async def transfer_logs(self, token: str, start: int, end: int, depth: int = 0) -> list[dict[str, Any]]:
        """All Transfer logs of `token` in [start, end], splitting the range when a provider refuses it."""
        try:
            result: list[dict[str, Any]] = await self.rpc(
                "eth_getLogs",
                [{"fromBlock": hex(start), "toBlock": hex(end), "address": token, "topics": [TRANSFER_TOPIC]}],
            )
            return result
        except RangeRefused as refusal:
            if start >= end or depth > MIN_RANGE_SPLITS:
                raise ChainUnavailable(f"provider refuses even blocks {start}-{end}: {refusal}") from refusal
            first, second = next_ranges(start, end, refusal.error)
            return [
                *await self.transfer_logs(token, *first, depth=depth + 1),
                *await self.transfer_logs(token, *second, depth=depth + 1),
            ]
