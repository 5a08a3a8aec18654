"""The Daraja simulator speaks Daraja's shapes and plays the scenarios it is given.

The simulator runs in-process behind httpx's ASGITransport (its lifespan entered by hand, as ASGITransport
runs none); its callbacks travel over real TCP to a small receiving app served by uvicorn on a free port.
Expected shapes are the examples of REFERENCE.md ("M-Pesa Daraja"), copied below as data.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import socket
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from kiota.dev.daraja_sim import RunningSimulator, create_simulator, running_simulator, serve_simulator, simulator_of
from kiota.dev.daraja_sim_behaviour import RESULT_DESCRIPTIONS, DarajaSimulator, Scenario, SimulatorConfig
from kiota.dev.daraja_sim_validation import SANDBOX_PASSKEY, SANDBOX_SHORTCODE, password_for, timestamp_now
from kiota.dev.serving import serve_in_background
from kiota.mpesa import NAIROBI

KEY, SECRET = "sim-consumer-key", "sim-consumer-secret"
PHONE = "254708374149"
OTHER_PHONE = "254712345678"
DELAY = 0.05  # callback delay used by most tests
WAIT = 3.0  # upper bound for anything that should happen within DELAY

# REFERENCE.md, "M-Pesa Daraja": the shapes the simulator must reproduce.
ACCEPTED_KEYS = {
    "MerchantRequestID",
    "CheckoutRequestID",
    "ResponseCode",
    "ResponseDescription",
    "CustomerMessage",
}
ERROR_KEYS = {"requestId", "errorCode", "errorMessage"}
QUERY_KEYS = {
    "ResponseCode",
    "ResponseDescription",
    "MerchantRequestID",
    "CheckoutRequestID",
    "ResultCode",
    "ResultDesc",
}
REFERENCE_SUCCESS_CALLBACK: dict[str, Any] = {
    "Body": {
        "stkCallback": {
            "MerchantRequestID": "29115-34620561-1",
            "CheckoutRequestID": "ws_CO_191220191020363925",
            "ResultCode": 0,
            "ResultDesc": "The service request is processed successfully.",
            "CallbackMetadata": {
                "Item": [
                    {"Name": "Amount", "Value": 1.00},
                    {"Name": "MpesaReceiptNumber", "Value": "NLJ7RT61SV"},
                    {"Name": "TransactionDate", "Value": 20191219102115},
                    {"Name": "PhoneNumber", "Value": 254708374149},
                ]
            },
        }
    }
}
REFERENCE_FAILURE_CALLBACK: dict[str, Any] = {
    "Body": {
        "stkCallback": {
            "MerchantRequestID": "f1e2-4b95-a71d-b30d3cdbb7a7942864",
            "CheckoutRequestID": "ws_CO_21072024125243250722943992",
            "ResultCode": 1032,
            "ResultDesc": "Request cancelled by user",
        }
    }
}
FAILURE_CODES = [1, 2, 3, 4, 8, 17, 1019, 1025, 1031, 1032, 1037, 2001, 2028, 8006]


# ------------------------------------------------------------------------------------------ receiver


@dataclass
class Receiver:
    """Catches callbacks: POST /cb/{name}; answers 200 unless `statuses[name]` says otherwise."""

    base_url: str = ""
    bodies: defaultdict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, int] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def new_url(self, status: int = 200) -> tuple[str, str]:
        name = uuid.uuid4().hex
        self.statuses[name] = status
        return name, f"{self.base_url}/cb/{name}"

    def record(self, name: str, body: Any) -> None:
        self.bodies[name].append(body)
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait(self, name: str, count: int = 1) -> list[Any]:
        async with asyncio.timeout(WAIT):
            while len(self.bodies[name]) < count:
                await self.changed.wait()
        return self.bodies[name]


def receiver_app(receiver: Receiver) -> FastAPI:
    app = FastAPI()

    @app.post("/cb/{name}")
    async def callback(name: str, request: Request) -> JSONResponse:
        receiver.record(name, await request.json())
        return JSONResponse({"ResultCode": 0, "ResultDesc": "Accepted"}, status_code=receiver.statuses.get(name, 200))

    return app


@pytest_asyncio.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    async with serve_in_background(receiver_app(rx)) as base_url:
        rx.base_url = base_url
        yield rx


# ----------------------------------------------------------------------------------------- simulator


@dataclass
class Daraja:
    """A thin client of the simulator, speaking Daraja like the service does."""

    http: httpx.AsyncClient
    sim: DarajaSimulator
    token: str = ""

    async def authenticate(self) -> str:
        response = await self.http.get(
            "/oauth/v1/generate", params={"grant_type": "client_credentials"}, auth=(KEY, SECRET)
        )
        assert response.status_code == 200, response.text
        self.token = response.json()["access_token"]
        return self.token

    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def push(self, body: dict[str, Any]) -> httpx.Response:
        return await self.http.post("/mpesa/stkpush/v1/processrequest", json=body, headers=self.bearer())

    async def push_ok(self, body: dict[str, Any]) -> str:
        response = await self.push(body)
        assert response.status_code == 200, response.text
        return str(response.json()["CheckoutRequestID"])

    async def query(self, checkout_request_id: str, **overrides: Any) -> httpx.Response:
        timestamp = timestamp_now()
        body = {
            "BusinessShortCode": SANDBOX_SHORTCODE,
            "Password": password_for(SANDBOX_SHORTCODE, SANDBOX_PASSKEY, timestamp),
            "Timestamp": timestamp,
            "CheckoutRequestID": checkout_request_id,
            **overrides,
        }
        return await self.http.post("/mpesa/stkpushquery/v1/query", json=body, headers=self.bearer())

    async def scenario(self, **spec: Any) -> None:
        response = await self.http.post("/_sim/scenarios", json=spec)
        assert response.status_code == 200, response.text


def push_body(callback_url: str, **overrides: Any) -> dict[str, Any]:
    timestamp = timestamp_now()
    body: dict[str, Any] = {
        "BusinessShortCode": SANDBOX_SHORTCODE,
        "Password": password_for(SANDBOX_SHORTCODE, SANDBOX_PASSKEY, timestamp),
        "Timestamp": timestamp,
        "TransactionType": "CustomerPayBillOnline",
        "Amount": 1500,
        "PartyA": PHONE,
        "PartyB": SANDBOX_SHORTCODE,
        "PhoneNumber": PHONE,
        "CallBackURL": callback_url,
        "AccountReference": "KIOTA-42",
        "TransactionDesc": "Deposit",
    }
    body.update(overrides)
    return body


MakeDaraja = Callable[..., Awaitable[Daraja]]


@pytest_asyncio.fixture
async def make_daraja() -> AsyncIterator[MakeDaraja]:
    """Builds simulators with a given config; each is shut down through its lifespan afterwards."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(**config: Any) -> Daraja:
            settings: dict[str, Any] = {"callback_delay_seconds": DELAY, **config}
            app = create_simulator(SimulatorConfig(KEY, SECRET, **settings))
            await stack.enter_async_context(app.router.lifespan_context(app))
            http = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://daraja.test")
            )
            daraja = Daraja(http, simulator_of(app))
            await daraja.authenticate()
            return daraja

        yield make


