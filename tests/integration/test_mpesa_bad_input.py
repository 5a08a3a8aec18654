"""Bad input against the M-Pesa surface: the webhook, the initiate route and the deposit reads.

Every test drives the real system (`mpesa_system`: the API on a port, a real worker, the Daraja
simulator, anvil) and checks two things: the answer the contract names, and that nothing was
credited — no journal entry, no payout, no deposit moved. No request here may be answered with a 5xx:
every response passes through `_no_server_error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from structlog.testing import capture_logs

from api.app import create_app
from kiota.dev.daraja_sim import running_simulator
from kiota.dev.daraja_sim_behaviour import Scenario, SimulatorConfig
from kiota.mpesa import RESULT_REASONS
from kiota.settings import Settings
from tests.conftest import MpesaSystem
from tests.support import CALLBACK_TOKEN, JWT_SECRET, base_env, bearer, free_port, settings_kwargs, success_body

CALLBACK_PREFIX = "/api/v1/deposit/mpesa-callback/"
REDACTED_PATH = CALLBACK_PREFIX + "[redacted]"
MAX_BODY = 64 * 1024
PHONE = "254708374149"

JsonDict = dict[str, Any]


# ------------------------------------------------------------------------------------------ plumbing


async def _no_server_error(response: httpx.Response) -> None:
    if response.status_code >= 500:
        await response.aread()
        request = response.request
        raise AssertionError(f"{request.method} {request.url.path} → {response.status_code}: {response.text[:300]}")


@pytest.fixture
async def system(mpesa_system: MpesaSystem) -> MpesaSystem:
    """The M-Pesa system with pushes the simulator counts as paid at once but never calls back for (tests
    deliver callbacks themselves; the STK query confirms their successes) and every response of its client
    checked for 5xx."""
    mpesa_system.simulator.set_scenario(Scenario(outcome="success", lose_callback=True, delay_seconds=0), default=True)
    mpesa_system.http.event_hooks = {"request": [], "response": [_no_server_error]}
    return mpesa_system


@pytest.fixture
async def http(system: MpesaSystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=system.api_url, timeout=15, event_hooks={"response": [_no_server_error]}
    ) as client:
        yield client


def failure_body(checkout_request_id: str, code: int | str = 1032) -> JsonDict:
    return {
        "Body": {
            "stkCallback": {
                "MerchantRequestID": "f1e2-4b95-a71d-b30d3cdbb7a7942864",
                "CheckoutRequestID": checkout_request_id,
                "ResultCode": code,
                "ResultDesc": "Request cancelled by user",
            }
        }
    }


def _stk(document: JsonDict) -> JsonDict:
    callback: JsonDict = document["Body"]["stkCallback"]
    return callback


def _items(document: JsonDict) -> list[Any]:
    items: list[Any] = _stk(document)["CallbackMetadata"]["Item"]
    return items


def _variant(base: JsonDict, mutate: Callable[[JsonDict], object]) -> JsonDict:
    document: JsonDict = json.loads(json.dumps(base))
    mutate(document)
    return document


def _set_stk(name: str, value: Any) -> Callable[[JsonDict], object]:
    return lambda d: _stk(d).__setitem__(name, value)


def _drop_stk(name: str) -> Callable[[JsonDict], object]:
    return lambda d: _stk(d).pop(name)


def _set_item(name: str, value: Any) -> Callable[[JsonDict], object]:
    def mutate(document: JsonDict) -> None:
        for item in _items(document):
            if item.get("Name") == name:
                item["Value"] = value

    return mutate


def _drop_item(name: str) -> Callable[[JsonDict], object]:
    def mutate(document: JsonDict) -> None:
        _stk(document)["CallbackMetadata"]["Item"] = [i for i in _items(document) if i.get("Name") != name]

    return mutate


def _set_metadata(value: Any) -> Callable[[JsonDict], object]:
    return lambda d: _stk(d).__setitem__("CallbackMetadata", value)


def _encode(document: Any) -> bytes:
    return json.dumps(document).encode()


async def _pending_deposit(http: httpx.AsyncClient, user: str, amount: int) -> JsonDict:
    response = await http.post(
        "/api/v1/deposit/initiate", json={"amount_kes": amount, "phone": PHONE}, headers=bearer(user)
    )
    assert response.status_code == 202, response.text
    body: JsonDict = response.json()
    return body


async def _post_callback(http: httpx.AsyncClient, system: MpesaSystem, raw: bytes, **headers: str) -> httpx.Response:
    return await http.post(system.callback_url, content=raw, headers={"Content-Type": "application/json", **headers})


async def money_state(system: MpesaSystem) -> dict[str, int]:
    row = await system.pool.fetchrow(
        "SELECT (SELECT count(*) FROM journal_entries) AS entries, (SELECT count(*) FROM postings) AS postings,"
        " (SELECT count(*) FROM payouts) AS payouts, (SELECT count(*) FROM payout_attempts) AS attempts,"
        " (SELECT count(*) FROM review_items) AS review_items,"
        " (SELECT count(*) FROM jobs WHERE queue = 'payouts') AS jobs"  # the scan rounds are jobs too
    )
    assert row is not None
    return dict(row)


NOTHING_CREDITED = {"entries": 0, "postings": 0, "payouts": 0, "attempts": 0, "review_items": 0, "jobs": 0}


async def deposit_rows(system: MpesaSystem) -> list[JsonDict]:
    return [dict(row) for row in await system.pool.fetch("SELECT * FROM deposits ORDER BY created_at, id")]


async def callback_rows(system: MpesaSystem) -> list[asyncpg.Record]:
    return list(await system.pool.fetch("SELECT * FROM mpesa_callbacks ORDER BY id"))


def kept_bytes(row: asyncpg.Record) -> bytes:
    """The raw body a callback row keeps, as bytes: raw_body itself when it is bytea, else a bytea column
    beside it (a fix may add one), else raw_body's text as UTF-8."""
    raw = row["raw_body"]
    if isinstance(raw, bytes):
        return raw
    for value in row.values():
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
    assert isinstance(raw, str)
    return raw.encode("utf-8")


