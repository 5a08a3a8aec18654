"""The named queues over HTTP: pause and resume one (operators, CSRF-checked, recorded in `admin_actions` by
`kiota/queues.py`), and the operations stats (viewers too): jobs by queue and status, deposits and intents
by status, and the live workers with their queues. Admin-only and undocumented in the public schema."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from api.admin_auth import AdminUser, OperatorUser
from api.csrf import require_csrf
from api.deps import ResourcesDep
from kiota import queues
from kiota.job_names import Queue

router = APIRouter(prefix="/admin", tags=["operations"], dependencies=[Depends(require_csrf)])


class QueueStateOut(BaseModel):
    queue: str
    paused: bool
    changed_by: str | None
    changed_at: datetime | None


class WorkerOut(BaseModel):
    worker_id: str
    hostname: str
    pid: int
    queues: list[str]
    started_at: datetime
    seen_at: datetime


class StatsOut(BaseModel):
    queues: dict[str, dict[str, int | bool]]
    deposits: dict[str, int]
    intents: dict[str, int]
    workers: list[WorkerOut]


@router.post("/queues/{queue}/pause", include_in_schema=False)
async def pause(queue: Queue, resources: ResourcesDep, operator: OperatorUser) -> QueueStateOut:
    state = await queues.pause(resources.pool, resources.queue, queue, operator)
    return QueueStateOut.model_validate(state, from_attributes=True)


@router.post("/queues/{queue}/resume", include_in_schema=False)
async def resume(queue: Queue, resources: ResourcesDep, operator: OperatorUser) -> QueueStateOut:
    state = await queues.resume(resources.pool, resources.queue, queue, operator)
    return QueueStateOut.model_validate(state, from_attributes=True)


@router.get("/stats", include_in_schema=False)
async def stats(resources: ResourcesDep, admin: AdminUser) -> StatsOut:
    found = await queues.stats(resources.pool)
    return StatsOut(
        queues=found.queues,
        deposits=found.deposits,
        intents=found.intents,
        workers=[WorkerOut.model_validate(w, from_attributes=True) for w in found.workers],
    )
