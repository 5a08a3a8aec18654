"""The Daraja client against the Daraja simulator on a real port, plus the few answers it cannot produce.

What matters most here is the push's retry rule: repeat only what cannot have reached the customer.
Each test counts what the simulator received (`simulator.pushes`) and what the client sent (an httpx
event hook), so "retried once", "never retried" and "one token refresh" are observed, not assumed.
Callbacks go to a closed port with a long delay: these tests resolve pushes by hand (`send_callback`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from kiota.daraja import DarajaClient, DarajaTimings, PushAccepted, mask_phone, nairobi_timestamp
from kiota.daraja_answers import parse_expires_in
from kiota.daraja_token import SharedToken
from kiota.dev.daraja_sim import RunningSimulator, running_simulator
from kiota.dev.daraja_sim_behaviour import PushError, Scenario, SimulatorConfig
from kiota.dev.daraja_sim_validation import SANDBOX_PASSKEY, SANDBOX_SHORTCODE
from kiota.errors import (
    DarajaError,
    DarajaRefused,
    DarajaTransient,
    DarajaUncertain,
    DarajaUnreachable,
    KiotaError,
)
from kiota.mpesa import NAIROBI
from kiota.settings import Settings
from tests.support import free_port, settings_kwargs

KEY, SECRET = "test-consumer-key", "test-consumer-secret"
PHONE = "254708374149"
CALLBACK_URL = f"http://127.0.0.1:{free_port()}/api/v1/deposit/cb/test"  # nothing listens there
FAST = DarajaTimings(
    connect_timeout=0.5,
    read_timeout=2.0,
    push_budget=3.0,
    query_budget=3.0,
    connect_backoff=0.01,
    busy_retry_delay=0.01,
)


# ------------------------------------------------------------------------------------------ fixtures


@dataclass
class Harness:
    """A client, the simulator it talks to, and the paths of every request the client started."""

    client: DarajaClient
    running: RunningSimulator | None
    sent: list[str] = field(default_factory=list)

    @property
    def oauth_calls(self) -> int:
        return self.sent.count("/oauth/v1/generate")

    @property
    def pushes_received(self) -> int:
        assert self.running is not None
        return len(self.running.simulator.pushes)

    async def push(self, **overrides: Any) -> PushAccepted:
        fields: dict[str, Any] = {
            "amount_kes": 1500,
            "phone": PHONE,
            "callback_url": CALLBACK_URL,
            "account_reference": "KIOTA-42",
            "description": "Deposit",
            **overrides,
        }
        return await self.client.stk_push(**fields)


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest_asyncio.fixture
async def make_harness() -> AsyncIterator[MakeHarness]:
    """Builds a simulator (unless `base_url` is given) and a client counting its own requests."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(
            *,
            sim: dict[str, Any] | None = None,
            base_url: str | None = None,
            transport: httpx.AsyncBaseTransport | None = None,
            timings: DarajaTimings = FAST,
            **client: Any,
        ) -> Harness:
            running = None
            if base_url is None and transport is None:
                config = SimulatorConfig(KEY, SECRET, **{"callback_delay_seconds": 60.0, **(sim or {})})
                running = await stack.enter_async_context(running_simulator(config, port=0))
                base_url = running.base_url
            sent: list[str] = []

            async def record(request: httpx.Request) -> None:
                sent.append(request.url.path)

            http = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, event_hooks={"request": [record]})
            )
            daraja = DarajaClient(
                base_url or "http://daraja.test",
                client.pop("consumer_key", KEY),
                SECRET,
                client.pop("shortcode", SANDBOX_SHORTCODE),
                client.pop("passkey", SANDBOX_PASSKEY),
                http=http,
                timings=timings,
                **client,
            )
            stack.push_async_callback(daraja.aclose)
            return Harness(daraja, running, sent)

        yield make


@pytest_asyncio.fixture
async def daraja(make_harness: MakeHarness) -> Harness:
    return await make_harness()


# ------------------------------------------------------------------------------------------- the push


