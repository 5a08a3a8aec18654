"""The provider proxy forwards to a real anvil and imitates hosted providers' limits.

One anvil per module, with TestUSDC at the Base USDC address and a few mints, each in its own block, so
eth_getLogs has something to find; the chain is not changed after that. One proxy is served on a real
port for the module; each test starts with no rules and no counts.

The web3 tests pin down what a scanner built on web3.py 8's AsyncHTTPProvider will have to catch:
a JSON-RPC error is `web3.exceptions.Web3RPCError` (the error object in `rpc_response["error"]`), while an
HTTP 429/5xx (or a 400) is `aiohttp.ClientResponseError`, raised by `raise_for_status()` after web3's own
retries, with the status in `.status`, the headers in `.headers`, and the body gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import httpx
import pytest
import pytest_asyncio
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import Web3RPCError
from web3.providers.rpc.utils import ExceptionRetryConfiguration

from kiota.dev import chain
from kiota.dev.chain import BASE_USDC_ADDRESS, AnvilNode, Web3Client
from kiota.dev.rpc_proxy import (
    ProxyConfig,
    RunningRpcProxy,
    create_rpc_proxy,
    proxy_state,
    running_rpc_proxy,
)
from tests.support import free_port

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
RECIPIENTS = [f"0x{index:040x}" for index in range(0xA1, 0xA7)]  # six mints, six blocks


def address_topic(address: str) -> str:
    return "0x" + address.lower().removeprefix("0x").rjust(64, "0")


def call(method: str, params: list[Any] | None = None, call_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call_id, "method": method, "params": params or []}


def usdc_logs(from_block: int | str, to_block: int | str, **extra: Any) -> dict[str, Any]:
    def block(value: int | str) -> str:
        return hex(value) if isinstance(value, int) else value

    return {"fromBlock": block(from_block), "toBlock": block(to_block), "address": BASE_USDC_ADDRESS, **extra}


def rpc_error(exc: Web3RPCError) -> dict[str, Any]:
    """The JSON-RPC error object web3 keeps on the exception (web3 types its `data` as str; it is any JSON)."""
    assert exc.rpc_response is not None
    return cast(dict[str, Any], exc.rpc_response["error"])


@contextlib.asynccontextmanager
async def web3_on(url: str, retry: ExceptionRetryConfiguration | None = None) -> AsyncIterator[Web3Client]:
    """An AsyncWeb3 like the scanner's; no retries unless given (web3's default backoff costs ~1.9 s)."""
    w3: Web3Client = AsyncWeb3(AsyncHTTPProvider(url, exception_retry_configuration=retry))
    try:
        yield w3
    finally:
        await w3.provider.disconnect()


def quick_retries(retries: int = 5) -> ExceptionRetryConfiguration:
    """web3's default retry policy (same errors, same count) with a negligible backoff."""
    return ExceptionRetryConfiguration(
        errors=(aiohttp.ClientError, TimeoutError), retries=retries, backoff_factor=0.001
    )


@pytest_asyncio.fixture(scope="module")
async def node() -> AsyncIterator[AnvilNode]:
    async with chain.start_anvil(free_port()) as anvil:
        yield anvil


@pytest_asyncio.fixture(scope="module")
async def mint_blocks(node: AnvilNode) -> list[int]:
    """The block numbers of the six mints (one Transfer log each)."""
    async with chain.connect(node.rpc_url) as w3:
        await chain.install_usdc(w3, BASE_USDC_ADDRESS)
        blocks: list[int] = []
        for recipient in RECIPIENTS:
            tx_hash = await chain.mint_usdc(w3, BASE_USDC_ADDRESS, recipient, 1_000_000)
            blocks.append((await w3.eth.get_transaction_receipt(tx_hash))["blockNumber"])
        await chain.mine(w3, 4)  # a few empty blocks on top
    return blocks


@pytest_asyncio.fixture(scope="module")
async def served(node: AnvilNode, mint_blocks: list[int]) -> AsyncIterator[RunningRpcProxy]:
    async with running_rpc_proxy(node.rpc_url) as running:
        yield running