# ------------------------------------------------------------------------------ webhook: bad bodies


def malformed_bodies(checkout_request_id: str, amount: int) -> list[tuple[str, bytes]]:
    """Bodies that are not Daraja's STK callback; each names a real pending deposit and its right amount,
    so that any leniency would credit it."""
    good = success_body(checkout_request_id, amount)
    v = _variant
    documents: list[tuple[str, Any]] = [
        ("missing Body", {"body": good["Body"]}),
        ("Body not an object", {"Body": [good["Body"]]}),
        ("missing stkCallback", {"Body": {}}),
        ("stkCallback not an object", {"Body": {"stkCallback": json.dumps(_stk(good))}}),
        ("stkCallback at the top level", _stk(good)),
        ("ResultCode true", v(good, _set_stk("ResultCode", True))),
        ("ResultCode false", v(good, _set_stk("ResultCode", False))),
        ("ResultCode float 0.0", v(good, _set_stk("ResultCode", 0.0))),
        ("ResultCode float 1032.0", v(good, _set_stk("ResultCode", 1032.0))),
        ("ResultCode null", v(good, _set_stk("ResultCode", None))),
        ("ResultCode missing", v(good, _drop_stk("ResultCode"))),
        ("ResultCode words", v(good, _set_stk("ResultCode", "zero"))),
        ("ResultCode empty string", v(good, _set_stk("ResultCode", ""))),
        ("ResultCode decimal string", v(good, _set_stk("ResultCode", "0.0"))),
        ("ResultCode list", v(good, _set_stk("ResultCode", [0]))),
        ("CheckoutRequestID missing", v(good, _drop_stk("CheckoutRequestID"))),
        ("CheckoutRequestID a number", v(good, _set_stk("CheckoutRequestID", 191220191020363925))),
        ("CheckoutRequestID null", v(good, _set_stk("CheckoutRequestID", None))),
        ("CheckoutRequestID empty", v(good, _set_stk("CheckoutRequestID", ""))),
        ("CheckoutRequestID a list", v(good, _set_stk("CheckoutRequestID", [checkout_request_id]))),
        ("MerchantRequestID missing", v(good, _drop_stk("MerchantRequestID"))),
        ("success without CallbackMetadata", v(good, _drop_stk("CallbackMetadata"))),
        ("CallbackMetadata null", v(good, _set_metadata(None))),
        ("CallbackMetadata without Item", v(good, _set_metadata({}))),
        ("CallbackMetadata a list", v(good, _set_metadata(_items(good)))),
        ("Item an object", v(good, _set_metadata({"Item": {"Name": "Amount", "Value": amount}}))),
        ("Item a string", v(good, _set_metadata({"Item": json.dumps(_items(good))}))),
        ("Item null", v(good, _set_metadata({"Item": None}))),
        ("Item entry not an object", v(good, lambda d: _items(d).append("Amount"))),
        ("Item entry without Name", v(good, lambda d: _items(d).append({"Value": 1}))),
        ("Item Name not a string", v(good, lambda d: _items(d).append({"Name": 7, "Value": 1}))),
        ("success without Amount", v(good, _drop_item("Amount"))),
        ("success without MpesaReceiptNumber", v(good, _drop_item("MpesaReceiptNumber"))),
        ("Amount without Value", v(good, lambda d: _items(d).__setitem__(0, {"Name": "Amount"}))),
        ("Amount fractional", v(good, _set_item("Amount", amount + 0.5))),
        ("Amount negative", v(good, _set_item("Amount", -amount))),
        ("Amount zero", v(good, _set_item("Amount", 0))),
        ("Amount a string", v(good, _set_item("Amount", str(amount)))),
        ("Amount a decimal string", v(good, _set_item("Amount", f"{amount}.00"))),
        ("Amount true", v(good, _set_item("Amount", True))),
        ("Amount null", v(good, _set_item("Amount", None))),
        ("Amount NaN", v(good, _set_item("Amount", float("nan")))),
        ("Amount Infinity", v(good, _set_item("Amount", float("inf")))),
        ("Amount an object", v(good, _set_item("Amount", {"KES": amount}))),
        ("MpesaReceiptNumber a number", v(good, _set_item("MpesaReceiptNumber", 12345678))),
        ("MpesaReceiptNumber empty", v(good, _set_item("MpesaReceiptNumber", ""))),
        ("MpesaReceiptNumber with a space", v(good, _set_item("MpesaReceiptNumber", "NLJ7 RT61SV"))),
        ("MpesaReceiptNumber null", v(good, _set_item("MpesaReceiptNumber", None))),
        ("TransactionDate words", v(good, _set_item("TransactionDate", "yesterday"))),
        ("TransactionDate ISO 8601", v(good, _set_item("TransactionDate", "2019-12-19T10:21:15+03:00"))),
        ("TransactionDate month 13", v(good, _set_item("TransactionDate", 20191319102115))),
        ("TransactionDate hour 25", v(good, _set_item("TransactionDate", 20191219252115))),
        ("TransactionDate 15 digits", v(good, _set_item("TransactionDate", 201912191021150))),
        ("TransactionDate a float", v(good, _set_item("TransactionDate", 20191219102115.0))),
        ("TransactionDate true", v(good, _set_item("TransactionDate", True))),
        ("TransactionDate null", v(good, _set_item("TransactionDate", None))),
    ]
    raw: list[tuple[str, bytes]] = [
        ("empty body", b""),
        ("form-encoded", f"ResultCode=0&CheckoutRequestID={checkout_request_id}&Amount={amount}".encode()),
        ("XML", b"<Body><stkCallback><ResultCode>0</ResultCode></stkCallback></Body>"),
        ("truncated JSON", _encode(good)[:-3]),
        ("two JSON documents", _encode(good) + _encode(good)),
        ("JSON null", b"null"),
        ("JSON array", b"[]"),
        ("JSON string", b'"Body"'),
        ("JSON number", b"0"),
        ("JSON with a trailing comma", _encode(good)[:-1] + b",}"),
        ("single-quoted pseudo-JSON", _encode(good).replace(b'"', b"'")),
    ]
    return raw + [(label, _encode(document)) for label, document in documents]


