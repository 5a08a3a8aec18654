"""Nothing lost when Redis is, lost callbacks recovered, and a worker killed at every payout step."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from kiota.callbacks import ingest_callback
from kiota.daraja_answers import QueryResult
from kiota.dev.chain import BASE_USDC_ADDRESS, usdc_balance
from kiota.dev.daraja_sim_behaviour import Scenario
from kiota.ledger import user_account
from kiota.lost_callbacks import query_deposit
from kiota.mpesa import USER_CHECKING
from kiota.mpesa_answers import Decided
from kiota.store import callbacks as callback_store
from kiota.store.ledger import balance
from tests.conftest import MpesaSystem
from tests.integration.test_callback_groups import cancelled, paid, pending_deposits
from tests.integration.test_mpesa_flow import counts, transfers_from

REPO = Path(__file__).resolve().parents[2]


async def wait_until(predicate: object, seconds: float = 20) -> None:
    async with asyncio.timeout(seconds):
        while not await predicate():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def statuses(system: MpesaSystem) -> dict[str, int]:
    rows = await system.pool.fetch("SELECT status, count(*) FROM deposits GROUP BY status")
    return {r["status"]: r["count"] for r in rows}


@pytest.mark.no_worker
async def test_redis_flushed_after_callbacks_were_accepted_every_deposit_completes(
    mpesa_system: MpesaSystem,
) -> None:
    system = mpesa_system
    ids = [(await system.initiate(f"user{i}", 1295)).json()["deposit_id"] for i in range(5)]

    async def all_processing() -> bool:
        return await statuses(system) == {"processing": 5}

    await wait_until(all_processing)
    redis = Redis.from_url(system.settings.redis_url)
    assert await redis.zcard("arq:queue:payouts") == 5  # the callbacks enqueued the completions...
    await redis.flushdb()  # ...and Redis loses them all (it keeps nothing on disk)
    await redis.aclose()
    await system.start_worker()  # its start-up sweep finds the work PostgreSQL recorded
    for i, deposit_id in enumerate(ids):
        await system.wait_status(f"user{i}", deposit_id, "completed")
    assert len(await transfers_from(system, system.treasury_address)) == 5
    assert await counts(system) == {"entries": 10, "payouts": 5, "attempts": 5}


@pytest.mark.system_settings(sweep_seconds=1)
async def test_a_callback_committed_but_never_enqueued_is_enqueued_by_the_running_sweeper(
    mpesa_system: MpesaSystem,
) -> None:
    # A crash between the callback's commit and its enqueue, while the worker runs: PostgreSQL has the
    # deposit in processing and its job queued, Redis has nothing. The sweeper's tick (not a start-up) finds it.
    system = mpesa_system
    system.simulator.set_scenario(Scenario(outcome="success", lose_callback=True), next_push=True)
    body = (await system.initiate("nia", 1295)).json()
    checkout = await system.pool.fetchval("SELECT checkout_request_id FROM deposits WHERE id = $1", body["deposit_id"])
    applied = await ingest_callback(system.pool, paid(checkout, 1295), None)  # committed; nothing enqueued
    assert applied.disposition == "succeeded" and applied.enqueue_job_id
    redis = Redis.from_url(system.settings.redis_url)
    try:
        assert not await redis.exists(f"arq:job:{applied.enqueue_job_id}")
    finally:
        await redis.aclose()
    await system.wait_status("nia", body["deposit_id"], "completed", seconds=30)
    assert len(await transfers_from(system, system.treasury_address)) == 1
    assert await balance(system.pool, user_account("nia", "USDC")) == 10_000_000


@pytest.mark.system_settings(mpesa_query_after_seconds=1)
async def test_a_lost_success_callback_is_recovered_by_the_stk_query(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    system.simulator.set_scenario(Scenario(outcome="success", lose_callback=True, delay_seconds=0.2), next_push=True)
    body = (await system.initiate("lena", 1295)).json()
    done = await system.wait_status("lena", body["deposit_id"], "completed", seconds=30)
    assert done["mpesa_receipt"] is None  # the query carries no receipt; the push's amount stands
    assert done["amount_usdc"] == "10.000000"
    assert await balance(system.pool, user_account("lena", "USDC")) == 10_000_000
    assert await system.pool.fetchval("SELECT count(*) FROM mpesa_callbacks") == 0


@pytest.mark.system_settings(mpesa_query_after_seconds=1)
async def test_a_lost_failure_callback_fails_the_deposit_by_query(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    system.simulator.set_scenario(Scenario(outcome=1032, lose_callback=True, delay_seconds=0.2), next_push=True)
    body = (await system.initiate("mo", 500)).json()
    failed = await system.wait_status("mo", body["deposit_id"], "failed", seconds=30)
    assert failed["failure_reason"] == "The payment was cancelled on the phone."
    assert await counts(system) == {"entries": 0, "payouts": 0, "attempts": 0}


@pytest.mark.system_settings(mpesa_query_after_seconds=1)
async def test_still_processing_waits_and_24_hours_of_silence_goes_to_review(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    system.simulator.set_scenario(Scenario(outcome="none"), next_push=True)
    body = (await system.initiate("nia", 500)).json()

    async def queried_twice() -> bool:
        attempts = await system.pool.fetchval("SELECT query_attempts FROM deposits")
        return bool(attempts and attempts >= 2)

    await wait_until(queried_twice, 40)
    assert (await system.deposit("nia", body["deposit_id"]))["status"] == "pending"
    assert await system.pool.fetchval("SELECT last_query_result FROM deposits") == "pending"
    await system.pool.execute(
        "UPDATE deposits SET pushed_at = now() - interval '25 hours', next_query_at = now() - interval '1 second'"
    )
    review = await system.wait_status("nia", body["deposit_id"], "needs_review", seconds=30)
    assert review["failure_reason"] == USER_CHECKING
    assert "24 hours" in await system.review_reason(body["deposit_id"])


async def test_a_query_never_downgrades_a_callbacks_success(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    body = (await system.initiate("omar", 1295)).json()
    await system.wait_status("omar", body["deposit_id"], "completed")
    assert system.worker is not None
    outcome = await query_deposit(system.pool, system.context.daraja, uuid.UUID(body["deposit_id"]), 1)
    assert outcome.action == "nothing"
    assert (await system.deposit("omar", body["deposit_id"]))["status"] == "completed"


async def spawn_worker(system: MpesaSystem, failpoint: str | None = None) -> asyncio.subprocess.Process:
    env = system.env(**({"KIOTA_FAILPOINT": failpoint} if failpoint else {}))
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kiota.cli", "worker",
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip


async def stop_worker_process(worker: asyncio.subprocess.Process, seconds: float = 60) -> str:
    """SIGTERM, then the worker's log once it has exited. One still running after `seconds` is killed (a stray worker
    on the same Redis would take the next test's jobs) and fails the test with its log."""
    if worker.returncode is None:
        worker.send_signal(signal.SIGTERM)
    try:
        out, _ = await asyncio.wait_for(worker.communicate(), seconds)
    except TimeoutError:
        worker.kill()
        out, _ = await worker.communicate()
        log = out.decode()[-5000:]
        raise AssertionError(f"the worker did not stop within {seconds:.0f} s of SIGTERM:\n{log}") from None
    return out.decode()


