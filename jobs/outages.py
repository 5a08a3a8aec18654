"""The worker through Redis and PostgreSQL outages: it waits, says so once, and resumes.

PostgreSQL is the record and Redis only the queue, so neither going away is a reason for
`kiota worker` to exit. Three pieces, all outside arq (which is left as it is):

- `Outages` knows which service is down. The first failure of an outage logs one warning;
  a probe every `PROBE_SECONDS` finds the service back, and one info line says so.
- `outage_aware` wraps every job function. A failure that an outage explains is no
  traceback: a cron tick is skipped, a job waits for the service (bounded) and runs again.
- `supervise` runs arq's `Worker.main`. arq's poll loop ends on the first Redis error, and a
  start-up ends on the first PostgreSQL one; the supervisor then waits for the service and
  starts a fresh `Worker` on the same context and Redis client. That worker's start-up puts
  back in Redis the jobs still running here (Redis may have restarted empty) and re-enqueues
  what PostgreSQL says is due, so nothing is lost and no job runs twice at once here.
  SIGTERM stops picking jobs, lets running ones finish (up to the completion wait), then returns.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import signal
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from typing import Any

import asyncpg
import structlog
from arq import Retry
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import serialize_job
from arq.worker import Worker
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs.context import ArqJob, RunningJob, WorkerState
from kiota.db import connection_lost
from kiota.job_names import arq_queue_of

log = structlog.get_logger(__name__)

REDIS = "redis"
POSTGRES = "postgresql"
PROBE_SECONDS = 0.5  # a service is found back at most this long after it answers again
PROBE_TIMEOUT_SECONDS = 2.0
# A job that meets an outage waits this long for the service before arq runs it again; well
# below the job timeout (40 s), so waiting never looks like a hung job.
JOB_WAIT_SECONDS = 15.0
RETRY_SOON_SECONDS = 0.5

# Errors that can only mean the connection to Redis was lost.
_REDIS_LOST = (RedisConnectionError, RedisTimeoutError)
# Errors that may mean PostgreSQL is unreachable (asyncpg's connect raises them; a connection
# dying under a query can surface as asyncpg's internal state error) or something else entirely
# (another socket, a misuse): a probe decides.
_MAYBE_POSTGRES = (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError)

Probe = Callable[[], Awaitable[object]]


def service_behind(exc: BaseException) -> tuple[str, bool] | None:
    """Which service a failure may come from, and whether the error alone proves that the
    connection to it was lost. None: not a connection failure at all."""
    if isinstance(exc, _REDIS_LOST) or (isinstance(exc, RedisError) and any(map(_redis_lost, _causes(exc)))):
        return REDIS, True  # the second: e.g. WatchError("A ConnectionError occurred on while watching …")
    if connection_lost(exc):
        return POSTGRES, True
    if isinstance(exc, _MAYBE_POSTGRES):  # TimeoutError is an OSError
        return POSTGRES, False
    return None


def _redis_lost(exc: BaseException) -> bool:
    return isinstance(exc, _REDIS_LOST)


def _causes(exc: BaseException) -> list[BaseException]:
    """What `exc` was raised from or while handling, nearest first (a few links are enough)."""
    found: list[BaseException] = []
    link = exc.__cause__ or exc.__context__
    while link is not None and len(found) < 5:
        found.append(link)
        link = link.__cause__ or link.__context__
    return found


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


async def postgres_answers(dsn: str) -> None:
    """Probe: a fresh connection, so a pool of dead connections cannot answer for the server."""
    conn = await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT_SECONDS)
    await conn.close(timeout=PROBE_TIMEOUT_SECONDS)


class Outages:
    """Which services are down, each outage logged once: a warning when it is first met, an
    info line when the service is back.

    PostgreSQL is declared back by the prober (after the `on_back` hook). Redis is too, unless
    a supervisor resumes it (`supervised=True`): Redis may have come back empty, so it is back
    only once a fresh worker has put the running jobs back and swept (`mark_up`)."""

    def __init__(self, probes: Mapping[str, Probe], *, supervised: bool = False) -> None:
        self._probes = dict(probes)
        self._self_healing = {POSTGRES} if supervised else set(self._probes)
        self._down: dict[str, float] = {}
        self._up = {service: asyncio.Event() for service in self._probes}
        self._reachable = {service: asyncio.Event() for service in self._probes}
        self._lost = {service: asyncio.Event() for service in self._probes}
        for service in self._probes:
            self._up[service].set()
            self._reachable[service].set()
        self._probers: dict[str, asyncio.Task[None]] = {}
        self._on_back: dict[str, Callable[[], Awaitable[None]]] = {}
        self.stopping = asyncio.Event()

    def on_back(self, service: str, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` when the prober finds `service` back, before it is declared up."""
        self._on_back[service] = hook

    def is_down(self, service: str) -> bool:
        return service in self._down

    async def answers(self, service: str) -> bool:
        try:
            await asyncio.wait_for(self._probes[service](), PROBE_TIMEOUT_SECONDS)
        except Exception:
            return False
        return True

    def report(self, service: str, error: BaseException) -> None:
        """`service` failed: the first report of an outage logs it; probing starts (again)."""
        self._lost[service].set()
        if service not in self._down:
            self._down[service] = time.monotonic()
            self._up[service].clear()
            log.warning("service unreachable; the worker waits for it", service=service, error=_describe(error))
        prober = self._probers.get(service)
        if prober is None or prober.done():  # a service found back that failed again before its resume
            self._reachable[service].clear()
            self._probers[service] = asyncio.create_task(
                self._probe_until_back(service),
                name=f"probe {service}",
                context=contextvars.Context(),  # not the context (job id …) of the job that met the outage
            )

    def mark_up(self, service: str) -> None:
        """`service` works again (a start-up just used it); logs the end of its outage, if any."""
        since = self._down.pop(service, None)
        self._lost[service].clear()
        self._reachable[service].set()
        self._up[service].set()
        prober = self._probers.pop(service, None)
        if prober is not None and prober is not asyncio.current_task():
            prober.cancel()
        if since is not None:
            down_seconds = round(time.monotonic() - since, 1)
            log.info("service back; the worker resumes", service=service, down_seconds=down_seconds)

    async def assess(self, exc: BaseException) -> tuple[str, bool] | None:
        """What a failure says about the services: (service, down) if it is a lost connection,
        down meaning an outage (reported); (service, False): the connection was lost but the
        service answers again (it restarted); None: not a connection failure."""
        behind = service_behind(exc)
        if behind is None:
            return None
        service, certain = behind
        if service not in self._probes:
            return None
        if self.is_down(service):
            self.report(service, exc)
            return service, True
        # A lost Redis connection is an outage even if Redis answers now: it may have restarted
        # empty, and only a resume puts the running jobs back.
        if (certain and service == REDIS) or not await self.answers(service):
            self.report(service, exc)
            return service, True
        return (service, False) if certain else None

    async def wait_up(self, service: str, seconds: float | None = None) -> bool:
        """Until `service` is declared back, the worker stops, or `seconds` pass; True if it is back."""
        return await self._wait(self._up[service], seconds)

    async def wait_reachable(self, service: str) -> bool:
        """Until a probe of `service` succeeds or the worker stops."""
        return await self._wait(self._reachable[service], None)

    async def wait_lost(self, service: str) -> None:
        await self._lost[service].wait()

    async def _wait(self, event: asyncio.Event, seconds: float | None) -> bool:
        if event.is_set() or self.stopping.is_set():
            return event.is_set()
        waiters = {asyncio.create_task(event.wait()), asyncio.create_task(self.stopping.wait())}
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return event.is_set()

    async def _probe_until_back(self, service: str) -> None:
        while True:  # an outside service: nothing to wait on but the next probe
            if await self.answers(service):
                break
            await asyncio.sleep(PROBE_SECONDS)
        self._lost[service].clear()
        self._reachable[service].set()
        if service not in self._self_healing:
            return
        hook = self._on_back.get(service)
        if hook is not None:
            try:
                await hook()
            except Exception as exc:  # it flapped: the next failure reports it again
                log.debug("on-back hook failed", service=service, error=_describe(exc))
        self.mark_up(service)

    async def aclose(self) -> None:
        probers = list(self._probers.values())
        self._probers.clear()
        for prober in probers:
            prober.cancel()
        await asyncio.gather(*probers, return_exceptions=True)


