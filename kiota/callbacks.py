"""Daraja's STK callbacks: recorded and applied in PostgreSQL, many per transaction (group commit).

A callback is answered 200 only after the transaction that records and applies it has
committed. Committed one by one, each callback cost a transaction, a WAL flush and a dozen
round trips; here callbacks that arrive together share them. Whatever arrived while the
previous group was being committed forms the next group (nothing waits for a timer), and a
group is applied by ONE statement, the call to `mpesa_apply_answers`
(sql/migrations/0012): its own transaction, committed before the statement returns. Nothing
is answered before its commit; `synchronous_commit` is the server's.

One round for a group:
1. `kiota.store.callbacks.read` reads each callback's deposit as it is now (one statement,
   nothing locked), and draws its row's id and time;
2. `kiota.mpesa.decide` decides each one here, in Python, `plan` (`kiota.mpesa_answers`) turns
   the decision into the rows to write, and `callback_row` builds the callback's own row;
3. `kiota.store.callbacks.apply` (`mpesa_apply_answers`) locks the deposits and applies,
   set-based, every plan whose deposit still looks as it did in 1; the others come back stale,
   nothing of them written, and are decided again in the next group. It is the one write path of
   an M-Pesa answer: the STK query's answer for a lost callback (`kiota.lost_callbacks`) goes
   through it too, without a callback row, since nobody posted it. A group names each
   CheckoutRequestID and each receipt once (`split_repeats` holds repeats back for the next
   group), so repeats behave exactly as if sent one after the other.
4. The group's completion jobs go to Redis in one round trip, then every callback is answered.

If the database refuses a group (an error in any callback fails the statement, so nothing of the
group is kept), its callbacks are applied again one by one: the one at fault fails alone (5xx),
the others are answered 200. If the connection breaks, every callback of the group is answered
5xx: committed or not is then unknown, and it is never a false 200 (Daraja may send it again; a
repeat is a duplicate).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
import structlog
from arq.connections import ArqRedis
from asyncpg.pool import PoolConnectionProxy

from kiota.db import Connection, Pool
from kiota.errors import CallbackNotRecorded
from kiota.job_history import enqueue_many
from kiota.job_names import JobName
from kiota.mpesa import MalformedCallback, StkCallback, parse_callback
from kiota.mpesa_answers import Decided, plan
from kiota.records import Callback
from kiota.store import callbacks as store

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Bounds one statement's size, and how long a group holds its locks.
MAX_GROUP = 128
# Groups in flight at once, each on its own connection. One: while a group is in PostgreSQL the
# event loop reads the next callbacks, so the two overlap already, and a second lane would only
# split the callbacks into smaller groups (each group costs PostgreSQL about as much as a few
# callbacks do).
LANES = 1
# A callback is decided again each time its deposit changed under it; a deposit changes a few
# times in its life, so only contention that never ends reaches this.
MAX_ROUNDS = 10
CLOSE_SECONDS = 10.0


def readable(raw: bytes) -> str:
    """A text copy of a body for people (raw_bytes keeps it exactly): no NUL, no invalid UTF-8."""
    return raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


@dataclass(frozen=True, slots=True)
class Received:
    """One well-formed callback, as it arrived."""

    callback: StkCallback
    raw: bytes
    remote_addr: str | None


@dataclass(frozen=True, slots=True)
class CallbackResult:
    callback_id: int
    disposition: str
    deposit_id: str | None
    enqueue_job_id: str | None


def callback_row(
    stamp: store.Stamp,
    raw: bytes,
    remote_addr: str | None,
    disposition: str,
    *,
    callback: StkCallback | None = None,
    deposit_id: uuid.UUID | None = None,
    parse_error: str | None = None,
) -> Callback:
    """A posted callback's row in `mpesa_callbacks`, the record of what was POSTed: built here
    only, by name. `callback` is what it said, once parsed (None for a malformed one)."""
    cb = callback
    return Callback(
        id=stamp.id,
        received_at=stamp.received_at,
        remote_addr=remote_addr,
        raw_body=readable(raw),
        parse_error=parse_error,
        checkout_request_id=None if cb is None else cb.checkout_request_id,
        merchant_request_id=None if cb is None else cb.merchant_request_id,
        result_code=None if cb is None else cb.result_code,
        result_desc=None if cb is None else cb.result_desc,
        amount_kes=None if cb is None else cb.amount_kes,
        mpesa_receipt=None if cb is None else cb.receipt,
        transaction_at=None if cb is None else cb.transaction_at,
        phone_masked=None if cb is None else cb.phone_masked,
        deposit_id=deposit_id,
        disposition=disposition,
        raw_bytes=raw,
    )


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    """What applying one callback in a round came to: applied (with its result), stale (decide again), or failed."""

    result: CallbackResult | None = None
    stale: bool = False
    error: str | None = None


async def apply_round(conn: Connection, items: Sequence[Received]) -> list[ApplyOutcome]:
    """Read, decide and apply a group in two statements, the second its own transaction.

    The group names each CheckoutRequestID and each receipt once (`split_repeats`). When this
    returns, every applied callback is committed: asyncpg returns after the server's
    ReadyForQuery, which follows the commit and its WAL flush. A database error fails the
    whole round (nothing of it is kept).
    """
    views = await store.read(conn, [item.callback for item in items])
    decided: list[Decided] = []
    outcomes: list[ApplyOutcome] = []
    for item, (seen, stamp) in zip(items, views, strict=True):
        try:
            p = plan(item.callback, seen)
        except Exception as exc:  # a bug for this callback alone: the others go on
            outcomes.append(ApplyOutcome(error=f"deciding it failed: {type(exc).__name__}: {exc}"))
            continue
        deposit_id = None if seen.deposit_id is None else str(seen.deposit_id)
        outcomes.append(ApplyOutcome(CallbackResult(stamp.id, p.disposition, deposit_id, p.job_id)))
        row = callback_row(
            stamp, item.raw, item.remote_addr, p.disposition, callback=item.callback, deposit_id=seen.deposit_id
        )
        decided.append(Decided(item.callback, seen, p, row))
    if decided:
        applied = iter(await store.apply(conn, decided))
        for i, outcome in enumerate(outcomes):
            if outcome.result is not None and not next(applied):
                outcomes[i] = ApplyOutcome(stale=True)
    return outcomes


def split_repeats(items: Sequence[T], key: Callable[[T], StkCallback]) -> tuple[list[T], list[T]]:
    """(a group, the rest): the group names each CheckoutRequestID and each receipt once; a repeat
    waits for the next group, where it is decided on what the first one did."""
    checkouts: set[str] = set()
    receipts: set[str] = set()
    group: list[T] = []
    rest: list[T] = []
    for item in items:
        cb = key(item)
        if cb.checkout_request_id in checkouts or (cb.receipt is not None and cb.receipt in receipts):
            rest.append(item)
            continue
        checkouts.add(cb.checkout_request_id)
        if cb.receipt is not None:
            receipts.add(cb.receipt)
        group.append(item)
    return group, rest


async def record_malformed(pool: Pool, raw: bytes, remote_addr: str | None, error: str) -> int:
    """Keep a body that is not Daraja's callback shape, for audit; its row's id."""
    stamp = await store.stamp(pool)
    await store.insert_callback(pool, callback_row(stamp, raw, remote_addr, "malformed", parse_error=error))
    return stamp.id


async def ingest_callback(pool: Pool, raw: bytes, remote_addr: str | None) -> CallbackResult:
    """Parse, record and apply one callback, on its own (no group, no enqueue): for callers
    outside the API. Raises MalformedCallback (after recording the raw body) when the shape
    is wrong, CallbackNotRecorded when it could not be applied."""
    try:
        callback = parse_callback(raw)
    except MalformedCallback as exc:
        await record_malformed(pool, raw, remote_addr, str(exc))
        raise
    item = Received(callback, raw, remote_addr)
    async with pool.acquire() as conn:
        for _ in range(MAX_ROUNDS):
            (outcome,) = await apply_round(conn, [item])
            if outcome.result is not None:
                return outcome.result
            if outcome.error is not None:
                raise CallbackNotRecorded(outcome.error)
    raise CallbackNotRecorded(f"its deposit kept changing for {MAX_ROUNDS} rounds")


@dataclass(slots=True)
class _Waiting:
    item: Received
    answer: asyncio.Future[CallbackResult]
    rounds: int = 0
    alone: bool = False  # its group failed: applied on its own, so that an error is its own


class CallbackGroups:
    """The API's group commit: `submit` returns once the callback is committed and its job
    enqueued, or raises CallbackNotRecorded.

    `lanes` groups may be in flight at once, each lane on a connection held for the purpose
    (no pool reset between groups): while one group commits, the next is read and decided, so
    PostgreSQL's work and this process's overlap. A lane takes whatever is waiting when it is free.
    """

    def __init__(
        self,
        pool: Pool,
        queue: ArqRedis,
        *,
        lanes: int = LANES,
        max_group: int = MAX_GROUP,
        max_rounds: int = MAX_ROUNDS,
    ) -> None:
        self._pool = pool
        self._queue = queue
        self._lanes = lanes
        self._max_group = max_group
        self._max_rounds = max_rounds
        self._waiting: deque[_Waiting] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._running = 0  # lanes whose loop runs
        self._conns: dict[int, PoolConnectionProxy[asyncpg.Record]] = {}

    def start(self) -> None:
        self._running = self._lanes
        self._tasks = [
            asyncio.create_task(self._run(lane), name=f"mpesa-callback-lane-{lane}") for lane in range(self._lanes)
        ]

    async def submit(self, item: Received) -> CallbackResult:
        if self._closing or not self._running:
            raise CallbackNotRecorded("the API is not accepting callbacks (shutting down)")
        answer: asyncio.Future[CallbackResult] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(item, answer))
        self._wake.set()
        result = await answer
        # What became of the callback rides on the request's own access line (one line per
        # callback on the hot path): grep a deposit or job id and it is there.
        structlog.contextvars.bind_contextvars(
            callback_id=result.callback_id,
            disposition=result.disposition,
            deposit_id=result.deposit_id,
            job_id=result.enqueue_job_id,
            checkout_request_id=item.callback.checkout_request_id,
            result_code=item.callback.result_code,
        )
        return result

    async def aclose(self) -> None:
        """Finish what was submitted, then release the connections."""
        self._closing = True
        self._wake.set()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=CLOSE_SECONDS)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for waiting in self._waiting:
            _fail(waiting.answer, "the API stopped before it was applied")
        self._waiting.clear()
        for lane in list(self._conns):
            await self._release(lane)

    async def _run(self, lane: int) -> None:
        try:
            while True:
                while not self._waiting:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                await self._commit(lane, self._next_group())
        finally:
            self._running -= 1
            if not self._running:  # no lane left to answer them
                for waiting in self._waiting:
                    _fail(waiting.answer, "the API stopped before it was applied")
                self._waiting.clear()

    def _next_group(self) -> list[_Waiting]:
        """Whatever is waiting (a failed group's callbacks one at a time), repeats held back."""
        if self._waiting[0].alone:
            return [self._waiting.popleft()]
        taken: list[_Waiting] = []
        while self._waiting and len(taken) < self._max_group and not self._waiting[0].alone:
            waiting = self._waiting.popleft()
            if not waiting.answer.done():  # else its request went away
                taken.append(waiting)
        group, repeats = split_repeats(taken, lambda waiting: waiting.item.callback)
        self._waiting.extendleft(reversed(repeats))
        return group

    async def _commit(self, lane: int, group: list[_Waiting]) -> None:
        if not group:
            return
        try:
            conn = await self._connection(lane)
            outcomes = await apply_round(conn, [waiting.item for waiting in group])
        except BaseException as exc:
            await self._group_failed(lane, group, exc)
            if not isinstance(exc, Exception):
                raise
            return
        jobs = [
            (o.result.enqueue_job_id, (o.result.deposit_id,))
            for o in outcomes
            if o.result is not None and o.result.enqueue_job_id
        ]
        if jobs:
            await enqueue_many(self._queue, JobName.COMPLETE_MPESA_DEPOSIT, jobs)
        again: list[_Waiting] = []
        for waiting, outcome in zip(group, outcomes, strict=True):
            if outcome.result is not None:
                _answer(waiting.answer, outcome.result)
            elif outcome.stale and waiting.rounds + 1 < self._max_rounds:
                waiting.rounds += 1
                again.append(waiting)
            else:
                error = outcome.error or f"its deposit kept changing for {self._max_rounds} rounds"
                self._not_applied(waiting, error)
        self._waiting.extendleft(reversed(again))  # first in the next group, in their order

    async def _group_failed(self, lane: int, group: list[_Waiting], exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, asyncpg.PostgresError) and len(group) > 1:
            # The database refused something in the group: nothing of it was kept. Each callback
            # is applied again on its own, so the one at fault fails alone.
            log.warning("callback group refused; applying its callbacks one by one", callbacks=len(group),
                        error=error)  # fmt: skip
            for waiting in group:
                waiting.alone = True
            self._waiting.extendleft(reversed(group))
            return
        # Committed or not is unknown if the connection broke mid-call: never a 200, then.
        log.error("callback group not committed", callbacks=len(group), error=error)
        for waiting in group:
            _fail(waiting.answer, error)
        if not isinstance(exc, asyncpg.PostgresError):
            await self._release(lane)

    @staticmethod
    def _not_applied(waiting: _Waiting, error: str) -> None:
        log.error("mpesa callback not applied", checkout_request_id=waiting.item.callback.checkout_request_id,
                  error=error)  # fmt: skip
        _fail(waiting.answer, error)

    async def _connection(self, lane: int) -> PoolConnectionProxy[asyncpg.Record]:
        conn = self._conns.get(lane)
        if conn is not None and conn.is_closed():
            await self._release(lane)
            conn = None
        if conn is None:
            conn = await self._pool.acquire()
            try:
                await store.plan_once(conn)  # undone when it goes back to the pool
            except BaseException:
                await self._pool.release(conn)
                raise
            self._conns[lane] = conn
        return conn

    async def _release(self, lane: int) -> None:
        conn = self._conns.pop(lane, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.release(conn), CLOSE_SECONDS)


def _answer(answer: asyncio.Future[CallbackResult], result: CallbackResult) -> None:
    if not answer.done():
        answer.set_result(result)


def _fail(answer: asyncio.Future[CallbackResult], error: str) -> None:
    if not answer.done():
        answer.set_exception(CallbackNotRecorded(error))
