"""A JSON-RPC proxy that puts a hosted provider's limits in front of a real node, for tests of log scanners.

Every request (single or batch) is forwarded to the upstream node (anvil in tests) and its answer
returned byte for byte, unless one of the rules in force applies:

  max_log_range      an `eth_getLogs` spanning more blocks than this (toBlock - fromBlock + 1; tags such as
                     "latest" resolved through the upstream) is refused with a JSON-RPC error:
                     suggest_range=True   Infura's -32005 "query returned more than 10000 results. Try with
                                          this block range [0xA, 0xB]." with {"from", "to", "limit"} in
                                          `error.data` (fromBlock .. fromBlock + max - 1);
                     suggest_range=False  a plain -32600 naming the limit and suggesting nothing (as
                                          Alchemy's older "Log response size exceeded" answers did), so the
                                          client must split on its own.
                     range_error_http_status: the HTTP status of that refusal (single requests only):
                     200 for Infura; Alchemy's free tier answers 400.
  max_topic_values   an `eth_getLogs` with more values than this in one topic position (an OR list) or in
                     its address list is refused the way go-ethereum does (-32602, "exceed max addresses
                     or topics per search position"; geth's own cap is 1000).
  rate_limit_every   every Nth HTTP request is answered 429, `Retry-After: 1`, before anything is forwarded.
  fail_next          the next N HTTP requests are answered 503 (the rule counts itself down).
  refuse_all         every HTTP request is answered 503, as if the provider were down.
  refuse_methods     an HTTP request with a call to one of these methods is answered 503 (e.g.
                     ["eth_sendRawTransaction"]: a node that reads but never takes a transaction).
  ignore_log_address an `eth_getLogs` is forwarded without its `address` filter, so the answer holds the
                     matching logs of every contract (a provider that must not be trusted to filter).

A batch counts as one HTTP request for the 429/503 rules; its elements are judged one by one for the
`eth_getLogs` rules, the refused ones answered here and the rest forwarded as a smaller batch.

Every call received is counted by method, batch elements included and whatever the answer
(`ProxyState.calls`), and the filter of every `eth_getLogs` is kept (`ProxyState.log_filters`): tests can
assert how a scanner split its ranges and how often it retried. The proxy's own look-ups of the head
(to resolve "latest") are not counted.

Control: in-process through `proxy_state(app)` (`configure(**changes)`, `reset()`), or over HTTP:

    POST /_proxy/config  {"max_log_range": 10, "suggest_range": false}   partial update; the config in force
    GET  /_proxy/config
    GET  /_proxy/calls   {"requests": 12, "calls": {"eth_getLogs": 9, ...}}
    POST /_proxy/reset   forget the counts (the config stays)

`create_rpc_proxy` is the ASGI app (its upstream HTTP client lives in the lifespan); `running_rpc_proxy`
serves it on a real port for a block. Test tooling only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from kiota.dev.serving import serve_in_background

__all__ = [
    "ProxyConfig",
    "ProxyConfigUpdate",
    "ProxyState",
    "RunningRpcProxy",
    "create_rpc_proxy",
    "proxy_state",
    "running_rpc_proxy",
]

# Infura's answer carries its result cap in the text and in error.data, whatever the range rule was.
INFURA_RESULT_LIMIT: Final = 10_000
RESULT_LIMIT_CODE: Final = -32005
PLAIN_RANGE_CODE: Final = -32600
INVALID_PARAMS_CODE: Final = -32602
TOPIC_LIMIT_MESSAGE: Final = "invalid argument 0: exceed max addresses or topics per search position"
RATE_LIMIT_CODE: Final = 429
UNAVAILABLE_CODE: Final = -32603
UPSTREAM_TIMEOUT_S: Final = 30.0

_JSON: Final = "application/json"
_EARLIEST = "earliest"
_HEAD_TAGS: Final = frozenset({"latest", "pending"})
_SETTLED_TAGS: Final = frozenset({"safe", "finalized"})


@dataclass(frozen=True)
class ProxyConfig:
    """The rules in force; `None` (or False, or 0) switches a rule off. See the module docstring."""

    max_log_range: int | None = None
    suggest_range: bool = True
    range_error_http_status: int = 200
    max_topic_values: int | None = None
    rate_limit_every: int | None = None
    fail_next: int = 0
    refuse_all: bool = False
    refuse_methods: tuple[str, ...] = ()
    ignore_log_address: bool = False

    def __post_init__(self) -> None:
        for name in ("max_log_range", "max_topic_values", "rate_limit_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None), got {value}")
        if self.fail_next < 0:
            raise ValueError(f"fail_next must not be negative, got {self.fail_next}")
        if not 200 <= self.range_error_http_status <= 599:
            raise ValueError(f"range_error_http_status must be an HTTP status, got {self.range_error_http_status}")


class ProxyConfigUpdate(BaseModel):
    """The body of `POST /_proxy/config`: only the fields present change."""

    model_config = ConfigDict(extra="forbid")

    max_log_range: int | None = Field(default=None, ge=1)
    suggest_range: bool = True
    range_error_http_status: int = Field(default=200, ge=200, le=599)
    max_topic_values: int | None = Field(default=None, ge=1)
    rate_limit_every: int | None = Field(default=None, ge=1)
    fail_next: int = Field(default=0, ge=0)
    refuse_all: bool = False
    refuse_methods: tuple[str, ...] = ()
    ignore_log_address: bool = False


@dataclass
class ProxyState:
    """The rules in force and what the proxy has seen; shared by the app and the test driving it."""

    config: ProxyConfig = field(default_factory=ProxyConfig)
    calls: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    log_filters: list[dict[str, Any]] = field(default_factory=list)

    def configure(self, **changes: Any) -> ProxyConfig:
        """Change some rules (validated); the others stay. Returns the config now in force."""
        self.config = dataclasses.replace(self.config, **changes)
        return self.config

    def reset(self) -> None:
        """Forget the counts and recorded filters (the every-Nth count restarts too); the rules stay."""
        self.calls.clear()
        self.requests = 0
        self.log_filters.clear()

    def _record(self, calls: Sequence[Any]) -> None:
        self.requests += 1
        for call in calls:
            method = call.get("method") if isinstance(call, dict) else None
            self.calls[method if isinstance(method, str) else "<invalid>"] += 1
            log_filter = _log_filter(call)
            if log_filter is not None:
                self.log_filters.append(log_filter)

    def _gate(self, calls: Sequence[Any]) -> int | None:
        """The HTTP status that answers this request before anything is forwarded, if any."""
        config = self.config
        if config.refuse_all:
            return 503
        if any(isinstance(c, dict) and c.get("method") in config.refuse_methods for c in calls):
            return 503
        if config.fail_next > 0:
            self.config = dataclasses.replace(config, fail_next=config.fail_next - 1)
            return 503
        if config.rate_limit_every is not None and self.requests % config.rate_limit_every == 0:
            return 429
        return None


@dataclass(frozen=True)
class _Refusal:
    error: dict[str, Any]
    http_status: int = 200


class _Upstream:
    """The node behind the proxy, plus the head looked up at most once per proxied request."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url

    async def post(self, content: bytes) -> httpx.Response:
        return await self.client.post(self.url, content=content, headers={"Content-Type": _JSON})

    async def call(self, method: str, params: list[Any]) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
        answer = (await self.post(body)).json()
        if not isinstance(answer, dict) or "result" not in answer:
            raise LookupError(f"upstream could not answer {method}: {answer!r}")
        return answer["result"]