async def test_malformed_callbacks_are_400_kept_raw_and_credit_nothing(
    system: MpesaSystem, http: httpx.AsyncClient
) -> None:
    deposit = await _pending_deposit(http, "alice", 1500)
    before = await deposit_rows(system)
    bodies = malformed_bodies(deposit["checkout_request_id"], 1500)

    wrong: list[str] = []
    for label, raw in bodies:
        answer = await _post_callback(http, system, raw)
        if answer.status_code != 400 or answer.json().get("ResultCode") == 0:
            wrong.append(f"{label}: {answer.status_code} {answer.text}")
    assert wrong == [], "\n".join(wrong)

    rows = await callback_rows(system)
    assert len(rows) == len(bodies)
    for (label, raw), row in zip(bodies, rows, strict=True):
        assert row["disposition"] == "malformed", label
        assert kept_bytes(row) == raw, label
        assert row["parse_error"], label
        assert row["deposit_id"] is None, label
    assert await money_state(system) == NOTHING_CREDITED
    assert await deposit_rows(system) == before
    assert (await system.deposit("alice", deposit["deposit_id"]))["status"] == "pending"


async def test_daraja_variations_are_accepted(system: MpesaSystem, http: httpx.AsyncClient) -> None:
    """ResultCode as a numeric string, items in any order, Balance without a Value: all well-formed."""
    paid = await _pending_deposit(http, "bob", 1295)
    cancelled = await _pending_deposit(http, "bob", 700)

    success = success_body(paid["checkout_request_id"], 1295)
    _stk(success)["ResultCode"] = "0"
    items = _items(success)
    _stk(success)["CallbackMetadata"]["Item"] = [items[4], items[2], items[3], items[1], items[0]]  # shuffled
    assert _items(success)[1] == {"Name": "Balance"}
    failure = failure_body(cancelled["checkout_request_id"], "1032")

    for document in (success, failure):
        answer = await _post_callback(http, system, _encode(document))
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"ResultCode": 0, "ResultDesc": "Accepted"}

    done = await system.wait_status("bob", paid["deposit_id"], "completed")
    assert done["amount_kes"] == 1295 and done["mpesa_receipt"] == "NLJ7RT61SV"
    assert done["amount_usdc"] == "10.000000"
    failed = await system.deposit("bob", cancelled["deposit_id"])
    assert failed["status"] == "failed" and failed["failure_reason"] == RESULT_REASONS[1032]
    assert failed["mpesa_receipt"] is None and failed["tx_hash"] is None
    rows = await callback_rows(system)
    assert [row["disposition"] for row in rows] == ["succeeded", "failed"]
    assert [row["result_code"] for row in rows] == [0, 1032]
    assert rows[0]["amount_kes"] == 1295
    state = await money_state(system)
    assert (state["payouts"], state["review_items"]) == (1, 0)


# ------------------------------------------------------------------------- webhook: tokens and size


async def test_wrong_tokens_are_404_and_record_nothing(system: MpesaSystem, http: httpx.AsyncClient) -> None:
    deposit = await _pending_deposit(http, "carol", 1500)
    before = await deposit_rows(system)
    raw = _encode(success_body(deposit["checkout_request_id"], 1500))
    wrong_tokens = [
        "wrong-token-0123456789abcdef",
        CALLBACK_TOKEN[:-1],
        CALLBACK_TOKEN + "0",
        CALLBACK_TOKEN.upper(),
        "x" + CALLBACK_TOKEN[1:],
        f"{CALLBACK_TOKEN},{CALLBACK_TOKEN}",
        "%20" + CALLBACK_TOKEN,
        "%C3%A9" * 8,  # non-ASCII
        "%00" * 16,
        "a" * 2000,
    ]
    for token in wrong_tokens:
        answer = await http.post(CALLBACK_PREFIX + token, content=raw, headers={"Content-Type": "application/json"})
        assert answer.status_code in (403, 404), (token, answer.status_code, answer.text)
    for path in ("/api/v1/deposit/mpesa-callback", "/api/v1/deposit/mpesa-callback/"):
        answer = await http.post(path, content=raw, headers={"Content-Type": "application/json"})
        assert answer.status_code in (403, 404, 405), (path, answer.status_code)
    # A malformed body with a wrong token is not kept either: only callbacks with the right token are.
    answer = await http.post(CALLBACK_PREFIX + "wrong-token-0123456789abcdef", content=b"not json")
    assert answer.status_code in (403, 404)

    assert await callback_rows(system) == []
    assert await money_state(system) == NOTHING_CREDITED
    assert await deposit_rows(system) == before


async def _chunks(total: int, size: int = 4096) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        yield b" " * piece
        sent += piece


async def _padded_chunks(document: bytes, total: int) -> AsyncIterator[bytes]:
    yield document
    async for chunk in _chunks(total - len(document)):
        yield chunk


