"""USDC deposit intents for the app."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, StrictStr

from api.deps import CurrentUser, PoolDep, SettingsDep
from api.idempotency import IdempotencyDep
from kiota.intents import create_or_open, intent_out
from kiota.money import parse_usdc
from kiota.sql import load_queries

router = APIRouter(tags=["deposits"])


class IntentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expected_amount_usdc: StrictStr | None = None


@router.post("/deposit/intent/create", status_code=201)
async def create_intent(
    body: IntentIn, user: CurrentUser, pool: PoolDep, settings: SettingsDep, idem: IdempotencyDep
) -> Response:
    expected = parse_usdc(body.expected_amount_usdc) if body.expected_amount_usdc is not None else None
    if expected == 0:
        expected = None

    async def handler() -> tuple[int, Any]:
        return await create_or_open(pool, settings, user, expected)

    return await idem.run(handler)


@router.get("/deposit/intents/{intent_id}")
async def get_intent(intent_id: str, user: CurrentUser, pool: PoolDep, settings: SettingsDep) -> dict[str, Any]:
    try:
        key = uuid.UUID(intent_id)
    except ValueError:
        raise HTTPException(404, "no such intent") from None
    row = await pool.fetchrow(load_queries().intent_of_user, key, user.id, settings.base_chain_id)
    if row is None:
        raise HTTPException(404, "no such intent")
    return intent_out(row)
