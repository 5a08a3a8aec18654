"""The dashboard's money views: the search, one page per deposit and per intent with its whole timeline, and
the review queue with the two-person rule's proposals (kiota/money_views.py, kiota/review_actions.py)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api.admin_auth import AdminUser, OperatorUser
from api.dashboard.render import back, page
from api.deps import PoolDep, ResourcesDep, SettingsDep
from kiota import money_views, review_actions
from kiota.errors import InvalidInput, KiotaError
from kiota.ops import retry_deposit
from kiota.review_rules import MONEY_ACTIONS, Resolution

router = APIRouter()

Text = Annotated[str, Form(max_length=1000)]


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise HTTPException(status_code=404, detail="no such page") from None


def _page_of(kind: str, target: str) -> str:
    return f"/admin/{kind}s/{target}"


@router.get("/search")
async def search(
    request: Request, admin: AdminUser, settings: SettingsDep, pool: PoolDep, q: Annotated[str, Query()] = ""
) -> Response:
    try:
        hits = await money_views.search(pool, q)
    except InvalidInput as exc:
        return page(request, settings, admin, "search.html", 422, query=q, hits=[], error=str(exc))
    if len(hits) == 1 and hits[0].kind != "transfer":
        return RedirectResponse(_page_of(hits[0].kind, hits[0].id), status_code=303)
    return page(request, settings, admin, "search.html", query=q, hits=hits, error=None)


@router.get("/deposits/{deposit_id}", response_class=HTMLResponse)
async def deposit(
    request: Request, deposit_id: str, admin: AdminUser, settings: SettingsDep, pool: PoolDep
) -> Response:
    view = await money_views.deposit_page(pool, _uuid(deposit_id))
    if view is None:
        raise HTTPException(status_code=404, detail="no such deposit")
    return page(request, settings, admin, "deposit.html", view=view, here=request.url.path)


@router.get("/intents/{intent_id}", response_class=HTMLResponse)
async def intent(request: Request, intent_id: str, admin: AdminUser, settings: SettingsDep, pool: PoolDep) -> Response:
    view = await money_views.intent_page(pool, _uuid(intent_id))
    if view is None:
        raise HTTPException(status_code=404, detail="no such intent")
    return page(request, settings, admin, "intent.html", view=view, here=request.url.path)


@router.get("/review", response_class=HTMLResponse)
async def review(request: Request, admin: AdminUser, settings: SettingsDep, pool: PoolDep) -> Response:
    view = await money_views.review_page(pool)
    return page(request, settings, admin, "review.html", view=view, here=request.url.path)


@router.post("/proposals")
async def propose(
    admin: OperatorUser,
    pool: PoolDep,
    action: Annotated[str, Form()],
    review_item_id: Annotated[int | None, Form()] = None,
    deposit_id: Annotated[str, Form()] = "",
    user_id: Annotated[str, Form(max_length=255)] = "",
    note: Text = "",
    next: Annotated[str, Form()] = "/admin/review",  # the page to go back to (render.back keeps it under /admin)
) -> Response:
    if action not in {a.value for a in MONEY_ACTIONS}:
        return back(next, f"refused: {action!r} is not a money action")
    try:
        proposal = await review_actions.propose(
            pool,
            admin,
            Resolution(action),
            review_item_id=review_item_id,
            deposit_id=_uuid(deposit_id) if deposit_id else None,
            user_id=user_id.strip() or None,
            note=note,
        )
    except KiotaError as exc:
        return back(next, f"refused: {exc}")
    return back(next, f"proposal {proposal.id} ({proposal.action}) recorded: another operator approves it")


@router.post("/proposals/{proposal_id}/approve")
async def approve(
    proposal_id: int,
    admin: OperatorUser,
    resources: ResourcesDep,
    note: Text = "",
    next: Annotated[str, Form()] = "/admin/review",
) -> Response:
    try:
        done = await review_actions.approve(resources.pool, resources.queue, proposal_id, admin, note)
    except KiotaError as exc:
        return back(next, f"refused: {exc}")
    return back(next, f"proposal {proposal_id} approved: {done.proposal.action} done")


@router.post("/proposals/{proposal_id}/reject")
async def reject(
    proposal_id: int,
    admin: OperatorUser,
    pool: PoolDep,
    note: Text = "",
    next: Annotated[str, Form()] = "/admin/review",
) -> Response:
    try:
        closed = await review_actions.reject(pool, proposal_id, admin, note)
    except KiotaError as exc:
        return back(next, f"refused: {exc}")
    return back(next, f"proposal {proposal_id} {closed.status}")


@router.post("/deposits/{deposit_id}/retry")
async def retry(
    deposit_id: str,
    admin: OperatorUser,
    resources: ResourcesDep,
    next: Annotated[str, Form()] = "/admin/review",
) -> Response:
    try:
        result = await retry_deposit(resources.pool, resources.queue, _uuid(deposit_id), admin)
    except KiotaError as exc:
        return back(next, f"refused: {exc}")
    return back(next, f"retrying {result.deposit_id} as job {result.job_id}")


@router.get("/transfers", response_class=HTMLResponse)
async def transfers(
    request: Request, admin: AdminUser, settings: SettingsDep, pool: PoolDep, flag: Annotated[str, Query()] = ""
) -> Response:
    try:
        rows = await money_views.flagged_transfers(pool, flag or None)
    except InvalidInput as exc:
        return page(
            request,
            settings,
            admin,
            "transfers.html",
            422,
            rows=[],
            flag=flag,
            error=str(exc),
            flags=money_views.TRANSFER_FLAGS,
        )
    return page(
        request, settings, admin, "transfers.html", rows=rows, flag=flag, error=None, flags=money_views.TRANSFER_FLAGS
    )


@router.get("/reconciliation", response_class=HTMLResponse)
async def reconciliation(request: Request, admin: AdminUser, settings: SettingsDep, pool: PoolDep) -> Response:
    view = await money_views.reconciliation(
        pool, settings.base_rpc_url, settings.base_usdc_address, settings.base_chain_id
    )
    return page(request, settings, admin, "reconciliation.html", 503 if view.error else 200, view=view)


@router.get("/paybill", response_class=HTMLResponse)
async def paybill(request: Request, admin: AdminUser, settings: SettingsDep) -> Response:
    return page(request, settings, admin, "paybill.html", report=None, statement=None, error=None)


@router.post("/paybill", response_class=HTMLResponse)
async def paybill_upload(
    request: Request,
    admin: OperatorUser,
    settings: SettingsDep,
    pool: PoolDep,
    statement: Annotated[UploadFile | None, File()] = None,
) -> Response:
    """Compare a statement (the body limit caps its size: api/body_limit.py); a file that cannot be read is
    answered 422 on the page, saying why."""
    data = await statement.read() if statement is not None else b""
    if not data:
        return page(
            request,
            settings,
            admin,
            "paybill.html",
            422,
            report=None,
            statement=None,
            error="choose the statement's CSV file to upload",
        )
    try:
        read, report = await money_views.paybill_report(pool, data)
    except InvalidInput as exc:
        return page(request, settings, admin, "paybill.html", 422, report=None, statement=None, error=str(exc))
    return page(request, settings, admin, "paybill.html", report=report, statement=read, error=None)
