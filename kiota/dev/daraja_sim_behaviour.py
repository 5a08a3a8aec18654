"""The simulated Daraja itself: scenarios, pushes, their callbacks and the STK query.

`DarajaSimulator` holds the state of one simulated Daraja app (its token, the pushes it received, the
scenarios in force) and does what Daraja does with a request that passed `kiota.dev.daraja_sim_validation`:
accepts or refuses a push, resolves it after a delay, POSTs its callbacks, answers the query. It knows no
HTTP framework; `kiota.dev.daraja_sim` serves it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import secrets
import string
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias, TypeVar

import httpx

from kiota.dev.daraja_sim_validation import (
    SANDBOX_PASSKEY,
    SANDBOX_SHORTCODE,
    DarajaRefusal,
    JsonObject,
    Validator,
    ValidPush,
    invalid_token,
    random_chars,
    request_id,
)
from kiota.mpesa import NAIROBI

T = TypeVar("T")

# ResultDesc texts from the "Result codes" table of Daraja's M-Pesa Express page
# (developer.safaricom.co.ke/apis/MpesaExpressSimulate, Daraja 3.0). 1032 keeps the form of that page's
# sample callback payload ("Request cancelled by user", no full stop). 1001 is listed there among the push
# errors; 1031 is not documented at all and borrows 1032's text.
RESULT_DESCRIPTIONS: Final[dict[int, str]] = {
    0: "The service request is processed successfully.",
    1: "The balance is insufficient for the transaction.",
    2: "Declined due to limit rule.",
    3: "Declined due to limit rule: greater than the maximum transaction amount.",
    4: "Declined due to limit rule: would exceed daily transfer limit.",
    8: "Declined due to limit rule: would exceed the maximum balance.",
    17: "Rule limited.",
    1001: "Unable to lock subscriber, a transaction is already in process for the current subscriber.",
    1019: "Transaction has expired.",
    1025: "An error occurred while sending a push request.",
    1031: "Request cancelled by user",
    1032: "Request cancelled by user",
    1037: "DS timeout user cannot be reached.",
    2001: "The initiator information is invalid.",
    2028: "The request is not permitted according to product assignment.",
    8006: "The security credential is locked.",
}

# errorMessage texts of the push refusals in the same page's "Error Codes" table.
PUSH_ERROR_MESSAGES: Final[dict[str, str]] = {
    "500.001.1001": ("Unable to lock subscriber, a transaction is already in process for the current subscriber"),
    "500.003.02": "System is busy. Please try again in few minutes.",
    "500.003.03": "Quota Violation",
    "500.003.1001": "Internal Server Error",
}

ACCEPTED_DESCRIPTION: Final = "Success. Request accepted for processing"
# Sic: the live query answers with this misspelling (seen in many public client fixtures); the docs page
# spells it correctly. We send what the wire carries.
QUERY_ACCEPTED_DESCRIPTION: Final = "The service request has been accepted successsfully"
PENDING_MESSAGE: Final = "The transaction is being processed"
# The other way "still pending" has been reported on the query: a 200 with ResultCode "4999". Unconfirmed
# in Safaricom's own docs; available through SimulatorConfig.pending_query_style.
PENDING_4999_DESCRIPTION: Final = "The transaction is still under processing"

PushOutcome: TypeAlias = int | Literal["success", "none"]  # how a scenario resolves a push: a ResultCode or these
CallbackKind: TypeAlias = Literal["scheduled", "duplicate", "contradiction", "manual"]


# --------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulated Daraja behaves; the credentials are the ones the client must present."""

    consumer_key: str
    consumer_secret: str
    shortcode: str = SANDBOX_SHORTCODE
    passkey: str = SANDBOX_PASSKEY
    callback_delay_seconds: float = 1.0
    token_lifetime_seconds: int = 3599
    timestamp_tolerance_seconds: float = 300.0
    # "error": HTTP 500 500.001.1001 while pending; "result_code_4999": HTTP 200 with ResultCode "4999".
    pending_query_style: Literal["error", "result_code_4999"] = "error"
    # The sandbox has sent {"Name": "Balance"} without a Value inside the success metadata.
    include_balance_item: bool = True
    # Production-only strictness, off by default so that `kiota dev` can use http://127.0.0.1 callbacks.
    require_https_callback: bool = False
    reject_reserved_callback_words: bool = False
    callback_timeout_seconds: float = 10.0