# --- jobs --------------------------------------------------------------------------------------


JobFunction = Callable[..., Coroutine[Any, Any, Any]]


def outage_aware(function: JobFunction, *, cron: bool = False) -> JobFunction:
    """`function` as a job that outages do not fail. A cron tick during an outage is skipped
    (the next tick comes anyway); a job waits for the service, then arq runs it again. A job
    is recorded in the `WorkerState`'s running jobs while it runs, so a resume can put it back in Redis."""
    name = function.__name__

    @functools.wraps(function)
    async def job(ctx: dict[str, Any], *args: object, **kwargs: object) -> Any:
        state = WorkerState.of(ctx)
        outages = state.outages if state is not None else None
        running = None if cron or state is None else state.running
        arq_job = ArqJob.of(ctx)
        job_id = arq_job.job_id or ""
        if running is not None:
            assert arq_job.enqueue_time is not None and arq_job.score is not None, "arq gives every job both"
            enqueued_ms = int(arq_job.enqueue_time.timestamp() * 1000)
            running[job_id] = RunningJob(name, args, kwargs, int(arq_job.score), enqueued_ms)
        try:
            return await function(ctx, *args, **kwargs)
        except Exception as exc:
            verdict = await outages.assess(exc) if outages is not None else None
            if verdict is None:
                raise
            service, down = verdict
            if not down:
                log.info("lost a connection; the service answers again", service=service, error=_describe(exc))
            if cron:
                return f"skipped: {service} {'unavailable' if down else 'connection lost'}"
            if not down:
                raise Retry(defer=RETRY_SOON_SECONDS) from exc
            assert outages is not None
            await outages.wait_up(service, JOB_WAIT_SECONDS)
            raise Retry(defer=0) from exc
        finally:
            if running is not None:
                running.pop(job_id, None)

    return job


