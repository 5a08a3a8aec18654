"""Cross-site request forgery, refused: a state-changing admin request must come from our own pages.

HTTP Basic credentials ride along on every request a browser sends to us, whichever site made it send
it, so a POST/PUT/PATCH/DELETE on the admin surface needs two more things, else 403:
- its `Origin` (or, without one, its `Referer`) is `PUBLIC_BASE_URL`'s origin (a browser sends `Origin`
  on every POST, so a request with neither is refused too);
- a CSRF token that our pages embed (`GET /api/v1/admin/csrf` gives the caller's): in the `X-CSRF-Token`
  header or a form's `csrf_token` field (urlencoded or multipart). It is an HMAC of the admin's name and the time it
  was issued, under a key derived from `JWT_SECRET`, valid for `TOKEN_MAX_AGE_SECONDS`: another site can
  neither read it nor make one, and one admin's token is not another's.

`require_csrf` lets GET/HEAD/OPTIONS through, so it can guard a whole admin router.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Annotated
from urllib.parse import urlsplit

import structlog
from fastapi import Depends, HTTPException, Request

from api.admin_auth import AdminUser
from api.deps import SettingsDep
from kiota.operators import Admin
from kiota.settings import Settings

log = structlog.get_logger(__name__)

HEADER = "X-CSRF-Token"
FORM_FIELD = "csrf_token"
TOKEN_MAX_AGE_SECONDS = 12 * 3600  # a working day: a page left open overnight is reloaded
_CLOCK_SKEW_SECONDS = 60  # issued by another of our processes, whose clock may be a little ahead
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def token_key(settings: Settings) -> bytes:
    return hashlib.sha256(b"kiota admin csrf:" + settings.jwt_secret.get_secret_value().encode()).digest()


def _mac(key: bytes, name: str, issued_at: int) -> str:
    digest = hmac.new(key, f"{name}\n{issued_at}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def issue_token(key: bytes, name: str, now: float) -> str:
    issued_at = int(now)
    return f"{issued_at}.{_mac(key, name, issued_at)}"


def token_valid(key: bytes, name: str, token: str, now: float) -> bool:
    issued, _, mac = token.partition(".")
    if not issued.isdigit() or len(issued) > 12:
        return False
    age = now - int(issued)
    if not -_CLOCK_SKEW_SECONDS <= age <= TOKEN_MAX_AGE_SECONDS:
        return False
    return hmac.compare_digest(mac.encode(), _mac(key, name, int(issued)).encode())


def origin_of(url: str) -> str | None:
    """`scheme://host[:port]`, lower-cased, the scheme's default port left out; None if it is no http(s) URL."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" + ("" if port in (None, _DEFAULT_PORTS[scheme]) else f":{port}")


def same_origin(public_url: str, origin: str | None, referer: str | None) -> bool:
    """Whether the request came from our own site: by its Origin, or by its Referer when it has no Origin."""
    ours = origin_of(public_url)
    sent = origin if origin is not None else referer
    return ours is not None and sent is not None and origin_of(sent) == ours


_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


async def _form_token(request: Request) -> str | None:
    """The token field of a form, urlencoded or multipart (the paybill statement's upload). Read through
    starlette's `request.form()`, which keeps the parsed form on the request: the handler's own `Form`
    fields and `UploadFile` read the same parse, whichever of the two reads first."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() not in _FORM_TYPES:
        return None
    form = await request.form(max_files=1, max_fields=100)
    value = form.get(FORM_FIELD)
    return value if isinstance(value, str) else None


async def require_csrf(request: Request, settings: SettingsDep, admin: AdminUser) -> Admin:
    """The admin, once a state-changing request is shown to come from our pages; else 403."""
    if request.method in SAFE_METHODS:
        return admin
    if not same_origin(settings.public_url, request.headers.get("origin"), request.headers.get("referer")):
        log.warning("admin request from another origin refused", admin=admin.name, method=request.method)
        raise HTTPException(status_code=403, detail="a state-changing admin request must come from our own pages")
    token = request.headers.get(HEADER) or await _form_token(request)
    if token is None or not token_valid(token_key(settings), admin.name, token, time.time()):
        log.warning("admin request without a valid CSRF token refused", admin=admin.name, method=request.method)
        raise HTTPException(status_code=403, detail=f"missing or invalid CSRF token ({HEADER})")
    return admin


CsrfChecked = Annotated[Admin, Depends(require_csrf)]
