"""A Daraja (Safaricom M-Pesa Express, "STK push") simulator for tests and `kiota dev`.

It speaks Daraja's wire shapes so that the real client code runs unchanged against it:

- `GET  /oauth/v1/generate?grant_type=client_credentials` (HTTP Basic key:secret) → a bearer token.
  Issuing a token voids the previous one, as Daraja does.
- `POST /mpesa/stkpush/v1/processrequest` → the push is validated and accepted or refused; an accepted
  push is resolved after a delay and its callback POSTed to its CallBackURL from a background task.
- `POST /mpesa/stkpushquery/v1/query` → pending (HTTP 500, 500.001.1001) until resolved, then the result.

What happens to each push is a *scenario*, set per request (the next push, or an accepted push by its
CheckoutRequestID), per phone number, or as the default; for each field the most specific wins. The
control API lives under `/_sim/` (JSON) and mirrors the `DarajaSimulator` methods, which in-process tests
may call directly (`simulator_of(app)`):

    POST /_sim/scenarios   {"phone": "254708374149", "outcome": 1032, "delay_seconds": 0.1}
                           {"next": true, "push_error": {"errorCode": "500.003.02", "times": 2}}
                           {"checkout_request_id": "ws_CO_…", "outcome": "success", "duplicates": 2}
                           {"default": true, "outcome": "none"}
    GET  /_sim/scenarios   the scenarios in force
    GET  /_sim/pushes      every push received (accepted or refused), its callbacks and their answers
    GET  /_sim/pushes/{checkout_request_id}
    POST /_sim/callbacks/{checkout_request_id}/send   {} or {"outcome": 0|<code>, "amount_override": 900}
    POST /_sim/pushes/seed {"checkout_request_id": "ws_CO_…", "amount": 1295, "outcome": 0}: a push accepted
                           earlier and already resolved (no callback is sent): benchmarks that deliver their
                           own callbacks make the STK query know their pushes this way
    POST /_sim/tokens/void
    POST /_sim/reset       forget pushes and scenarios, cancel pending callbacks (the token survives)

Scenario fields (all optional; `null` = inherit from the less specific level):
  outcome              "success" (or 0) | a result code such as 1032 | "none" (never resolved, no callback)
  delay_seconds        from acceptance to resolution and callback (default: SimulatorConfig)
  duplicates           the same callback sent N extra times
  contradict_with      a second, contradicting callback ("success" or a code) after the first
  amount_override      the success callback reports this Amount instead of the pushed one
  lose_callback        resolved (the query shows it) but the callback is never delivered
  query_pending_seconds  after the resolution (and its callback), the STK query still answers "being
                       processed" for this long, as Daraja's may right after a callback; then the result
  push_error           {"errorCode", "errorMessage"?, "http_status"?, "times"?}: the push itself is refused,
                       `times` pushes in a row (every push when absent), then pushes are accepted again
  push_delay_seconds   the push answer is slow; the push is already accepted and its callback scheduled
                       while the client waits, so a client that times out must not assume it failed

Three modules: `kiota.dev.daraja_sim_validation` (what a request must look like: Daraja's checks),
`kiota.dev.daraja_sim_behaviour` (`DarajaSimulator`, its scenarios, pushes, callbacks and queries) and this
one, the HTTP app that serves them (Daraja's routes and the control API).

Running it: `create_simulator(config)` is the ASGI app (tests: httpx.ASGITransport, entering
`app.router.lifespan_context(app)` themselves); `running_simulator(config, host, port)` serves it on a real
port for a block; `serve_simulator(config, host, port, on_ready=...)` serves until cancelled (`kiota dev`:
run it as a task, point MPESA_BASE_URL at the URL `on_ready` receives, cancel it to stop).

Decisions where Daraja is loose or undocumented (so that a client passing here is safe there):
- `expires_in` is sent as the string "3599" (Daraja's docs show a number, the live API has sent strings).
- Amount must be a JSON integer or a string of digits, 1..250000; 1500.0, "1500.00" and 1.5 are refused.
- BusinessShortCode, PartyA, PartyB, PhoneNumber and Timestamp may be JSON numbers or strings.
- A well-formed but unknown BusinessShortCode or a wrong Password is refused with 500.001.1001, as the
  Daraja docs list them ("Merchant does not exist", "Wrong credentials"), not with 400.002.02.
- The Timestamp must be Nairobi time (UTC+3) within `timestamp_tolerance_seconds` of now, else
  "Bad Request - Invalid Timestamp": this catches clients that stamp UTC.
- A query for an unknown CheckoutRequestID answers 400 "Bad Request - Invalid CheckoutRequestID".
- The query reports the *first* resolution of a push; later contradicting callbacks do not change it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from kiota.dev.daraja_sim_behaviour import (
    DarajaSimulator,
    PushError,
    Scenario,
    SimulatorConfig,
    UnknownPushError,
)
from kiota.dev.daraja_sim_validation import MAX_AMOUNT, DarajaRefusal, JsonObject
from kiota.dev.serving import serve_in_background

__all__ = [
    "RunningSimulator",
    "create_simulator",
    "running_simulator",
    "serve_simulator",
    "simulator_of",
]

# -------------------------------------------------------------------------------------- control API


class PushErrorIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    error_code: str = Field(default="500.001.1001", alias="errorCode")
    error_message: str | None = Field(default=None, alias="errorMessage")
    http_status: int | None = Field(default=None, ge=400, le=599)
    times: int | None = Field(default=None, ge=1)


class ScenarioIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phone: str | None = None
    checkout_request_id: str | None = None
    next: bool = False
    default: bool = False
    outcome: int | Literal["success", "none"] | None = None
    delay_seconds: float | None = Field(default=None, ge=0)
    duplicates: int | None = Field(default=None, ge=0, le=100)
    contradict_with: int | Literal["success"] | None = None
    amount_override: int | None = Field(default=None, ge=0)
    lose_callback: bool | None = None
    push_error: PushErrorIn | None = None
    push_delay_seconds: float | None = Field(default=None, ge=0)
    query_pending_seconds: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def one_target(self) -> ScenarioIn:
        targets = [self.phone is not None, self.checkout_request_id is not None, self.next, self.default]
        if sum(targets) != 1:
            raise ValueError("give exactly one of phone, checkout_request_id, next: true, default: true")
        return self

    def scenario(self) -> Scenario:
        push_error = None
        if self.push_error is not None:
            push_error = PushError(
                error_code=self.push_error.error_code,
                error_message=self.push_error.error_message,
                http_status=self.push_error.http_status,
                times=self.push_error.times,
            )
        return Scenario(
            outcome="success" if self.outcome == 0 else self.outcome,
            delay_seconds=self.delay_seconds,
            duplicates=self.duplicates,
            contradict_with=self.contradict_with,
            amount_override=self.amount_override,
            lose_callback=self.lose_callback,
            push_error=push_error,
            push_delay_seconds=self.push_delay_seconds,
            query_pending_seconds=self.query_pending_seconds,
        )


class SeedPushIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkout_request_id: str = Field(min_length=1, max_length=64)
    amount: int = Field(ge=1, le=MAX_AMOUNT)
    phone: str = "254708374149"
    outcome: int = 0


class SendCallbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: int | Literal["success"] | None = None
    amount_override: int | None = Field(default=None, ge=0)


# ----------------------------------------------------------------------------------------------- app


def simulator_of(app: FastAPI) -> DarajaSimulator:
    """The state object behind an app made by `create_simulator`."""
    simulator = app.state.simulator
    assert isinstance(simulator, DarajaSimulator)
    return simulator


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:  # malformed JSON or bad encoding: Daraja's "Invalid Request Payload"
        return None


def create_simulator(config: SimulatorConfig) -> FastAPI:
    """The Daraja simulator as an ASGI app; its state is `simulator_of(app)`."""
    simulator = DarajaSimulator(config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await simulator.aclose()  # cancels callbacks still waiting, closes the HTTP client

    app = FastAPI(title="Daraja simulator (Kiota)", lifespan=lifespan)
    app.state.simulator = simulator

    @app.exception_handler(StarletteHTTPException)
    async def daraja_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Unknown paths and wrong methods on Daraja's side answer in Daraja's error shape.
        if request.url.path.startswith("/_sim"):
            return await http_exception_handler(request, exc)
        if exc.status_code == 405:
            refusal = DarajaRefusal(405, "405.001", "Method Not Allowed")
        else:
            refusal = DarajaRefusal(404, "404.001.01", "Resource not found")
        return JSONResponse(refusal.body, status_code=refusal.http_status)

    @app.get("/oauth/v1/generate")
    async def generate_token(request: Request) -> JSONResponse:
        status, body = simulator.oauth(request.headers.get("authorization"), request.query_params.get("grant_type"))
        return JSONResponse(body, status_code=status)

    @app.post("/mpesa/stkpush/v1/processrequest")
    async def process_request(request: Request) -> JSONResponse:
        refusal = simulator.check_bearer(request.headers.get("authorization"))
        if refusal is not None:
            return JSONResponse(refusal.body, status_code=refusal.http_status)
        status, body = await simulator.stk_push(await _json_body(request))
        return JSONResponse(body, status_code=status)

    @app.post("/mpesa/stkpushquery/v1/query")
    async def query(request: Request) -> JSONResponse:
        refusal = simulator.check_bearer(request.headers.get("authorization"))
        if refusal is not None:
            return JSONResponse(refusal.body, status_code=refusal.http_status)
        status, body = simulator.stk_query(await _json_body(request))
        return JSONResponse(body, status_code=status)

    _add_control_routes(app, simulator)
    return app


def _add_control_routes(app: FastAPI, simulator: DarajaSimulator) -> None:
    @app.post("/_sim/scenarios")
    async def set_scenario(spec: ScenarioIn) -> JsonObject:
        scenario = spec.scenario()
        try:
            simulator.set_scenario(
                scenario,
                phone=spec.phone,
                checkout_request_id=spec.checkout_request_id,
                next_push=spec.next,
                default=spec.default,
            )
        except UnknownPushError:
            raise HTTPException(404, f"no accepted push {spec.checkout_request_id}") from None
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        return {"scenario": asdict(scenario)}

    @app.get("/_sim/scenarios")
    async def get_scenarios() -> JsonObject:
        return simulator.scenarios()

    _add_push_routes(app, simulator)

    @app.post("/_sim/tokens/void")
    async def void_token() -> JsonObject:
        simulator.void_token()
        return {"voided": True}

    @app.post("/_sim/reset")
    async def reset() -> JsonObject:
        await simulator.reset()
        return {"reset": True}


def _add_push_routes(app: FastAPI, simulator: DarajaSimulator) -> None:
    @app.get("/_sim/pushes")
    async def list_pushes() -> JsonObject:
        return {"pushes": [push.to_json() for push in simulator.pushes]}

    @app.get("/_sim/pushes/{checkout_request_id}")
    async def get_push(checkout_request_id: str) -> JsonObject:
        try:
            return simulator.get_push(checkout_request_id).to_json()
        except UnknownPushError:
            raise HTTPException(404, f"no accepted push {checkout_request_id}") from None

    @app.post("/_sim/pushes/seed")
    async def seed_push(spec: SeedPushIn) -> JsonObject:
        try:
            record = simulator.seed_push(spec.checkout_request_id, spec.amount, spec.phone, spec.outcome)
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        return record.to_json()

    @app.post("/_sim/callbacks/{checkout_request_id}/send")
    async def send_callback(checkout_request_id: str, spec: SendCallbackIn | None = None) -> JsonObject:
        spec = spec or SendCallbackIn()
        try:
            attempt = await simulator.send_callback(checkout_request_id, spec.outcome, spec.amount_override)
        except UnknownPushError:
            raise HTTPException(404, f"no accepted push {checkout_request_id}") from None
        return asdict(attempt)


@dataclass(frozen=True)
class RunningSimulator:
    base_url: str
    simulator: DarajaSimulator
    app: FastAPI


@contextlib.asynccontextmanager
async def running_simulator(
    config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSimulator]:
    """A simulator on a real port for the duration of the block (tests of the whole service)."""
    app = create_simulator(config)
    async with serve_in_background(app, host, port) as base_url:
        yield RunningSimulator(base_url=base_url, simulator=simulator_of(app), app=app)


async def serve_simulator(
    config: SimulatorConfig,
    host: str = "127.0.0.1",
    port: int = 8089,
    on_ready: Callable[[RunningSimulator], None] | None = None,
) -> None:
    """Serve the simulator until the calling task is cancelled (what `kiota dev` runs).

    `on_ready` gets the base URL (for MPESA_BASE_URL) once the port is bound. Cancellation shuts down
    gracefully: pending callbacks are cancelled and the HTTP client closed.
    """
    async with running_simulator(config, host, port) as running:
        if on_ready is not None:
            on_ready(running)
        await asyncio.Event().wait()
