"""`/admin/actions`: the record of what admins did (`admin_actions`), newest first, by who and what."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from api.admin_auth import AdminUser
from api.dashboard.render import page, page_number
from api.deps import PoolDep, SettingsDep
from kiota.store.admin import find_actions

router = APIRouter()

PAGE_SIZE = 50


@router.get("/actions")
async def actions(request: Request, settings: SettingsDep, pool: PoolDep, admin: AdminUser) -> HTMLResponse:
    actor = request.query_params.get("actor", "").strip()
    action = request.query_params.get("action", "").strip()
    number = page_number(request)
    found = await find_actions(
        pool, actor=actor or None, action=action or None, limit=PAGE_SIZE + 1, offset=(number - 1) * PAGE_SIZE
    )
    return page(
        request,
        settings,
        admin,
        "actions.html",
        actions=found[:PAGE_SIZE],
        actor=actor,
        action=action,
        page_number=number,
        has_next=len(found) > PAGE_SIZE,
        query_string=urlencode({k: v for k, v in (("actor", actor), ("action", action)) if v}),
    )
