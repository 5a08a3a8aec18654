"""`/admin/jobs`: the job history filtered and searched (newest first, by pages, live), one job's page (every
attempt with its traceback, its own log lines, its arguments with secrets masked, the actions taken on it),
and the actions: retry one, retry every job the filter matches, cancel one waiting.

The list is `kiota.job_history.find_jobs` (as `GET /api/v1/jobs`), its filter `kiota.job_view.job_filter`;
a filter that does not parse is said on the page, not answered 422.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from api.admin_auth import AdminUser, OperatorUser
from api.dashboard.render import back, page, page_number
from api.deps import PoolDep, QueueDep, SettingsDep
from kiota import job_actions
from kiota.job_history import find_jobs, job_detail, queued_arguments
from kiota.job_names import JobName, Queue
from kiota.job_view import JOB_STATUSES, JobFilter, JobStatus, job_filter
from kiota.masking import mask_secrets
from kiota.ops import CannotRetry
from kiota.store.admin import find_actions

router = APIRouter()

PAGE_SIZE = 50
# The filter's fields, as the list's query string and the batch retry's form carry them.
FILTER_FIELDS = ("queue", "status", "function", "deposit_id", "intent_id", "since", "until", "q")
# The function filter's suggestions: the queued jobs' names and the recorded cron ticks' (jobs/chain.py,
# jobs/maintenance.py).
FUNCTIONS = [*JobName, "scan_chain_tick", "sweep_tick"]


@dataclass
class ListQuery:
    """The list's filter as asked (echoed back into the form), as a JobFilter, and what did not parse."""

    asked: dict[str, str]
    found: JobFilter
    errors: list[str] = field(default_factory=list)

    def query_string(self, **extra: object) -> str:
        return urlencode({**{k: v for k, v in self.asked.items() if v}, **extra})


