"""What every job needs, typed: built once in the worker's start-up and handed to jobs in `ctx`.

arq gives each job a copy of its `ctx` dict; ours holds one `WorkerContext` under
`WorkerContext.KEY`, and a job takes it in one line: `deps = WorkerContext.of(ctx)`. Its waits
and backoffs come from a `WorkerTuning`, which tests shorten (`build_workers(settings, queue, ctx, tuning=...)`).
The process's own state across arq workers (outages, the jobs running here) is one `WorkerState`.
arq's own keys (`redis`, `job_id`, …) are read here too, and nowhere else: `arq_redis(ctx)`,
`ArqJob.of(ctx)` and `running_job_id(ctx)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from arq.connections import ArqRedis

from jobs.liveness import Liveness
from kiota.chain_rpc import ChainReader
from kiota.confirm import ConfirmTiming
from kiota.daraja import DarajaClient
from kiota.db import Pool, close_pool, create_pool
from kiota.errors import ConfigError
from kiota.ingester import ScanConfig
from kiota.metrics import Flusher
from kiota.payouts import LaneConfig
from kiota.settings import WorkerSettings
from kiota.treasury import BlockPace, Treasury

if TYPE_CHECKING:
    from jobs.outages import Outages


@dataclass(frozen=True, slots=True)
class WorkerTuning:
    """How long jobs wait and back off; the defaults are production's, tests shorten them."""

    lane: LaneConfig = field(default_factory=LaneConfig)
    backoff_base_seconds: float = 1.0  # a failed payout's retries
    query_backoff_seconds: float = 30.0  # a late callback's STK queries
    confirm_timing: ConfirmTiming = field(default_factory=ConfirmTiming)


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """The worker's settings, pool, clients and tuning, and who it is."""

    KEY: ClassVar[str] = "worker_context"

    settings: WorkerSettings
    pool: Pool
    queue: ArqRedis  # arq's Redis client: the queue the jobs come from and go to
    treasury: Treasury | None  # None: no TREASURY_PRIVATE_KEY, so this worker serves no payouts
    daraja: DarajaClient
    chain_reader: ChainReader
    scan_config: ScanConfig
    lane: LaneConfig
    confirm_timing: ConfirmTiming
    backoff_base_seconds: float
    query_backoff_seconds: float
    worker_id: str
    started_at: datetime
    liveness: Liveness
    metrics: Flusher  # this process's events (jobs, errors, fees), summed with every other's in Redis
    more_treasuries: tuple[Treasury, ...] = ()  # TREASURY_PRIVATE_KEY's other keys: a lane each

    @classmethod
    def of(cls, ctx: Mapping[str, Any]) -> WorkerContext:
        context: WorkerContext = ctx[cls.KEY]
        return context

    @classmethod
    def find(cls, ctx: Mapping[str, Any]) -> WorkerContext | None:
        """The context, or None before the worker's first start built it (a shutdown may come first)."""
        context: WorkerContext | None = ctx.get(cls.KEY)
        return context

    def signer(self) -> Treasury:
        """The (first) treasury that signs payouts; only a worker serving `payouts` has it (settings ensure that)."""
        if self.treasury is None:
            raise ConfigError("this worker has no TREASURY_PRIVATE_KEY: it cannot serve the payouts queue")
        return self.treasury

    def signers(self) -> tuple[Treasury, ...]:
        """Every treasury that signs payouts, one lane each (kiota/payouts/lanes.py)."""
        return (self.signer(), *self.more_treasuries)

    async def aclose(self) -> None:
        await self.liveness.release(self.pool)
        for treasury in (self.treasury, *self.more_treasuries):
            if treasury is not None:
                await treasury.aclose()
        for client in (self.daraja, self.chain_reader):
            await client.aclose()
        await self.metrics.aclose()  # the last events too
        await close_pool(self.pool)


