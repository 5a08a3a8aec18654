"""Rendering a dashboard page: the template, the admin who asked, a fresh CSRF token for its forms,
and the one-line notice an action left on the redirect back (`?notice=`)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

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
    return _templates.TemplateResponse(
        request,
        template,
        {
            "admin": admin,
            "nav": NAV,
            "csrf_field": FORM_FIELD,
            "csrf_token": issue_token(token_key(settings), admin.name, time.time()),
            "notice": request.query_params.get("notice"),
            **context,
        },
        status_code=status_code,
    )


def back(path: str, notice: str) -> RedirectResponse:
    """After a form's action: see-other back to a dashboard page, with what was done."""
    if not path.startswith("/admin"):  # never an open redirect
        path = "/admin/queues"
    separator = "&" if "?" in path else "?"
    return RedirectResponse(f"{path}{separator}{urlencode({'notice': notice})}", status_code=303)


def page_number(request: Request) -> int:
    """The `?page=` of a paged list, from 1; anything else is the first page."""
    text = request.query_params.get("page", "1")
    return max(int(text), 1) if text.isdigit() and len(text) < 7 else 1
