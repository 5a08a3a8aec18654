"""HTTP Basic for the admin surface (`/metrics`, the dashboard, the admin API), as one dependency.

Credentials are `ADMIN_USERNAME`/`ADMIN_PASSWORD`; with either unset the admin surface is closed
(every request 401). Both the name and the password are compared in constant time, and both always,
so the answer's timing says nothing about which was wrong. Without valid credentials:
401 with `WWW-Authenticate: Basic`, so a browser asks for them.
"""

from __future__ import annotations

import hmac
from typing import Annotated

import structlog
from fastapi import Depends, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from api.deps import SettingsDep
from kiota.settings import Settings

log = structlog.get_logger(__name__)

REALM = "kiota-admin"
_basic = HTTPBasic(auto_error=False, realm=REALM, description="ADMIN_USERNAME / ADMIN_PASSWORD")


def admin_credentials_match(settings: Settings, username: str, password: str) -> bool:
    expected_user = (settings.admin_username or "").encode()
    expected_password = settings.admin_password.get_secret_value().encode() if settings.admin_password else b""
    user_ok = hmac.compare_digest(username.encode(), expected_user)
    password_ok = hmac.compare_digest(password.encode(), expected_password)
    return settings.admin_enabled and user_ok and password_ok


async def require_admin(
    settings: SettingsDep, credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)]
) -> str:
    """The admin's name, or 401."""
    if credentials is not None and admin_credentials_match(settings, credentials.username, credentials.password):
        return credentials.username
    if credentials is not None:
        log.warning("admin credentials refused")  # never the name or password tried
    raise HTTPException(
        status_code=401,
        detail="admin credentials required",
        headers={"WWW-Authenticate": f'Basic realm="{REALM}"'},
    )


AdminUser = Annotated[str, Depends(require_admin)]
