"""The dashboard's front door: `/admin` goes to the queues."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import RedirectResponse

from api.admin_auth import AdminUser

router = APIRouter()


@router.get("")
async def front(admin: AdminUser) -> RedirectResponse:
    return RedirectResponse("/admin/queues", status_code=303)