@pytest_asyncio.fixture
async def daraja(make_daraja: MakeDaraja) -> Daraja:
    return await make_daraja()


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    assert set(body) == ERROR_KEYS, body
    assert isinstance(body["requestId"], str) and body["requestId"]
    return response.status_code, body["errorCode"], body["errorMessage"]


def items_by_name(callback: dict[str, Any]) -> dict[str, dict[str, Any]]:
    items = callback["Body"]["stkCallback"]["CallbackMetadata"]["Item"]
    return {item["Name"]: item for item in items}


def nairobi_stamp_is_recent(stamp: int | str, within: timedelta = timedelta(minutes=1)) -> bool:
    parsed = datetime.strptime(str(stamp), "%Y%m%d%H%M%S").replace(tzinfo=NAIROBI)
    return abs(datetime.now(NAIROBI) - parsed) <= within


# -------------------------------------------------------------------------------------------- tokens


async def test_token_has_daraja_shape_with_string_expiry(daraja: Daraja) -> None:
    response = await daraja.http.get(
        "/oauth/v1/generate", params={"grant_type": "client_credentials"}, auth=(KEY, SECRET)
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "expires_in"}
    assert body["expires_in"] == "3599"
    assert re.fullmatch(r"[A-Za-z0-9]{28}", body["access_token"])


async def test_a_new_token_voids_the_previous_one(daraja: Daraja, receiver: Receiver) -> None:
    _, url = receiver.new_url()
    old = daraja.token
    await daraja.authenticate()
    daraja_old = Daraja(daraja.http, daraja.sim, old)
    assert error_of(await daraja_old.push(push_body(url))) == (404, "404.001.03", "Invalid Access Token")
    assert (await daraja.push(push_body(url))).status_code == 200


async def test_voiding_the_token_through_the_control_api(daraja: Daraja, receiver: Receiver) -> None:
    _, url = receiver.new_url()
    assert (await daraja.http.post("/_sim/tokens/void")).status_code == 200
    assert error_of(await daraja.push(push_body(url))) == (404, "404.001.03", "Invalid Access Token")
    assert error_of(await daraja.query("ws_CO_x")) == (404, "404.001.03", "Invalid Access Token")


@pytest.mark.parametrize("authorization", [None, "Bearer not-the-token", "Basic c2ltOnNpbQ==", "Bearer"])
async def test_missing_or_invalid_bearer_is_refused(
    daraja: Daraja, receiver: Receiver, authorization: str | None
) -> None:
    _, url = receiver.new_url()
    headers = {} if authorization is None else {"Authorization": authorization}
    for path, body in (
        ("/mpesa/stkpush/v1/processrequest", push_body(url)),
        ("/mpesa/stkpushquery/v1/query", {"CheckoutRequestID": "ws_CO_x"}),
    ):
        response = await daraja.http.post(path, json=body, headers=headers)
        assert error_of(response) == (404, "404.001.03", "Invalid Access Token")
    assert daraja.sim.pushes == []  # refused before the STK service saw it


