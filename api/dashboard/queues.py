"""`/admin/queues`: each queue's counts, rates and depth (live), the payout guards with their switches, the
history's clean, and the recent actions on all of these.

Reads are `kiota.queue_stats`'s; every form's action is a service that records itself (`kiota.ops`,
`kiota.job_actions`), answered by a redirect back here with what it did.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from api.admin_auth import AdminUser, OperatorUser
from api.dashboard.render import back, page
from api.deps import PoolDep, QueueDep, SettingsDep
from kiota import job_actions, ops
from kiota import queues as queue_pauses
from kiota.errors import InvalidInput
from kiota.queue_stats import queue_overview
from kiota.store.admin import find_actions

router = APIRouter()

HERE = "/admin/queues"
# The targets whose actions this page shows: the guards, the queues (pause/resume), the history's clean.
SHOWN_TARGETS = ["payout_guards", ops.TREASURY_LANE, "queue", job_actions.JOBS]


@router.get("/queues")
async def queues(request: Request, settings: SettingsDep, pool: PoolDep, admin: AdminUser) -> HTMLResponse:
    return page(
        request,
        settings,
        admin,
        "queues.html",
        cards=await queue_overview(pool, datetime.now(UTC)),
        guards=await ops.guards(pool),
        treasury_lanes=await ops.treasury_lanes(pool),
        actions=await find_actions(pool, target_kinds=SHOWN_TARGETS, limit=20),
    )


@router.get("/queues/live")
async def queues_live(request: Request, settings: SettingsDep, pool: PoolDep, admin: AdminUser) -> HTMLResponse:
    """The cards alone, for the page's live refresh."""
    cards = await queue_overview(pool, datetime.now(UTC))
    return page(request, settings, admin, "queue_cards.html", cards=cards)


@router.post("/queues/kill-switch")
async def kill_switch(
    pool: PoolDep, queue: QueueDep, operator: OperatorUser, on: Annotated[bool, Form()]
) -> RedirectResponse:
    released = await ops.set_kill_switch(pool, queue, on, operator)
    said = "kill switch ON: no payout is signed" if on else f"kill switch off; {released} blocked jobs released"
    return back(HERE, said)


@router.post("/queues/resume-lane")
async def resume_lane(
    pool: PoolDep, queue: QueueDep, operator: OperatorUser, treasury: Annotated[str | None, Form()] = None
) -> RedirectResponse:
    """Every lane, or with `treasury` that treasury's lane only (its shortfall refilled)."""
    try:
        released = await ops.resume_lane(pool, queue, operator, treasury or None)
    except InvalidInput as exc:
        return back(HERE, f"refused: {exc}")
    which = f"payout lane of treasury {treasury}" if treasury else "payout lane"
    return back(HERE, f"{which} resumed; {released} blocked jobs released")


@router.post("/queues/{name}/pause")
@router.post("/queues/{name}/resume")
async def pause_or_resume(
    request: Request, name: str, pool: PoolDep, queue: QueueDep, operator: OperatorUser
) -> RedirectResponse:
    """Hold a queue's jobs (none lost; running ones finish) or let them run again (kiota/queues.py)."""
    change = queue_pauses.pause if request.url.path.endswith("/pause") else queue_pauses.resume
    try:
        state = await change(pool, queue, name, operator)
    except InvalidInput as exc:
        return back(HERE, f"refused: {exc}")
    return back(HERE, f"queue {state.queue} {'paused: its jobs wait' if state.paused else 'resumed'}")


@router.post("/queues/clean")
async def clean(pool: PoolDep, operator: OperatorUser, days: Annotated[int, Form()]) -> RedirectResponse:
    try:
        jobs, attempts = await job_actions.clean_history(pool, days, operator)
    except job_actions.CannotClean as exc:
        return back(HERE, f"refused: {exc}")
    return back(HERE, f"cleaned {jobs} jobs and {attempts} attempts that ended more than {days} days ago")