@pytest.mark.no_worker
@pytest.mark.parametrize("failpoint", ["after_attempt_stored", "after_broadcast", "after_receipt"])
async def test_a_worker_killed_at_each_payout_step_pays_once_after_restart(
    mpesa_system: MpesaSystem, failpoint: str
) -> None:
    system = mpesa_system
    body = (await system.initiate("pia", 1295)).json()
    doomed = await spawn_worker(system, failpoint)
    out, _ = await asyncio.wait_for(doomed.communicate(), 30)
    assert doomed.returncode == -signal.SIGKILL, out.decode()
    assert f"failpoint={failpoint}" in out.decode() or failpoint in out.decode()
    assert (await system.deposit("pia", body["deposit_id"]))["status"] == "processing"
    assert await system.pool.fetchval("SELECT count(*) FROM payout_attempts") == 1

    survivor = await spawn_worker(system)
    try:
        done = await system.wait_status("pia", body["deposit_id"], "completed", seconds=30)
    finally:
        await stop_worker_process(survivor)
    assert len(await transfers_from(system, system.treasury_address)) == 1
    assert await balance(system.pool, user_account("pia", "USDC")) == 10_000_000
    address = await system.pool.fetchval("SELECT deposit_address FROM users WHERE id = 'pia'")
    assert await usdc_balance(system.w3, BASE_USDC_ADDRESS, address) == 10_000_000
    job = await system.pool.fetchrow("SELECT * FROM jobs WHERE deposit_id = $1::uuid", body["deposit_id"])
    assert job["failures"] == 0 and job["runs"] == 2  # a killed worker is not a failed attempt
    assert done["tx_hash"] == await system.pool.fetchval("SELECT tx_hash FROM payout_attempts")
    assert os.environ.get("KIOTA_FAILPOINT") is None


