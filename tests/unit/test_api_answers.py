"""The core's results as the API answers them: the one place they meet status codes (the bodies' shapes
are CONTRACT.md's; the routes' tests hold them end to end)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from api.routers.deposits import initiated_answer
from api.routers.intents import opened_answer
from kiota.deposits import Initiated, Pushed, Refused, Uncertain
from kiota.intents import Created, Reopened
from kiota.records import Intent
from kiota.settings import Settings, load_settings
from tests.support import settings_kwargs

DEPOSIT = uuid.UUID("6f1c2a52-0f7e-4a53-9d8e-2b1f0c3d4e5f")


@pytest.mark.parametrize(
    ("result", "status", "body"),
    [
        (
            Pushed(DEPOSIT, "ws_CO_1", "Success. Request accepted", Decimal("129.50"), 11_583_011),
            202,
            {
                "deposit_id": str(DEPOSIT),
                "status": "pending",
                "checkout_request_id": "ws_CO_1",
                "customer_message": "Success. Request accepted",
                "kes_per_usd": "129.50",
                "amount_usdc": "11.583011",
            },
        ),
        (
            Refused(DEPOSIT, "500.001.1001", "Unable to lock subscriber"),
            502,
            {"detail": "Unable to lock subscriber", "code": "500.001.1001", "deposit_id": str(DEPOSIT)},
        ),
        (Refused(DEPOSIT, None, "no answer"), 502, {"detail": "no answer", "code": None, "deposit_id": str(DEPOSIT)}),
        (Uncertain(DEPOSIT, "may have gone out"), 504, {"detail": "may have gone out", "deposit_id": str(DEPOSIT)}),
    ],
)
def test_an_initiate_result_is_answered_with_its_status(
    result: Initiated, status: int, body: dict[str, object]
) -> None:
    answered_status, answered = initiated_answer(result)
    assert answered_status == status
    assert isinstance(answered, dict) and answered == body
    assert list(answered) == list(body)  # the keys in the wire's order


@pytest.mark.parametrize(("opened", "status"), [(Created, 201), (Reopened, 200)])
def test_a_new_intent_is_201_and_the_open_one_200(opened: type[Created | Reopened], status: int) -> None:
    settings = load_settings(Settings, _env_file=None, **settings_kwargs("postgresql://x@127.0.0.1/kiota"))
    fields = {f.name: None for f in dataclasses.fields(Intent)}
    expires = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    intent = Intent(
        **{**fields, "id": DEPOSIT, "status": "confirming", "deposit_address": "0xab", "expires_at": expires}
    )
    answered_status, body = opened_answer(opened(intent), settings)
    assert answered_status == status
    assert body == {
        "intent_id": str(DEPOSIT),
        "status": "confirming",
        "deposit_address": "0xab",
        "chain_id": settings.base_chain_id,
        "token_address": settings.base_usdc_address,
        "confirmations_required": settings.deposit_confirmations_required,
        "expires_at": "2026-01-02T03:04:05+00:00",
    }