class _BlockResolver:
    """Turns fromBlock/toBlock values into numbers, asking the upstream only when a tag needs it."""

    def __init__(self, upstream: _Upstream) -> None:
        self._upstream = upstream
        self._tags: dict[str, int] = {}

    async def number(self, value: Any) -> int:
        if value is None:
            value = "latest"  # the JSON-RPC default for both ends
        if isinstance(value, int):
            return value
        if not isinstance(value, str):
            raise ValueError(f"not a block: {value!r}")
        if value == _EARLIEST:
            return 0
        if value in _HEAD_TAGS or value in _SETTLED_TAGS:
            if value not in self._tags:
                self._tags[value] = await self._tag_number(value)
            return self._tags[value]
        return int(value, 16)

    async def _tag_number(self, tag: str) -> int:
        if tag in _HEAD_TAGS:
            return int(await self._upstream.call("eth_blockNumber", []), 16)
        block = await self._upstream.call("eth_getBlockByNumber", [tag, False])
        return int(block["number"], 16)


def create_rpc_proxy(upstream_url: str, config: ProxyConfig | None = None) -> FastAPI:
    """The proxy as an ASGI app; `proxy_state(app)` drives it. The upstream client is opened in the lifespan."""
    state = ProxyState(config=config or ProxyConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT_S) as client:
            app.state.rpc_upstream = _Upstream(client, upstream_url)
            yield

    app = FastAPI(title="Kiota JSON-RPC provider proxy", lifespan=lifespan)
    app.state.rpc_proxy = state

    @app.post("/")
    async def rpc(request: Request) -> Response:
        return await _proxy(state, request.app.state.rpc_upstream, await request.body())

    @app.get("/_proxy/config")
    async def get_config() -> dict[str, Any]:
        return dataclasses.asdict(state.config)

    @app.post("/_proxy/config")
    async def post_config(update: ProxyConfigUpdate) -> dict[str, Any]:
        return dataclasses.asdict(state.configure(**update.model_dump(exclude_unset=True)))

    @app.get("/_proxy/calls")
    async def get_calls() -> dict[str, Any]:
        return {"requests": state.requests, "calls": dict(state.calls)}

    @app.post("/_proxy/reset")
    async def post_reset() -> dict[str, Any]:
        state.reset()
        return {"requests": state.requests, "calls": dict(state.calls)}

    return app