async def test_an_accepted_push_returns_darajas_fields(daraja: Harness) -> None:
    accepted = await daraja.push()

    assert accepted.checkout_request_id.startswith("ws_CO_")
    assert accepted.merchant_request_id
    assert accepted.response_description == "Success. Request accepted for processing"
    assert accepted.customer_message == "Success. Request accepted for processing"
    assert daraja.running is not None
    record = daraja.running.simulator.get_push(accepted.checkout_request_id)
    assert (record.amount, record.phone, record.callback_url) == (1500, PHONE, CALLBACK_URL)
    assert record.request["PartyB"] == SANDBOX_SHORTCODE
    assert record.request["AccountReference"] == "KIOTA-42"
    assert record.request["TransactionDesc"] == "Deposit"


async def test_the_timestamp_is_nairobi_time_and_signs_the_password(daraja: Harness) -> None:
    accepted = await daraja.push()

    assert daraja.running is not None
    request = daraja.running.simulator.get_push(accepted.checkout_request_id).request
    stamp = datetime.strptime(request["Timestamp"], "%Y%m%d%H%M%S").replace(tzinfo=NAIROBI)
    assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=1)
    expected = base64.b64encode(f"{SANDBOX_SHORTCODE}{SANDBOX_PASSKEY}{request['Timestamp']}".encode()).decode()
    assert request["Password"] == expected


async def test_the_simulator_refuses_a_utc_stamp_so_the_eat_test_means_something(
    make_harness: MakeHarness,
) -> None:
    # A clock that hands over UTC wall time labelled as Nairobi time: the bug a UTC-stamping client has.
    harness = await make_harness(now=lambda: datetime.now(UTC).replace(tzinfo=NAIROBI))

    with pytest.raises(DarajaRefused) as refused:
        await harness.push()
    assert (refused.value.code, refused.value.message) == ("400.002.02", "Bad Request - Invalid Timestamp")


def test_nairobi_timestamp_is_utc_plus_three() -> None:
    assert nairobi_timestamp(datetime(2024, 7, 21, 21, 52, 43, tzinfo=UTC)) == "20240722005243"
    with pytest.raises(ValueError, match="naive"):
        nairobi_timestamp(datetime(2024, 7, 21, 21, 52, 43))  # a naive datetime: the point of the test


async def test_a_validation_refusal_carries_darajas_message(make_harness: MakeHarness) -> None:
    harness = await make_harness(party_b="12")

    with pytest.raises(DarajaRefused) as refused:
        await harness.push()

    error = refused.value
    assert not isinstance(error, DarajaUnreachable)
    assert (error.http_status, error.code, error.message) == (400, "400.002.02", "Bad Request - Invalid PartyB")
    assert str(error) == "Bad Request - Invalid PartyB"
    assert harness.pushes_received == 1


@pytest.mark.parametrize(
    ("passkey", "scenario", "message"),
    [
        ("0" * 64, None, "[MerchantValidate] - Wrong credentials"),
        (
            SANDBOX_PASSKEY,
            Scenario(push_error=PushError("500.001.1001")),
            "Unable to lock subscriber, a transaction is already in process for the current subscriber",
        ),
    ],
    ids=["wrong-credentials", "subscriber-locked"],
)
async def test_500_001_1001_on_the_push_is_a_refusal_never_retried(
    make_harness: MakeHarness, passkey: str, scenario: Scenario | None, message: str
) -> None:
    harness = await make_harness(passkey=passkey)
    assert harness.running is not None
    if scenario is not None:
        harness.running.simulator.set_scenario(scenario, default=True)

    with pytest.raises(DarajaRefused) as refused:
        await harness.push()

    assert (refused.value.http_status, refused.value.code, refused.value.message) == (500, "500.001.1001", message)
    assert harness.pushes_received == 1


async def test_busy_once_is_retried_once_and_succeeds(daraja: Harness) -> None:
    assert daraja.running is not None
    daraja.running.simulator.set_scenario(Scenario(push_error=PushError("500.003.02", times=1)), default=True)

    accepted = await daraja.push()

    assert daraja.pushes_received == 2
    assert [push.accepted for push in daraja.running.simulator.pushes] == [False, True]
    assert accepted.checkout_request_id == daraja.running.simulator.pushes[-1].checkout_request_id