def _padded_failure(checkout_request_id: str, total: int) -> bytes:
    """A well-formed failure callback padded (inside a string field) to exactly `total` bytes."""
    document = failure_body(checkout_request_id)
    _stk(document)["Padding"] = ""
    pad = total - len(_encode(document))
    assert pad >= 0
    _stk(document)["Padding"] = "x" * pad
    raw = _encode(document)
    assert len(raw) == total
    return raw


async def test_bodies_over_64_kib_are_413_and_recorded_nowhere(system: MpesaSystem, http: httpx.AsyncClient) -> None:
    deposit = await _pending_deposit(http, "dave", 1500)
    before = await deposit_rows(system)
    good = _encode(success_body(deposit["checkout_request_id"], 1500))
    json_headers = {"Content-Type": "application/json"}

    # Honest Content-Length, just over and far over the limit (the body is valid JSON plus whitespace).
    for total in (MAX_BODY + 1, 100 * 1024, 1024 * 1024):
        raw = good + b" " * (total - len(good))
        answer = await http.post(system.callback_url, content=raw, headers=json_headers)
        assert answer.status_code == 413, (total, answer.status_code, answer.text)
    # A padded failure callback one byte over the limit.
    answer = await http.post(system.callback_url, content=_padded_failure("ws_CO_over", MAX_BODY + 1))
    assert answer.status_code == 413

    # Chunked transfer, no Content-Length: the size is only known while reading.
    for total in (MAX_BODY + 1, 300 * 1024):
        request = http.build_request(
            "POST", system.callback_url, content=_padded_chunks(good, total), headers=json_headers
        )
        assert "content-length" not in request.headers and request.headers["transfer-encoding"] == "chunked"
        answer = await http.send(request)
        assert answer.status_code == 413, (total, answer.status_code, answer.text)

    assert await callback_rows(system) == []
    assert await money_state(system) == NOTHING_CREDITED
    assert await deposit_rows(system) == before

    # Exactly 64 KiB is not too large, with a Content-Length or chunked.
    exact = _padded_failure("ws_CO_exact_64KiB_length", MAX_BODY)
    answer = await http.post(system.callback_url, content=exact, headers=json_headers)
    assert answer.status_code == 200, answer.text

    async def exact_chunks() -> AsyncIterator[bytes]:
        chunked = _padded_failure("ws_CO_exact_64KiB_chunked", MAX_BODY)
        for start in range(0, len(chunked), 1000):
            yield chunked[start : start + 1000]

    answer = await http.post(system.callback_url, content=exact_chunks(), headers=json_headers)
    assert answer.status_code == 200, answer.text
    # The whole (padded) success for our deposit, exactly 64 KiB of valid JSON with whitespace padding.
    answer = await http.post(system.callback_url, content=good + b" " * (MAX_BODY - len(good)), headers=json_headers)
    assert answer.status_code == 200, answer.text
    rows = await callback_rows(system)
    assert [len(kept_bytes(row)) for row in rows] == [MAX_BODY] * 3
    assert [row["disposition"] for row in rows] == ["unknown_failure", "unknown_failure", "succeeded"]
    await system.wait_status("dave", deposit["deposit_id"], "completed")


async def test_the_callback_token_never_reaches_a_log_line(system: MpesaSystem, http: httpx.AsyncClient) -> None:
    wrong = "wrong-token-fedcba9876543210"
    system.simulator.set_scenario(Scenario(outcome="success", delay_seconds=0.05, lose_callback=False), next_push=True)
    with capture_logs() as events:
        # A whole paid deposit: the push carries the token in its CallBackURL, the simulator calls back.
        deposit = await _pending_deposit(http, "erin", 1295)
        await system.wait_status("erin", deposit["deposit_id"], "completed")
        statuses = {200}
        answer = await _post_callback(http, system, b"{not json")
        assert answer.status_code == 400
        statuses.add(400)
        answer = await http.post(CALLBACK_PREFIX + wrong, json=failure_body(deposit["checkout_request_id"]))
        assert answer.status_code == 404
        statuses.add(404)
        answer = await _post_callback(http, system, b" " * (MAX_BODY + 10))
        assert answer.status_code == 413
        statuses.add(413)
        await _wait_for_access_lines(events, statuses)

    assert events, "capture_logs saw nothing: the API does not log in this process"
    for event in events:
        text = str(event)
        assert CALLBACK_TOKEN not in text, event
        assert wrong not in text, event
    access = [e for e in events if e.get("event") == "http request" and CALLBACK_PREFIX in str(e.get("path"))]
    assert {e["status"] for e in access} >= statuses
    assert all(e["path"] == REDACTED_PATH for e in access), access


async def _wait_for_access_lines(events: list[Any], statuses: set[int], seconds: float = 3) -> None:
    # The access line is written once the answer has been sent: give the server its turn.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen = {e.get("status") for e in events if e.get("event") == "http request" and e.get("path") == REDACTED_PATH}
        if statuses <= seen:
            return
        await asyncio.sleep(0.02)