def proxy_state(app: FastAPI) -> ProxyState:
    """The state of an app made by `create_rpc_proxy`."""
    state = app.state.rpc_proxy
    if not isinstance(state, ProxyState):
        raise TypeError("not an app made by create_rpc_proxy")
    return state


@dataclass(frozen=True)
class RunningRpcProxy:
    url: str
    state: ProxyState
    app: FastAPI


@contextlib.asynccontextmanager
async def running_rpc_proxy(
    upstream_url: str, config: ProxyConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningRpcProxy]:
    """The proxy on a real port (0: any free one) for the duration of the block."""
    app = create_rpc_proxy(upstream_url, config)
    async with serve_in_background(app, host, port) as url:
        yield RunningRpcProxy(url=url, state=proxy_state(app), app=app)


async def _proxy(state: ProxyState, upstream: _Upstream, body: bytes) -> Response:
    try:
        payload = json.loads(body)
    except ValueError:
        return await _forward(upstream, body)  # the node's own parse error is the honest answer
    calls: list[Any] = payload if isinstance(payload, list) else [payload]
    state._record(calls)
    gate = state._gate(calls)
    if gate is not None:
        return _gate_response(gate, payload)
    if state.config.ignore_log_address and any(_log_filter(call) is not None for call in calls):
        calls = [_without_address(call) for call in calls]
        payload = calls if isinstance(payload, list) else calls[0]
        body = json.dumps(payload).encode()
    resolver = _BlockResolver(upstream)
    refusals = [await _refusal_for(call, state.config, resolver) for call in calls]
    if isinstance(payload, list) and any(refusals):
        return await _forward_batch(upstream, calls, refusals)
    refusal = refusals[0] if not isinstance(payload, list) else None
    if refusal is None:
        return await _forward(upstream, body)
    return JSONResponse(_error_answer(payload, refusal.error), status_code=refusal.http_status)


async def _forward(upstream: _Upstream, body: bytes) -> Response:
    try:
        answer = await upstream.post(body)
    except httpx.HTTPError as exc:
        # A provider whose node is gone answers 502 rather than dropping the connection.
        return JSONResponse(_error_answer(None, _error(UNAVAILABLE_CODE, f"upstream unreachable: {exc}")), 502)
    return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type", _JSON))


