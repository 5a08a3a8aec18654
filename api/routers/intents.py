"""USDC deposit intents for the app."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from api.deps import CurrentUser, PoolDep, SettingsDep
from api.idempotency import Answer, IdempotencyDep
from api.ratelimit import RouteLimitsDep
from api.schemas import INTENT_CREATE, NOT_FOUND, IntentCreatedOut, IntentOut
from kiota.intents import Created, Reopened, create_or_open
from kiota.money import format_usdc
from kiota.settings import Settings
from kiota.store.intents import IntentOnChain, intent_of_user
from kiota.usdc import expected_amount

router = APIRouter(tags=["deposits"])


class IntentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # "1000000.000000" is 14 characters: anything much longer is not an amount.
    expected_amount_usdc: Annotated[StrictStr, Field(max_length=32, examples=["25.50"])] | None = None


@router.post("/deposit/intent/create", status_code=201, response_model=IntentCreatedOut, responses=INTENT_CREATE)
async def create_intent(
    body: IntentIn,
    user: CurrentUser,
    pool: PoolDep,
    settings: SettingsDep,
    idem: IdempotencyDep,
    limits: RouteLimitsDep,
) -> Response:
    expected = expected_amount(body.expected_amount_usdc)

    async def handler() -> Answer:
        await limits.intent(user.id)
        result = await create_or_open(pool, user, expected, ttl_seconds=settings.intent_ttl_seconds)
        return opened_answer(result, settings)

    return await idem.run(handler)


def opened_answer(result: Created | Reopened, settings: Settings) -> Answer:
    """201 for a new intent; 200 for the user's open one, whatever the request asked for."""
    intent = result.intent
    opened = IntentCreatedOut.model_validate(
        {
            "intent_id": str(intent.id),
            "status": intent.status,
            "deposit_address": intent.deposit_address,
            "chain_id": settings.base_chain_id,
            "token_address": settings.base_usdc_address,
            "confirmations_required": settings.deposit_confirmations_required,
            "expires_at": intent.expires_at.isoformat(),
        }
    )
    return 201 if isinstance(result, Created) else 200, opened.model_dump(mode="json")


@router.get("/deposit/intents/{intent_id}", response_model=IntentOut, responses=NOT_FOUND)
async def get_intent(intent_id: str, user: CurrentUser, pool: PoolDep, settings: SettingsDep) -> IntentOut:
    try:
        key = uuid.UUID(intent_id)
    except ValueError:
        raise HTTPException(404, "no such intent") from None
    found = await intent_of_user(pool, key, user.id, settings.base_chain_id)
    if found is None:
        raise HTTPException(404, "no such intent")
    return intent_answer(found)


def intent_answer(found: IntentOnChain) -> IntentOut:
    """An intent as the app sees it, with the confirmations of the transfer that paid it (0 before one is seen)."""
    intent = found.intent
    return IntentOut.model_validate(
        {
            "intent_id": str(intent.id),
            "status": intent.status,
            "deposit_address": intent.deposit_address,
            "expected_amount_usdc": format_usdc(intent.expected_amount_usdc) if intent.expected_amount_usdc else None,
            "received_amount_usdc": (
                format_usdc(intent.received_amount_usdc) if intent.received_amount_usdc is not None else None
            ),
            "tx_hash": found.tx_hash,
            "confirmations": found.confirmations,
            "checks": intent.checks,
            "end_reason": intent.end_reason,
            "expires_at": intent.expires_at.isoformat(),
        }
    )
