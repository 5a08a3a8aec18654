"""USDC deposit intents for the app."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from api.deps import CurrentUser, PoolDep, SettingsDep
from api.idempotency import IdempotencyDep
from api.ratelimit import RouteLimitsDep
from api.schemas import INTENT_CREATE, NOT_FOUND, IntentCreatedOut, IntentOut
from kiota.intents import create_or_open, intent_out
from kiota.sql import load_queries
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

    async def handler() -> tuple[int, Any]:
        await limits.intent(user.id)
        return await create_or_open(pool, settings, user, expected)

    return await idem.run(handler)


@router.get("/deposit/intents/{intent_id}", response_model=IntentOut, responses=NOT_FOUND)
async def get_intent(intent_id: str, user: CurrentUser, pool: PoolDep, settings: SettingsDep) -> dict[str, Any]:
    try:
        key = uuid.UUID(intent_id)
    except ValueError:
        raise HTTPException(404, "no such intent") from None
    row = await pool.fetchrow(load_queries().intent_of_user, key, user.id, settings.base_chain_id)
    if row is None:
        raise HTTPException(404, "no such intent")
    return intent_out(row)