async def restore_running_jobs(queue: ArqRedis, running: Mapping[str, RunningJob], in_progress_seconds: float) -> int:
    """Put the jobs still running in this process back in Redis as arq holds a running job: its
    data, its place in the queue (original score) and its in-progress key. Redis may have
    restarted empty under them; without this, the sweeper would enqueue them again and this
    worker would run each twice at once, and a retry of one would find no job to run."""
    jobs = dict(running)
    if not jobs:
        return 0
    async with queue.pipeline(transaction=True) as tr:
        for job_id, job in jobs.items():
            data = serialize_job(
                job.function, job.args, job.kwargs, None, job.enqueue_time_ms, serializer=queue.job_serializer
            )
            tr.set(in_progress_key_prefix + job_id, b"1", px=int(in_progress_seconds * 1000))
            tr.set(job_key_prefix + job_id, data, px=queue.expires_extra_ms, nx=True)
            tr.zadd(arq_queue_of(job.function), {job_id: job.score}, nx=True)
        await tr.execute()
    return len(jobs)


# --- the supervisor ----------------------------------------------------------------------------


async def supervise(new_workers: Callable[[], Sequence[Worker]], outages: Outages, completion_wait: float) -> None:
    """Run the process's arq workers (one per queue) until SIGTERM or SIGINT, through outages (see the
    module's docstring): an outage met by any of them retires them all, and a fresh set starts.

    On a signal no job is picked any more; running jobs get `completion_wait` seconds to finish
    (during an outage too), then the rest are cancelled (arq runs them again later)."""
    loop = asyncio.get_running_loop()
    workers: list[Worker] = []

    def stop(sig: signal.Signals) -> None:
        for worker in workers:
            worker.allow_pick_jobs = False
        if not outages.stopping.is_set():
            running = sum(1 for w in workers for t in w.tasks.values() if not t.done())
            log.info("worker stopping; running jobs may finish", signal=sig.name, running=running)
            outages.stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)
    try:
        while not outages.stopping.is_set():
            current = new_workers()
            workers = [*_without_finished(workers), *current]
            started = loop.time()
            service = await _run_until_outage(current, outages)
            if service is None:
                break
            for worker in current:
                worker.allow_pick_jobs = False  # retired: the jobs they run finish on their own
            await outages.wait_reachable(service)
            if loop.time() - started < PROBE_SECONDS:  # failing at once again: do not spin
                await asyncio.sleep(PROBE_SECONDS)
    finally:
        try:
            await _finish(workers, completion_wait)
        finally:  # a second SIGTERM while jobs finish changes nothing; after this, it ends the process
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


async def _run_until_outage(workers: Sequence[Worker], outages: Outages) -> str | None:
    """Run `workers` until they stop (None) or an outage ends one of them (the service)."""
    mains = set()
    for worker in workers:
        worker.main_task = asyncio.create_task(worker.main(), name=f"arq worker {worker.queue_name}")
        mains.add(worker.main_task)
    running, failed = await _until_one_fails(mains, outages)
    if outages.stopping.is_set():
        return None  # the poll loops go on, picking nothing, until the running jobs are done
    if not running and failed is None:  # burst workers that are done
        outages.stopping.set()
        return None
    for worker in workers:  # one met an outage: all retire (their running jobs finish on their own)
        worker.allow_pick_jobs = False
    await cancel_until_done(running)
    await asyncio.wait(mains)
    for main in mains:  # each failure read (the first decides), so none is reported as never retrieved
        if not main.cancelled():
            main.exception()
    exc = None if failed is None or failed.cancelled() else failed.exception()
    if exc is None:  # a job met the Redis outage before the poll loops did
        return REDIS
    verdict = await outages.assess(exc)
    if verdict is None:
        raise exc
    return verdict[0]