@pytest.mark.no_worker
@pytest.mark.parametrize("failpoint", ["after_attempt_stored", "after_broadcast", "after_receipt"])
async def test_a_worker_killed_mid_batch_pays_every_deposit_once_after_restart(
    mpesa_system: MpesaSystem, failpoint: str
) -> None:
    """The lane's owner pays every processing deposit in one turn; killed in the middle, nothing is paid twice."""
    system = mpesa_system
    users = [f"batch{i}" for i in range(4)]
    ids = [(await system.initiate(user, 1295)).json()["deposit_id"] for user in users]

    async def all_processing() -> bool:
        return await statuses(system) == {"processing": 4}

    await wait_until(all_processing)
    doomed = await spawn_worker(system, failpoint)
    out, _ = await asyncio.wait_for(doomed.communicate(), 30)
    assert doomed.returncode == -signal.SIGKILL, out.decode()
    # One turn signed all four (one transaction: the same now()), with consecutive nonces.
    rows = await system.pool.fetch("SELECT nonce, created_at FROM payout_attempts ORDER BY nonce")
    assert [r["nonce"] for r in rows] == list(range(rows[0]["nonce"], rows[0]["nonce"] + 4))
    assert len({r["created_at"] for r in rows}) == 1

    survivor = await spawn_worker(system)
    try:
        for user, deposit_id in zip(users, ids, strict=True):
            await system.wait_status(user, deposit_id, "completed", seconds=30)
    finally:
        print(await stop_worker_process(survivor))  # the worker's log, on failure
    assert len(await transfers_from(system, system.treasury_address)) == 4
    assert await counts(system) == {"entries": 8, "payouts": 4, "attempts": 4}
    for user in users:
        assert await balance(system.pool, user_account(user, "USDC")) == 10_000_000
    assert await system.pool.fetchval("SELECT sum(failures) FROM jobs") == 0


async def test_an_rpc_refusing_for_a_while_then_completes(mpesa_system: MpesaSystem) -> None:
    from kiota.treasury import Treasury
    from tests.support import TREASURY_KEY, free_port

    system = mpesa_system
    assert system.worker is not None
    original = system.use_treasury(Treasury(f"http://127.0.0.1:{free_port()}", TREASURY_KEY, 8453, BASE_USDC_ADDRESS))
    body = (await system.initiate("quin", 1295)).json()

    async def failed_twice() -> bool:
        query = "SELECT failures FROM jobs WHERE deposit_id = $1::uuid"
        failures = await system.pool.fetchval(query, body["deposit_id"])
        return bool(failures and failures >= 2)

    await wait_until(failed_twice)
    await system.use_treasury(original).aclose()  # the RPC is back
    await system.wait_status("quin", body["deposit_id"], "completed")
    assert len(await transfers_from(system, system.treasury_address)) == 1


