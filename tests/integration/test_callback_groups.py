"""Callbacks applied in groups (group commit) against real PostgreSQL and Redis.

Many callbacks share one transaction; each is answered only after that commit, and each
behaves exactly as it would alone: repeats of one CheckoutRequestID as if sent one after the
other, a callback the database refuses fails alone, and nothing is ever a false 200.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from structlog.testing import capture_logs

from api.app import create_app
from kiota.callbacks import MAX_ROUNDS, CallbackGroups, Received, callback_row
from kiota.errors import CallbackNotRecorded
from kiota.hdwallet import ExtendedPublicKey
from kiota.mpesa import DepositView, parse_callback
from kiota.mpesa_answers import Decided, Seen, plan
from kiota.queue import create_queue
from kiota.settings import Settings
from kiota.store import callbacks as store
from kiota.store.ledger import balance
from kiota.users import ensure_user
from tests.support import CALLBACK_TOKEN, TEST_XPUB, free_port, settings_kwargs, success_body

CALLBACK_PATH = f"/api/v1/deposit/mpesa-callback/{CALLBACK_TOKEN}"
ACCEPTED = {"ResultCode": 0, "ResultDesc": "Accepted"}


async def pending_deposits(pool: asyncpg.Pool, count: int, amount: int = 1500) -> list[tuple[uuid.UUID, str]]:
    """`count` pushed deposits waiting for their callback: (deposit id, CheckoutRequestID)."""
    await ensure_user(pool, "grace", ExtendedPublicKey.parse(TEST_XPUB))
    made = [(uuid.uuid4(), f"ws_CO_group_{uuid.uuid4().hex[:12]}") for _ in range(count)]
    await pool.execute(
        """
        INSERT INTO deposits (id, user_id, status, amount_kes, kes_per_usd, amount_usdc, phone_masked,
                              checkout_request_id, merchant_request_id, pushed_at, next_query_at)
        SELECT d.id, 'grace', 'pending', $3, 129.50, 1, '2547****4149', d.checkout, 'm', now(),
               now() + interval '1 hour'
        FROM unnest($1::uuid[], $2::text[]) AS d (id, checkout)
        """,
        [d for d, _ in made],
        [c for _, c in made],
        amount,
    )
    return made


def paid(checkout: str, amount: int = 1500, receipt: str | None = None) -> bytes:
    return json.dumps(success_body(checkout, amount, receipt or f"R{uuid.uuid4().hex[:10].upper()}")).encode()


def cancelled(checkout: str, code: int = 1032) -> bytes:
    body = {"Body": {"stkCallback": {"MerchantRequestID": "m", "CheckoutRequestID": checkout, "ResultCode": code,
                                     "ResultDesc": "Request cancelled by user"}}}  # fmt: skip
    return json.dumps(body).encode()


def received(raw: bytes) -> Received:
    return Received(parse_callback(raw), raw, "127.0.0.1")


async def decided(pool: asyncpg.Pool, item: Received, seen: Seen) -> Decided:
    """`item` decided on `seen`, with its row, as a group's round does."""
    stamp = await store.stamp(pool)
    p = plan(item.callback, seen)
    row = callback_row(stamp, item.raw, None, p.disposition, callback=item.callback, deposit_id=seen.deposit_id)
    return Decided(item.callback, seen, p, row)


@pytest.fixture
async def groups(pool: asyncpg.Pool, redis_url: str) -> AsyncIterator[CallbackGroups]:
    queue = create_queue(redis_url)
    service = CallbackGroups(pool, queue)
    service.start()
    yield service
    await service.aclose()
    await queue.aclose(close_connection_pool=True)