async def test_both_rotated_tokens_are_accepted_and_the_first_is_pushed(database_url: str, redis_url: str) -> None:
    new, old = "rotated-new-token-00112233", CALLBACK_TOKEN
    sim_config = SimulatorConfig(consumer_key="test-consumer-key", consumer_secret="test-consumer-secret")
    async with running_simulator(sim_config) as sim:
        sim.simulator.set_scenario(Scenario(outcome="none"), default=True)
        values = {
            **settings_kwargs(database_url, redis_url),
            "mpesa_callback_token": f"{new},{old}",
            "mpesa_base_url": sim.base_url,
        }
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=transport, base_url="http://kiota.test", event_hooks={"response": [_no_server_error]}
            ) as http,
        ):
            pushed = await http.post(
                "/api/v1/deposit/initiate", json={"amount_kes": 100, "phone": PHONE}, headers=bearer("rota")
            )
            assert pushed.status_code == 202, pushed.text
            (push,) = sim.simulator.pushes
            assert push.request["CallBackURL"].endswith(CALLBACK_PREFIX + new)
            for token in (new, old):
                answer = await http.post(CALLBACK_PREFIX + token, json=failure_body(f"ws_CO_unknown_{token}"))
                assert answer.status_code == 200, answer.text
            for token in (f"{new},{old}", new + old, "rotated-new-token-0011223"):
                answer = await http.post(CALLBACK_PREFIX + token, json=failure_body("ws_CO_wrong"))
                assert answer.status_code in (403, 404), token
        pool = await asyncpg.connect(database_url)
        try:
            kept = await pool.fetch("SELECT checkout_request_id FROM mpesa_callbacks ORDER BY id")
        finally:
            await pool.close()
        assert [r["checkout_request_id"] for r in kept] == [f"ws_CO_unknown_{new}", f"ws_CO_unknown_{old}"]


# -------------------------------------------------------------------------- webhook: bugs found and fixed


async def _expect_kept(
    system: MpesaSystem, http: httpx.AsyncClient, cases: list[tuple[str, bytes]], statuses: tuple[int, ...]
) -> None:
    """Each body is answered with one of `statuses` (never 5xx) and its raw bytes are kept in a row."""
    problems: list[str] = []
    for label, raw in cases:
        try:
            answer = await _post_callback(http, system, raw)
        except AssertionError as exc:  # the 5xx hook
            problems.append(f"{label}: {exc}")
            continue
        if answer.status_code not in statuses:
            problems.append(f"{label}: {answer.status_code} {answer.text}")
    rows = await callback_rows(system)
    kept = [kept_bytes(row) for row in rows]
    for label, raw in cases:
        if raw not in kept:
            problems.append(f"{label}: raw body not kept byte for byte")
    assert problems == [], "\n".join(problems)


async def test_non_utf8_bodies_are_kept_byte_for_byte(system: MpesaSystem, http: httpx.AsyncClient) -> None:
    deposit = await _pending_deposit(http, "frank", 1500)
    good = success_body(deposit["checkout_request_id"], 1500)
    latin1 = json.dumps(failure_body(deposit["checkout_request_id"]) | {"Note": "café"}, ensure_ascii=False)
    cases = [
        ("invalid UTF-8 bytes", b"\xff\xfe\xfd\x80 not utf-8"),
        ("latin-1 JSON", latin1.encode("latin-1")),
        ("valid JSON then a stray byte", _encode(good) + b"\xff"),
        ("a NUL byte", b'{"Body": \x00}'),
    ]
    await _expect_kept(system, http, cases, (400,))
    # json.loads reads UTF-16 too: refused or accepted, its bytes must be kept as sent.
    utf16 = [("UTF-16 JSON", json.dumps(failure_body("ws_CO_utf16")).encode("utf-16"))]
    await _expect_kept(system, http, utf16, (200, 400))
    assert await money_state(system) == NOTHING_CREDITED
    assert (await system.deposit("frank", deposit["deposit_id"]))["status"] == "pending"