@pytest_asyncio.fixture
async def proxy(served: RunningRpcProxy) -> AsyncIterator[RunningRpcProxy]:
    served.state.config = ProxyConfig()
    served.state.reset()
    yield served
    served.state.config = ProxyConfig()


@pytest_asyncio.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def post(http: httpx.AsyncClient, url: str, payload: Any) -> httpx.Response:
    return await http.post(url, json=payload)


# --- forwarding and counting ---------------------------------------------------------------------


async def test_single_calls_are_forwarded_unchanged(
    proxy: RunningRpcProxy, node: AnvilNode, http: httpx.AsyncClient
) -> None:
    for method in ("eth_chainId", "eth_blockNumber"):
        direct = await post(http, node.rpc_url, call(method, call_id=7))
        proxied = await post(http, proxy.url, call(method, call_id=7))
        assert proxied.status_code == direct.status_code == 200
        assert proxied.json() == direct.json()
    assert (await post(http, proxy.url, call("eth_chainId"))).json()["result"] == "0x2105"


async def test_a_batch_is_forwarded_and_each_element_counted(
    proxy: RunningRpcProxy, node: AnvilNode, http: httpx.AsyncClient
) -> None:
    batch = [call("eth_chainId", call_id=1), call("eth_blockNumber", call_id=2), call("eth_chainId", call_id=3)]
    direct = await post(http, node.rpc_url, batch)
    proxied = await post(http, proxy.url, batch)
    assert proxied.json() == direct.json()
    assert proxy.state.calls == {"eth_chainId": 2, "eth_blockNumber": 1}
    assert proxy.state.requests == 1


async def test_web3_through_the_proxy_sees_the_node(proxy: RunningRpcProxy, node: AnvilNode) -> None:
    async with web3_on(proxy.url) as w3:
        assert await w3.eth.chain_id == chain.BASE_CHAIN_ID
        async with w3.batch_requests() as batch:
            batch.add(w3.eth.chain_id)
            batch.add(w3.eth.block_number)
            chain_id, head = cast(list[Any], await batch.async_execute())
    async with web3_on(node.rpc_url) as direct:
        assert (chain_id, head) == (chain.BASE_CHAIN_ID, await direct.eth.block_number)
    assert proxy.state.calls == {"eth_chainId": 2, "eth_blockNumber": 1}


async def test_reset_forgets_the_counts_but_keeps_the_rules(proxy: RunningRpcProxy, http: httpx.AsyncClient) -> None:
    proxy.state.configure(max_log_range=3)
    await post(http, proxy.url, call("eth_getLogs", [usdc_logs(1, 2)]))
    assert proxy.state.calls == {"eth_getLogs": 1}
    assert proxy.state.log_filters == [usdc_logs(1, 2)]
    proxy.state.reset()
    assert (proxy.state.calls, proxy.state.requests, proxy.state.log_filters) == ({}, 0, [])
    assert proxy.state.config.max_log_range == 3


async def test_a_body_that_is_not_json_gets_the_nodes_own_answer(
    proxy: RunningRpcProxy, node: AnvilNode, http: httpx.AsyncClient
) -> None:
    direct = await http.post(node.rpc_url, content=b"{not json", headers={"Content-Type": "application/json"})
    proxied = await http.post(proxy.url, content=b"{not json", headers={"Content-Type": "application/json"})
    assert (proxied.status_code, proxied.content) == (direct.status_code, direct.content)


# --- eth_getLogs block range ---------------------------------------------------------------------


