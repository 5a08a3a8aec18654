"""The FastAPI app: built by `create_app`, its resources made in the lifespan."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import structlog
from arq.connections import ArqRedis
from fastapi import FastAPI

from api import dashboard
from api.body_limit import BodyLimitMiddleware
from api.errors import install_error_handlers
from api.middleware import RequestContextMiddleware
from api.ratelimit import ClientRateLimitMiddleware
from api.routers import deposits, health, intents, jobs, metrics, mpesa_callback, operators, portfolio, queues
from api.routers.metrics import SnapshotCache
from kiota.callbacks import CallbackGroups
from kiota.chain_rpc import ChainReader
from kiota.daraja import DarajaClient
from kiota.db import Pool, close_pool, create_pool
from kiota.errors import ConfigError
from kiota.hdwallet import ExtendedPublicKey
from kiota.limiter import Limiter
from kiota.metrics import Flusher
from kiota.netaddr import FirstSeen, Network, parse_networks
from kiota.queue import create_queue
from kiota.ratelimits import Policy
from kiota.settings import LOCAL_HOSTS, Settings, load_settings

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Resources:
    """What request handlers need, built once per process."""

    settings: Settings
    pool: Pool
    queue: ArqRedis
    deposit_key: ExtendedPublicKey
    daraja: DarajaClient
    trusted_proxies: list[Network]
    callback_allowlist: list[Network]
    callbacks: CallbackGroups
    limiter: Limiter
    limit_policy: Policy
    metrics_cache: SnapshotCache
    chain: ChainReader  # the chain's head, for the scan lag in /metrics
    refused_callers: FirstSeen = field(default_factory=FirstSeen)  # callers the allowlist refused, logged once


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; settings are loaded in the lifespan unless given (tests give them)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config = settings or load_settings(Settings)
        jwt_secret = config.jwt_secret.get_secret_value()
        if not jwt_secret:  # WorkerSettings have none: they must never serve the API
            raise ConfigError("missing required setting JWT_SECRET")
        if not config.trusted_proxy_ips and (urlsplit(config.public_url).hostname or "") not in LOCAL_HOSTS:
            log.warning(
                "TRUSTED_PROXY_IPS is empty at a public URL: behind a proxy every client has the proxy's "
                "address, so the per-address limit is shared by all and the callback allowlist sees the proxy"
            )
        # min_size=0: the process starts (and /health/ready answers 503) while
        # PostgreSQL is down, instead of crash-looping.
        pool = await create_pool(config.database_url, min_size=0, max_size=20)
        queue = create_queue(config.redis_url)
        daraja = DarajaClient.from_settings(config, redis=queue)  # the token is shared with the workers
        callbacks = CallbackGroups(pool, queue)
        callbacks.start()
        limiter = Limiter(config.redis_url)
        chain = ChainReader(config.base_rpc_url)
        flusher = Flusher(queue)  # this process's events, summed with every other's in Redis
        flusher.start()
        app.state.resources = Resources(
            config,
            pool,
            queue,
            config.deposit_key,
            daraja,
            parse_networks(config.trusted_proxy_ips),
            parse_networks(config.callback_allowlist),
            callbacks,
            limiter=limiter,
            limit_policy=Policy.parse(
                initiate_per_user=config.limit_initiate_per_user,
                initiate_per_phone=config.limit_initiate_per_phone,
                intents_per_user=config.limit_intents_per_user,
                per_ip=config.limit_per_ip,
                pepper=hashlib.sha256(b"kiota rate limits:" + jwt_secret.encode()).digest(),
            ),
            metrics_cache=SnapshotCache(),
            chain=chain,
        )
        try:
            yield
        finally:
            await limiter.aclose()
            await callbacks.aclose()
            await daraja.aclose()
            await chain.aclose()
            await flusher.aclose()  # the last events too, before the Redis client goes
            await queue.aclose(close_connection_pool=True)
            await close_pool(pool)

    app = FastAPI(
        title="Kiota",
        version="0.1.0",
        description="M-Pesa and USDC-on-Base deposits into a savings portfolio.",
        lifespan=lifespan,
    )
    # The last added runs first: the access log sees every answer, then the per-address limit
    # refuses a flood before a byte of its body is read, then the body limit.
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(ClientRateLimitMiddleware)
    app.add_middleware(RequestContextMiddleware)
    install_error_handlers(app)
    # Routes are matched in order: Safaricom's webhook, the busiest, first.
    app.include_router(mpesa_callback.router, prefix="/api/v1")
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(portfolio.router, prefix="/api/v1")
    app.include_router(deposits.router, prefix="/api/v1")
    app.include_router(intents.router, prefix="/api/v1")
    app.include_router(jobs.router, prefix="/api/v1")
    app.include_router(operators.router, prefix="/api/v1")
    app.include_router(queues.router, prefix="/api/v1")
    app.mount("/admin/static", dashboard.static(), name="admin-static")
    app.include_router(dashboard.build_router())
    return app