def _pg_ctl(action: str) -> list[str]:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action]


@pytest.mark.slow
@pytest.mark.system_settings(mpesa_query_after_seconds=2)
async def test_postgres_restarted_mid_run_callbacks_get_5xx_and_all_complete_after(mpesa_system: MpesaSystem) -> None:
    if os.geteuid() != 0 or not Path("/etc/postgresql").is_dir():  # noqa: ASYNC240
        pytest.skip("restarting PostgreSQL needs root and a Debian cluster (as on CI)")
    system = mpesa_system
    system.simulator.set_scenario(Scenario(outcome="none"), default=True)  # callbacks sent by hand below
    bodies = [(await system.initiate(f"pg{i}", 1295)).json() for i in range(3)]
    stop = await asyncio.create_subprocess_exec(*_pg_ctl("stop"))
    assert await stop.wait() == 0
    try:
        answers = [await system.simulator.send_callback(b["checkout_request_id"], "success") for b in bodies]
    finally:
        start = await asyncio.create_subprocess_exec(*_pg_ctl("start"))
        assert await start.wait() == 0
    # While PostgreSQL was down, no callback got a false 200.
    assert all(a.status_code is None or a.status_code >= 500 for a in answers), answers
    for i, body in enumerate(bodies):  # the STK query recovers what the callbacks could not record
        await system.wait_status(f"pg{i}", body["deposit_id"], "completed", seconds=60)
    assert len(await transfers_from(system, system.treasury_address)) == 3


@pytest.mark.system_settings(mpesa_query_after_seconds=1)
async def test_a_late_callback_after_the_query_booked_the_money_only_attaches_its_receipt(
    mpesa_system: MpesaSystem,
) -> None:
    system = mpesa_system
    system.simulator.set_scenario(Scenario(outcome="success", lose_callback=True, delay_seconds=0.2), next_push=True)
    body = (await system.initiate("rae", 1295)).json()
    await system.wait_status("rae", body["deposit_id"], "completed", seconds=30)
    late = await system.simulator.send_callback(body["checkout_request_id"])  # the lost callback, at last
    assert late.status_code == 200
    done = await system.deposit("rae", body["deposit_id"])
    assert done["status"] == "completed" and done["mpesa_receipt"]
    assert await balance(system.pool, "suspense:KES") == 0
    assert await system.pool.fetchval("SELECT count(*) FROM review_items") == 0
    assert await balance(system.pool, user_account("rae", "USDC")) == 10_000_000
    assert await balance(system.pool, "mpesa_float:KES") == 1295  # booked once


class AnsweringDaraja:
    """Daraja's STK query, answering `result_code`; `meanwhile` runs while it is being asked."""

    def __init__(self, result_code: int, meanwhile: Callable[[], Awaitable[object]] | None = None) -> None:
        self.result_code, self.meanwhile = result_code, meanwhile

    async def stk_query(self, checkout_request_id: str) -> QueryResult:
        if self.meanwhile is not None:
            await self.meanwhile()
        return QueryResult("resolved", self.result_code, "answered")


async def what_was_written(pool: asyncpg.Pool, deposit_id: uuid.UUID) -> dict[str, Any]:
    """A deposit's state and everything written for it, with its own id taken out of keys."""
    deposit = dict(await pool.fetchrow("SELECT * FROM deposits WHERE id = $1", deposit_id) or {})
    entries = await pool.fetch(
        """
        SELECT replace(e.idempotency_key, $1::text, '<id>') AS key, e.kind, e.memo, a.code, p.asset, p.direction,
               p.amount
        FROM journal_entries e JOIN postings p ON p.entry_id = e.id JOIN accounts a ON a.id = p.account_id
        WHERE e.idempotency_key LIKE '%' || $1::text || '%' ORDER BY key, a.code
        """,
        str(deposit_id),
    )
    jobs = await pool.fetch(
        "SELECT replace(id, $1::text, '<id>') AS id, function, status, failures, runs FROM jobs WHERE deposit_id = $2",
        str(deposit_id),
        deposit_id,
    )
    return {
        "deposit": {k: deposit[k] for k in ("status", "received_kes", "failure_code", "failure_reason")},
        "entries": [dict(r) for r in entries],
        "jobs": [dict(r) for r in jobs],
        "reviews": await pool.fetchval("SELECT count(*) FROM review_items WHERE deposit_id = $1", deposit_id),
    }