def _moment(text: str) -> datetime:
    """A `datetime-local` input's value (or any ISO 8601 time); without a zone it is UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_filter(values: Mapping[str, str]) -> ListQuery:
    """The filter from a query string or a form; each field that does not parse is left out and named."""
    asked = {name: values.get(name, "").strip() for name in FILTER_FIELDS}
    errors: list[str] = []
    narrower: dict[str, object] = {}
    status: JobStatus | None = None
    if asked["status"]:
        if asked["status"] in JOB_STATUSES:
            status = asked["status"]
        else:
            errors.append(f"status is one of {', '.join(JOB_STATUSES)}")
    if asked["queue"]:
        if asked["queue"] in list(Queue):
            narrower["queue"] = Queue(asked["queue"])
        else:
            errors.append(f"queue is one of {', '.join(Queue)}")
    ids: dict[str, uuid.UUID | None] = {"deposit_id": None, "intent_id": None}
    for name in ids:
        if asked[name]:
            try:
                ids[name] = uuid.UUID(asked[name])
            except ValueError:
                errors.append(f"{name} is a UUID")
    for name in ("since", "until"):
        if asked[name]:
            try:
                narrower[name] = _moment(asked[name])
            except ValueError:
                errors.append(f"{name} is a time (YYYY-MM-DDTHH:MM)")
    if asked["q"]:
        narrower["search"] = asked["q"]
    found = job_filter(status, asked["function"] or None, ids["deposit_id"], ids["intent_id"], **narrower)
    return ListQuery(asked, found, errors)


async def _list_context(request: Request, pool: PoolDep) -> dict[str, Any]:
    query = parse_filter(request.query_params)
    number = page_number(request)
    found = await find_jobs(pool, query.found, PAGE_SIZE + 1, (number - 1) * PAGE_SIZE)
    return {
        "query": query,
        "jobs": found[:PAGE_SIZE],
        "page_number": number,
        "has_next": len(found) > PAGE_SIZE,
        "statuses": JOB_STATUSES,
        "queues": list(Queue),
        "functions": FUNCTIONS,
    }


@router.get("/jobs")
async def jobs(request: Request, settings: SettingsDep, pool: PoolDep, admin: AdminUser) -> HTMLResponse:
    return page(request, settings, admin, "jobs.html", **await _list_context(request, pool))


@router.get("/jobs/live")
async def jobs_live(request: Request, settings: SettingsDep, pool: PoolDep, admin: AdminUser) -> HTMLResponse:
    """The list's rows alone, for the page's live refresh (same query string)."""
    return page(request, settings, admin, "job_rows.html", **await _list_context(request, pool))


@router.post("/jobs/retry")
async def retry_matching(request: Request, pool: PoolDep, queue: QueueDep, operator: OperatorUser) -> RedirectResponse:
    """Retry every job the posted filter matches (the list's own filter, carried by its form)."""
    form = await request.form()
    query = parse_filter({name: str(form.get(name, "")) for name in FILTER_FIELDS})
    here = f"/admin/jobs?{query.query_string()}"
    if query.errors:
        return back(here, "refused: " + "; ".join(query.errors))
    done = await job_actions.retry_matching(pool, queue, query.found, operator)
    said = f"retried {len(done.retried)} jobs"
    if done.refused:
        said += f"; refused {len(done.refused)}: " + "; ".join(f"{job_id}: {why}" for job_id, why in done.refused[:10])
        if len(done.refused) > 10:
            said += f"; and {len(done.refused) - 10} more"
    if done.more:
        said += f" (only the newest {job_actions.BATCH_LIMIT}: retry again for the rest)"
    return back(here, said[:1500])


@router.get("/jobs/{job_id}")
async def job(
    job_id: str, request: Request, settings: SettingsDep, pool: PoolDep, queue: QueueDep, admin: AdminUser
) -> HTMLResponse:
    detail = await job_detail(pool, job_id)
    if detail is None:
        raise HTTPException(404, "no such job")
    run = detail.run
    queued = await queued_arguments(queue, job_id)
    recorded = {"deposit_id": run.deposit_id, "intent_id": run.intent_id}
    return page(
        request,
        settings,
        admin,
        "job.html",
        detail=detail,
        run=run,
        arguments=mask_secrets(queued if queued is not None else recorded),
        arguments_from="Redis (the job as queued)" if queued is not None else "the job's record",
        progress=mask_secrets(run.progress) if run.progress else None,
        logs=mask_secrets(run.logs),
        attempts=[(attempt, mask_secrets(attempt.error) if attempt.error else None) for attempt in detail.attempts],
        last_error=mask_secrets(run.last_error) if run.last_error else None,
        retryable=detail.status in job_actions.RETRYABLE,
        cancellable=run.status in job_actions.CANCELLABLE and run.function != JobName.QUERY_MPESA_DEPOSIT,
        actions=await find_actions(pool, target_kinds=[job_actions.JOB], target_id=job_id),
        here=job_path(job_id),
    )


def job_path(job_id: str) -> str:
    return f"/admin/jobs/{quote(job_id, safe='')}"


@router.post("/jobs/{job_id}/retry")
async def retry(job_id: str, pool: PoolDep, queue: QueueDep, operator: OperatorUser) -> RedirectResponse:
    try:
        said = await job_actions.retry_job(pool, queue, job_id, operator)
    except CannotRetry as exc:
        return back(job_path(job_id), f"refused: {exc}")
    return back(job_path(job_id), said)


@router.post("/jobs/{job_id}/cancel")
async def cancel(job_id: str, pool: PoolDep, queue: QueueDep, operator: OperatorUser) -> RedirectResponse:
    try:
        cancelled = await job_actions.cancel_job(pool, queue, job_id, operator)
    except job_actions.CannotCancel as exc:
        return back(job_path(job_id), f"refused: {exc}")
    said = "job cancelled"
    if cancelled.deposit_id is not None:
        said += "; its deposit is in review (cancelled by you), where an operator decides what follows"
    return back(job_path(job_id), said)