@pytest.mark.parametrize("times", [2, 5])
async def test_busy_twice_is_a_refusal_after_exactly_one_retry(daraja: Harness, times: int) -> None:
    assert daraja.running is not None
    daraja.running.simulator.set_scenario(Scenario(push_error=PushError("500.003.02", times=times)), default=True)

    with pytest.raises(DarajaRefused) as refused:
        await daraja.push()

    assert refused.value.code == "500.003.02"
    assert refused.value.message == "System is busy. Please try again in few minutes."
    assert daraja.pushes_received == 2


@pytest.mark.parametrize(
    "timings",
    [
        DarajaTimings(read_timeout=0.2, connect_backoff=0.01),  # the read timeout fires
        DarajaTimings(read_timeout=6.0, push_budget=0.3),  # the budget caps the read timeout
    ],
    ids=["read-timeout", "budget"],
)
async def test_a_slow_answer_is_uncertain_and_never_repeated(make_harness: MakeHarness, timings: DarajaTimings) -> None:
    harness = await make_harness(timings=timings)
    assert harness.running is not None
    harness.running.simulator.set_scenario(Scenario(push_delay_seconds=0.6), default=True)

    # Had the client waited 0.6 s it would have read an acceptance: the error proves it gave up first.
    with pytest.raises(DarajaUncertain):
        await harness.push()

    # The push was accepted while the client waited: a repeat would have been a second PIN prompt.
    assert harness.pushes_received == 1
    assert harness.running.simulator.pushes[0].accepted
    assert harness.sent.count("/mpesa/stkpush/v1/processrequest") == 1


async def test_nothing_listening_is_unreachable_within_the_budget(make_harness: MakeHarness) -> None:
    harness = await make_harness(
        base_url=f"http://127.0.0.1:{free_port()}",
        timings=DarajaTimings(connect_timeout=0.2, push_budget=0.5, connect_backoff=0.02),
    )

    started = time.monotonic()
    with pytest.raises(DarajaUnreachable) as unreachable:
        await harness.push()

    assert time.monotonic() - started < 0.5 + 0.5  # the budget, plus slack for a loaded machine
    assert isinstance(unreachable.value, DarajaRefused)  # nothing was sent: a definite refusal
    assert harness.oauth_calls >= 2  # connect errors are retried until the budget runs out
    assert "processrequest" not in " ".join(harness.sent)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"account_reference": "A" * 13}, "account_reference"),
        ({"account_reference": ""}, "account_reference"),
        ({"description": "D" * 14}, "description"),
        ({"phone": "0708374149"}, "phone"),
        ({"phone": "+254708374149"}, "phone"),
        ({"amount_kes": 0}, "amount_kes"),
        ({"amount_kes": 250_001}, "amount_kes"),
        ({"amount_kes": True}, "amount_kes"),
        ({"callback_url": "ftp://example.com/cb"}, "callback_url"),
    ],
)
async def test_fields_daraja_would_refuse_raise_before_anything_is_sent(
    daraja: Harness, fields: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        await daraja.push(**fields)
    assert daraja.sent == []


async def test_the_longest_allowed_fields_are_accepted(daraja: Harness) -> None:
    accepted = await daraja.push(account_reference="A" * 12, description="D" * 13)
    assert accepted.checkout_request_id


# ------------------------------------------------------------------------------------------- the token


async def test_the_token_is_cached_across_calls(daraja: Harness) -> None:
    first = await daraja.push()
    await daraja.push()
    await daraja.push()
    await daraja.client.stk_query(first.checkout_request_id)

    assert daraja.oauth_calls == 1


async def test_twenty_concurrent_pushes_cause_one_token_fetch(daraja: Harness) -> None:
    accepted = await asyncio.gather(*(daraja.push() for _ in range(20)))

    assert len({push.checkout_request_id for push in accepted}) == 20
    assert daraja.oauth_calls == 1
    assert daraja.pushes_received == 20


async def test_a_voided_token_is_refreshed_and_the_call_repeated(daraja: Harness) -> None:
    assert daraja.running is not None
    await daraja.push()
    async with httpx.AsyncClient() as control:
        assert (await control.post(f"{daraja.running.base_url}/_sim/tokens/void")).status_code == 200

    accepted = await daraja.push()

    assert accepted.checkout_request_id
    assert daraja.oauth_calls == 2
    assert daraja.pushes_received == 2  # the refused attempt never reached the STK service


async def test_concurrent_callers_with_a_voided_token_refresh_it_once(daraja: Harness) -> None:
    assert daraja.running is not None
    await daraja.push()
    daraja.running.simulator.void_token()

    # Ten callers are refused with the same stale token; a refresh each would void one another's tokens.
    accepted = await asyncio.gather(*(daraja.push() for _ in range(10)))

    assert len(accepted) == 10
    assert daraja.oauth_calls == 2


async def test_a_token_near_its_expiry_is_refreshed_before_use(make_harness: MakeHarness) -> None:
    # Lifetime 30 s is inside the 60 s refresh margin: every call must fetch a fresh token first.
    harness = await make_harness(sim={"token_lifetime_seconds": 30})

    await harness.push()
    await harness.push()

    assert harness.oauth_calls == 2
    assert harness.pushes_received == 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3599", 3599), (3599, 3599), (" 3599 ", 3599), ("0", 0), (True, None), (-1, None), (3599.0, None), ("", None)],
)
def test_expires_in_is_read_from_a_number_or_a_string(value: object, expected: int | None) -> None:
    assert parse_expires_in(value) == expected


