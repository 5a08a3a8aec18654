"""What operators change over HTTP: the payout kill switch (more actions join it with the dashboard),
and the CSRF token their pages carry. Every route here is admin-only and undocumented in the public
schema (as `/metrics`); its state-changing routes are CSRF-checked (`api/csrf.py`) and recorded in
`admin_actions` by the service they call."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, StrictBool

from api.admin_auth import AdminUser, OperatorUser
from api.csrf import HEADER, issue_token, require_csrf, token_key
from api.deps import ResourcesDep, SettingsDep
from kiota import ops

router = APIRouter(prefix="/admin", tags=["operations"], dependencies=[Depends(require_csrf)])


class CsrfOut(BaseModel):
    csrf_token: str
    header: str


class KillSwitchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on: StrictBool


class KillSwitchOut(BaseModel):
    kill_switch: bool
    released_jobs: int  # blocked jobs re-enqueued when the switch went off


@router.get("/csrf", include_in_schema=False)
async def csrf(admin: AdminUser, settings: SettingsDep) -> CsrfOut:
    return CsrfOut(csrf_token=issue_token(token_key(settings), admin.name, time.time()), header=HEADER)


@router.post("/kill-switch", include_in_schema=False)
async def kill_switch(body: KillSwitchIn, resources: ResourcesDep, operator: OperatorUser) -> KillSwitchOut:
    released = await ops.set_kill_switch(resources.pool, resources.queue, body.on, operator)
    guards = await ops.guards(resources.pool)
    return KillSwitchOut(kill_switch=guards.kill_switch, released_jobs=released)
