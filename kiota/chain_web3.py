"""`ChainReader` on web3.py: `AsyncWeb3(AsyncHTTPProvider)` with a kept session and its batch requests.

Issue 12 item 5 measured it against our own client (kiota/chain_rpc.py) on B2 and B6 and kept ours (the
figures: bench/RESULTS.md and the top of chain_rpc.py). It stays for the benches, which select it with
KIOTA_BENCH_RPC=web3, so the comparison can be made again (a new web3.py, a change to ours).

It is a `ChainReader` (same methods, answers and errors), so the treasury and the ingester run on it
unchanged: `rpc` goes through web3's request manager (middleware and response validation), `batch`
through the provider's batch path with the same middleware, and `head`, `usdc_balances` and
`transfer_logs` are ChainReader's own, built on those two.

Configured as a careful user would, so that web3.py is measured at its best:
- its own aiohttp session with keep-alive (web3's default session closes the connection after each
  request: `TCPConnector(force_close=True)`);
- no validation middleware (see below), and eth_chainId cached should anything else ask for it;
- no ENS middleware (its check of an address that is not checksummed raises: the ingester's
  eth_getLogs filter is lower-case), no AttributeDict middleware (answers stay JSON, as ours);
- no transport retries: a failure is `ChainUnavailable` at once, as ours, and the job retries.

What it cannot do as ours does: web3 raises on any HTTP error status before reading the body, so an
HTTP 400 carrying a JSON-RPC range refusal (Alchemy's free tier) is `ChainUnavailable` here rather than
a split range, and a 429 is not waited out.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import Web3Exception, Web3RPCError
from web3.types import RPCEndpoint

from kiota.chain_rpc import ChainReader, RangeRefused, is_range_refusal
from kiota.errors import ChainUnavailable

_TIMEOUT = aiohttp.ClientTimeout(total=10.0, connect=3.0)
_CACHED = {RPCEndpoint("eth_chainId")}


class Web3ChainReader(ChainReader):
    """A `ChainReader` whose requests go through web3.py; `calls` counts HTTP requests, as ours."""

    def __init__(self, rpc_url: str) -> None:  # ChainReader's own session is not made
        self.rpc_url = rpc_url
        self.calls = 0
        provider = AsyncHTTPProvider(
            rpc_url,
            request_kwargs={"timeout": _TIMEOUT},
            exception_retry_configuration=None,
            cache_allowed_requests=True,
            cacheable_requests=_CACHED,
        )
        self._w3: AsyncWeb3[AsyncHTTPProvider] = AsyncWeb3(provider)
        # Addresses are never ENS names here, and the ENS check fails on a lower-case address; answers
        # stay JSON (ChainReader's contract: the ingester's decoding takes dicts and lists, not AttributeDicts).
        self._w3.middleware_onion.remove("ens_name_to_address")
        self._w3.middleware_onion.remove("attrdict")
        # It checks a chainId that our eth_calls never carry, yet asks web3 for the chain id (a cached request
        # through eth.chain_id) before each eth_call, batched ones too: 0.3 ms of CPU each, 300 ms per batch of
        # 800 balances (B6 at 10,000 addresses took 2.4x ours with it; measured at commit 7ed7954).
        self._w3.middleware_onion.remove("validation")
        self._session: aiohttp.ClientSession | None = None

    async def _provider(self) -> AsyncHTTPProvider:
        """The provider, its keep-alive session made on first use (aiohttp binds it to the running loop)."""
        provider = self._w3.provider
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=_TIMEOUT)
            await provider.cache_async_session(self._session)
        return provider

    async def aclose(self) -> None:
        if self._session is not None:
            await self._w3.provider.disconnect()
            self._session = None

    async def rpc(self, method: str, params: list[Any]) -> Any:
        await self._provider()
        self.calls += 1
        try:
            return await self._w3.manager.coro_request(RPCEndpoint(method), params)
        except Web3RPCError as exc:
            error = dict((exc.rpc_response or {}).get("error") or {})
            if method == "eth_getLogs" and is_range_refusal(error):
                raise RangeRefused(error) from exc
            raise ChainUnavailable(f"{method}: {error or exc}") from exc
        except (Web3Exception, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ChainUnavailable(f"{method}: {type(exc).__name__}: {exc}") from exc

    async def batch(self, method: str, params: list[list[Any]]) -> list[tuple[Any, dict[str, Any] | None]]:
        if not params:
            return []
        provider = await self._provider()
        send = await provider.batch_request_func(self._w3, self._w3.middleware_onion)
        self.calls += 1
        try:
            answers = await send([(RPCEndpoint(method), p) for p in params])
        except (Web3Exception, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ChainUnavailable(f"{method} batch: {type(exc).__name__}: {exc}") from exc
        if not isinstance(answers, list) or len(answers) != len(params):
            raise ChainUnavailable(f"{method} batch: not a batch answer of {len(params)}: {str(answers)[:200]}")
        return [
            (answer.get("result"), dict(answer["error"]) if answer.get("error") is not None else None)
            for answer in answers
        ]
