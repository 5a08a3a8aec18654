"""M-Pesa deposits for the app: initiate, read one, list mine."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from api.deps import CurrentUser, DarajaDep, PoolDep, SettingsDep
from api.idempotency import IdempotencyDep
from api.ratelimit import RouteLimitsDep
from api.schemas import AUTHENTICATED, INITIATE, NOT_FOUND, DepositListOut, DepositOut, InitiateOut
from kiota.deposits import deposit_out, initiate
from kiota.mpesa import normalise_phone, validate_amount_kes
from kiota.sql import load_queries

router = APIRouter(tags=["deposits"])
CALLBACK_PATH = "/deposit/mpesa-callback"


class InitiateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount_kes: Annotated[StrictInt, Field(description="whole shillings; never a float or a string")]
    phone: Annotated[StrictStr, Field(max_length=20, examples=["254708374149", "0708374149", "+254708374149"])]


@router.post("/deposit/initiate", status_code=202, response_model=InitiateOut, responses=INITIATE)
async def initiate_deposit(
    body: InitiateIn,
    user: CurrentUser,
    pool: PoolDep,
    settings: SettingsDep,
    daraja: DarajaDep,
    idem: IdempotencyDep,
    limits: RouteLimitsDep,
) -> Response:
    amount = validate_amount_kes(body.amount_kes, settings.mpesa_min_kes)
    phone = normalise_phone(body.phone)

    async def handler() -> tuple[int, Any]:
        result = await initiate(
            pool,
            daraja,
            user_id=user.id,
            amount_kes=amount,
            phone=phone,
            kes_per_usd=settings.kes_per_usd,
            callback_url=f"{settings.public_url}/api/v1{CALLBACK_PATH}/{settings.callback_tokens[0]}",
            query_after_seconds=settings.mpesa_query_after_seconds,
            admit=limits.initiate(user.id, phone),
            request_key=idem.key,
        )
        return result.status_code, result.body

    return await idem.run(handler)


@router.get("/deposits/{deposit_id}", response_model=DepositOut, response_model_exclude_unset=True, responses=NOT_FOUND)
async def get_deposit(deposit_id: str, user: CurrentUser, pool: PoolDep) -> dict[str, Any]:
    try:
        key = uuid.UUID(deposit_id)
    except ValueError:
        raise HTTPException(404, "no such deposit") from None
    row = await pool.fetchrow(load_queries().deposit_of_user, key, user.id)
    if row is None:  # another user's deposit is "not found", not "forbidden"
        raise HTTPException(404, "no such deposit")
    return deposit_out(row)


@router.get("/deposits", response_model=DepositListOut, response_model_exclude_unset=True, responses=AUTHENTICATED)
async def list_deposits(user: CurrentUser, pool: PoolDep, limit: int = 100) -> dict[str, Any]:
    rows = await pool.fetch(load_queries().deposits_of_user, user.id, max(1, min(limit, 500)))
    return {"items": [deposit_out(row) for row in rows]}