# -------------------------------------------------------------------------------------------- the query


async def test_an_unresolved_push_queries_as_pending(daraja: Harness) -> None:
    accepted = await daraja.push()

    result = await daraja.client.stk_query(accepted.checkout_request_id)

    assert (result.status, result.result_code) == ("pending", None)
    assert result.result_desc == "The transaction is being processed"


async def test_result_code_4999_is_pending(make_harness: MakeHarness) -> None:
    harness = await make_harness(sim={"pending_query_style": "result_code_4999"})
    accepted = await harness.push()

    result = await harness.client.stk_query(accepted.checkout_request_id)

    assert (result.status, result.result_code) == ("pending", None)


@pytest.mark.parametrize(
    ("outcome", "code", "desc"),
    [("success", 0, "The service request is processed successfully."), (1032, 1032, "Request cancelled by user")],
)
async def test_a_resolved_push_queries_with_an_integer_result_code(
    daraja: Harness, outcome: int | Literal["success"], code: int, desc: str
) -> None:
    assert daraja.running is not None
    accepted = await daraja.push()
    await daraja.running.simulator.send_callback(accepted.checkout_request_id, outcome)

    result = await daraja.client.stk_query(accepted.checkout_request_id)

    assert (result.status, result.result_code, result.result_desc) == ("resolved", code, desc)
    assert isinstance(result.result_code, int)


async def test_an_unknown_checkout_request_id_is_refused(daraja: Harness) -> None:
    with pytest.raises(DarajaRefused) as refused:
        await daraja.client.stk_query("ws_CO_000000000000000000000000")

    assert (refused.value.http_status, refused.value.code) == (400, "400.002.02")
    assert refused.value.message == "Bad Request - Invalid CheckoutRequestID"


async def test_a_query_survives_a_voided_token(daraja: Harness) -> None:
    assert daraja.running is not None
    accepted = await daraja.push()
    daraja.running.simulator.void_token()

    result = await daraja.client.stk_query(accepted.checkout_request_id)

    assert result.status == "pending"
    assert daraja.oauth_calls == 2


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def two_processes(make_harness: MakeHarness, redis: Redis) -> tuple[Harness, Harness]:
    """The API's client and a worker's: the same Daraja app, each its own process, one Redis."""
    api = await make_harness(shared=SharedToken(redis, KEY))
    assert api.running is not None
    worker = await make_harness(base_url=api.running.base_url, shared=SharedToken(redis, KEY))
    return api, worker


async def test_processes_sharing_the_token_fetch_it_once_and_never_void_each_other(
    make_harness: MakeHarness, redis: Redis
) -> None:
    api, worker = await two_processes(make_harness, redis)
    first = await api.push()
    await worker.client.stk_query(first.checkout_request_id)
    await asyncio.gather(*(api.push() for _ in range(5)), *(worker.push() for _ in range(5)))
    await worker.client.stk_query(first.checkout_request_id)

    assert api.oauth_calls + worker.oauth_calls == 1
    assert api.pushes_received == 11  # none refused with a voided token and sent again
    assert len(api.sent) + len(worker.sent) == 1 + 11 + 2


