"""HTTP Basic for the admin surface (`/metrics`, the dashboard, the admin API), as dependencies.

Credentials are `ADMIN_USERNAME`/`ADMIN_PASSWORD` (the bootstrap operator) or an enabled account made by
`kiota admin add-user` (`kiota/operators.py` checks them; a refusal's timing says nothing about which part
was wrong, nor whether the name exists). Without valid credentials: 401 with `WWW-Authenticate: Basic`,
so a browser asks for them. `AdminUser` is any admin, viewer or operator; `OperatorUser` answers a viewer
403. A state-changing request also needs `api/csrf.py`'s checks.
"""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import Depends, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from api.deps import PoolDep, SettingsDep
from kiota.operators import Admin, authenticate

log = structlog.get_logger(__name__)

REALM = "kiota-admin"
_basic = HTTPBasic(auto_error=False, realm=REALM, description="ADMIN_USERNAME / ADMIN_PASSWORD, or an operator account")


async def require_admin(
    settings: SettingsDep, pool: PoolDep, credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)]
) -> Admin:
    """The admin, or 401."""
    if credentials is not None:
        admin = await authenticate(pool, settings, credentials.username, credentials.password)
        if admin is not None:
            return admin
        log.warning("admin credentials refused")  # never the name or password tried
    raise HTTPException(
        status_code=401,
        detail="admin credentials required",
        headers={"WWW-Authenticate": f'Basic realm="{REALM}"'},
    )


AdminUser = Annotated[Admin, Depends(require_admin)]


async def require_operator(admin: AdminUser) -> Admin:
    """An admin who may act, or 403: viewers read."""
    if not admin.may_act:
        raise HTTPException(status_code=403, detail="viewers read; this needs an operator")
    return admin


OperatorUser = Annotated[Admin, Depends(require_operator)]
