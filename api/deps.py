"""Dependencies of the routers, as `Annotated` aliases in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from arq.connections import ArqRedis
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from kiota.auth import verify_token
from kiota.daraja import DarajaClient
from kiota.db import Pool
from kiota.errors import AuthError
from kiota.records import User
from kiota.settings import Settings
from kiota.users import ensure_user

if TYPE_CHECKING:
    from api.app import Resources


async def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


# Dependencies are `async def`: FastAPI runs a plain `def` dependency in a thread, per request.
ResourcesDep = Annotated["Resources", Depends(get_resources)]


async def get_settings(resources: ResourcesDep) -> Settings:
    return resources.settings


async def get_pool(resources: ResourcesDep) -> Pool:
    return resources.pool


async def get_queue(resources: ResourcesDep) -> ArqRedis:
    return resources.queue


async def get_daraja(resources: ResourcesDep) -> DarajaClient:
    return resources.daraja


SettingsDep = Annotated[Settings, Depends(get_settings)]
DarajaDep = Annotated[DarajaClient, Depends(get_daraja)]
QueueDep = Annotated[ArqRedis, Depends(get_queue)]
PoolDep = Annotated[Pool, Depends(get_pool)]

_bearer = HTTPBearer(auto_error=False, description="HS256 JWT whose `sub` is the user's id")


async def get_current_user(
    resources: ResourcesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthError("missing bearer token")
    settings = resources.settings
    subject = verify_token(
        credentials.credentials,
        settings.jwt_secret.get_secret_value(),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    return await ensure_user(resources.pool, subject, resources.deposit_key)


CurrentUser = Annotated[User, Depends(get_current_user)]