async def test_a_voided_shared_token_is_refreshed_once_for_every_process(
    make_harness: MakeHarness, redis: Redis
) -> None:
    api, worker = await two_processes(make_harness, redis)
    await api.push()
    assert api.running is not None
    api.running.simulator.void_token()

    await asyncio.gather(*(api.push() for _ in range(4)), *(worker.push() for _ in range(4)))

    assert api.oauth_calls + worker.oauth_calls == 2


class SlowOAuth(httpx.AsyncBaseTransport):
    """A real HTTP transport whose OAuth answers come `seconds` late: Daraja's OAuth is often slow."""

    def __init__(self, seconds: float) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._seconds = seconds

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/v1/generate":
            await asyncio.sleep(self._seconds)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


PATIENT = DarajaTimings(connect_timeout=0.5, read_timeout=6.0, push_budget=8.0, query_budget=8.0)


async def test_a_slow_token_fetch_is_waited_for_not_fetched_again_by_the_other_process(
    make_harness: MakeHarness, redis: Redis
) -> None:
    # Before: a process waited 3 s for another's refresh, then fetched its own and voided the first one's.
    api = await make_harness(timings=PATIENT, shared=SharedToken(redis, KEY))
    assert api.running is not None
    slow = [
        await make_harness(
            base_url=api.running.base_url, transport=SlowOAuth(3.5), timings=PATIENT, shared=SharedToken(redis, KEY)
        )
        for _ in range(2)
    ]

    await asyncio.gather(*(harness.push() for harness in slow for _ in range(2)))

    assert sum(harness.oauth_calls for harness in slow) == 1
    assert api.pushes_received == 4  # none refused with a voided token and sent again


async def test_a_refresh_lock_left_by_a_dead_process_is_taken_once_it_expires(
    make_harness: MakeHarness, redis: Redis
) -> None:
    harness = await make_harness(shared=SharedToken(redis, KEY))
    started = time.monotonic()
    assert await SharedToken(redis, KEY).lock(0.4) is not None  # a process took the lock and died

    await asyncio.gather(harness.push(), harness.push())

    assert time.monotonic() - started >= 0.35  # it waited for the lock rather than fetching beside it
    assert harness.oauth_calls == 1 and harness.pushes_received == 2


async def test_a_token_fetched_as_redis_fails_is_not_fetched_again(make_harness: MakeHarness, redis: Redis) -> None:
    class DiesAtPut(SharedToken):
        """Redis goes away as the fresh token is being put: every call fails from then on."""

        dead = False

        async def _alive(self) -> None:
            if self.dead:
                raise ConnectionError("Redis went away")

        async def get(self) -> str | None:
            await self._alive()
            return await super().get()

        async def lock(self, seconds: float) -> str | None:
            await self._alive()
            return await super().lock(seconds)

        async def put(self, value: str, ttl_seconds: float) -> None:
            self.dead = True
            await self._alive()

    harness = await make_harness(shared=DiesAtPut(redis, KEY))

    await harness.push()
    await harness.push()

    assert harness.oauth_calls == 1 and harness.pushes_received == 2


async def test_a_fresh_token_found_under_the_lock_is_used_even_if_the_unlock_fails(
    make_harness: MakeHarness, redis: Redis
) -> None:
    class LateTokenFailingUnlock(SharedToken):
        """The token is put by another process between this one's first look and its lock; then Redis fails."""

        looks = 0

        async def get(self) -> str | None:
            self.looks += 1
            return None if self.looks == 1 else await super().get()

        async def unlock(self, owner: str) -> None:
            raise ConnectionError("Redis went away")

    first = await make_harness(shared=SharedToken(redis, KEY))
    await first.push()
    assert first.running is not None
    second = await make_harness(base_url=first.running.base_url, shared=LateTokenFailingUnlock(redis, KEY))

    await second.push()

    assert second.oauth_calls == 0 and first.pushes_received == 2  # its token was not voided by a second fetch