async def test_an_expired_token_is_refused(make_daraja: MakeDaraja, receiver: Receiver) -> None:
    daraja = await make_daraja(token_lifetime_seconds=0)
    _, url = receiver.new_url()
    assert error_of(await daraja.push(push_body(url)))[1] == "404.001.03"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("authorization", "params", "expected"),
    [
        (
            basic(KEY, "wrong"),
            {"grant_type": "client_credentials"},
            ("400.008.01", "Invalid Authentication passed"),
        ),
        (
            basic("wrong", SECRET),
            {"grant_type": "client_credentials"},
            ("400.008.01", "Invalid Authentication passed"),
        ),
        (
            "Basic %%%not-base64",
            {"grant_type": "client_credentials"},
            ("400.008.01", "Invalid Authentication passed"),
        ),
        (None, {"grant_type": "client_credentials"}, ("400.008.01", "Invalid authentication type passed")),
        (
            "Bearer abc",
            {"grant_type": "client_credentials"},
            ("400.008.01", "Invalid authentication type passed"),
        ),
        (basic(KEY, SECRET), {}, ("400.008.02", "Invalid grant type passed")),
        (basic(KEY, SECRET), {"grant_type": "password"}, ("400.008.02", "Invalid grant type passed")),
    ],
)
async def test_oauth_refusals(
    daraja: Daraja, authorization: str | None, params: dict[str, str], expected: tuple[str, str]
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await daraja.http.get("/oauth/v1/generate", params=params, headers=headers)
    assert error_of(response) == (400, *expected)
    # A refused request issues nothing, so the current token still works.
    assert (await daraja.query("ws_CO_unknown")).status_code == 400


# -------------------------------------------------------------------------------- push validation


def utc_timestamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S")


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("BusinessShortCode", "abc"),
        ("BusinessShortCode", "12"),
        ("BusinessShortCode", None),
        ("Password", None),
        ("Password", 12345),
        ("Timestamp", "2024-01-01T00:00:00"),
        ("Timestamp", "20241301000000"),
        ("Timestamp", "20200101000000"),
        ("TransactionType", "CustomerPayBill"),
        ("TransactionType", None),
        ("Amount", 0),
        ("Amount", 250_001),
        ("Amount", 1.5),
        ("Amount", 1500.0),
        ("Amount", "1500.00"),
        ("Amount", "-5"),
        ("Amount", True),
        ("Amount", None),
        ("PartyA", "0708374149"),
        ("PartyA", "+254708374149"),
        ("PartyB", "12"),
        ("PartyB", None),
        ("PhoneNumber", "25470837414"),
        ("PhoneNumber", "255708374149"),
        ("PhoneNumber", "254208374149"),
        ("PhoneNumber", None),
        ("CallBackURL", "ftp://example.com/cb"),
        ("CallBackURL", "not a url"),
        ("CallBackURL", "http:///no-host"),
        ("CallBackURL", None),
        ("AccountReference", "ABCDEFGHIJKLM"),
        ("AccountReference", ""),
        ("AccountReference", None),
        ("TransactionDesc", "ABCDEFGHIJKLMN"),
    ],
)
async def test_each_invalid_field_is_refused_as_daraja_does(
    daraja: Daraja, receiver: Receiver, field_name: str, value: Any
) -> None:
    _, url = receiver.new_url()
    body = push_body(url)
    if value is None:
        del body[field_name]
    else:
        body[field_name] = value
    response = await daraja.push(body)
    assert error_of(response) == (400, "400.002.02", f"Bad Request - Invalid {field_name}")
    [record] = daraja.sim.pushes
    # Recorded as received, never accepted, so no callback is ever scheduled for it.
    assert not record.accepted and record.http_status == 400 and record.response == response.json()


async def test_a_utc_timestamp_is_refused(daraja: Daraja, receiver: Receiver) -> None:
    """Three hours off Nairobi: the classic client bug."""
    _, url = receiver.new_url()
    timestamp = utc_timestamp()
    body = push_body(url, Timestamp=timestamp, Password=password_for(SANDBOX_SHORTCODE, SANDBOX_PASSKEY, timestamp))
    assert error_of(await daraja.push(body)) == (400, "400.002.02", "Bad Request - Invalid Timestamp")


@pytest.mark.parametrize(
    "overrides",
    [
        {"Amount": "1500"},
        {"Amount": 1},
        {"Amount": 250_000},
        {"BusinessShortCode": int(SANDBOX_SHORTCODE), "PartyA": int(PHONE), "PhoneNumber": int(PHONE)},
        {"TransactionType": "CustomerBuyGoodsOnline", "PartyB": "1234567"},
        {"PhoneNumber": "254112345678", "PartyA": "254112345678"},
        {"AccountReference": "ABCDEFGHIJKL", "TransactionDesc": "ABCDEFGHIJKLM"},
        {"CallBackURL": "https://kiota.example/api/v1/deposit/mpesa-callback/t0k3n"},
    ],
)
async def test_valid_variants_are_accepted(daraja: Daraja, receiver: Receiver, overrides: dict[str, Any]) -> None:
    _, url = receiver.new_url()
    assert (await daraja.push(push_body(url, **overrides))).status_code == 200


async def test_transaction_desc_is_optional(daraja: Daraja, receiver: Receiver) -> None:
    _, url = receiver.new_url()
    body = push_body(url)
    del body["TransactionDesc"]
    assert (await daraja.push(body)).status_code == 200


