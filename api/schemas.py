"""Response models of the app's API: what `/openapi.json` promises, in CONTRACT.md's field names.

The routers build their answers with them from the core's records and results (and the idempotent
POSTs store those answers); they declare them so that clients and schemathesis can hold every
answer to its schema. Money is never a float: USDC
are decimal strings with exactly 6 decimals, KES integers. Times are ISO 8601 strings with a
timezone, typed as strings (not datetimes) so that declaring a model never re-formats them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

UsdcAmount = Annotated[
    str,
    Field(pattern=r"^-?(0|[1-9][0-9]*)\.[0-9]{6}$", examples=["25.500000"]),
]
Rate = Annotated[str, Field(pattern=r"^(0|[1-9][0-9]*)(\.[0-9]+)?$", examples=["129.50"])]
Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
Identifier = Annotated[str, WithJsonSchema({"type": "string", "format": "uuid"})]

DepositStatus = Literal["pending", "processing", "completed", "failed", "needs_review"]
IntentStatus = Literal["awaiting_payment", "confirming", "completed", "expired"]
IntentEndReason = Literal["confirmed", "ttl", "max_checks"]


class Contract(BaseModel):
    """A success answer of the contract: its schema lists every field there is (additionalProperties
    false), so a field that is not in the contract is caught by schemathesis, not shipped. (At run time
    the model ignores extra keys: a GET answer is cut to its fields, never refused.)"""

    model_config = ConfigDict(json_schema_extra={"additionalProperties": False})


# --------------------------------------------------------------------------------------- errors


class ErrorOut(BaseModel):
    """Every refusal: 4xx (and the 503 of an unavailable dependency) with a `detail`."""

    detail: str


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class InvalidOut(BaseModel):
    """422: a sentence (our own validation) or the list of fields refused (the request's shape)."""

    detail: str | list[ValidationIssue]


class PushRefusedOut(BaseModel):
    """502: Daraja refused the push; nothing reached the phone and the deposit is failed."""

    detail: str
    code: str | None
    deposit_id: Identifier


class PushUnknownOut(BaseModel):
    """504: the push may have reached the phone; never retried, the deposit is in review."""

    detail: str
    deposit_id: Identifier


def _error(description: str, model: type[BaseModel] = ErrorOut) -> dict[str, Any]:
    return {"model": model, "description": description}


# Every route (the webhook aside): the body cap and the per-address limit answer before routing.
EDGE: dict[int | str, dict[str, Any]] = {
    413: _error("request body over 64 KiB"),
    429: _error("over a request limit; see Retry-After"),
}
# Every route with a bearer token: its refusals before the handler runs.
AUTHENTICATED: dict[int | str, dict[str, Any]] = {
    **EDGE,
    401: _error("missing, expired or invalid bearer token"),
    422: _error("the request is malformed", InvalidOut),
}
IDEMPOTENT: dict[int | str, dict[str, Any]] = {
    **AUTHENTICATED,
    400: _error("the body is not text that JSON can be read from (e.g. invalid UTF-8)"),
    409: _error("Idempotency-Key reused with another body, or its first request is still in flight"),
    503: _error("the request limits cannot be checked (Redis is down): nothing was done, try again"),
}
# Every admin route (HTTP Basic): its refusals before the handler runs.
ADMIN: dict[int | str, dict[str, Any]] = {
    **EDGE,
    401: _error("missing or invalid admin credentials (see WWW-Authenticate)"),
    422: _error("the request is malformed", InvalidOut),
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    **AUTHENTICATED,
    404: _error("no such item of the caller's (another user's is not found either)"),
}
INITIATE: dict[int | str, dict[str, Any]] = {
    **IDEMPOTENT,
    502: _error("Daraja refused the push with this message; nothing is pending", PushRefusedOut),
    504: _error("the push's outcome is unknown: do not retry, the payment will be reviewed", PushUnknownOut),
}


# ------------------------------------------------------------------------------------- deposits


class InitiateOut(Contract):
    deposit_id: Identifier
    status: Literal["pending"]
    checkout_request_id: str
    customer_message: str
    kes_per_usd: Rate
    amount_usdc: UsdcAmount


class DepositOut(Contract):
    deposit_id: Identifier
    kind: Literal["mpesa"]
    status: DepositStatus
    amount_kes: int
    amount_usdc: UsdcAmount
    kes_per_usd: Rate
    mpesa_receipt: str | None
    tx_hash: str | None
    failure_reason: str | None
    job_id: str | None  # the deposit's completion job (`GET /api/v1/jobs/{job_id}`), once there is one
    created_at: Timestamp
    completed_at: Timestamp | None


class DepositListOut(Contract):
    items: list[DepositOut]


# -------------------------------------------------------------------------------------- intents


class IntentCreatedOut(Contract):
    intent_id: Identifier
    status: IntentStatus
    deposit_address: str
    chain_id: int
    token_address: str
    confirmations_required: int
    expires_at: Timestamp


INTENT_CREATE: dict[int | str, dict[str, Any]] = {
    **IDEMPOTENT,
    200: {"model": IntentCreatedOut, "description": "the caller's open intent, whatever the new body says"},
}


class IntentOut(Contract):
    intent_id: Identifier
    status: IntentStatus
    deposit_address: str
    expected_amount_usdc: UsdcAmount | None
    received_amount_usdc: UsdcAmount | None
    tx_hash: str | None
    confirmations: int
    checks: int
    end_reason: IntentEndReason | None
    expires_at: Timestamp


# ----------------------------------------------------------------------------- portfolio, health


class PortfolioOut(Contract):
    user_id: str
    deposit_address: str
    balances: dict[str, UsdcAmount]


class HealthOut(Contract):
    status: Literal["ok"]


class ReadyOut(Contract):
    """200 when both answer; 503 otherwise, naming the one that did not (`error: <kind>`)."""

    status: Literal["ok", "unavailable"]
    postgres: str
    redis: str


READY: dict[int | str, dict[str, Any]] = {
    **EDGE,
    503: {"model": ReadyOut, "description": "PostgreSQL or Redis does not answer"},
}


# ------------------------------------------------------------------------------------------ jobs

JobStatusOut = Literal["queued", "active", "deferred", "retrying", "blocked", "succeeded", "failed", "cancelled"]


class JobAttemptOut(Contract):
    started_at: Timestamp
    finished_at: Timestamp | None  # None while it runs (or when its worker died: then 'interrupted' next run)
    outcome: Literal["succeeded", "failed", "deferred", "blocked", "interrupted"] | None
    error: str | None  # the error and, where the job raised, its traceback


class JobOut(Contract):
    job_id: str
    function: str
    queue: Literal["payouts", "chain", "maintenance"]
    status: JobStatusOut
    deposit_id: Identifier | None
    intent_id: Identifier | None
    attempts: list[JobAttemptOut]
    logs: list[dict[str, Any]]  # the job's own log lines (info and above), the newest 200, oldest first
    last_error: str | None
    enqueued_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None


class JobListOut(Contract):
    items: list[JobOut]