async def test_a_token_fetch_that_may_have_reached_daraja_keeps_the_lock_until_it_expires(
    make_harness: MakeHarness, redis: Redis
) -> None:
    api = await make_harness(shared=SharedToken(redis, KEY))
    assert api.running is not None

    class LostOAuthAnswer(httpx.AsyncBaseTransport):
        """Daraja issues the token, and its answer is lost on the way back (a read timeout)."""

        def __init__(self) -> None:
            self._inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await self._inner.handle_async_request(request)
            if request.url.path == "/oauth/v1/generate":
                await response.aclose()
                raise httpx.ReadTimeout("the answer was lost", request=request)
            return response

        async def aclose(self) -> None:
            await self._inner.aclose()

    shared = SharedToken(redis, KEY)
    lost = await make_harness(base_url=api.running.base_url, transport=LostOAuthAnswer(), shared=shared)

    with pytest.raises(DarajaError):
        await lost.push()

    # Released now, another process would fetch beside the unanswered request and one token would void the other.
    assert await redis.pttl(shared._lock_key) > 0


async def test_without_redis_each_process_keeps_its_own_token(make_harness: MakeHarness) -> None:
    down = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    harness = await make_harness(shared=SharedToken(down, KEY))
    try:
        await harness.push()
        await harness.push()
    finally:
        await down.aclose()
    assert harness.oauth_calls == 1 and harness.pushes_received == 2


async def test_an_unreachable_query_is_transient_after_one_retry(make_harness: MakeHarness) -> None:
    harness = await make_harness(base_url=f"http://127.0.0.1:{free_port()}")

    with pytest.raises(DarajaTransient):
        await harness.client.stk_query("ws_CO_1")

    assert harness.oauth_calls == 2


# ------------------------------------------------- answers the simulator cannot give (a scripted transport)


Reply = Callable[[httpx.Request], httpx.Response]
TOKEN_OK = httpx.Response(200, json={"access_token": "scripted", "expires_in": 3599})
ACCEPTED = httpx.Response(
    200,
    json={
        "MerchantRequestID": "m-1",
        "CheckoutRequestID": "ws_CO_1",
        "ResponseCode": "0",
        "ResponseDescription": "Success. Request accepted for processing",
        "CustomerMessage": "Success. Request accepted for processing",
    },
)


def scripted(oauth: list[Reply | httpx.Response], calls: list[Reply | httpx.Response]) -> httpx.MockTransport:
    """Answers OAuth and STK calls from two scripts, in order; the last entry repeats."""

    def handle(request: httpx.Request) -> httpx.Response:
        script = oauth if request.url.path == "/oauth/v1/generate" else calls
        entry = script.pop(0) if len(script) > 1 else script[0]
        return entry(request) if callable(entry) else entry

    return httpx.MockTransport(handle)


def connect_error(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("Connection refused", request=request)


def dropped_after_sending(request: httpx.Request) -> httpx.Response:
    raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)


def error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"requestId": "r-1", "errorCode": code, "errorMessage": message})


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(503, text="<html>Service Unavailable</html>"),
        httpx.Response(500),
        error(500, "500.003.1001", "Internal Server Error"),
        httpx.Response(200, text="not json"),
        httpx.Response(200, json={"ResponseCode": "0"}),  # accepted, but no CheckoutRequestID to query with
        dropped_after_sending,
    ],
    ids=["503-html", "500-empty", "500.003.1001", "200-not-json", "200-no-checkout-id", "dropped"],
)
async def test_answers_that_may_hide_an_accepted_push_are_uncertain(
    make_harness: MakeHarness, answer: Reply | httpx.Response
) -> None:
    harness = await make_harness(transport=scripted([TOKEN_OK], [answer, ACCEPTED]))

    with pytest.raises(DarajaUncertain):
        await harness.push()

    assert harness.sent.count("/mpesa/stkpush/v1/processrequest") == 1


async def test_a_connect_error_on_the_push_is_retried(make_harness: MakeHarness) -> None:
    harness = await make_harness(transport=scripted([TOKEN_OK], [connect_error, connect_error, ACCEPTED]))

    accepted = await harness.push()

    assert accepted.checkout_request_id == "ws_CO_1"
    assert harness.sent.count("/mpesa/stkpush/v1/processrequest") == 3