@contextlib.asynccontextmanager
async def _api_process(database_url: str, redis_url: str, cwd: Path) -> AsyncIterator[tuple[str, list[str]]]:
    """`kiota api` as its own process (what production runs); yields its URL and, once it has stopped,
    its output in the list."""
    port = free_port()
    env = {"PATH": os.environ["PATH"], **base_env(database_url, redis_url), "PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kiota.cli",
        "api",
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    output: list[str] = []
    try:
        async with httpx.AsyncClient() as probe:
            deadline = time.monotonic() + 20
            while True:
                assert proc.returncode is None, "kiota api exited"
                try:
                    if (await probe.get(f"{url}/health", timeout=1)).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "kiota api did not start"
                await asyncio.sleep(0.1)
        yield url, output
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
        output.append(out.decode(errors="replace"))


async def test_the_api_process_never_logs_the_token(database_url: str, redis_url: str, tmp_path: Path) -> None:
    """The same promise for `kiota api` as a process: its whole output (structlog and uvicorn) is checked."""
    wrong = "wrong-token-fedcba9876543210"
    async with (
        _api_process(database_url, redis_url, tmp_path) as (url, output),
        httpx.AsyncClient(base_url=url, timeout=15, event_hooks={"response": [_no_server_error]}) as http,
    ):
        right = f"{CALLBACK_PREFIX}{CALLBACK_TOKEN}"
        assert (await http.post(right, json=failure_body("ws_CO_process"))).status_code == 200
        assert (await http.post(right, content=b"{not json")).status_code == 400
        assert (await http.post(right, content=b" " * (MAX_BODY + 1))).status_code == 413
        assert (await http.post(CALLBACK_PREFIX + wrong, json=failure_body("ws_CO_process"))).status_code == 404
    text = output[0]
    assert CALLBACK_TOKEN not in text, text
    assert wrong not in text, text
    assert text.count(REDACTED_PATH) >= 4, text


async def test_deeply_nested_json_neither_crashes_nor_500s(database_url: str, redis_url: str, tmp_path: Path) -> None:
    callback = f"{CALLBACK_PREFIX}{CALLBACK_TOKEN}"
    initiate = "/api/v1/deposit/initiate"
    groups = [  # one `kiota api` process per group: a crash ends its group only
        [
            ("initiate without a bearer: 64 KiB of [", initiate, b"[" * MAX_BODY, (400, 401, 422)),
            ("initiate without a bearer: 1 MiB of [", initiate, b"[" * 1024 * 1024, (400, 401, 413, 422)),
        ],
        [
            ("callback: 30000 nested arrays", callback, b"[" * 30000 + b"]" * 30000, (400,)),
            ("callback: 64 KiB of [", callback, b"[" * MAX_BODY, (400,)),
        ],
    ]
    problems: list[str] = []
    for group in groups:
        async with _api_process(database_url, redis_url, tmp_path) as (url, _), httpx.AsyncClient(timeout=15) as http:
            for label, path, raw, expected in group:
                try:
                    answer = await http.post(url + path, content=raw, headers={"Content-Type": "application/json"})
                except httpx.TransportError as exc:
                    problems.append(f"{label}: no answer ({type(exc).__name__}: {exc}); the API process died")
                    break
                if answer.status_code not in expected:
                    problems.append(f"{label}: {answer.status_code} {answer.text[:200]}")
            else:
                health = await http.get(f"{url}/health")
                if health.status_code != 200:
                    problems.append(f"/health after: {health.status_code}")
    assert problems == [], "\n".join(problems)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT raw_body, disposition FROM mpesa_callbacks ORDER BY id")
    finally:
        await conn.close()
    assert [(r["raw_body"].encode(), r["disposition"]) for r in rows] == [
        (raw, "malformed") for label, path, raw, _ in groups[1]
    ]


async def test_transaction_date_out_of_range_is_malformed_not_500(system: MpesaSystem, http: httpx.AsyncClient) -> None:
    deposit = await _pending_deposit(http, "gina", 1500)
    document = _variant(
        success_body(deposit["checkout_request_id"], 1500), _set_item("TransactionDate", "00010101000000")
    )
    await _expect_kept(system, http, [("year 1", _encode(document))], (400,))
    assert await money_state(system) == NOTHING_CREDITED
    assert (await system.deposit("gina", deposit["deposit_id"]))["status"] == "pending"


async def test_numbers_beyond_the_columns_are_not_500(system: MpesaSystem, http: httpx.AsyncClient) -> None:
    deposit = await _pending_deposit(http, "hana", 1500)
    cid = deposit["checkout_request_id"]
    cases = [
        ("ResultCode 2**31", _encode(failure_body(cid, 2**31))),
        ("ResultCode -2**31 - 1", _encode(failure_body(cid, -(2**31) - 1))),
        ("Amount 10**19", _encode(success_body(cid, 10**19))),
        ("Amount 1e300", _encode(success_body(cid, 1e300))),
    ]
    await _expect_kept(system, http, cases, (200, 400))
    state = await money_state(system)
    assert (state["payouts"], state["attempts"]) == (0, 0)
    assert (await system.deposit("hana", deposit["deposit_id"]))["status"] in ("pending", "failed", "needs_review")


async def test_strings_postgres_cannot_store_are_not_500(system: MpesaSystem, http: httpx.AsyncClient) -> None:
    deposit = await _pending_deposit(http, "ines", 1500)
    cid = deposit["checkout_request_id"]
    cases = [
        ("NUL in ResultDesc", _encode(_variant(failure_body(cid), _set_stk("ResultDesc", "cancelled\u0000")))),
        ("lone surrogate in ResultDesc", _encode(_variant(failure_body(cid), _set_stk("ResultDesc", "\ud800")))),
        ("NUL in CheckoutRequestID", _encode(failure_body(cid + "\u0000"))),
        ("NUL in PhoneNumber", _encode(_variant(success_body(cid, 1500), _set_item("PhoneNumber", "\u0000" * 12)))),
    ]
    await _expect_kept(system, http, cases, (200, 400))
    state = await money_state(system)
    assert (state["payouts"], state["attempts"]) == (0, 0)


async def test_short_transaction_dates_are_malformed(system: MpesaSystem, http: httpx.AsyncClient) -> None:
    deposit = await _pending_deposit(http, "jane", 1500)
    cid = deposit["checkout_request_id"]
    wrong: list[str] = []
    for value in (2019121910211, "2019121910211", "201912191021", "2019121911"):
        raw = _encode(_variant(success_body(cid, 1500), _set_item("TransactionDate", value)))
        answer = await _post_callback(http, system, raw)
        if answer.status_code != 400:
            wrong.append(f"{value!r}: {answer.status_code}")
    assert wrong == []
    assert await money_state(system) == NOTHING_CREDITED


# ------------------------------------------------------------------------------------- initiate


async def _pushes(system: MpesaSystem) -> list[JsonDict]:
    answer = await system.http.get(f"{system.simulator_url}/_sim/pushes")
    assert answer.status_code == 200
    pushes: list[JsonDict] = answer.json()["pushes"]
    return pushes


async def _refused_with_nothing_pushed(
    system: MpesaSystem, http: httpx.AsyncClient, bodies: list[tuple[str, Any]], expected: tuple[int, ...]
) -> None:
    pushes, deposits = len(await _pushes(system)), await deposit_rows(system)
    wrong: list[str] = []
    for label, body in bodies:
        kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        answer = await http.post(
            "/api/v1/deposit/initiate",
            headers={**bearer("kim"), "Content-Type": "application/json"},
            **kwargs,
        )
        if answer.status_code not in expected:
            wrong.append(f"{label}: {answer.status_code} {answer.text}")
    assert wrong == [], "\n".join(wrong)
    assert len(await _pushes(system)) == pushes
    assert await deposit_rows(system) == deposits
    assert await money_state(system) == NOTHING_CREDITED


async def test_bad_amounts_are_422_and_push_nothing(system: MpesaSystem, http: httpx.AsyncClient) -> None:
    minimum = system.settings.mpesa_min_kes
    assert minimum == 10
    bodies: list[tuple[str, Any]] = [
        ("float 1500.0", {"amount_kes": 1500.0, "phone": PHONE}),
        ("fractional 1500.5", {"amount_kes": 1500.5, "phone": PHONE}),
        ("string '1500'", {"amount_kes": "1500", "phone": PHONE}),
        ("string '1,500'", {"amount_kes": "1,500", "phone": PHONE}),
        ("negative", {"amount_kes": -1500, "phone": PHONE}),
        ("zero", {"amount_kes": 0, "phone": PHONE}),
        ("below the minimum", {"amount_kes": minimum - 1, "phone": PHONE}),
        ("above 250000", {"amount_kes": 250_001, "phone": PHONE}),
        ("far above", {"amount_kes": 10**30, "phone": PHONE}),
        ("true", {"amount_kes": True, "phone": PHONE}),
        ("false", {"amount_kes": False, "phone": PHONE}),
        ("null", {"amount_kes": None, "phone": PHONE}),
        ("missing", {"phone": PHONE}),
        ("a list", {"amount_kes": [1500], "phone": PHONE}),
        ("an object", {"amount_kes": {"KES": 1500}, "phone": PHONE}),
        ("exponent 1.5e3", b'{"amount_kes": 1.5e3, "phone": "254708374149"}'),
        ("extra unknown field", {"amount_kes": 1500, "phone": PHONE, "currency": "KES"}),
        ("extra user_id", {"amount_kes": 1500, "phone": PHONE, "user_id": "someone-else"}),
        ("empty object", {}),
        ("JSON array", [1500, PHONE]),
        ("JSON null", None),
    ]
    await _refused_with_nothing_pushed(system, http, bodies, (422,))


async def test_bodies_that_are_not_json_are_refused(system: MpesaSystem, http: httpx.AsyncClient) -> None:
    bodies: list[tuple[str, Any]] = [
        ("empty", b""),
        ("form-encoded", b"amount_kes=1500&phone=254708374149"),
        ("truncated", b'{"amount_kes": 1500, "phone": "2547083'),
        ("invalid UTF-8", b'{"amount_kes": 1500, "phone": "\xff\xfe"}'),
        ("deeply nested", b"[" * 30000 + b"]" * 30000),
    ]
    await _refused_with_nothing_pushed(system, http, bodies, (400, 422))


GOOD_PHONES = [
    ("254708374149", "254708374149"),
    ("254110374149", "254110374149"),
    ("0708374149", "254708374149"),
    ("0110374149", "254110374149"),
    ("+254708374149", "254708374149"),
    ("+254110374149", "254110374149"),
]


async def test_every_documented_phone_form_is_pushed_as_254(system: MpesaSystem, http: httpx.AsyncClient) -> None:
    deposit_ids = []
    # One user per push: a user may have at most 3 deposits pending at once.
    for n, (written, _normalised) in enumerate(GOOD_PHONES):
        answer = await http.post(
            "/api/v1/deposit/initiate", json={"amount_kes": 100, "phone": written}, headers=bearer(f"lena-{n}")
        )
        assert answer.status_code == 202, (written, answer.text)
        deposit_ids.append(answer.json()["deposit_id"])
    for amount in (system.settings.mpesa_min_kes, 250_000):  # the bounds themselves are accepted
        answer = await http.post(
            "/api/v1/deposit/initiate", json={"amount_kes": amount, "phone": PHONE}, headers=bearer(f"lena-{amount}")
        )
        assert answer.status_code == 202, (amount, answer.text)
    pushes = await _pushes(system)
    assert len(pushes) == len(GOOD_PHONES) + 2
    for (written, normalised), push in zip(GOOD_PHONES, pushes, strict=False):
        assert push["accepted"], push
        assert push["request"]["PartyA"] == normalised, written
        assert push["request"]["PhoneNumber"] == normalised, written
    assert [push["request"]["Amount"] for push in pushes] == [100] * len(GOOD_PHONES) + [10, 250_000]
    masked = await system.pool.fetch("SELECT phone_masked FROM deposits ORDER BY created_at")
    assert [r["phone_masked"] for r in masked][: len(GOOD_PHONES)] == [n[:4] + "****" + n[-4:] for _, n in GOOD_PHONES]
    assert await money_state(system) == NOTHING_CREDITED


BAD_PHONES: list[tuple[str, Any]] = [
    ("2547 with 7 digits", "25470837414"),
    ("2547 with 9 digits", "2547083741490"),
    ("07 with 7 digits", "070837414"),
    ("07 with 9 digits", "07083741490"),
    ("landline 02…", "0208374149"),
    ("landline 2542…", "254208374149"),
    ("spaces", "254 708 374 149"),
    ("+254 and a space", "+254 708374149"),
    ("dashes", "0708-374-149"),
    ("a letter", "07O8374149"),
    ("words", "my phone"),
    ("+1 number", "+14155552671"),
    ("+254 then 0", "+2540708374149"),
    ("Tanzania 255…", "255708374149"),
    ("+255…", "+255708374149"),
    ("no prefix", "708374149"),
    ("00254…", "00254708374149"),
    ("leading space", " 254708374149"),
    ("Arabic-Indic digits", "٠٧٠٨٣٧٤١٤٩"),
    ("fullwidth digits", "０７０８３７４１４９"),
    ("empty", ""),
    ("a number, not a string", 254708374149),
    ("null", None),
    ("a list", [PHONE]),
    ("very long", "2547" + "0" * 5000),
]


async def test_wrong_phones_are_422_and_push_nothing(system: MpesaSystem, http: httpx.AsyncClient) -> None:
    bodies = [(label, {"amount_kes": 1500, "phone": phone}) for label, phone in BAD_PHONES]
    bodies.append(("phone missing", {"amount_kes": 1500}))
    await _refused_with_nothing_pushed(system, http, bodies, (422,))


async def test_a_phone_with_a_trailing_newline_is_422(system: MpesaSystem, http: httpx.AsyncClient) -> None:
    bodies = [(repr(p), {"amount_kes": 1500, "phone": p}) for p in ("254708374149\n", "0708374149\n")]
    await _refused_with_nothing_pushed(system, http, bodies, (422,))


async def test_non_finite_amounts_are_422(system: MpesaSystem, http: httpx.AsyncClient) -> None:
    bodies: list[tuple[str, Any]] = [
        (label, b'{"amount_kes": ' + literal + b', "phone": "254708374149"}')
        for label, literal in (("NaN", b"NaN"), ("Infinity", b"Infinity"), ("-Infinity", b"-Infinity"))
    ]
    await _refused_with_nothing_pushed(system, http, bodies, (422,))


def _token(claims: JsonDict, secret: str = JWT_SECRET, algorithm: str = "HS256") -> str:
    with warnings.catch_warnings():  # HS512 with the (short) test secret: PyJWT warns about the key length
        warnings.simplefilter("ignore")
        return jwt.encode(claims, secret, algorithm=algorithm)


async def test_missing_or_invalid_bearer_is_401(system: MpesaSystem, http: httpx.AsyncClient) -> None:
    now = int(time.time())
    valid = bearer("mona")["Authorization"].removeprefix("Bearer ")
    header, payload, _ = valid.split(".")
    authorizations: list[tuple[str, str | None]] = [
        ("no header", None),
        ("empty", ""),
        ("scheme only", "Bearer"),
        ("garbage", "Bearer not-a-jwt"),
        ("Basic", "Basic bW9uYTpwYXNzd29yZA=="),
        ("token without scheme", valid),
        ("other scheme", f"Token {valid}"),
        ("wrong secret", "Bearer " + _token({"sub": "mona", "exp": now + 600}, "another-secret-that-is-long-enough!")),
        ("expired", "Bearer " + _token({"sub": "mona", "exp": now - 60})),
        ("no exp", "Bearer " + _token({"sub": "mona"})),
        ("no sub", "Bearer " + _token({"exp": now + 600})),
        ("sub not a string", "Bearer " + _token({"sub": 42, "exp": now + 600})),
        ("empty sub", "Bearer " + _token({"sub": "", "exp": now + 600})),
        ("HS512", "Bearer " + _token({"sub": "mona", "exp": now + 600}, algorithm="HS512")),
        ("alg none", "Bearer " + jwt.encode({"sub": "mona", "exp": now + 600}, None, algorithm="none")),
        ("tampered payload", f"Bearer {header}.{payload}x.{valid.split('.')[2]}"),
        ("signature stripped", f"Bearer {header}.{payload}."),
    ]
    users_before = await system.pool.fetchval("SELECT count(*) FROM users")
    pushes = len(await _pushes(system))
    wrong: list[str] = []
    for label, value in authorizations:
        headers = {} if value is None else {"Authorization": value}
        for method, path, body in (
            ("POST", "/api/v1/deposit/initiate", {"amount_kes": 1500, "phone": PHONE}),
            ("GET", "/api/v1/deposits", None),
            ("GET", "/api/v1/deposits/00000000-0000-0000-0000-000000000000", None),
        ):
            answer = await http.request(method, path, json=body, headers=headers)
            if answer.status_code != 401:
                wrong.append(f"{label} {method} {path}: {answer.status_code} {answer.text}")
    assert wrong == [], "\n".join(wrong)
    assert await system.pool.fetchval("SELECT count(*) FROM users") == users_before
    assert len(await _pushes(system)) == pushes
    assert await deposit_rows(system) == []


async def test_a_subject_postgres_cannot_store_is_401(system: MpesaSystem, http: httpx.AsyncClient) -> None:
    token = _token({"sub": "mona\u0000", "exp": int(time.time()) + 600})
    answer = await http.get("/api/v1/deposits", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401


# ------------------------------------------------------------------------------------- reads


async def test_malformed_deposit_ids_are_404(system: MpesaSystem, http: httpx.AsyncClient) -> None:
    mine = await _pending_deposit(http, "nora", 1500)
    ids = [
        "not-a-uuid",
        "1",
        "0",
        "-1",
        "null",
        "undefined",
        "' OR '1'='1",
        "1;DROP TABLE deposits",
        "%00",
        "%C3%A9",
        "%20",
        "x" * 5000,
        mine["deposit_id"] + "0",
        mine["deposit_id"][:-1],
        mine["deposit_id"] + "%00",
        mine["deposit_id"].replace("-", "_"),
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "{" + "12345678-1234-5678-1234-567812345678" + "}",
        "urn:uuid:12345678-1234-5678-1234-567812345678",
        mine["checkout_request_id"],
    ]
    wrong: list[str] = []
    for deposit_id in ids:
        for user in ("nora", "omar"):
            answer = await http.get(f"/api/v1/deposits/{deposit_id}", headers=bearer(user))
            if answer.status_code != 404:
                wrong.append(f"{user} {deposit_id[:60]!r}: {answer.status_code} {answer.text[:200]}")
    # Another user's real deposit is "not found" too.
    answer = await http.get(f"/api/v1/deposits/{mine['deposit_id']}", headers=bearer("omar"))
    if answer.status_code != 404:
        wrong.append(f"another user's deposit: {answer.status_code}")
    assert wrong == [], "\n".join(wrong)
    for query in ("limit=abc", "limit=-5", "limit=0", "limit=99999999999999999999999", "limit=1.5"):
        answer = await http.get(f"/api/v1/deposits?{query}", headers=bearer("nora"))
        assert answer.status_code in (200, 422), (query, answer.status_code)
    assert (await system.deposit("nora", mine["deposit_id"]))["status"] == "pending"