async def test_a_wide_range_is_refused_with_infuras_suggested_range(
    proxy: RunningRpcProxy, http: httpx.AsyncClient, mint_blocks: list[int]
) -> None:
    proxy.state.configure(max_log_range=3, suggest_range=True)
    first = mint_blocks[0]
    answer = await post(http, proxy.url, call("eth_getLogs", [usdc_logs(first, first + 3)], call_id=5))
    assert answer.status_code == 200
    start, end = f"0x{first:X}", f"0x{first + 2:X}"  # upper-case digits, as Infura writes them
    assert answer.json() == {
        "jsonrpc": "2.0",
        "id": 5,
        "error": {
            "code": -32005,
            "message": f"query returned more than 10000 results. Try with this block range [{start}, {end}].",
            "data": {"from": start, "limit": 10000, "to": end},
        },
    }


async def test_the_suggested_range_passes_and_finds_what_the_node_finds(
    proxy: RunningRpcProxy, node: AnvilNode, http: httpx.AsyncClient, mint_blocks: list[int]
) -> None:
    proxy.state.configure(max_log_range=3)
    first = mint_blocks[0]
    refused = (await post(http, proxy.url, call("eth_getLogs", [usdc_logs(first, "latest")]))).json()
    data = refused["error"]["data"]
    narrower = usdc_logs(int(data["from"], 16), int(data["to"], 16))
    proxied = (await post(http, proxy.url, call("eth_getLogs", [narrower]))).json()
    direct = (await post(http, node.rpc_url, call("eth_getLogs", [narrower]))).json()
    assert proxied == direct
    assert [int(log["blockNumber"], 16) for log in proxied["result"]] == mint_blocks[:3]
    assert proxy.state.calls == {"eth_getLogs": 2}  # the head look-up for "latest" is not counted


@pytest.mark.parametrize(
    ("from_block", "to_block", "refused"),
    [
        (1, 3, False),  # exactly the limit
        (1, 4, True),
        (5, 5, False),
        ("earliest", 2, False),  # blocks 0..2
        ("earliest", 3, True),
        (1, "latest", True),  # latest resolved through the node
        ("latest", "latest", False),
        (4, 2, False),  # backwards: the node's problem, not a range refusal
    ],
)
async def test_the_span_counts_both_ends_and_resolves_tags(
    proxy: RunningRpcProxy, http: httpx.AsyncClient, from_block: int | str, to_block: int | str, refused: bool
) -> None:
    proxy.state.configure(max_log_range=3)
    answer = (await post(http, proxy.url, call("eth_getLogs", [usdc_logs(from_block, to_block)]))).json()
    assert (answer.get("error", {}).get("code") == -32005) is refused


async def test_omitted_ends_default_to_latest(proxy: RunningRpcProxy, http: httpx.AsyncClient) -> None:
    proxy.state.configure(max_log_range=3)
    only_from = (await post(http, proxy.url, call("eth_getLogs", [{"fromBlock": "0x1"}]))).json()
    neither = (await post(http, proxy.url, call("eth_getLogs", [{"address": BASE_USDC_ADDRESS}]))).json()
    assert only_from["error"]["code"] == -32005
    assert neither["result"] == []


async def test_a_block_hash_filter_is_never_refused(
    proxy: RunningRpcProxy, node: AnvilNode, http: httpx.AsyncClient, mint_blocks: list[int]
) -> None:
    proxy.state.configure(max_log_range=1)
    block = (await post(http, node.rpc_url, call("eth_getBlockByNumber", [hex(mint_blocks[0]), False]))).json()
    answer = (await post(http, proxy.url, call("eth_getLogs", [{"blockHash": block["result"]["hash"]}]))).json()
    assert len(answer["result"]) == 1


async def test_a_plain_refusal_names_the_limit_and_suggests_nothing(
    proxy: RunningRpcProxy, http: httpx.AsyncClient
) -> None:
    proxy.state.configure(max_log_range=10, suggest_range=False)
    answer = await post(http, proxy.url, call("eth_getLogs", [usdc_logs(0, "latest")], call_id=3))
    assert answer.status_code == 200
    assert answer.json() == {
        "jsonrpc": "2.0",
        "id": 3,
        "error": {
            "code": -32600,
            "message": "Log response size exceeded. You can make eth_getLogs requests with up to a 10 block range.",
        },
    }


