"""The operators' dashboard (`/admin/...`): server-rendered HTML for people, over the same services as the admin API.

Pages are Jinja2 templates (`templates/`), assets are served by the app itself (`static/`: no CDN, no
build step), and a little plain JS (`static/admin.js`) refreshes the parts marked live. Every page is
admin-only (`AdminUser`: viewers read); every form that changes something posts a CSRF token and is
checked like the admin API (`api/csrf.py`), then answered by a redirect back to the page it came from.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.staticfiles import StaticFiles

from api.csrf import require_csrf
from api.dashboard import actions, home, jobs, money, queues

STATIC_DIR = Path(__file__).parent / "static"


def build_router() -> APIRouter:
    """Every dashboard page under `/admin`; the app mounts `static()` beside it."""
    router = APIRouter(include_in_schema=False, dependencies=[Depends(require_csrf)])
    for pages in (home.router, queues.router, jobs.router, actions.router, money.router):
        router.include_router(pages, prefix="/admin")
    return router


def static() -> StaticFiles:
    return StaticFiles(directory=STATIC_DIR)
