"""M-Pesa deposits for the app: initiate, read one, list mine."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from api.deps import CurrentUser, DarajaDep, PoolDep, SettingsDep
from api.idempotency import Answer, IdempotencyDep
from api.ratelimit import RouteLimitsDep
from api.schemas import (
    AUTHENTICATED,
    INITIATE,
    NOT_FOUND,
    DepositListOut,
    DepositOut,
    InitiateOut,
    PushRefusedOut,
    PushUnknownOut,
)
from kiota.deposits import Initiated, Pushed, Refused, completion_job_ids, initiate
from kiota.money import format_rate, format_usdc
from kiota.mpesa import normalise_phone, user_failure_reason, validate_amount_kes
from kiota.records import Deposit
from kiota.store.deposits import deposit_of_user, deposits_of_user

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

    async def handler() -> Answer:
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
        return initiated_answer(result)

    return await idem.run(handler)


def initiated_answer(result: Initiated) -> Answer:
    """202 when the prompt is on its way; 502 when Daraja refused it; 504 when it may have gone out (kept, like
    a 202, for the Idempotency-Key: a retry must never push again)."""
    deposit_id = str(result.deposit_id)
    if isinstance(result, Pushed):
        pushed = InitiateOut(
            deposit_id=deposit_id,
            status="pending",
            checkout_request_id=result.checkout_request_id,
            customer_message=result.customer_message,
            kes_per_usd=format_rate(result.kes_per_usd),
            amount_usdc=format_usdc(result.amount_usdc),
        )
        return 202, pushed.model_dump(mode="json")
    if isinstance(result, Refused):
        refused = PushRefusedOut(detail=result.message, code=result.code, deposit_id=deposit_id)
        return 502, refused.model_dump(mode="json")
    return 504, PushUnknownOut(detail=result.reason, deposit_id=deposit_id).model_dump(mode="json")


@router.get("/deposits/{deposit_id}", response_model=DepositOut, response_model_exclude_unset=True, responses=NOT_FOUND)
async def get_deposit(deposit_id: str, user: CurrentUser, pool: PoolDep) -> DepositOut:
    try:
        key = uuid.UUID(deposit_id)
    except ValueError:
        raise HTTPException(404, "no such deposit") from None
    deposit = await deposit_of_user(pool, key, user.id)
    if deposit is None:  # another user's deposit is "not found", not "forbidden"
        raise HTTPException(404, "no such deposit")
    return deposit_answer(deposit, (await completion_job_ids(pool, [deposit.id])).get(deposit.id))


@router.get("/deposits", response_model=DepositListOut, response_model_exclude_unset=True, responses=AUTHENTICATED)
async def list_deposits(user: CurrentUser, pool: PoolDep, limit: int = 100) -> DepositListOut:
    deposits = await deposits_of_user(pool, user.id, max(1, min(limit, 500)))
    jobs = await completion_job_ids(pool, [deposit.id for deposit in deposits])
    return DepositListOut(items=[deposit_answer(deposit, jobs.get(deposit.id)) for deposit in deposits])


def deposit_answer(deposit: Deposit, job_id: str | None) -> DepositOut:
    """A deposit as the app sees it, with its completion job's id (None: no job yet)."""
    return DepositOut.model_validate(
        {
            "deposit_id": str(deposit.id),
            "kind": deposit.kind,
            "status": deposit.status,
            "amount_kes": deposit.amount_kes,
            "amount_usdc": format_usdc(deposit.amount_usdc),
            "kes_per_usd": format_rate(deposit.kes_per_usd),
            "mpesa_receipt": deposit.mpesa_receipt,
            "tx_hash": deposit.tx_hash,
            "job_id": job_id,
            # Written for the user; the operators' reasons stay in review_reason / failure_reason.
            "failure_reason": user_failure_reason(deposit.status, deposit.failure_code),
            "created_at": deposit.created_at.isoformat(),
            "completed_at": deposit.completed_at.isoformat() if deposit.completed_at else None,
        }
    )