async def test_the_range_refusal_can_carry_an_http_400_like_alchemys_free_tier(
    proxy: RunningRpcProxy, http: httpx.AsyncClient
) -> None:
    proxy.state.configure(max_log_range=2, suggest_range=False, range_error_http_status=400)
    answer = await post(http, proxy.url, call("eth_getLogs", [usdc_logs(0, "latest")]))
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == -32600


async def test_a_batch_gets_refusals_in_place_and_the_rest_forwarded(
    proxy: RunningRpcProxy, node: AnvilNode, http: httpx.AsyncClient, mint_blocks: list[int]
) -> None:
    proxy.state.configure(max_log_range=2)
    first = mint_blocks[0]
    batch = [
        call("eth_getLogs", [usdc_logs(first, first + 5)], call_id=1),
        call("eth_getLogs", [usdc_logs(first, first + 1)], call_id=2),
        call("eth_chainId", call_id=3),
    ]
    answers = (await post(http, proxy.url, batch)).json()
    assert [answer["id"] for answer in answers] == [1, 2, 3]
    assert answers[0]["error"]["data"] == {"from": f"0x{first:X}", "limit": 10000, "to": f"0x{first + 1:X}"}
    direct = (await post(http, node.rpc_url, batch[1])).json()
    assert answers[1] == direct
    assert answers[2]["result"] == "0x2105"
    assert proxy.state.calls == {"eth_getLogs": 2, "eth_chainId": 1}


# --- eth_getLogs topic lists ---------------------------------------------------------------------


async def test_an_or_list_longer_than_the_cap_is_refused_like_geth(
    proxy: RunningRpcProxy, http: httpx.AsyncClient
) -> None:
    proxy.state.configure(max_topic_values=3)
    recipients = [address_topic(recipient) for recipient in RECIPIENTS]
    at_cap = usdc_logs(0, "latest", topics=[TRANSFER_TOPIC, None, recipients[:3]])
    over_cap = usdc_logs(0, "latest", topics=[TRANSFER_TOPIC, None, recipients[:4]])
    passed = (await post(http, proxy.url, call("eth_getLogs", [at_cap]))).json()
    refused = (await post(http, proxy.url, call("eth_getLogs", [over_cap]))).json()
    assert len(passed["result"]) == 3
    assert refused["error"] == {
        "code": -32602,
        "message": "invalid argument 0: exceed max addresses or topics per search position",
    }


async def test_the_topic_cap_covers_the_address_list_too(proxy: RunningRpcProxy, http: httpx.AsyncClient) -> None:
    proxy.state.configure(max_topic_values=2)
    addresses = [BASE_USDC_ADDRESS, RECIPIENTS[0], RECIPIENTS[1]]
    answer = (await post(http, proxy.url, call("eth_getLogs", [{"address": addresses}]))).json()
    assert answer["error"]["code"] == -32602


async def test_web3_raises_web3rpcerror_for_json_rpc_refusals(proxy: RunningRpcProxy) -> None:
    topics: list[Any] = [TRANSFER_TOPIC, None, [address_topic(r) for r in RECIPIENTS]]
    async with web3_on(proxy.url, quick_retries()) as w3:
        proxy.state.configure(max_log_range=2, suggest_range=True)
        with pytest.raises(Web3RPCError) as infura:
            await w3.eth.get_logs({"fromBlock": 0, "toBlock": 5})
        proxy.state.configure(suggest_range=False)
        with pytest.raises(Web3RPCError) as plain:
            await w3.eth.get_logs({"fromBlock": 0, "toBlock": 5})
        proxy.state.configure(max_log_range=None, max_topic_values=5)
        with pytest.raises(Web3RPCError) as topic_cap:
            await w3.eth.get_logs({"fromBlock": 0, "toBlock": 5, "topics": topics})
    assert rpc_error(infura.value)["data"] == {"from": "0x0", "limit": 10000, "to": "0x1"}
    assert rpc_error(plain.value)["code"] == -32600
    assert rpc_error(topic_cap.value)["code"] == -32602
    assert proxy.state.calls == {"eth_getLogs": 3}  # a JSON-RPC error is never retried by web3