async def _forward_batch(upstream: _Upstream, calls: list[Any], refusals: list[_Refusal | None]) -> Response:
    passed = [call for call, refusal in zip(calls, refusals, strict=True) if refusal is None]
    answers: dict[str, Any] = {}
    if passed:
        forwarded = await _forward(upstream, json.dumps(passed).encode())
        try:
            upstream_answers = json.loads(bytes(forwarded.body))
        except ValueError:
            return forwarded
        if not isinstance(upstream_answers, list):
            return forwarded  # an error about the batch as a whole: pass it on
        answers = {_id_key(answer): answer for answer in upstream_answers if isinstance(answer, dict)}
    merged = [
        _error_answer(call, refusal.error) if refusal is not None else answers.get(_id_key(call))
        for call, refusal in zip(calls, refusals, strict=True)
    ]
    return JSONResponse([answer for answer in merged if answer is not None])


async def _refusal_for(call: Any, config: ProxyConfig, resolver: _BlockResolver) -> _Refusal | None:
    log_filter = _log_filter(call)
    if log_filter is None:
        return None
    if config.max_topic_values is not None and _widest_position(log_filter) > config.max_topic_values:
        return _Refusal(_error(INVALID_PARAMS_CODE, TOPIC_LIMIT_MESSAGE))
    if config.max_log_range is None or "blockHash" in log_filter:
        return None
    try:
        first = await resolver.number(log_filter.get("fromBlock"))
        last = await resolver.number(log_filter.get("toBlock"))
    except (ValueError, LookupError, KeyError, TypeError, httpx.HTTPError):
        return None  # malformed or unresolvable: the node answers it
    if last - first + 1 <= config.max_log_range:
        return None
    return _Refusal(_range_error(first, config.max_log_range, config.suggest_range), config.range_error_http_status)


def _range_error(first: int, limit: int, suggest: bool) -> dict[str, Any]:
    if not suggest:
        return _error(
            PLAIN_RANGE_CODE,
            f"Log response size exceeded. You can make eth_getLogs requests with up to a {limit} block range.",
        )
    # Infura writes the hex digits in upper case ("0xBDE5F8"); a scanner must parse, not compare strings.
    start, end = f"0x{first:X}", f"0x{first + limit - 1:X}"
    return _error(
        RESULT_LIMIT_CODE,
        f"query returned more than {INFURA_RESULT_LIMIT} results. Try with this block range [{start}, {end}].",
        {"from": start, "limit": INFURA_RESULT_LIMIT, "to": end},
    )


def _widest_position(log_filter: Mapping[str, Any]) -> int:
    """The most values any one position holds: the address list or a topic's OR list."""
    positions = [log_filter.get("address")]
    topics = log_filter.get("topics")
    if isinstance(topics, list):
        positions += topics
    return max((len(value) for value in positions if isinstance(value, list)), default=0)


def _log_filter(call: Any) -> dict[str, Any] | None:
    if not isinstance(call, dict) or call.get("method") != "eth_getLogs":
        return None
    params = call.get("params")
    if isinstance(params, list) and params and isinstance(params[0], dict):
        return params[0]
    return None


def _without_address(call: Any) -> Any:
    """An `eth_getLogs` call with its address filter dropped (a copy); any other call as it is."""
    log_filter = _log_filter(call)
    if log_filter is None:
        return call
    return {**call, "params": [{k: v for k, v in log_filter.items() if k != "address"}, *call["params"][1:]]}


def _gate_response(status: int, payload: Any) -> JSONResponse:
    if status == 429:
        error, headers = _error(RATE_LIMIT_CODE, "Too Many Requests"), {"Retry-After": "1"}
    else:
        error, headers = _error(UNAVAILABLE_CODE, "Service Unavailable"), {}
    if isinstance(payload, list):
        content: Any = [_error_answer(call, error) for call in payload] or _error_answer(None, error)
    else:
        content = _error_answer(payload, error)
    return JSONResponse(content, status_code=status, headers=headers)


def _error(code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return error


def _error_answer(call: Any, error: dict[str, Any]) -> dict[str, Any]:
    call_id = call.get("id") if isinstance(call, dict) else None
    return {"jsonrpc": "2.0", "id": call_id, "error": error}


def _id_key(message: Any) -> str:
    return json.dumps(message.get("id") if isinstance(message, dict) else None)
