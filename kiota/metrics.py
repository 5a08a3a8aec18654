"""The operators' event metrics, counted in every process and summed across all of them in Redis.

Kiota runs several API processes and several workers, on separate hosts (Render), so a metric that one
process keeps in memory is a fraction of the truth, and whichever process a scrape reaches would answer
with its own fraction. prometheus-client's multiprocess mode sums the processes of one host only. So:

- What PostgreSQL knows exactly is read from it at scrape time (`kiota.store.metrics`): deposits by
  status, open review items, the guards. States, not events: any process answers the same.
- Events (jobs run and their durations, HTTP request durations, callbacks accepted and refused, Daraja
  and RPC errors, payout fees) happen in every process. Each process adds them up in memory
  (`Tally`: a dict update, no I/O, so the webhook's hot path pays nothing for it) and a `Flusher` task
  sends the deltas to one Redis hash every `FLUSH_SECONDS`, in one pipeline (HINCRBY/HINCRBYFLOAT),
  and once more on shutdown. Redis adds every process's deltas, so the sums are the whole system's and
  only grow; `/metrics`, on any API process, renders them (`render_events`).
- Last values (the treasury's balances, read by the payout lane before it signs) are HSET to another
  hash: the newest reading wins, whichever process made it.

Why not the `jobs`/`job_attempts` tables for job counts: operators clean old history, and a counter
computed from rows that get deleted goes down. The Redis sums never do, except when Redis itself is
emptied: Prometheus then sees one counter reset, as after a restart, which `rate()` and `increase()`
handle. A delta that cannot be flushed (Redis down) stays in the tally and goes with the next flush.
A process killed with SIGKILL loses at most its last `FLUSH_SECONDS` of events.

Why not a Redis round trip per event: the webhook answers ~1,700 callbacks/s on one process (bench B1),
and a round trip each would cost more than the rest of the request. One pipeline per second per process
costs Redis a few dozen field updates, however busy the process. Why not a Pushgateway: it keeps the
last value a process pushed, not a sum over processes, so counters from many processes would overwrite
one another. The fields are bounded (functions, route templates, status classes, reasons, codes), and
Redis runs with `noeviction` (render.yaml), so the two hashes stay small and are never evicted.

The tally is one per process, module-level like a structlog logger: it does no I/O and holds no
setting, so nothing needs building; the Flusher, which talks to Redis, is built and started in the
FastAPI lifespan and the worker's start-up (jobs/context.py) and passed the Redis client.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from redis.asyncio import Redis
from redis.exceptions import RedisError

from kiota.job_names import Queue, arq_queue_name

log = structlog.get_logger(__name__)

SUMS_KEY: Final = "kiota:metrics:sums"  # HINCRBY'd by every process: counters and histograms
LAST_KEY: Final = "kiota:metrics:last"  # HSET by every process: the newest reading of a gauge
FLUSH_SECONDS: Final = 1.0
_SEP: Final = "\x1f"  # between a field's name and its label values (none of ours contains it)

Kind = Literal["counter", "histogram", "gauge"]


@dataclass(frozen=True, slots=True)
class Event:
    """One metric summed across processes: its Prometheus name (a counter's without `_total`), help, labels
    and, for a histogram, its bucket bounds."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


# Seconds, from a quick call to the slowest a job or request may take (jobs time out at 40 s).
_DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

JOBS = Event(
    "kiota_jobs", "counter", "Job runs (attempts) by function and outcome, cron ticks included", ("function", "outcome")
)
JOB_DURATION = Event(
    "kiota_job_duration_seconds", "histogram", "How long a job run took, by function", ("function",), _DURATION_BUCKETS
)
HTTP_DURATION = Event(
    "kiota_http_request_duration_seconds",
    "histogram",
    "HTTP request durations by route template (never the raw path), method and status class",
    ("route", "method", "status"),
    _DURATION_BUCKETS[:-2],
)
CALLBACKS_ACCEPTED = Event(
    "kiota_mpesa_callbacks_accepted",
    "counter",
    "M-Pesa callbacks answered 200, by what they did to their deposit (disposition)",
    ("disposition",),
)
CALLBACKS_REFUSED = Event(
    "kiota_mpesa_callbacks_refused",
    "counter",
    "M-Pesa callbacks refused, by reason (wrong_token, address_not_allowed, malformed, not_recorded)",
    ("reason",),
)
DARAJA_ERRORS = Event(
    "kiota_daraja_errors",
    "counter",
    "Daraja calls that failed, by call (push, query) and Daraja's error code (else http_<status> or the failure)",
    ("call", "code"),
)
RPC_ERRORS = Event(
    "kiota_rpc_errors",
    "counter",
    "Chain JSON-RPC failures by kind (transport, rate_limited, http, rpc_error, range_refused, bad_answer)",
    ("kind",),
)
PAYOUT_FEE = Event(
    "kiota_payout_fee_wei",
    "histogram",
    "Fee (gas used x effective gas price, plus the L1 fee) of each settled payout, in wei",
    (),
    tuple(float(10**n) for n in range(10, 17)),
)
TREASURY_BALANCE = Event(
    "kiota_treasury_balance",
    "gauge",
    "Each treasury's balance by asset (ETH, USDC), in whole units, as its payout lane last read it",
    ("asset", "treasury"),
)

EVENTS: Final = (
    JOBS,
    JOB_DURATION,
    HTTP_DURATION,
    CALLBACKS_ACCEPTED,
    CALLBACKS_REFUSED,
    DARAJA_ERRORS,
    RPC_ERRORS,
    PAYOUT_FEE,
    TREASURY_BALANCE,
)


def _field(name: str, labels: Iterable[str]) -> str:
    return _SEP.join((name, *labels))


class Tally:
    """This process's events since its last flush: sums to add, last values to set. No I/O."""

    def __init__(self) -> None:
        self._sums: dict[str, int | float] = {}
        self._last: dict[str, float] = {}

    def count(self, event: Event, *labels: str, amount: int = 1) -> None:
        key = _field(event.name, labels)
        self._sums[key] = self._sums.get(key, 0) + amount

    def observe(self, event: Event, value: float, *labels: str) -> None:
        """One observation of a histogram: its bucket (not cumulative: `render_events` adds them up),
        count and sum."""
        le = bisect.bisect_left(event.buckets, value)
        bucket = repr(event.buckets[le]) if le < len(event.buckets) else "+Inf"
        sums = self._sums
        for key, amount in (
            (_field(event.name + "_bucket", (*labels, bucket)), 1),
            (_field(event.name + "_count", labels), 1),
            (_field(event.name + "_sum", labels), float(value)),
        ):
            sums[key] = sums.get(key, 0) + amount

    def set(self, event: Event, value: float, *labels: str) -> None:
        self._last[_field(event.name, labels)] = value

    def take(self) -> tuple[dict[str, int | float], dict[str, float]]:
        """What was counted since the last take, and forget it (the caller flushes it or gives it back)."""
        sums, last = self._sums, self._last
        self._sums, self._last = {}, {}
        return sums, last

    def give_back(self, sums: Mapping[str, int | float], last: Mapping[str, float]) -> None:
        """A flush failed: its deltas join what was counted meanwhile; newer last values win."""
        for key, amount in sums.items():
            self._sums[key] = self._sums.get(key, 0) + amount
        for key, value in last.items():
            self._last.setdefault(key, value)


tally = Tally()  # the process's one tally (see the module docstring)


async def flush(redis: Redis, source: Tally = tally) -> bool:
    """Send the deltas to Redis in one pipeline; False (the deltas kept for the next try) if Redis failed."""
    sums, last = source.take()
    if not sums and not last:
        return True
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for key, amount in sums.items():
                if isinstance(amount, int):
                    pipe.hincrby(SUMS_KEY, key, amount)
                else:
                    pipe.hincrbyfloat(SUMS_KEY, key, amount)
            if last:
                pipe.hset(LAST_KEY, mapping=dict(last))
            await pipe.execute()
    except (RedisError, OSError) as exc:
        source.give_back(sums, last)
        log.debug("metrics not flushed; kept for the next flush", error=type(exc).__name__)
        return False
    return True


class Flusher:
    """The process's background flush: every `interval` seconds, and once more when it is closed."""

    def __init__(self, redis: Redis, interval: float = FLUSH_SECONDS, source: Tally = tally) -> None:
        self._redis = redis
        self._interval = interval
        self._source = source
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="metrics-flusher")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await flush(self._redis, self._source)
            except Exception as exc:  # a metric must never end the process's flushing for good
                log.warning("metrics flush failed", error=f"{type(exc).__name__}: {exc}")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await flush(self._redis, self._source)