async def test_wrong_merchant_and_wrong_password_are_500_as_documented(daraja: Daraja, receiver: Receiver) -> None:
    _, url = receiver.new_url()
    timestamp = timestamp_now()
    unknown = push_body(url, BusinessShortCode="600000", Password=password_for("600000", SANDBOX_PASSKEY, timestamp))
    assert error_of(await daraja.push(unknown)) == (500, "500.001.1001", "Merchant does not exist")
    wrong_passkey = push_body(url, Password=password_for(SANDBOX_SHORTCODE, "not-the-passkey", timestamp_now()))
    assert error_of(await daraja.push(wrong_passkey)) == (
        500,
        "500.001.1001",
        "[MerchantValidate] - Wrong credentials",
    )
    # The password must be built from the very Timestamp sent with it.
    earlier = (datetime.now(NAIROBI) - timedelta(seconds=5)).strftime("%Y%m%d%H%M%S")
    mismatched = push_body(url, Password=password_for(SANDBOX_SHORTCODE, SANDBOX_PASSKEY, earlier))
    assert error_of(await daraja.push(mismatched))[2] == "[MerchantValidate] - Wrong credentials"


async def test_a_body_that_is_not_json_is_refused(daraja: Daraja) -> None:
    response = await daraja.http.post(
        "/mpesa/stkpush/v1/processrequest",
        content=b"BusinessShortCode=174379",
        headers={**daraja.bearer(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert error_of(response) == (400, "400.002.05", "Invalid Request Payload")


async def test_production_callback_rules_are_opt_in(make_daraja: MakeDaraja, receiver: Receiver) -> None:
    strict = await make_daraja(require_https_callback=True, reject_reserved_callback_words=True)
    _, url = receiver.new_url()
    assert error_of(await strict.push(push_body(url)))[2] == "Bad Request - Invalid CallBackURL"
    reserved = push_body("https://kiota.example/api/v1/deposit/mpesa-callback/t0k3n")
    assert error_of(await strict.push(reserved))[2] == "Bad Request - Invalid CallBackURL"
    assert (await strict.push(push_body("https://kiota.example/api/v1/deposit/cb/t0k3n"))).status_code == 200


# ---------------------------------------------------------------------------------- accepted push


async def test_accepted_push_has_daraja_shape(daraja: Daraja, receiver: Receiver) -> None:
    _, url = receiver.new_url()
    first = await daraja.push(push_body(url))
    second = await daraja.push(push_body(url))
    assert first.status_code == 200
    body = first.json()
    assert set(body) == ACCEPTED_KEYS
    assert body["ResponseCode"] == "0"
    assert body["ResponseDescription"] == "Success. Request accepted for processing"
    assert body["CustomerMessage"] == "Success. Request accepted for processing"
    assert isinstance(body["MerchantRequestID"], str) and body["MerchantRequestID"]
    match = re.fullmatch(r"ws_CO_(\d{2})(\d{2})(\d{4})(\d{6})\d+", body["CheckoutRequestID"])
    assert match is not None
    day, month, year, hms = match.groups()
    assert nairobi_stamp_is_recent(f"{year}{month}{day}{hms}")
    assert body["CheckoutRequestID"] != second.json()["CheckoutRequestID"]
    assert body["MerchantRequestID"] != second.json()["MerchantRequestID"]


# ------------------------------------------------------------------------------------------- query


async def test_query_while_pending(daraja: Daraja, receiver: Receiver) -> None:
    await daraja.scenario(default=True, outcome="none")
    _, url = receiver.new_url()
    checkout_request_id = await daraja.push_ok(push_body(url))
    response = await daraja.query(checkout_request_id)
    assert error_of(response) == (500, "500.001.1001", "The transaction is being processed")


async def test_query_while_pending_in_the_4999_style(make_daraja: MakeDaraja, receiver: Receiver) -> None:
    daraja = await make_daraja(pending_query_style="result_code_4999")
    await daraja.scenario(default=True, outcome="none")
    _, url = receiver.new_url()
    checkout_request_id = await daraja.push_ok(push_body(url))
    response = await daraja.query(checkout_request_id)
    assert response.status_code == 200
    assert set(response.json()) == QUERY_KEYS
    assert response.json()["ResultCode"] == "4999"


async def test_query_once_resolved_reports_a_string_result_code(daraja: Daraja, receiver: Receiver) -> None:
    name, url = receiver.new_url()
    accepted = (await daraja.push(push_body(url))).json()
    await receiver.wait(name)
    response = await daraja.query(accepted["CheckoutRequestID"])
    assert response.status_code == 200
    body = response.json()
    assert set(body) == QUERY_KEYS
    assert body == {
        "ResponseCode": "0",
        "ResponseDescription": "The service request has been accepted successsfully",
        "MerchantRequestID": accepted["MerchantRequestID"],
        "CheckoutRequestID": accepted["CheckoutRequestID"],
        "ResultCode": "0",
        "ResultDesc": "The service request is processed successfully.",
    }


@pytest.mark.parametrize("style", ["error", "result_code_4999"])
async def test_query_still_processing_for_a_while_after_the_callback(
    make_daraja: MakeDaraja, receiver: Receiver, style: str
) -> None:
    daraja = await make_daraja(pending_query_style=style)
    await daraja.scenario(next=True, outcome=1032, query_pending_seconds=0.4)
    name, url = receiver.new_url()
    checkout_request_id = await daraja.push_ok(push_body(url))
    [callback] = await receiver.wait(name)  # the callback is out...
    assert callback["Body"]["stkCallback"]["ResultCode"] == 1032
    pending = await daraja.query(checkout_request_id)  # ...and the query still says "being processed"
    if style == "error":
        assert error_of(pending) == (500, "500.001.1001", "The transaction is being processed")
    else:
        assert pending.json()["ResultCode"] == "4999"
    await asyncio.sleep(0.5)
    assert (await daraja.query(checkout_request_id)).json()["ResultCode"] == "1032"  # then the truth


async def test_a_seeded_push_is_known_to_the_query_and_sends_no_callback(daraja: Daraja) -> None:
    seeded = await daraja.http.post("/_sim/pushes/seed", json={"checkout_request_id": "ws_CO_bench_1", "amount": 1295})
    assert seeded.status_code == 200, seeded.text
    assert seeded.json()["result_code"] == 0 and seeded.json()["callbacks"] == []
    assert (await daraja.query("ws_CO_bench_1")).json()["ResultCode"] == "0"
    daraja.sim.seed_push("ws_CO_bench_2", 700, outcome=1032)
    assert (await daraja.query("ws_CO_bench_2")).json()["ResultCode"] == "1032"
    again = await daraja.http.post("/_sim/pushes/seed", json={"checkout_request_id": "ws_CO_bench_1", "amount": 1})
    assert again.status_code == 409


async def test_query_refusals(daraja: Daraja) -> None:
    assert error_of(await daraja.query("ws_CO_0101202400000000000000000")) == (
        400,
        "400.002.02",
        "Bad Request - Invalid CheckoutRequestID",
    )
    assert error_of(await daraja.query("ws_CO_x", Password="bm9wZQ=="))[1:] == (
        "500.001.1001",
        "[MerchantValidate] - Wrong credentials",
    )
    assert error_of(await daraja.query("ws_CO_x", Timestamp="yesterday"))[2] == "Bad Request - Invalid Timestamp"


# --------------------------------------------------------------------------------------- callbacks


async def test_success_callback_matches_the_reference_example(daraja: Daraja, receiver: Receiver) -> None:
    name, url = receiver.new_url()
    accepted = (await daraja.push(push_body(url, Amount=1500))).json()
    [callback] = await receiver.wait(name)

    reference = REFERENCE_SUCCESS_CALLBACK["Body"]["stkCallback"]
    stk = callback["Body"]["stkCallback"]
    assert set(callback) == {"Body"} and set(callback["Body"]) == {"stkCallback"}
    assert set(stk) == set(reference)
    assert stk["MerchantRequestID"] == accepted["MerchantRequestID"]
    assert stk["CheckoutRequestID"] == accepted["CheckoutRequestID"]
    assert type(stk["ResultCode"]) is int and stk["ResultCode"] == 0  # a number here, a string in queries
    assert stk["ResultDesc"] == reference["ResultDesc"]

    items = items_by_name(callback)
    reference_names = {item["Name"] for item in reference["CallbackMetadata"]["Item"]}
    assert set(items) == reference_names | {"Balance"}
    assert "Value" not in items["Balance"]
    amount = items["Amount"]["Value"]
    assert type(amount) in (int, float) and amount == 1500
    receipt = items["MpesaReceiptNumber"]["Value"]
    assert re.fullmatch(r"[A-Z][A-Z0-9]{9}", receipt)
    transaction_date = items["TransactionDate"]["Value"]
    assert type(transaction_date) is int and len(str(transaction_date)) == 14
    assert nairobi_stamp_is_recent(transaction_date)
    assert items["PhoneNumber"]["Value"] == int(PHONE) and type(items["PhoneNumber"]["Value"]) is int

    record = daraja.sim.get_push(accepted["CheckoutRequestID"])
    assert record.mpesa_receipt == receipt and record.result_code == 0
    # The receiver may have the body before the simulator has its answer: wait for the record.
    attempts = await asyncio.wait_for(daraja.sim.wait_for_callbacks(accepted["CheckoutRequestID"]), WAIT)
    assert [(a.kind, a.status_code) for a in attempts] == [("scheduled", 200)]


async def test_balance_item_can_be_left_out(make_daraja: MakeDaraja, receiver: Receiver) -> None:
    daraja = await make_daraja(include_balance_item=False)
    name, url = receiver.new_url()
    await daraja.push_ok(push_body(url))
    [callback] = await receiver.wait(name)
    assert list(items_by_name(callback)) == ["Amount", "MpesaReceiptNumber", "TransactionDate", "PhoneNumber"]


@pytest.mark.parametrize("code", FAILURE_CODES)
async def test_each_failure_code(daraja: Daraja, receiver: Receiver, code: int) -> None:
    await daraja.scenario(phone=PHONE, outcome=code)
    name, url = receiver.new_url()
    checkout_request_id = await daraja.push_ok(push_body(url))
    [callback] = await receiver.wait(name)
    stk = callback["Body"]["stkCallback"]
    assert set(stk) == set(REFERENCE_FAILURE_CALLBACK["Body"]["stkCallback"])  # no CallbackMetadata
    assert type(stk["ResultCode"]) is int and stk["ResultCode"] == code
    assert stk["ResultDesc"] == RESULT_DESCRIPTIONS[code]
    query = (await daraja.query(checkout_request_id)).json()
    assert query["ResultCode"] == str(code) and query["ResultDesc"] == RESULT_DESCRIPTIONS[code]


def test_cancelled_text_is_the_reference_one() -> None:
    assert RESULT_DESCRIPTIONS[1032] == REFERENCE_FAILURE_CALLBACK["Body"]["stkCallback"]["ResultDesc"]


async def test_duplicates_repeat_the_same_callback(daraja: Daraja, receiver: Receiver) -> None:
    await daraja.scenario(next=True, duplicates=2)
    name, url = receiver.new_url()
    checkout_request_id = await daraja.push_ok(push_body(url))
    bodies = await receiver.wait(name, 3)
    assert bodies[0] == bodies[1] == bodies[2]
    attempts = await asyncio.wait_for(daraja.sim.wait_for_callbacks(checkout_request_id, 3), WAIT)
    kinds = [a.kind for a in attempts]
    assert kinds == ["scheduled", "duplicate", "duplicate"]


@pytest.mark.parametrize(("outcome", "contradiction"), [("success", 1032), (1032, "success")])
async def test_a_contradicting_second_callback(
    daraja: Daraja, receiver: Receiver, outcome: Any, contradiction: Any
) -> None:
    await daraja.scenario(next=True, outcome=outcome, contradict_with=contradiction)
    name, url = receiver.new_url()
    checkout_request_id = await daraja.push_ok(push_body(url))
    first, second = await receiver.wait(name, 2)
    first_code = 0 if outcome == "success" else outcome
    second_code = 0 if contradiction == "success" else contradiction
    assert first["Body"]["stkCallback"]["ResultCode"] == first_code
    assert second["Body"]["stkCallback"]["ResultCode"] == second_code
    assert ("CallbackMetadata" in second["Body"]["stkCallback"]) == (second_code == 0)
    # The query keeps the first word.
    assert (await daraja.query(checkout_request_id)).json()["ResultCode"] == str(first_code)


async def test_never_sent_then_delivered_later_by_hand(daraja: Daraja, receiver: Receiver) -> None:
    await daraja.scenario(phone=PHONE, outcome="none")
    name, url = receiver.new_url()
    checkout_request_id = await daraja.push_ok(push_body(url))
    await asyncio.sleep(0.2)
    assert receiver.bodies[name] == []
    assert error_of(await daraja.query(checkout_request_id))[1] == "500.001.1001"

    response = await daraja.http.post(f"/_sim/callbacks/{checkout_request_id}/send", json={"outcome": "success"})
    assert response.status_code == 200
    attempt = response.json()
    assert attempt["kind"] == "manual" and attempt["status_code"] == 200 and attempt["error"] is None
    assert attempt["response_body"] == '{"ResultCode":0,"ResultDesc":"Accepted"}'
    [callback] = receiver.bodies[name]
    assert callback == attempt["body"] and callback["Body"]["stkCallback"]["ResultCode"] == 0
    assert (await daraja.query(checkout_request_id)).json()["ResultCode"] == "0"


async def test_a_lost_callback_shows_in_the_query_and_can_be_resent(daraja: Daraja, receiver: Receiver) -> None:
    await daraja.scenario(next=True, lose_callback=True)
    name, url = receiver.new_url()
    checkout_request_id = await daraja.push_ok(push_body(url))
    await asyncio.sleep(0.2)
    assert receiver.bodies[name] == []
    assert (await daraja.query(checkout_request_id)).json()["ResultCode"] == "0"

    resend = await daraja.http.post(f"/_sim/callbacks/{checkout_request_id}/send")
    assert resend.status_code == 200
    [callback] = receiver.bodies[name]
    record = daraja.sim.get_push(checkout_request_id)
    assert items_by_name(callback)["MpesaReceiptNumber"]["Value"] == record.mpesa_receipt
    assert callback == record.callback_body


async def test_manual_resend_and_manual_contradiction(daraja: Daraja, receiver: Receiver) -> None:
    name, url = receiver.new_url()
    checkout_request_id = await daraja.push_ok(push_body(url))
    [first] = await receiver.wait(name)
    again = await daraja.sim.send_callback(checkout_request_id)
    assert again.body == first  # same receipt, same date: a true duplicate
    contradiction = await daraja.sim.send_callback(checkout_request_id, outcome=2001)
    assert contradiction.body["Body"]["stkCallback"]["ResultCode"] == 2001
    assert (await daraja.query(checkout_request_id)).json()["ResultCode"] == "0"
    assert len(receiver.bodies[name]) == 3


async def test_amount_override(daraja: Daraja, receiver: Receiver) -> None:
    await daraja.scenario(next=True, amount_override=900)
    name, url = receiver.new_url()
    await daraja.push_ok(push_body(url, Amount=1500))
    [callback] = await receiver.wait(name)
    assert items_by_name(callback)["Amount"]["Value"] == 900


async def test_delivery_failures_are_recorded_not_raised(daraja: Daraja, receiver: Receiver) -> None:
    name, url = receiver.new_url(status=503)
    refused = await daraja.push_ok(push_body(url))
    await receiver.wait(name)
    [attempt] = await asyncio.wait_for(daraja.sim.wait_for_callbacks(refused), WAIT)
    assert attempt.status_code == 503 and attempt.error is None

    closed_port = await unused_port()
    unreachable = await daraja.push_ok(push_body(f"http://127.0.0.1:{closed_port}/cb"))
    [attempt] = await asyncio.wait_for(daraja.sim.wait_for_callbacks(unreachable), WAIT)
    assert attempt.status_code is None and attempt.error is not None and "Connect" in attempt.error

    pushes = (await daraja.http.get("/_sim/pushes")).json()["pushes"]
    assert [p["callbacks"][0]["status_code"] for p in pushes] == [503, None]
    assert pushes[0]["request"]["CallBackURL"] == url and pushes[0]["accepted"] is True


async def unused_port() -> int:
    """A port nobody listens on (bound, read, released)."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


# ------------------------------------------------------------------------------------- push errors


async def test_push_error_n_times_then_accepted(daraja: Daraja, receiver: Receiver) -> None:
    await daraja.scenario(phone=PHONE, push_error={"errorCode": "500.001.1001", "times": 2})
    name, url = receiver.new_url()
    for _ in range(2):
        assert error_of(await daraja.push(push_body(url))) == (
            500,
            "500.001.1001",
            "Unable to lock subscriber, a transaction is already in process for the current subscriber",
        )
    assert (await daraja.push(push_body(url))).status_code == 200
    await receiver.wait(name)
    assert [p.http_status for p in daraja.sim.pushes] == [500, 500, 200]


async def test_busy_on_the_next_push_keeps_its_outcome_for_the_accepted_one(daraja: Daraja, receiver: Receiver) -> None:
    await daraja.scenario(next=True, outcome=1037, push_error={"errorCode": "500.003.02", "times": 1})
    name, url = receiver.new_url()
    assert error_of(await daraja.push(push_body(url))) == (
        500,
        "500.003.02",
        "System is busy. Please try again in few minutes.",
    )
    await daraja.push_ok(push_body(url))
    [callback] = await receiver.wait(name)
    assert callback["Body"]["stkCallback"]["ResultCode"] == 1037
    assert (await daraja.http.get("/_sim/scenarios")).json()["next"] == []


async def test_push_error_without_times_persists_with_custom_text(daraja: Daraja, receiver: Receiver) -> None:
    await daraja.scenario(
        default=True,
        push_error={"errorCode": "500.003.03", "errorMessage": "Quota Violation", "http_status": 429},
    )
    _, url = receiver.new_url()
    for _ in range(3):
        assert error_of(await daraja.push(push_body(url))) == (429, "500.003.03", "Quota Violation")


async def test_a_slow_push_answer_still_reaches_the_customer(daraja: Daraja, receiver: Receiver) -> None:
    """The client gives up waiting, yet the push was accepted and its callback comes."""
    await daraja.scenario(phone=PHONE, push_delay_seconds=0.2)
    name, url = receiver.new_url()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(daraja.push(push_body(url)), 0.05)
    [callback] = await receiver.wait(name)
    [record] = daraja.sim.pushes
    assert record.accepted and callback["Body"]["stkCallback"]["CheckoutRequestID"] == record.checkout_request_id

    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await daraja.push(push_body(url))).status_code == 200
    assert loop.time() - started >= 0.2


# ---------------------------------------------------------------------------------------- precedence


async def test_request_beats_phone_beats_default_field_by_field(daraja: Daraja, receiver: Receiver) -> None:
    await daraja.scenario(default=True, outcome=1032, amount_override=700)
    await daraja.scenario(phone=PHONE, outcome=2001)
    await daraja.scenario(next=True, outcome="success")

    names_and_urls = [receiver.new_url() for _ in range(3)]
    await daraja.push_ok(push_body(names_and_urls[0][1]))  # PHONE, takes the "next" scenario
    await daraja.push_ok(push_body(names_and_urls[1][1]))  # PHONE again: the phone scenario
    other = {"PartyA": OTHER_PHONE, "PhoneNumber": OTHER_PHONE}
    await daraja.push_ok(push_body(names_and_urls[2][1], **other))  # the default

    callbacks = [(await receiver.wait(name))[0]["Body"]["stkCallback"] for name, _ in names_and_urls]
    assert [c["ResultCode"] for c in callbacks] == [0, 2001, 1032]
    # amount_override was set only by the default, so the request-level success inherits it.
    assert items_by_name({"Body": {"stkCallback": callbacks[0]}})["Amount"]["Value"] == 700


async def test_a_scenario_for_an_accepted_push(daraja: Daraja, receiver: Receiver) -> None:
    await daraja.scenario(default=True, outcome="none")
    name, url = receiver.new_url()
    checkout_request_id = await daraja.push_ok(push_body(url))
    await daraja.scenario(checkout_request_id=checkout_request_id, outcome=1019, delay_seconds=0.01)
    [callback] = await receiver.wait(name)
    assert callback["Body"]["stkCallback"]["ResultCode"] == 1019

    late = await daraja.http.post(
        "/_sim/scenarios", json={"checkout_request_id": checkout_request_id, "outcome": "success"}
    )
    assert late.status_code == 409  # already resolved
    unknown = await daraja.http.post("/_sim/scenarios", json={"checkout_request_id": "ws_CO_nope", "outcome": 1})
    assert unknown.status_code == 404


@pytest.mark.parametrize(
    "spec",
    [
        {"outcome": 1032},
        {"phone": PHONE, "next": True, "outcome": 1032},
        {"default": True, "outcome": "maybe"},
        {"default": True, "colour": "blue"},
    ],
)
async def test_malformed_scenarios_are_refused(daraja: Daraja, spec: dict[str, Any]) -> None:
    assert (await daraja.http.post("/_sim/scenarios", json=spec)).status_code == 422


# -------------------------------------------------------------------------------- control and life


async def test_reset_forgets_pushes_and_scenarios_and_cancels_callbacks(daraja: Daraja, receiver: Receiver) -> None:
    await daraja.scenario(default=True, delay_seconds=0.15)
    name, url = receiver.new_url()
    await daraja.push_ok(push_body(url))
    assert (await daraja.http.post("/_sim/reset")).status_code == 200
    await asyncio.sleep(0.25)
    assert receiver.bodies[name] == []
    assert (await daraja.http.get("/_sim/pushes")).json() == {"pushes": []}
    assert (await daraja.http.get("/_sim/scenarios")).json()["default"]["delay_seconds"] is None
    assert (await daraja.push(push_body(url))).status_code == 200  # the token survived


async def test_shutdown_cancels_pending_callbacks(receiver: Receiver) -> None:
    app = create_simulator(SimulatorConfig(KEY, SECRET, callback_delay_seconds=0.15))
    sim = simulator_of(app)
    name, url = receiver.new_url()
    async with app.router.lifespan_context(app):
        status, _ = await sim.stk_push(push_body(url))
        assert status == 200
    await asyncio.sleep(0.25)
    assert receiver.bodies[name] == []
    assert sim.pushes[0].callbacks == []


async def test_in_process_api(receiver: Receiver) -> None:
    app = create_simulator(SimulatorConfig(KEY, SECRET, callback_delay_seconds=DELAY))
    sim = simulator_of(app)
    async with app.router.lifespan_context(app):
        sim.set_scenario(Scenario(outcome=2001, duplicates=1), phone=PHONE)
        _, url = receiver.new_url()
        status, answer = await sim.stk_push(push_body(url))
        assert status == 200
        attempts = await asyncio.wait_for(sim.wait_for_callbacks(answer["CheckoutRequestID"], 2), WAIT)
        assert [a.body["Body"]["stkCallback"]["ResultCode"] for a in attempts] == [2001, 2001]
        status, query = sim.stk_query(
            {
                "BusinessShortCode": SANDBOX_SHORTCODE,
                "Password": password_for(SANDBOX_SHORTCODE, SANDBOX_PASSKEY, stamp := timestamp_now()),
                "Timestamp": stamp,
                "CheckoutRequestID": answer["CheckoutRequestID"],
            }
        )
        assert (status, query["ResultCode"]) == (200, "2001")
        with pytest.raises(ValueError, match="exactly one"):
            sim.set_scenario(Scenario(), phone=PHONE, default=True)


async def test_unknown_daraja_paths_answer_in_daraja_shape(daraja: Daraja) -> None:
    assert error_of(await daraja.http.get("/mpesa/nothing/here")) == (404, "404.001.01", "Resource not found")
    assert error_of(await daraja.http.get("/mpesa/stkpush/v1/processrequest")) == (
        405,
        "405.001",
        "Method Not Allowed",
    )
    assert (await daraja.http.get("/_sim/pushes/ws_CO_nope")).json() == {"detail": "no accepted push ws_CO_nope"}


async def test_served_on_a_real_port(receiver: Receiver) -> None:
    config = SimulatorConfig(KEY, SECRET, callback_delay_seconds=DELAY)
    async with running_simulator(config) as running, httpx.AsyncClient(base_url=running.base_url) as http:
        daraja = Daraja(http, running.simulator)
        await daraja.authenticate()
        name, url = receiver.new_url()
        await daraja.push_ok(push_body(url))
        await receiver.wait(name)


async def test_serve_simulator_runs_until_cancelled() -> None:
    ready: asyncio.Future[RunningSimulator] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_simulator(SimulatorConfig(KEY, SECRET), port=0, on_ready=ready.set_result))
    running = await asyncio.wait_for(ready, WAIT)
    async with httpx.AsyncClient(base_url=running.base_url) as http:
        response = await http.get("/oauth/v1/generate", params={"grant_type": "client_credentials"}, auth=(KEY, SECRET))
        assert response.status_code == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{running.base_url}/oauth/v1/generate")


async def test_a_busy_port_fails_to_start_cleanly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="could not start"):
            async with running_simulator(SimulatorConfig(KEY, SECRET), port=port):
                pass