async def outcome_of(pool: asyncpg.Pool, deposit_id: uuid.UUID) -> dict[str, Any]:
    row = await pool.fetchrow(
        """
        SELECT d.status, d.mpesa_receipt, d.received_kes,
               (SELECT array_agg(c.disposition ORDER BY c.id) FROM mpesa_callbacks c WHERE c.deposit_id = d.id)
                   AS dispositions,
               (SELECT count(*) FROM journal_entries e WHERE e.idempotency_key LIKE 'mpesa:' || d.id || ':%')
                   AS entries,
               (SELECT count(*) FROM jobs j WHERE j.deposit_id = d.id) AS jobs,
               (SELECT array_agg(r.kind ORDER BY r.id) FROM review_items r WHERE r.deposit_id = d.id) AS reviews
        FROM deposits d WHERE d.id = $1
        """,
        deposit_id,
    )
    assert row is not None
    return dict(row)


async def test_fifty_concurrent_callbacks_over_http_are_each_applied_once(
    client: httpx.AsyncClient, pool: asyncpg.Pool, redis_url: str
) -> None:
    deposits = await pending_deposits(pool, 50)
    bodies = [paid(checkout, receipt=f"RCPT{i:06d}") for i, (_, checkout) in enumerate(deposits)]
    bodies += bodies[:5]  # five of them delivered twice, at the same moment
    answers = await asyncio.gather(*(client.post(CALLBACK_PATH, content=body) for body in bodies))
    assert [a.status_code for a in answers] == [200] * 55
    assert all(a.json() == ACCEPTED for a in answers)

    for deposit_id, _ in deposits:
        state = await outcome_of(pool, deposit_id)
        assert (state["status"], state["received_kes"], state["entries"], state["jobs"]) == ("processing", 1500, 1, 1)
    dispositions = await pool.fetch("SELECT disposition, count(*) FROM mpesa_callbacks GROUP BY 1")
    assert {r["disposition"]: r["count"] for r in dispositions} == {"succeeded": 50, "duplicate": 5}
    assert await pool.fetchval("SELECT count(*) FROM journal_entries") == 50
    assert await balance(pool, "customer_pending:KES") == 50 * 1500
    redis = Redis.from_url(redis_url)
    try:
        queued = {member.decode() for member in await redis.zrange("arq:queue:payouts", 0, -1)}
    finally:
        await redis.aclose()
    assert queued == {f"complete_mpesa_deposit:{deposit_id}" for deposit_id, _ in deposits}


async def test_repeats_of_one_checkout_in_one_group_behave_as_if_sent_one_after_another(
    groups: CallbackGroups, pool: asyncpg.Pool
) -> None:
    (together, _), (alone, _) = deposits = await pending_deposits(pool, 2)
    sequence = [
        lambda c: paid(c, receipt="RCPTFIRST1"),  # books the money
        lambda c: paid(c, receipt="RCPTFIRST1"),  # the same again: a duplicate
        lambda c: cancelled(c),  # a failure after the success: contradiction, listed
        lambda c: paid(c, receipt="RCPTOTHER1"),  # another receipt: suspense and review
    ]
    (_, checkout_together), (_, checkout_alone) = deposits
    # All four submitted at once: one group (its repeats held back for the next ones).
    together_results = await asyncio.gather(*(groups.submit(received(make(checkout_together))) for make in sequence))
    alone_results = [await groups.submit(received(make(checkout_alone).replace(b"RCPT", b"RCPA"))) for make in sequence]

    assert [r.disposition for r in together_results] == [r.disposition for r in alone_results]
    assert [r.disposition for r in together_results] == ["succeeded", "duplicate", "review", "review"]
    a, b = await outcome_of(pool, together), await outcome_of(pool, alone)
    assert {**a, "mpesa_receipt": None} == {**b, "mpesa_receipt": None}
    assert a["status"] == "processing" and a["received_kes"] == 1500 and a["jobs"] == 1
    assert a["reviews"] == ["contradiction", "mpesa_callback"]
    assert await balance(pool, "customer_pending:KES") == 2 * 1500  # each booked once
    assert await balance(pool, "suspense:KES") == 2 * 1500  # each other receipt held for review