# ------------------------------------------------------------------------------------------ scenarios


@dataclass
class PushError:
    """The push itself is refused with Daraja's error shape."""

    error_code: str = "500.001.1001"
    error_message: str | None = None  # None: Daraja's text for the code
    http_status: int | None = None  # None: the code's first three digits
    times: int | None = None  # None: every push; n: the next n pushes, then pushes are accepted


@dataclass
class Scenario:
    """One level of scenario (request, phone or default); None means "inherit"."""

    outcome: PushOutcome | None = None
    delay_seconds: float | None = None
    duplicates: int | None = None
    contradict_with: int | Literal["success"] | None = None
    amount_override: int | None = None
    lose_callback: bool | None = None
    push_error: PushError | None = None
    push_delay_seconds: float | None = None
    query_pending_seconds: float | None = None


@dataclass(frozen=True)
class CallbackPlan:
    """What the simulator does with one accepted push, all levels merged."""

    outcome: PushOutcome
    delay_seconds: float
    duplicates: int
    contradict_with: int | Literal["success"] | None
    amount_override: int | None
    lose_callback: bool
    query_pending_seconds: float = 0.0


# ------------------------------------------------------------------------------------------- records


@dataclass
class CallbackAttempt:
    kind: CallbackKind
    body: JsonObject
    sent_at: str
    status_code: int | None = None
    response_body: str | None = None
    error: str | None = None  # set when the callback could not be delivered at all


@dataclass
class PushRecord:
    """One call to processrequest that presented a valid token, whatever its answer."""

    received_at: str
    request: Any
    http_status: int
    response: JsonObject
    merchant_request_id: str | None = None
    checkout_request_id: str | None = None
    phone: str | None = None
    amount: int | None = None
    callback_url: str | None = None
    plan: CallbackPlan | None = None
    result_code: int | None = None
    result_desc: str | None = None
    mpesa_receipt: str | None = None
    transaction_date: int | None = None
    resolved_at: str | None = None
    query_pending_until: float | None = None  # time.monotonic(): the query says "being processed" until then
    callback_body: JsonObject | None = None  # the callback of the first resolution, resent as is
    callbacks: list[CallbackAttempt] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.checkout_request_id is not None

    def to_json(self) -> JsonObject:
        data = asdict(self)
        data["accepted"] = self.accepted
        return data


class UnknownPushError(LookupError):
    """No accepted push has this CheckoutRequestID."""


def _utc_iso() -> str:
    return datetime.now(UTC).isoformat()


def _first(values: Iterable[T | None], default: T) -> T:
    return next((value for value in values if value is not None), default)


def _code_of(outcome: int | Literal["success"]) -> int:
    return 0 if outcome == "success" else int(outcome)


def result_description(code: int) -> str:
    return RESULT_DESCRIPTIONS.get(code, f"Simulated failure {code}.")


# ----------------------------------------------------------------------------------------- simulator


