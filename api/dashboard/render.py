"""Rendering a dashboard page: the template, the admin who asked, a fresh CSRF token for its forms,
and the one-line notice an action left for the page it went back to.

The notice rides in a cookie (`kiota_notice`, path /admin, HttpOnly, SameSite=Strict) that the next page shows
once and clears, never in the URL: a `?notice=` anyone can write would let another site link an operator to
our own admin page saying whatever it likes ("your session expired: sign in at ..."). Another site cannot set
our cookie, and a strict cookie is not even sent when it links here."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from api.csrf import FORM_FIELD, issue_token, token_key
from kiota.masking import mask_text
from kiota.money import format_usdc
from kiota.operators import Admin
from kiota.settings import Settings

_templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

# The navigation, in order: (path under /admin, label).
NAV: tuple[tuple[str, str], ...] = (
    ("/admin/queues", "Queues"),
    ("/admin/jobs", "Jobs"),
    ("/admin/search", "Search"),
    ("/admin/review", "Review"),
    ("/admin/transfers", "Transfers"),
    ("/admin/reconciliation", "Reconciliation"),
    ("/admin/paybill", "Paybill"),
    ("/admin/actions", "Actions"),
)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "—"


def _took(duration: timedelta | None) -> str:
    """An attempt's duration, as a person reads it."""
    if duration is None:
        return "—"
    seconds = duration.total_seconds()
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _pretty(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


_templates.env.filters["when"] = _when
_templates.env.filters["took"] = _took
_templates.env.filters["pretty"] = _pretty
_templates.env.filters["usdc"] = format_usdc
_templates.env.filters["masked"] = mask_text  # a job's error as shown in lists and timelines


def page(
    request: Request, settings: Settings, admin: Admin, template: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """A whole page (or a fragment, for a template that extends nothing) for this admin."""
    notice = _notice(request)
    response = _templates.TemplateResponse(
        request,
        template,
        {
            "admin": admin,
            "nav": NAV,
            "csrf_field": FORM_FIELD,
            "csrf_token": issue_token(token_key(settings), admin.name, time.time()),
            "notice": notice,
            **context,
        },
        status_code=status_code,
    )
    if notice is not None and not _is_fragment(template):  # shown: once; a live refresh leaves it for its page
        response.delete_cookie(NOTICE_COOKIE, path=_COOKIE_PATH, httponly=True, samesite="strict")
    return response


NOTICE_COOKIE = "kiota_notice"
_COOKIE_PATH = "/admin"
_NOTICE_MAX_CHARS = 1500
_FRAGMENTS = frozenset({"job_rows.html", "queue_cards.html"})
_COOKIE_MAX_BYTES = 3800  # a browser keeps a cookie of up to 4096 bytes, name and attributes included


def _notice(request: Request) -> str | None:
    value = request.cookies.get(NOTICE_COOKIE)
    return unquote(value) if value else None


def _is_fragment(template: str) -> bool:
    """A live refresh's part of a page, which shows no notice: the cookie is left for the page itself."""
    return template in _FRAGMENTS


def back(path: str, notice: str) -> RedirectResponse:
    """After a form's action: see-other back to a dashboard page, with what was done (in the notice cookie)."""
    if not path.startswith("/admin"):  # never an open redirect
        path = "/admin/queues"
    response = RedirectResponse(path, status_code=303)
    text = notice[:_NOTICE_MAX_CHARS]
    while len(value := quote(text, safe="")) > _COOKIE_MAX_BYTES:  # quoting may triple it
        text = text[: len(text) * 3 // 4]
    response.set_cookie(NOTICE_COOKIE, value, path=_COOKIE_PATH, httponly=True, samesite="strict")
    return response


def page_number(request: Request) -> int:
    """The `?page=` of a paged list, from 1; anything else is the first page."""
    text = request.query_params.get("page", "1")
    return max(int(text), 1) if text.isdigit() and len(text) < 7 else 1