async def test_a_callback_the_database_refuses_fails_alone(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    deposits = await pending_deposits(pool, 6)
    poisoned = deposits[2][1]
    # The database itself refuses one callback (as a constraint or a bug would); nothing is mocked.
    await pool.execute(
        f"""
        CREATE FUNCTION refuse_poisoned() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'refused for the test'; END $$;
        CREATE TRIGGER refuse_poisoned BEFORE INSERT ON mpesa_callbacks FOR EACH ROW
            WHEN (NEW.checkout_request_id = '{poisoned}') EXECUTE FUNCTION refuse_poisoned();
        """
    )
    with capture_logs() as events:
        answers = await asyncio.gather(*(client.post(CALLBACK_PATH, content=paid(c)) for _, c in deposits))
    assert [a.status_code for a in answers] == [200, 200, 503, 200, 200, 200]
    # They arrived together: their group was refused as a whole, then applied one by one.
    assert any(e["event"].startswith("callback group refused") and e["callbacks"] > 1 for e in events), events
    for (deposit_id, checkout), answer in zip(deposits, answers, strict=True):
        state = await outcome_of(pool, deposit_id)
        if checkout == poisoned:  # nothing of it kept: Daraja may send it again
            assert (state["status"], state["dispositions"], state["entries"], state["jobs"]) == ("pending", None, 0, 0)
        else:
            assert answer.json() == ACCEPTED
            assert (state["status"], state["dispositions"], state["entries"]) == ("processing", ["succeeded"], 1)
    assert await pool.fetchval("SELECT count(*) FROM mpesa_callbacks WHERE checkout_request_id = $1", poisoned) == 0

    await pool.execute("DROP TRIGGER refuse_poisoned ON mpesa_callbacks")
    again = await client.post(CALLBACK_PATH, content=paid(poisoned))  # Daraja's retry
    assert again.status_code == 200
    assert (await outcome_of(pool, deposits[2][0]))["status"] == "processing"


async def test_a_decision_on_a_deposit_that_changed_is_not_applied(pool: asyncpg.Pool, groups: CallbackGroups) -> None:
    ((deposit_id, checkout),) = await pending_deposits(pool, 1)
    item = received(paid(checkout))
    # Decided while the deposit was pending ...
    pending = await decided(pool, item, Seen(None, deposit_id, DepositView("pending", 1500, None, None), False))
    # ... but a failure was applied before it.
    await pool.execute("UPDATE deposits SET status = 'failed', failure_code = '1032' WHERE id = $1", deposit_id)
    assert await store.apply(pool, [pending]) == [False]  # stale: nothing of it written
    state = await outcome_of(pool, deposit_id)
    assert (state["status"], state["dispositions"], state["entries"], state["jobs"]) == ("failed", None, 0, 0)
    # Decided again on what is there now: a success after a failure is money for review.
    result = await groups.submit(item)
    assert result.disposition == "review"
    state = await outcome_of(pool, deposit_id)
    assert (state["status"], state["dispositions"], state["reviews"]) == (
        "needs_review",
        ["review"],
        ["mpesa_callback"],
    )
    assert await balance(pool, "suspense:KES") == 1500
    assert await balance(pool, "customer_pending:KES") == 0


async def test_the_database_refuses_a_group_that_names_a_checkout_twice(pool: asyncpg.Pool) -> None:
    ((deposit_id, checkout),) = await pending_deposits(pool, 1)
    seen = Seen(None, deposit_id, DepositView("pending", 1500, None, None), False)
    items = [await decided(pool, received(raw), seen) for raw in (paid(checkout), paid(checkout))]
    with pytest.raises(asyncpg.InvalidParameterValueError, match="twice"):
        await store.apply(pool, items)
    assert (await outcome_of(pool, deposit_id))["status"] == "pending"


async def test_a_callback_is_answered_only_after_its_commit(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    ((deposit_id, checkout),) = await pending_deposits(pool, 1)
    async with pool.acquire() as blocker, blocker.transaction():
        await blocker.execute("SELECT 1 FROM deposits WHERE id = $1 FOR UPDATE", deposit_id)
        answer = asyncio.create_task(client.post(CALLBACK_PATH, content=paid(checkout)))
        await asyncio.sleep(0.5)
        assert not answer.done()  # its group waits for the row: no answer before the commit
    assert (await answer).status_code == 200
    assert (await outcome_of(pool, deposit_id))["dispositions"] == ["succeeded"]


async def test_two_lanes_applying_one_checkout_at_once_book_it_once(pool: asyncpg.Pool, redis_url: str) -> None:
    queue = create_queue(redis_url)
    service = CallbackGroups(pool, queue, lanes=2, max_group=4)
    service.start()
    try:
        deposits = await pending_deposits(pool, 20)
        hot_id, hot = deposits[0]
        items = [received(paid(hot, receipt="RCPTHOT001")) for _ in range(10)]
        items += [received(paid(c)) for _, c in deposits[1:]]
        results = await asyncio.gather(*(service.submit(item) for item in items))
    finally:
        await service.aclose()
        await queue.aclose(close_connection_pool=True)
    assert Counter(r.disposition for r in results[:10]) == {"succeeded": 1, "duplicate": 9}
    assert all(r.disposition == "succeeded" for r in results[10:])
    state = await outcome_of(pool, hot_id)
    assert (state["entries"], state["jobs"], len(state["dispositions"])) == (1, 1, 10)
    assert await pool.fetchval("SELECT count(*) FROM journal_entries") == 20


async def test_a_dead_connection_costs_a_5xx_never_a_false_200(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    deposits = await pending_deposits(pool, 8)
    first = await client.post(CALLBACK_PATH, content=paid(deposits[0][1]))
    assert first.status_code == 200
    # PostgreSQL ends the API's connections (a restart, a failover, an operator).
    ended = await pool.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() "
        "AND query LIKE '%mpesa_apply_answers%' AND pid <> pg_backend_pid()"
    )
    assert ended == 1  # the lane's connection
    answers = [await client.post(CALLBACK_PATH, content=paid(c)) for _, c in deposits[1:]]
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[-1] == 200  # a fresh connection, at once
    for (deposit_id, _), answer in zip(deposits[1:], answers, strict=True):
        committed = (await outcome_of(pool, deposit_id))["dispositions"] == ["succeeded"]
        assert committed == (answer.status_code == 200)


@pytest.fixture
async def app_without_postgres(database_url: str, redis_url: str) -> AsyncIterator[FastAPI]:
    values = {
        **settings_kwargs(database_url, redis_url),
        "database_url": f"postgresql://postgres@127.0.0.1:{free_port()}/x",
    }
    application = create_app(Settings(_env_file=None, **values))  # type: ignore[call-arg]
    async with application.router.lifespan_context(application):
        yield application


async def test_postgres_unreachable_is_503_never_200(app_without_postgres: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app_without_postgres)
    async with httpx.AsyncClient(transport=transport, base_url="http://kiota.test") as http:
        answers = await asyncio.gather(*(http.post(CALLBACK_PATH, content=paid(f"ws_CO_down_{i}")) for i in range(5)))
        malformed = await http.post(CALLBACK_PATH, content=b"{not json")
    assert [a.status_code for a in answers] == [503] * 5
    assert malformed.status_code == 503  # its raw body could not be kept either


async def test_a_callback_whose_deposit_keeps_changing_is_refused_not_retried_for_ever(
    pool: asyncpg.Pool, redis_url: str
) -> None:
    ((deposit_id, checkout),) = await pending_deposits(pool, 1)
    queue = create_queue(redis_url)
    service = CallbackGroups(pool, queue, max_rounds=1)  # one stale round is already too many here
    service.start()
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM deposits WHERE id = $1 FOR UPDATE", deposit_id)
            task = asyncio.create_task(service.submit(received(paid(checkout))))
            await asyncio.sleep(0.3)  # the group has read the deposit and waits for its lock
            await conn.execute("UPDATE deposits SET query_attempts = 1, failure_code = 'x' WHERE id = $1", deposit_id)
        with pytest.raises(CallbackNotRecorded, match="kept changing"):
            await task
    finally:
        await service.aclose()
        await queue.aclose(close_connection_pool=True)
    assert MAX_ROUNDS > 1
    assert (await outcome_of(pool, deposit_id))["dispositions"] is None