def _parsed(values: Mapping[bytes, bytes]) -> dict[str, dict[tuple[str, ...], float]]:
    """A Redis hash as {metric or sample name: {label values: value}}."""
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for raw_key, raw_value in values.items():
        name, *labels = raw_key.decode().split(_SEP)
        out.setdefault(name, {})[tuple(labels)] = float(raw_value)
    return out


def _histogram(event: Event, sums: Mapping[str, Mapping[tuple[str, ...], float]]) -> Metric:
    family = HistogramMetricFamily(event.name, event.help, labels=list(event.labels))
    buckets = sums.get(event.name + "_bucket", {})
    bounds = [*(repr(b) for b in event.buckets), "+Inf"]
    for labels, count in sums.get(event.name + "_count", {}).items():
        running, cumulative = 0.0, []
        for bound in bounds:
            running += buckets.get((*labels, bound), 0.0)
            cumulative.append((bound, running))
        cumulative[-1] = ("+Inf", count)  # the count is the +Inf bucket, whatever a bound's spelling
        total = sums.get(event.name + "_sum", {}).get(labels, 0.0)
        family.add_metric(list(labels), cumulative, sum_value=total)
    return family


def render_events(sums: Mapping[bytes, bytes], last: Mapping[bytes, bytes]) -> list[Metric]:
    """The metric families of every process's events, from the two Redis hashes (HGETALL)."""
    summed, latest = _parsed(sums), _parsed(last)
    families: list[Metric] = []
    for event in EVENTS:
        if event.kind == "histogram":
            families.append(_histogram(event, summed))
            continue
        family: CounterMetricFamily | GaugeMetricFamily
        if event.kind == "counter":
            family = CounterMetricFamily(event.name, event.help, labels=list(event.labels))
        else:
            family = GaugeMetricFamily(event.name, event.help, labels=list(event.labels))
        for labels, value in (summed if event.kind == "counter" else latest).get(event.name, {}).items():
            if len(labels) == len(event.labels) and math.isfinite(value):
                family.add_metric(list(labels), value)
        families.append(family)
    return families


# Each queue's arq sorted set (arq names it after the queue; depth = ZCARD). Until every job moves to its
# named queue, arq's default queue holds them all: it is reported as `default`, and dropped once empty for good.
QUEUE_KEYS: Final = {queue.value: arq_queue_name(queue) for queue in Queue}


@dataclass(frozen=True, slots=True)
class Read:
    """What `/metrics` reads from Redis, in one round trip."""

    sums: dict[bytes, bytes]
    last: dict[bytes, bytes]
    depths: dict[str, int]


async def read(redis: Redis) -> Read:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(SUMS_KEY)
        pipe.hgetall(LAST_KEY)
        for key in QUEUE_KEYS.values():
            pipe.zcard(key)
        sums, last, *depths = await pipe.execute()
    return Read(sums, last, dict(zip(QUEUE_KEYS, depths, strict=True)))


def status_class(status: int) -> str:
    """An HTTP status as its class ("2xx"): a bounded label."""
    return f"{status // 100}xx"