async def build_context(
    settings: WorkerSettings, tuning: WorkerTuning, queue: ArqRedis, *, pool_size: int
) -> WorkerContext:
    """The pool and clients, once per worker process (a start after an outage keeps them)."""
    async with contextlib.AsyncExitStack() as undo:  # a failure half-way closes what was built
        # No connection floor (min_size=0): asyncpg would keep re-opening the floor while PostgreSQL
        # is down and log a traceback for each try; the outage handling waits for it instead.
        pool = await create_pool(settings.database_url, min_size=0, max_size=pool_size)
        undo.push_async_callback(close_pool, pool)
        treasuries = _treasuries(settings)
        for built in treasuries:
            undo.push_async_callback(built.aclose)
        treasury = treasuries[0] if treasuries else None
        daraja = DarajaClient.from_settings(settings, redis=queue)  # one token for the app
        undo.push_async_callback(daraja.aclose)
        chain_reader = ChainReader(settings.base_rpc_url)
        undo.push_async_callback(chain_reader.aclose)
        worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        context = WorkerContext(
            settings=settings,
            pool=pool,
            queue=queue,
            treasury=treasury,
            more_treasuries=tuple(treasuries[1:]),
            daraja=daraja,
            chain_reader=chain_reader,
            scan_config=ScanConfig(
                chain_id=settings.base_chain_id,
                token=settings.base_usdc_address,
                # every treasury's payouts are ours, never deposits (a maintenance-only worker knows none)
                treasury=next(iter(settings.treasury_addresses), None),
                other_treasuries=tuple(settings.treasury_addresses[1:]),
                confirmations_required=settings.deposit_confirmations_required,
                max_checks=settings.intent_max_checks,
            ),
            # a payout's finality is the deposits' (DEPOSIT_CONFIRMATIONS_REQUIRED); its pipeline's cap is a setting
            lane=dataclasses.replace(
                tuning.lane,
                confirmations_required=settings.deposit_confirmations_required,
                max_in_flight=settings.payout_max_in_flight,
            ),
            confirm_timing=tuning.confirm_timing,
            backoff_base_seconds=tuning.backoff_base_seconds,
            query_backoff_seconds=tuning.query_backoff_seconds,
            worker_id=worker_id,
            started_at=datetime.now(UTC),
            liveness=Liveness.of_worker(worker_id),
            metrics=Flusher(queue),
        )
        undo.pop_all()
    context.metrics.start()
    return context


def _treasuries(settings: WorkerSettings) -> list[Treasury]:
    """The signing treasuries, one per key of TREASURY_PRIVATE_KEY (a worker for chain and maintenance only may
    go without, knowing the treasuries by TREASURY_ADDRESS; settings check that both name the same accounts).
    Each knows all of them: deposits are spread over their lanes."""
    treasuries = [
        Treasury(settings.base_rpc_url, key.get_secret_value(), settings.base_chain_id, settings.base_usdc_address)
        for key in settings.treasury_keys
    ]
    pace = BlockPace()  # one chain
    for treasury in treasuries:
        treasury.join([t.address for t in treasuries], pace)
    return treasuries


@dataclass(frozen=True, slots=True)
class RunningJob:
    """What arq needs to hold a job again: its function, arguments, queue score and enqueue time."""

    function: str
    args: tuple[object, ...]
    kwargs: dict[str, object]
    score: int
    enqueue_time_ms: int


@dataclass(eq=False)
class WorkerState:
    """What a worker process keeps across its arq workers (after an outage a fresh one starts on the same
    `ctx`): which services are down, the jobs running here (`jobs/outages.py`), and whether it started."""

    KEY: ClassVar[str] = "worker_state"

    outages: Outages
    running: dict[str, RunningJob] = field(default_factory=dict)
    started: bool = False
    heartbeats: asyncio.Task[None] | None = None  # the process's heartbeat (jobs/worker.py), from its first start

    @classmethod
    def of(cls, ctx: Mapping[str, Any]) -> WorkerState | None:
        state: WorkerState | None = ctx.get(cls.KEY)
        return state


@dataclass(frozen=True, slots=True)
class ArqJob:
    """What arq says, in a job's `ctx`, of the job running now (None outside a job)."""

    job_id: str | None
    job_try: int | None
    score: int | None
    enqueue_time: datetime | None

    @classmethod
    def of(cls, ctx: Mapping[str, Any]) -> ArqJob:
        return cls(ctx.get("job_id"), ctx.get("job_try"), ctx.get("score"), ctx.get("enqueue_time"))


def running_job_id(ctx: Mapping[str, Any]) -> str:
    """The id of the job running now: arq sets it in every job's `ctx`."""
    job_id = ArqJob.of(ctx).job_id
    if job_id is None:
        raise RuntimeError("no job is running in this context")
    return job_id


def arq_redis(ctx: Mapping[str, Any]) -> ArqRedis:
    """arq's Redis client, which a worker's start-up puts in `ctx` (the context keeps it as `queue`)."""
    redis: ArqRedis = ctx["redis"]
    return redis