async def _until_one_fails(
    mains: set[asyncio.Task[None]], outages: Outages
) -> tuple[set[asyncio.Task[None]], asyncio.Task[Any] | None]:
    """Wait until a worker's main loop fails, all end, the worker stops, or a job loses Redis; returns the
    loops still running and the failed one (None: none failed)."""
    stopping = asyncio.create_task(outages.stopping.wait())
    redis_lost = asyncio.create_task(outages.wait_lost(REDIS))
    running = set(mains)
    failed: asyncio.Task[Any] | None = None
    try:
        while running and failed is None and not stopping.done() and not redis_lost.done():
            done, _ = await asyncio.wait({*running, stopping, redis_lost}, return_when=asyncio.FIRST_COMPLETED)
            for main in done & running:
                running.discard(main)
                if main.cancelled() or main.exception() is not None:
                    failed = main
    finally:
        stopping.cancel()
        redis_lost.cancel()
    return running, failed


def _without_finished(workers: list[Worker]) -> list[Worker]:
    """Forget retired workers whose jobs are all done (their failures were the outage's)."""
    kept = []
    for worker in workers:
        if all(t.done() for t in worker.tasks.values()):
            for task in worker.tasks.values():
                if not task.cancelled():
                    task.exception()
            continue
        kept.append(worker)
    return kept


def _runs(workers: Sequence[Worker]) -> list[asyncio.Task[Any]]:
    return [t for w in workers for t in w.tasks.values()]


async def _finish(workers: list[Worker], completion_wait: float) -> None:
    """Running jobs get `completion_wait` seconds, then are cancelled; then the poll loops end. The process closes
    its pool once this returns, so the runs are looked at again until none is left, and once more after the poll
    loops end: a loop may have been starting a job when the worker stopped picking them."""
    for worker in workers:  # stopped by a signal or an outage already; by a cancel of `supervise`, not yet
        worker.allow_pick_jobs = False
    deadline = asyncio.get_running_loop().time() + completion_wait
    await _let_runs_end(workers, deadline)
    await _starts_done(workers, deadline)
    await cancel_until_done([w.main_task for w in workers if w.main_task is not None])
    await _let_runs_end(workers, deadline)
    await asyncio.gather(*_runs(workers), return_exceptions=True)


async def _starts_done(workers: Sequence[Worker], deadline: float) -> None:
    """Wait for the jobs being started (jobs/worker.py `QueueWorker.starting`): a poll loop cancelled between
    setting a job's in-progress key and making its run would leave the job to wait for that key to expire (50 s)."""
    loop = asyncio.get_running_loop()
    while any(getattr(w, "starting", 0) for w in workers):  # a few Redis round trips: polled, not signalled
        if loop.time() >= deadline:
            return
        await asyncio.sleep(0.01)


async def _let_runs_end(workers: Sequence[Worker], deadline: float) -> None:
    """Wait for every run of `workers`, those started meanwhile too, until `deadline`; then cancel those left."""
    loop = asyncio.get_running_loop()
    while unfinished := [t for t in _runs(workers) if not t.done()]:
        if loop.time() >= deadline:
            log.warning("jobs still running at shutdown were cancelled; they run again later", jobs=len(unfinished))
            await cancel_jobs_until_done(workers)
            return
        await asyncio.wait(unfinished, timeout=deadline - loop.time())


async def cancel_until_done(tasks: Collection[asyncio.Task[Any]], every: float = 0.5) -> None:
    """Cancel `tasks` until each has ended. A poll loop's cancellation can be lost inside redis-py (its
    timeouts catch the CancelledError and go on), and one cancel would leave the loop polling for ever and
    the process never exiting on SIGTERM: it is asked again until it ends."""
    while pending := [task for task in tasks if not task.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=every)
    await asyncio.gather(*tasks, return_exceptions=True)


async def cancel_jobs_until_done(workers: Sequence[Worker], every: float = 0.5) -> None:
    """Cancel the running jobs of `workers` until each run has ended. The job's own task is cancelled (arq's
    `job_tasks`), not only arq's `run_job` around it: a second cancel of `run_job` only ends its wait for the job
    (`asyncio.wait_for`, Python 3.11) and leaves the job running alone. One cancel is not enough either: it can be
    lost inside redis-py, as a poll loop's can. A run not in its job (starting, or recording its end) is cancelled
    itself."""
    runs = [(worker, job_id, run) for worker in workers for job_id, run in worker.tasks.items()]
    while pending := [(worker, job_id, run) for worker, job_id, run in runs if not run.done()]:
        for worker, job_id, run in pending:
            (worker.job_tasks.get(job_id) or run).cancel()
        await asyncio.wait([run for _, _, run in pending], timeout=every)
    await asyncio.gather(*(run for _, _, run in runs), return_exceptions=True)