async def test_web3_loses_the_body_of_an_http_400_refusal(proxy: RunningRpcProxy) -> None:
    proxy.state.configure(max_log_range=2, suggest_range=True, range_error_http_status=400)
    async with web3_on(proxy.url, quick_retries()) as w3:
        with pytest.raises(aiohttp.ClientResponseError) as refused:
            await w3.eth.get_logs({"fromBlock": 0, "toBlock": 5})
    assert refused.value.status == 400
    assert proxy.state.calls == {"eth_getLogs": 5}  # eth_getLogs is on web3's retry list, even for a 400


# --- rate limits and outages ---------------------------------------------------------------------


async def test_every_nth_request_is_answered_429_before_forwarding(
    proxy: RunningRpcProxy, http: httpx.AsyncClient
) -> None:
    proxy.state.configure(rate_limit_every=3)
    answers = [await post(http, proxy.url, call("eth_blockNumber", call_id=n)) for n in range(1, 7)]
    assert [answer.status_code for answer in answers] == [200, 200, 429, 200, 200, 429]
    limited = answers[2]
    assert limited.headers["retry-after"] == "1"
    assert limited.json() == {"jsonrpc": "2.0", "id": 3, "error": {"code": 429, "message": "Too Many Requests"}}
    assert proxy.state.calls == {"eth_blockNumber": 6}


async def test_a_rate_limited_batch_gets_an_error_per_element(proxy: RunningRpcProxy, http: httpx.AsyncClient) -> None:
    proxy.state.configure(rate_limit_every=1)
    answer = await post(http, proxy.url, [call("eth_chainId", call_id=1), call("eth_blockNumber", call_id=2)])
    assert answer.status_code == 429
    assert [item["id"] for item in answer.json()] == [1, 2]
    assert proxy.state.calls == {"eth_chainId": 1, "eth_blockNumber": 1}


async def test_web3_raises_client_response_error_for_429_once_its_retries_are_spent(proxy: RunningRpcProxy) -> None:
    proxy.state.configure(rate_limit_every=1)
    async with web3_on(proxy.url, quick_retries(retries=3)) as w3:
        with pytest.raises(aiohttp.ClientResponseError) as limited:
            await w3.eth.block_number
    assert limited.value.status == 429
    assert limited.value.headers is not None and limited.value.headers["Retry-After"] == "1"
    assert proxy.state.calls == {"eth_blockNumber": 3}


async def test_web3_retries_through_an_occasional_429(proxy: RunningRpcProxy) -> None:
    proxy.state.configure(rate_limit_every=2)
    async with web3_on(proxy.url, quick_retries()) as w3:
        assert await w3.eth.chain_id == chain.BASE_CHAIN_ID  # request 1
        assert await w3.eth.chain_id == chain.BASE_CHAIN_ID  # request 2 is a 429, its retry (3) passes
    assert proxy.state.calls == {"eth_chainId": 3}


async def test_web3_does_not_retry_a_batch(proxy: RunningRpcProxy) -> None:
    proxy.state.configure(rate_limit_every=1)
    async with web3_on(proxy.url, quick_retries()) as w3, w3.batch_requests() as batch:
        batch.add(w3.eth.chain_id)
        batch.add(w3.eth.block_number)
        with pytest.raises(aiohttp.ClientResponseError) as limited:
            await batch.async_execute()
    assert limited.value.status == 429
    assert proxy.state.requests == 1