@pytest.mark.parametrize(("result_code", "outcome"), [(0, "completed_by_query"), (1032, "failed_by_query")])
async def test_a_query_answer_writes_what_a_callback_writes_through_the_same_apply_step(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, result_code: int, outcome: str
) -> None:
    (by_callback, checkout), (by_query, _) = await pending_deposits(pool, 2)
    applied: list[Decided] = []
    real_apply = callback_store.apply

    async def apply_spied(conn: Any, items: Any) -> list[bool]:
        applied.extend(items)
        return await real_apply(conn, items)

    monkeypatch.setattr(callback_store, "apply", apply_spied)
    body = paid(checkout, 1500, "RCPTSAME01") if result_code == 0 else cancelled(checkout, result_code)
    await ingest_callback(pool, body, None)
    answered = await query_deposit(pool, AnsweringDaraja(result_code), by_query, 1)

    assert answered.action == outcome
    # One apply step for both: the callback's with its posted row, the query's without one.
    assert [(d.seen.deposit_id, d.callback is not None) for d in applied] == [(by_callback, True), (by_query, False)]
    assert applied[0].plan.deposit_change == applied[1].plan.deposit_change
    callback_wrote, query_wrote = await what_was_written(pool, by_callback), await what_was_written(pool, by_query)
    assert callback_wrote == query_wrote
    if result_code == 0:
        assert query_wrote["deposit"]["status"] == "processing" and len(query_wrote["entries"]) == 2
        job = {"id": "complete_mpesa_deposit:<id>", "function": "complete_mpesa_deposit", "status": "queued"}
        assert query_wrote["jobs"] == [{**job, "failures": 0, "runs": 0}]
        assert answered.enqueue_job_id == f"complete_mpesa_deposit:{by_query}"
    else:
        assert query_wrote["deposit"]["status"] == "failed" and query_wrote["entries"] == []
    # What differs is what each way is: only the posted callback has a row; the query's 0 is its confirmation.
    confirmations = await pool.fetch(
        "SELECT id, confirmed_by, confirm_answer, mpesa_receipt FROM deposits WHERE id = ANY($1::uuid[])",
        [by_callback, by_query],
    )
    succeeded = result_code == 0
    assert {r["id"]: (r["confirmed_by"], r["confirm_answer"], r["mpesa_receipt"]) for r in confirmations} == {
        by_callback: (None, None, "RCPTSAME01" if succeeded else None),
        by_query: ("stk_query", "result 0", None) if succeeded else (None, None, None),
    }
    rows = await pool.fetch("SELECT deposit_id FROM mpesa_callbacks")
    assert [r["deposit_id"] for r in rows] == [by_callback]


async def test_a_callback_applied_while_the_query_was_asked_stands(pool: asyncpg.Pool) -> None:
    ((deposit_id, checkout),) = await pending_deposits(pool, 1)

    async def callback_arrives() -> None:
        await ingest_callback(pool, paid(checkout, 1500, "RCPTFIRST9"), None)

    # The query read the deposit pending, then asked; meanwhile the success callback was applied.
    answered = await query_deposit(pool, AnsweringDaraja(1032, callback_arrives), deposit_id, 1)
    assert answered.action == "nothing"
    wrote = await what_was_written(pool, deposit_id)
    assert (wrote["deposit"]["status"], wrote["deposit"]["failure_code"]) == ("processing", None)
    assert len(wrote["entries"]) == 2 and len(wrote["jobs"]) == 1
    assert await pool.fetchval("SELECT confirmed_by FROM deposits") is None  # its callback still needs confirming
