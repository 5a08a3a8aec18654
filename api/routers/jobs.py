"""The job history for operators (admin): one job with its attempts and log lines, or a filtered list.

What a status means is `kiota/job_view.py`'s (the table's states mapped onto the contract's). Errors and log lines
are masked as the dashboard masks them (`kiota/masking.py`): viewers read this too."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter, HTTPException, Query

from api.admin_auth import AdminUser
from api.deps import PoolDep
from api.schemas import ADMIN, JobAttemptOut, JobListOut, JobOut, JobStatusOut
from kiota.job_history import JobDetail, find_jobs, job_detail
from kiota.job_view import job_filter
from kiota.masking import mask_secrets

router = APIRouter(tags=["operations"])


@router.get("/jobs/{job_id}", response_model=JobOut, responses={**ADMIN, 404: {"description": "no such job"}})
async def get_job(job_id: str, pool: PoolDep, admin: AdminUser) -> JobOut:
    detail = await job_detail(pool, job_id)
    if detail is None:
        raise HTTPException(404, "no such job")
    return job_answer(detail)


@router.get("/jobs", response_model=JobListOut, responses=ADMIN)
async def list_jobs(
    pool: PoolDep,
    admin: AdminUser,
    status: JobStatusOut | None = None,
    function: str | None = None,
    deposit_id: uuid.UUID | None = None,
    intent_id: uuid.UUID | None = None,
    limit: int = Query(100, ge=1, le=500),
) -> JobListOut:
    found = await find_jobs(pool, job_filter(status, function, deposit_id, intent_id), limit)
    return JobListOut(items=[job_answer(detail) for detail in found])


def job_answer(detail: JobDetail) -> JobOut:
    run = detail.run
    return JobOut.model_validate(
        {
            "job_id": run.id,
            "function": run.function,
            "queue": run.queue,
            "status": detail.status,
            "deposit_id": str(run.deposit_id) if run.deposit_id else None,
            "intent_id": str(run.intent_id) if run.intent_id else None,
            "attempts": [
                JobAttemptOut.model_validate(
                    {
                        "started_at": attempt.started_at.isoformat(),
                        "finished_at": _iso(attempt.finished_at),
                        "outcome": attempt.outcome,
                        "error": mask_secrets(attempt.error) if attempt.error else None,
                    }
                )
                for attempt in detail.attempts
            ],
            "logs": mask_secrets(run.logs),
            "last_error": mask_secrets(run.last_error) if run.last_error else None,
            "enqueued_at": run.enqueued_at.isoformat(),
            "started_at": _iso(run.started_at),
            "finished_at": _iso(run.finished_at),
        }
    )


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
