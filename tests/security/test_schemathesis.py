"""The API against its own schema, with schemathesis: every documented route, valid and invalid input.

The real system serves the API on a port (`mpesa_system`: PostgreSQL, Redis, the Daraja simulator
behind initiate); schemathesis reads `/openapi.json` from it and sends, with a valid bearer token,
requests generated from the schema (positive and negative data), then checks each answer: never a
5xx; a status code the schema names; its content type; and a body and headers that match the
schema. Hand-made valid requests then walk the success paths (a push, a deposit read back, an
intent created and read), whose answers are held to their schemas too.

Schemathesis is synchronous: it runs in a thread while this event loop serves the API.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from kiota.auth import issue_token
from kiota.dev.daraja_sim_behaviour import PushError, Scenario
from tests.conftest import MpesaSystem
from tests.security.fuzzing import examples, fuzz_settings, timeout_seconds
from tests.support import ADMIN_AUTH, JWT_SECRET

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
PER_OPERATION_CI, PER_OPERATION_DEEP = 60, 1000
OPERATIONS = 10  # what the app documents today (the webhook and /metrics are not in the schema)


def _token(subject: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(subject, JWT_SECRET, 3600, int(time.time()))}"}


def _operations(api_url: str) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    return operations


def _fuzz_operation(operation: Any, api_url: str, headers: dict[str, str]) -> None:
    strategy = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @fuzz_settings(PER_OPERATION_CI, PER_OPERATION_DEEP)
    @given(case=strategy)
    def run(case: Any) -> None:
        case.call_and_validate(base_url=api_url, headers=headers, checks=CHECKS, timeout=15)

    run()


async def _in_thread(work: Callable[[], None]) -> None:
    await asyncio.to_thread(work)


@pytest.mark.no_worker
@pytest.mark.timeout(timeout_seconds(PER_OPERATION_CI * OPERATIONS, PER_OPERATION_DEEP * OPERATIONS, 0.05))
async def test_every_documented_route_answers_as_its_schema_says(mpesa_system: MpesaSystem) -> None:
    # Pushes are accepted and never called back: the deposits stay pending.
    mpesa_system.simulator.set_scenario(Scenario(outcome="none"), default=True)
    api_url = mpesa_system.api_url
    headers = _token("schemathesis-user")

    operations = await asyncio.to_thread(_operations, api_url)
    labels = sorted(operation.label for operation in operations)
    assert labels == sorted(
        [
            "GET /health",
            "GET /health/ready",
            "GET /api/v1/portfolio",
            "POST /api/v1/deposit/initiate",
            "GET /api/v1/deposits/{deposit_id}",
            "GET /api/v1/deposits",
            "POST /api/v1/deposit/intent/create",
            "GET /api/v1/deposit/intents/{intent_id}",
            "GET /api/v1/jobs/{job_id}",
            "GET /api/v1/jobs",
        ]
    )
    assert examples(PER_OPERATION_CI, PER_OPERATION_DEEP) > 0
    for operation in operations:
        await _in_thread(lambda operation=operation: _fuzz_operation(operation, api_url, headers))

    by_label = {operation.label: operation for operation in operations}

    walker = _token("schemathesis-walker")  # a user of its own: the fuzzing above made an intent already

    def call(label: str, *, expect: int, checks: list[Any] = CHECKS, **parts: Any) -> Any:
        case = by_label[label].Case(**parts)
        response = case.call_and_validate(base_url=api_url, headers=walker, checks=checks, timeout=15)
        assert response.status_code == expect, (label, response.status_code, response.text)
        return response.json()

    def success_paths() -> None:
        pushed = call("POST /api/v1/deposit/initiate", expect=202, body={"amount_kes": 1500, "phone": "254708374149"})
        call("GET /api/v1/deposits/{deposit_id}", expect=200, path_parameters={"deposit_id": pushed["deposit_id"]})
        listed = call("GET /api/v1/deposits", expect=200, query={"limit": 5})
        assert pushed["deposit_id"] in [item["deposit_id"] for item in listed["items"]]
        call("GET /api/v1/portfolio", expect=200)
        intent = call("POST /api/v1/deposit/intent/create", expect=201, body={"expected_amount_usdc": "25.50"})
        call("POST /api/v1/deposit/intent/create", expect=200, body={})  # the open one again
        read = call(
            "GET /api/v1/deposit/intents/{intent_id}", expect=200, path_parameters={"intent_id": intent["intent_id"]}
        )
        assert read["expected_amount_usdc"] == "25.500000"
        # The admin's job history (the fuzzing above had no admin credentials: 401s).
        admin = {"Authorization": "Basic " + base64.b64encode(":".join(ADMIN_AUTH).encode()).decode()}
        for label, parts, expect in [
            ("GET /api/v1/jobs", {"query": {"status": "queued", "limit": 5}}, 200),
            ("GET /api/v1/jobs/{job_id}", {"path_parameters": {"job_id": "no-such-job"}}, 404),
        ]:
            response = (
                by_label[label]
                .Case(**parts)
                .call_and_validate(base_url=api_url, headers=admin, checks=CHECKS, timeout=15)
            )
            assert response.status_code == expect, (label, response.text)

    await _in_thread(success_paths)

    # Daraja refusing the push: the contract's 502 with its message (a 5xx, but not ours), as documented.
    refusal = PushError(error_code="400.002.02", error_message="Bad Request - Invalid PhoneNumber")
    mpesa_system.simulator.set_scenario(Scenario(push_error=refusal), default=True)
    await _in_thread(
        lambda: call(
            "POST /api/v1/deposit/initiate",
            expect=502,
            checks=[check for check in CHECKS if check is not not_a_server_error],
            body={"amount_kes": 1500, "phone": "0708374149"},
        )
    )


# The answers' fields as CONTRACT.md (v3) lists them, in its order.
CONTRACT_FIELDS = {
    "InitiateOut": ["deposit_id", "status", "checkout_request_id", "customer_message", "kes_per_usd", "amount_usdc"],
    "DepositOut": [
        "deposit_id", "kind", "status", "amount_kes", "amount_usdc", "kes_per_usd", "mpesa_receipt", "tx_hash",
        "failure_reason", "job_id", "created_at", "completed_at",
    ],
    "DepositListOut": ["items"],
    "IntentCreatedOut": [
        "intent_id", "status", "deposit_address", "chain_id", "token_address", "confirmations_required", "expires_at",
    ],
    "IntentOut": [
        "intent_id", "status", "deposit_address", "expected_amount_usdc", "received_amount_usdc", "tx_hash",
        "confirmations", "checks", "end_reason", "expires_at",
    ],
    "PortfolioOut": ["user_id", "deposit_address", "balances"],
    "JobOut": [
        "job_id", "function", "queue", "status", "deposit_id", "intent_id", "attempts", "logs", "last_error",
        "enqueued_at", "started_at", "finished_at",
    ],
    "JobAttemptOut": ["started_at", "finished_at", "outcome", "error"],
    "JobListOut": ["items"],
}  # fmt: skip


def test_the_schema_names_the_contracts_fields_and_no_others() -> None:
    components = create_app().openapi()["components"]["schemas"]
    for name, fields in CONTRACT_FIELDS.items():
        schema = components[name]
        assert list(schema["properties"]) == fields, name
        assert schema["additionalProperties"] is False, name
        # Every field is always sent (null when empty).
        assert set(schema["required"]) == set(fields), name
    usdc = components["DepositOut"]["properties"]["amount_usdc"]
    assert usdc["type"] == "string" and usdc["pattern"].endswith(r"\.[0-9]{6}$")
    assert components["DepositOut"]["properties"]["amount_kes"]["type"] == "integer"
    assert components["IntentCreatedOut"]["properties"]["chain_id"]["type"] == "integer"