async def test_fail_next_answers_503_that_many_times(proxy: RunningRpcProxy, http: httpx.AsyncClient) -> None:
    proxy.state.configure(fail_next=2)
    statuses = [(await post(http, proxy.url, call("eth_chainId"))).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert proxy.state.config.fail_next == 0


async def test_refuse_all_answers_503_to_everything(proxy: RunningRpcProxy, http: httpx.AsyncClient) -> None:
    proxy.state.configure(refuse_all=True)
    single = await post(http, proxy.url, call("eth_chainId"))
    batch = await post(http, proxy.url, [call("eth_chainId"), call("eth_blockNumber", call_id=2)])
    assert (single.status_code, batch.status_code) == (503, 503)
    assert single.json()["error"]["message"] == "Service Unavailable"
    async with web3_on(proxy.url) as w3:
        with pytest.raises(aiohttp.ClientResponseError) as down:
            await w3.eth.block_number
    assert down.value.status == 503
    proxy.state.configure(refuse_all=False)
    assert (await post(http, proxy.url, call("eth_chainId"))).status_code == 200


async def test_refuse_methods_answers_503_only_to_requests_calling_them(
    proxy: RunningRpcProxy, http: httpx.AsyncClient
) -> None:
    proxy.state.configure(refuse_methods=("eth_sendRawTransaction",))
    send = await post(http, proxy.url, call("eth_sendRawTransaction", ["0x00"]))
    batch = await post(http, proxy.url, [call("eth_chainId"), call("eth_sendRawTransaction", ["0x00"], call_id=2)])
    read = await post(http, proxy.url, call("eth_chainId"))
    assert (send.status_code, batch.status_code, read.status_code) == (503, 503, 200)
    assert read.json()["result"] == hex(8453)


# --- the control endpoint ------------------------------------------------------------------------


async def test_post_config_changes_only_the_fields_given(proxy: RunningRpcProxy, http: httpx.AsyncClient) -> None:
    proxy.state.configure(max_topic_values=1000)
    answer = await http.post(f"{proxy.url}/_proxy/config", json={"max_log_range": 2, "suggest_range": False})
    assert answer.status_code == 200
    config = ProxyConfig(max_log_range=2, suggest_range=False, max_topic_values=1000)
    expected = json.loads(json.dumps(dataclasses.asdict(config)))  # as JSON: tuples are lists
    assert answer.json() == expected
    assert (await http.get(f"{proxy.url}/_proxy/config")).json() == expected
    refused = (await post(http, proxy.url, call("eth_getLogs", [usdc_logs(0, 5)]))).json()
    assert refused["error"]["code"] == -32600
    cleared = await http.post(f"{proxy.url}/_proxy/config", json={"max_log_range": None})
    assert cleared.json()["max_log_range"] is None


@pytest.mark.parametrize(
    "body",
    [{"max_log_range": 0}, {"rate_limit_every": -1}, {"fail_next": -1}, {"range_error_http_status": 99}, {"nope": 1}],
)
async def test_post_config_refuses_nonsense(proxy: RunningRpcProxy, http: httpx.AsyncClient, body: Any) -> None:
    answer = await http.post(f"{proxy.url}/_proxy/config", json=body)
    assert answer.status_code == 422
    assert proxy.state.config == ProxyConfig()


async def test_calls_and_reset_over_http(proxy: RunningRpcProxy, http: httpx.AsyncClient) -> None:
    await post(http, proxy.url, [call("eth_chainId"), call("eth_chainId", call_id=2)])
    assert (await http.get(f"{proxy.url}/_proxy/calls")).json() == {"requests": 1, "calls": {"eth_chainId": 2}}
    assert (await http.post(f"{proxy.url}/_proxy/reset")).json() == {"requests": 0, "calls": {}}
    assert proxy.state.calls == {}


# --- configuration and failure edges, no node needed ---------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"max_log_range": 0},
        {"max_topic_values": 0},
        {"rate_limit_every": 0},
        {"fail_next": -1},
        {"range_error_http_status": 600},
    ],
)
def test_config_refuses_values_that_mean_nothing(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ProxyConfig(**changes)


async def test_an_unreachable_upstream_is_answered_502() -> None:
    app = create_rpc_proxy(f"http://127.0.0.1:{free_port()}")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy.test") as client,
    ):
        answer = await client.post("/", json=call("eth_chainId"))
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == -32603
    assert proxy_state(app).calls == {"eth_chainId": 1}