class DarajaSimulator:
    """The simulator's state and behaviour; the FastAPI app is a thin shell around it."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._validator = Validator(config)
        self._token: str | None = None
        self._token_expires_at = 0.0
        self._pushes: list[PushRecord] = []
        self._by_checkout: dict[str, PushRecord] = {}
        self._default = Scenario()
        self._by_phone: dict[str, Scenario] = {}
        self._next: deque[Scenario] = deque()
        self._request_layers: dict[str, Scenario] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._receipts: set[str] = set()
        self._http: httpx.AsyncClient | None = None
        self._callback_recorded = asyncio.Event()

    # ---- tokens

    def issue_token(self) -> str:
        """A new token; the previous one stops working at once, as on Daraja."""
        self._token = random_chars(string.ascii_letters + string.digits, 28)
        self._token_expires_at = time.monotonic() + self.config.token_lifetime_seconds
        return self._token

    def void_token(self) -> None:
        self._token = None

    def token_is_valid(self, token: str) -> bool:
        current = self._token
        if current is None or time.monotonic() >= self._token_expires_at:
            return False
        return secrets.compare_digest(token.encode(), current.encode())

    def oauth(self, authorization: str | None, grant_type: str | None) -> tuple[int, JsonObject]:
        # Codes and texts: the error table of Daraja's Authorization page (400.008.01 / 400.008.02);
        # "Invalid Authentication passed" for wrong credentials is what public Daraja clients observe
        # under 400.008.01. Newer gateway builds have also answered {"resultCode": "999991", ...}.
        scheme, _, encoded = (authorization or "").partition(" ")
        if scheme.lower() != "basic" or not encoded:
            refusal = DarajaRefusal(400, "400.008.01", "Invalid authentication type passed")
        elif grant_type != "client_credentials":
            refusal = DarajaRefusal(400, "400.008.02", "Invalid grant type passed")
        elif not self._credentials_match(encoded.strip()):
            refusal = DarajaRefusal(400, "400.008.01", "Invalid Authentication passed")
        else:
            token = self.issue_token()
            return 200, {"access_token": token, "expires_in": str(self.config.token_lifetime_seconds)}
        return refusal.http_status, refusal.body

    def _credentials_match(self, encoded: str) -> bool:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        key, sep, secret = decoded.partition(":")
        expected_key, expected_secret = self.config.consumer_key, self.config.consumer_secret
        key_ok = secrets.compare_digest(key.encode(), expected_key.encode())
        secret_ok = secrets.compare_digest(secret.encode(), expected_secret.encode())
        return bool(sep) and key_ok and secret_ok

    def check_bearer(self, authorization: str | None) -> DarajaRefusal | None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not self.token_is_valid(token.strip()):
            return invalid_token()
        return None

    # ---- scenarios

    def set_scenario(
        self,
        scenario: Scenario,
        *,
        phone: str | None = None,
        checkout_request_id: str | None = None,
        next_push: bool = False,
        default: bool = False,
    ) -> None:
        """Install a scenario at exactly one level.

        `next_push` queues it for the next accepted push (FIFO; a push refused by its push_error leaves
        it queued). `checkout_request_id` amends an accepted, unresolved push and restarts its delay.
        """
        targets = [phone is not None, checkout_request_id is not None, next_push, default]
        if sum(targets) != 1:
            raise ValueError("give exactly one of phone, checkout_request_id, next_push, default")
        scenario = copy.deepcopy(scenario)  # push_error.times is counted down in place
        if phone is not None:
            self._by_phone[phone] = scenario
        elif next_push:
            self._next.append(scenario)
        elif default:
            self._default = scenario
        elif checkout_request_id is not None:
            self._amend_push(checkout_request_id, scenario)

    def _amend_push(self, checkout_request_id: str, scenario: Scenario) -> None:
        record = self._accepted(checkout_request_id)
        if scenario.push_error is not None or scenario.push_delay_seconds is not None:
            raise ValueError("push_error and push_delay_seconds cannot apply to an accepted push")
        if record.result_code is not None:
            raise ValueError(f"{checkout_request_id} is already resolved")
        layer = self._request_layers.get(checkout_request_id, Scenario())
        for name, value in asdict(scenario).items():
            if value is not None:
                setattr(layer, name, value)
        self._request_layers[checkout_request_id] = layer
        record.plan = self._plan((layer, *self._shared_layers(record.phone or "")))
        self._cancel_task(checkout_request_id)
        self._schedule(record)

    def scenarios(self) -> JsonObject:
        return {
            "default": asdict(self._default),
            "phones": {phone: asdict(scenario) for phone, scenario in self._by_phone.items()},
            "next": [asdict(scenario) for scenario in self._next],
            "requests": {cid: asdict(scenario) for cid, scenario in self._request_layers.items()},
        }

    def _shared_layers(self, phone: str) -> tuple[Scenario, Scenario]:
        return self._by_phone.get(phone, Scenario()), self._default

    def _plan(self, layers: tuple[Scenario, ...]) -> CallbackPlan:
        return CallbackPlan(
            outcome=_first((layer.outcome for layer in layers), "success"),
            delay_seconds=_first((layer.delay_seconds for layer in layers), self.config.callback_delay_seconds),
            duplicates=_first((layer.duplicates for layer in layers), 0),
            contradict_with=_first((layer.contradict_with for layer in layers), None),
            amount_override=_first((layer.amount_override for layer in layers), None),
            lose_callback=_first((layer.lose_callback for layer in layers), False),
            query_pending_seconds=_first((layer.query_pending_seconds for layer in layers), 0.0),
        )

    # ---- pushes

    @property
    def pushes(self) -> list[PushRecord]:
        return list(self._pushes)

    def get_push(self, checkout_request_id: str) -> PushRecord:
        return self._accepted(checkout_request_id)

    def _accepted(self, checkout_request_id: str) -> PushRecord:
        try:
            return self._by_checkout[checkout_request_id]
        except KeyError:
            raise UnknownPushError(checkout_request_id) from None

    def seed_push(
        self, checkout_request_id: str, amount: int, phone: str = "254708374149", outcome: int = 0
    ) -> PushRecord:
        """A push accepted earlier and already resolved with `outcome`, no callback sent: the STK query
        answers for it. For benchmarks that write their own deposits and deliver their own callbacks."""
        if checkout_request_id in self._by_checkout:
            raise ValueError(f"{checkout_request_id} is known already")
        record = PushRecord(
            received_at=_utc_iso(),
            request=None,
            http_status=200,
            response={},
            merchant_request_id=request_id(),
            checkout_request_id=checkout_request_id,
            phone=phone,
            amount=amount,
            plan=self._plan((Scenario(outcome="success" if outcome == 0 else outcome, lose_callback=True),)),
        )
        self._resolve(record, outcome, None)
        self._pushes.append(record)
        self._by_checkout[checkout_request_id] = record
        return record

    async def stk_push(self, body: Any) -> tuple[int, JsonObject]:
        """Handle one authenticated processrequest body; returns (HTTP status, JSON answer)."""
        received_at = _utc_iso()
        try:
            push = self._validator.push(body)
        except DarajaRefusal as refusal:
            self._record_refusal(body, received_at, refusal)
            return refusal.http_status, refusal.body
        request_layer = self._next[0] if self._next else Scenario()
        layers = (request_layer, *self._shared_layers(push.phone))
        answer_delay = _first((layer.push_delay_seconds for layer in layers), 0.0)
        push_error = _take_push_error(layers)
        if push_error is not None:
            self._record_refusal(body, received_at, push_error)
            await asyncio.sleep(answer_delay)
            return push_error.http_status, push_error.body
        if self._next:
            self._next.popleft()
        record = self._accept(body, push, received_at, layers)
        # Accepted and scheduled before the (possibly slow) answer: on Daraja the prompt is already on
        # its way to the phone when the HTTP answer is late or lost.
        await asyncio.sleep(answer_delay)
        return record.http_status, record.response

    def _record_refusal(self, body: Any, received_at: str, refusal: DarajaRefusal) -> None:
        self._pushes.append(
            PushRecord(received_at=received_at, request=body, http_status=refusal.http_status, response=refusal.body)
        )

    def _accept(self, body: JsonObject, push: ValidPush, received_at: str, layers: tuple[Scenario, ...]) -> PushRecord:
        merchant_request_id = request_id()
        checkout_request_id = self._new_checkoutrequest_id()
        record = PushRecord(
            received_at=received_at,
            request=body,
            http_status=200,
            response={
                "MerchantRequestID": merchant_request_id,
                "CheckoutRequestID": checkout_request_id,
                "ResponseCode": "0",
                "ResponseDescription": ACCEPTED_DESCRIPTION,
                "CustomerMessage": ACCEPTED_DESCRIPTION,
            },
            merchant_request_id=merchant_request_id,
            checkout_request_id=checkout_request_id,
            phone=push.phone,
            amount=push.amount,
            callback_url=push.callback_url,
            plan=self._plan(layers),
        )
        self._pushes.append(record)
        self._by_checkout[checkout_request_id] = record
        self._request_layers[checkout_request_id] = copy.deepcopy(layers[0])
        self._schedule(record)
        return record

    def _new_checkoutrequest_id(self) -> str:
        # "ws_CO_" + DDMMYYYYHHMMSS (Nairobi) + milliseconds + digits, like ws_CO_21072024125243250722943992.
        while True:
            now = datetime.now(NAIROBI)
            candidate = f"ws_CO_{now:%d%m%Y%H%M%S}{now.microsecond // 1000:03d}{random_chars(string.digits, 9)}"
            if candidate not in self._by_checkout:
                return candidate

    def _new_receipt(self) -> str:
        # Ten characters, upper-case letters and digits, starting with a letter (e.g. NLJ7RT61SV).
        while True:
            receipt = secrets.choice(string.ascii_uppercase) + random_chars(string.ascii_uppercase + string.digits, 9)
            if receipt not in self._receipts:
                self._receipts.add(receipt)
                return receipt

    # ---- query

    def stk_query(self, body: Any) -> tuple[int, JsonObject]:
        """Handle one authenticated query body; returns (HTTP status, JSON answer)."""
        try:
            checkout_request_id = self._validator.query(body)
            record = self._by_checkout.get(checkout_request_id)
            if record is None:
                raise DarajaRefusal.bad_request("CheckoutRequestID")
        except DarajaRefusal as refusal:
            return refusal.http_status, refusal.body
        still_pending = record.result_code is None or (
            record.query_pending_until is not None and time.monotonic() < record.query_pending_until
        )
        if still_pending and self.config.pending_query_style == "error":
            pending = DarajaRefusal(500, "500.001.1001", PENDING_MESSAGE)
            return pending.http_status, pending.body
        if still_pending:
            result_code, result_desc = "4999", PENDING_4999_DESCRIPTION
        else:
            result_code, result_desc = str(record.result_code), record.result_desc or ""
        return 200, {
            "ResponseCode": "0",
            "ResponseDescription": QUERY_ACCEPTED_DESCRIPTION,
            "MerchantRequestID": record.merchant_request_id,
            "CheckoutRequestID": record.checkout_request_id,
            "ResultCode": result_code,  # a string here, a number in the callback
            "ResultDesc": result_desc,
        }

    # ---- callbacks

    def _schedule(self, record: PushRecord) -> None:
        checkout_request_id = record.checkout_request_id
        assert checkout_request_id is not None and record.plan is not None
        task = asyncio.create_task(self._play(record, record.plan), name=f"daraja-sim {checkout_request_id}")
        self._tasks[checkout_request_id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._tasks.get(checkout_request_id) is done:
                del self._tasks[checkout_request_id]

        task.add_done_callback(forget)

    def _cancel_task(self, checkout_request_id: str) -> None:
        task = self._tasks.pop(checkout_request_id, None)
        if task is not None:
            task.cancel()

    async def _play(self, record: PushRecord, plan: CallbackPlan) -> None:
        await asyncio.sleep(plan.delay_seconds)
        if plan.outcome == "none":
            return  # the customer never answers and Daraja never calls back
        body = self._resolve(record, _code_of(plan.outcome), plan.amount_override)
        if plan.lose_callback:
            return
        await self._deliver(record, body, "scheduled")
        for _ in range(plan.duplicates):
            await self._deliver(record, body, "duplicate")
        if plan.contradict_with is not None:
            contradiction = self._fresh_body(record, _code_of(plan.contradict_with), plan.amount_override)
            await self._deliver(record, contradiction, "contradiction")

    def _resolve(self, record: PushRecord, code: int, amount_override: int | None) -> JsonObject:
        body = self._fresh_body(record, code, amount_override)
        record.result_code = code
        record.result_desc = result_description(code)
        record.resolved_at = _utc_iso()
        record.callback_body = body
        if record.plan is not None and record.plan.query_pending_seconds > 0:
            record.query_pending_until = time.monotonic() + record.plan.query_pending_seconds
        if code == 0:
            metadata = body["Body"]["stkCallback"]["CallbackMetadata"]["Item"]
            values = {item["Name"]: item.get("Value") for item in metadata}
            record.mpesa_receipt = values["MpesaReceiptNumber"]
            record.transaction_date = values["TransactionDate"]
        return body

    def _fresh_body(self, record: PushRecord, code: int, amount_override: int | None) -> JsonObject:
        callback: JsonObject = {
            "MerchantRequestID": record.merchant_request_id,
            "CheckoutRequestID": record.checkout_request_id,
            "ResultCode": code,
            "ResultDesc": result_description(code),
        }
        if code == 0:
            amount = amount_override if amount_override is not None else record.amount or 0
            items: list[JsonObject] = [
                # A decimal number, as in Daraja's sample (1.00); amounts are whole shillings, so exact.
                {"Name": "Amount", "Value": float(amount)},
                {"Name": "MpesaReceiptNumber", "Value": self._new_receipt()},
            ]
            if self.config.include_balance_item:
                items.append({"Name": "Balance"})
            items.append({"Name": "TransactionDate", "Value": int(datetime.now(NAIROBI).strftime("%Y%m%d%H%M%S"))})
            items.append({"Name": "PhoneNumber", "Value": int(record.phone or "0")})
            callback["CallbackMetadata"] = {"Item": items}
        return {"Body": {"stkCallback": callback}}

    async def _deliver(self, record: PushRecord, body: JsonObject, kind: CallbackKind) -> CallbackAttempt:
        attempt = CallbackAttempt(kind=kind, body=body, sent_at=_utc_iso())
        assert record.callback_url is not None
        try:
            response = await self._client().post(record.callback_url, json=body)
        except Exception as exc:  # any delivery failure is data for the test, never a crash
            attempt.error = f"{type(exc).__name__}: {exc}"
        else:
            attempt.status_code = response.status_code
            attempt.response_body = response.text[:4096]
        record.callbacks.append(attempt)
        # Wake every waiter, then arm a fresh event for the next attempt.
        self._callback_recorded.set()
        self._callback_recorded = asyncio.Event()
        return attempt

    def _client(self) -> httpx.AsyncClient:
        # Created on first use so the simulator also works under ASGITransport, which runs no lifespan.
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.config.callback_timeout_seconds)
        return self._http

    async def send_callback(
        self,
        checkout_request_id: str,
        outcome: int | Literal["success"] | None = None,
        amount_override: int | None = None,
    ) -> CallbackAttempt:
        """Deliver a push's callback now and return what the receiver answered.

        An unresolved push is resolved with `outcome` (else its scenario's, else success) and its
        scheduled callback is cancelled. A resolved push gets its original callback again when `outcome`
        is None or equal and no amount is overridden; otherwise a new, contradicting callback (the query
        keeps reporting the first resolution).
        """
        record = self._accepted(checkout_request_id)
        plan = record.plan
        assert plan is not None
        if record.result_code is None:
            self._cancel_task(checkout_request_id)
            planned = plan.outcome if plan.outcome != "none" else "success"
            code = _code_of(outcome if outcome is not None else planned)
            override = amount_override if amount_override is not None else plan.amount_override
            body = self._resolve(record, code, override)
        else:
            requested = record.result_code if outcome is None else _code_of(outcome)
            if requested == record.result_code and amount_override is None and record.callback_body is not None:
                body = record.callback_body  # a resend: exactly the first callback, same receipt
            else:
                body = self._fresh_body(record, requested, amount_override)
        return await self._deliver(record, body, "manual")

    async def wait_for_callbacks(self, checkout_request_id: str, count: int = 1) -> list[CallbackAttempt]:
        """Wait until a push has had `count` callback attempts (delivered or failed).

        It waits for ever: bound it with `asyncio.timeout(...)`.
        """
        record = self._accepted(checkout_request_id)
        while len(record.callbacks) < count:
            await self._callback_recorded.wait()
        return list(record.callbacks)

    # ---- lifecycle

    async def reset(self) -> None:
        """Forget pushes and scenarios and cancel pending callbacks; the current token stays valid."""
        await self._cancel_all()
        self._pushes.clear()
        self._by_checkout.clear()
        self._default = Scenario()
        self._by_phone.clear()
        self._next.clear()
        self._request_layers.clear()

    async def aclose(self) -> None:
        await self._cancel_all()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _take_push_error(layers: tuple[Scenario, ...]) -> DarajaRefusal | None:
    """The most specific push_error in force, counted down; None when the push may be accepted."""
    for layer in layers:
        push_error = layer.push_error
        if push_error is None:
            continue
        if push_error.times is not None:
            push_error.times -= 1
            if push_error.times <= 0:
                layer.push_error = None
        code = push_error.error_code
        message = push_error.error_message or PUSH_ERROR_MESSAGES.get(code, "Simulated error")
        status = push_error.http_status or _status_of(code)
        return DarajaRefusal(status, code, message)
    return None


def _status_of(error_code: str) -> int:
    head = error_code.split(".", 1)[0]
    return int(head) if head.isdigit() and 400 <= int(head) <= 599 else 500