@pytest.mark.parametrize(
    ("answer", "code"),
    [(error(500, "500.003.03", "Quota Violation"), "500.003.03"), (httpx.Response(403), None)],
)
async def test_gateway_refusals_of_the_push_are_definite(
    make_harness: MakeHarness, answer: httpx.Response, code: str | None
) -> None:
    harness = await make_harness(transport=scripted([TOKEN_OK], [answer]))

    with pytest.raises(DarajaRefused) as refused:
        await harness.push()

    assert not isinstance(refused.value, DarajaUnreachable)
    assert refused.value.code == code
    assert harness.sent.count("/mpesa/stkpush/v1/processrequest") == 1


@pytest.mark.parametrize(
    ("oauth", "expected"),
    [
        (error(400, "400.008.01", "Invalid Authentication passed"), DarajaRefused),
        (httpx.Response(503), DarajaUnreachable),
        (dropped_after_sending, DarajaUnreachable),
    ],
    ids=["wrong-credentials", "oauth-503", "oauth-dropped"],
)
async def test_no_token_means_no_push(
    make_harness: MakeHarness, oauth: Reply | httpx.Response, expected: type[DarajaError]
) -> None:
    harness = await make_harness(transport=scripted([oauth], [ACCEPTED]))

    with pytest.raises(expected):
        await harness.push()

    assert harness.sent == ["/oauth/v1/generate"]


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(503),
        httpx.Response(429),
        error(500, "500.003.02", "System is busy. Please try again in few minutes."),
        httpx.Response(200, json={"ResponseCode": "0"}),
        error(404, "404.001.03", "Invalid Access Token"),  # voided again right after our refresh
        dropped_after_sending,
    ],
    ids=["503", "429", "busy", "200-no-result", "token-voided-twice", "dropped"],
)
async def test_transient_query_failures(make_harness: MakeHarness, answer: Reply | httpx.Response) -> None:
    harness = await make_harness(transport=scripted([TOKEN_OK], [answer]))

    with pytest.raises(DarajaTransient):
        await harness.client.stk_query("ws_CO_1")


async def test_a_query_with_a_numeric_result_code_is_read_too(make_harness: MakeHarness) -> None:
    answer = httpx.Response(200, json={"ResultCode": 1037, "ResultDesc": "DS timeout user cannot be reached."})
    harness = await make_harness(transport=scripted([TOKEN_OK], [answer]))

    result = await harness.client.stk_query("ws_CO_1")

    assert (result.status, result.result_code) == ("resolved", 1037)


# -------------------------------------------------------------------------------------------- the rest


@pytest.mark.parametrize(
    ("phone", "masked"),
    [("254708374149", "2547****4149"), ("254112345678", "2541****5678"), ("0708374149", "0708**4149"), ("123", "***")],
)
def test_mask_phone(phone: str, masked: str) -> None:
    assert mask_phone(phone) == masked


def test_every_daraja_error_is_a_kiota_error() -> None:
    for cls in (DarajaRefused, DarajaUnreachable, DarajaUncertain, DarajaTransient):
        assert issubclass(cls, DarajaError)
        assert issubclass(cls, KiotaError)
    assert issubclass(DarajaUnreachable, DarajaRefused)
    assert not issubclass(DarajaUncertain, DarajaRefused)
    assert not issubclass(DarajaTransient, DarajaRefused)


async def test_built_from_settings_it_pushes(make_harness: MakeHarness) -> None:
    running = (await make_harness()).running  # only for its simulator
    assert running is not None
    overrides = {
        "mpesa_base_url": running.base_url,
        "mpesa_consumer_key": KEY,
        "mpesa_consumer_secret": SECRET,
    }
    settings = Settings(_env_file=None, **{**settings_kwargs("postgresql://unused/db"), **overrides})  # type: ignore[call-arg]

    async with DarajaClient.from_settings(settings, timings=FAST) as client:
        accepted = await client.stk_push(
            amount_kes=10, phone=PHONE, callback_url=CALLBACK_URL, account_reference="K-1", description="Deposit"
        )

    assert accepted.checkout_request_id.startswith("ws_CO_")


async def test_no_secret_is_logged(daraja: Harness) -> None:
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        accepted = await daraja.push()
        await daraja.client.stk_query(accepted.checkout_request_id)

    text = repr(logs)
    assert logs, "the client should log what it does"
    for secret in (SECRET, SANDBOX_PASSKEY, PHONE):
        assert secret not in text
    assert "2547****4149" in text
