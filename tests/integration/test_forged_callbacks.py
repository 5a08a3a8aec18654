"""A forged callback is never paid: a success is paid only when Daraja's STK query confirms it.

Forgers hold the callback URL (its token leaked, or an insider) and post a well-formed ResultCode 0 for a
push the customer cancelled, or that Daraja never heard of. Everything runs for real: the API, a worker,
PostgreSQL, Redis, anvil and the Daraja simulator, whose STK query knows each push's truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from structlog.testing import capture_logs

from api.app import create_app
from kiota import ops
from kiota.confirm import confirm_success
from kiota.daraja import DarajaClient
from kiota.deposits import PUSH_CANCELLED_REASON, initiate
from kiota.dev.chain import BASE_USDC_ADDRESS, usdc_balance
from kiota.dev.daraja_sim_behaviour import PushError, Scenario
from kiota.hdwallet import ExtendedPublicKey
from kiota.ledger import user_account
from kiota.migrate import discover, migrate
from kiota.mpesa import USER_CHECKING, USER_NOT_PAID, USER_PROMPT_NOT_SENT
from kiota.payouts import LaneConfig, pay_deposit
from kiota.settings import Settings
from kiota.store.ledger import balance
from kiota.sweeper import UNKNOWN_PUSH_REASON, sweep
from kiota.users import ensure_user
from tests.conftest import MpesaSystem
from tests.integration.test_mpesa_flow import counts, transfers_from
from tests.integration.test_ops_cli import SHELL_PASSWORD, kiota_ops, shell_operators
from tests.integration.test_payout_lane import job_of, treasury_for, wait_for
from tests.support import CALLBACK_TOKEN, REPO, TEST_CHILDREN, TEST_XPUB, bearer, settings_kwargs, success_body

CANCELLED_BY_CUSTOMER = Scenario(outcome=1032, lose_callback=True, delay_seconds=0)
NEVER_ANSWERED = Scenario(outcome="none")  # the STK query says "being processed" for ever
PAID_CALLBACK_OURS = Scenario(outcome="success", lose_callback=True, delay_seconds=0)


async def forge(system: MpesaSystem, checkout_request_id: str, amount_kes: int, receipt: str) -> None:
    """A well-formed success callback, with the right path token, that Daraja never sent."""
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(system.callback_url, json=success_body(checkout_request_id, amount_kes, receipt))
    assert answer.status_code == 200, answer.text  # recorded, as every well-formed callback is


async def deposit_row(system: MpesaSystem, deposit_id: str) -> dict[str, Any]:
    row = await system.pool.fetchrow("SELECT * FROM deposits WHERE id = $1::uuid", deposit_id)
    assert row is not None
    return dict(row)


async def user_usdc_on_chain(system: MpesaSystem, user: str) -> int:
    address = await system.pool.fetchval("SELECT deposit_address FROM users WHERE id = $1", user)
    return await usdc_balance(system.w3, BASE_USDC_ADDRESS, address)


async def assert_nothing_paid(system: MpesaSystem, user: str, treasury_before: int) -> None:
    assert await transfers_from(system, system.treasury_address) == []
    assert await usdc_balance(system.w3, BASE_USDC_ADDRESS, system.treasury_address) == treasury_before
    assert await user_usdc_on_chain(system, user) == 0
    assert await balance(system.pool, user_account(user, "USDC")) == 0
    assert await system.pool.fetchval("SELECT count(*) FROM journal_entries WHERE kind = 'mpesa_completed'") == 0
    assert (await counts(system))["payouts"] == 0


async def test_a_forged_success_for_a_push_the_customer_cancelled_is_never_paid(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    treasury_before = await usdc_balance(system.w3, BASE_USDC_ADDRESS, system.treasury_address)
    system.simulator.set_scenario(CANCELLED_BY_CUSTOMER, next_push=True)  # Daraja's own 1032 is late
    body = (await system.initiate("vera", 1295)).json()
    await forge(system, body["checkout_request_id"], 1295, "FORGED0001")

    review = await system.wait_status("vera", body["deposit_id"], "needs_review")
    assert review["failure_reason"] == USER_CHECKING
    assert review["tx_hash"] is None and review["completed_at"] is None
    await assert_nothing_paid(system, "vera", treasury_before)

    row = await deposit_row(system, body["deposit_id"])
    assert row["confirmed_at"] is None
    assert row["confirm_answer"] == "ResultCode 1032 (Request cancelled by user)"  # the query's answer
    reason = row["review_reason"]
    assert "callback said ResultCode 0, 1295 KES, receipt FORGED0001" in reason  # ...and the callback's
    assert "STK query said ResultCode 1032" in reason
    raw = await system.pool.fetchval("SELECT raw_body FROM mpesa_callbacks WHERE mpesa_receipt = 'FORGED0001'")
    assert '"ResultCode":0' in raw  # the forged callback itself is kept, as received
    item = await system.pool.fetchrow("SELECT * FROM review_items WHERE deposit_id = $1::uuid", body["deposit_id"])
    assert (item["kind"], item["status"], item["amount_kes"]) == ("unconfirmed_success", "open", 1295)
    job = await job_of(system, body["deposit_id"])
    assert job["status"] == "failed" and "not confirmed" in str(job["last_error"])

    # Daraja's real answer arrives at last: the deposit stays in review, still unpaid, never "failed" by it.
    late = await system.simulator.send_callback(body["checkout_request_id"])
    assert late.status_code == 200
    await asyncio.sleep(0.3)
    assert (await system.deposit("vera", body["deposit_id"]))["status"] == "needs_review"
    await assert_nothing_paid(system, "vera", treasury_before)


async def test_a_forged_success_for_a_push_daraja_does_not_know_is_never_paid(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    treasury_before = await usdc_balance(system.w3, BASE_USDC_ADDRESS, system.treasury_address)
    system.simulator.set_scenario(NEVER_ANSWERED, next_push=True)
    body = (await system.initiate("walt", 700)).json()
    await system.simulator.reset()  # Daraja forgets the push: its query refuses the CheckoutRequestID
    await forge(system, body["checkout_request_id"], 700, "FORGED0002")

    review = await system.wait_status("walt", body["deposit_id"], "needs_review")
    assert review["failure_reason"] == USER_CHECKING
    await assert_nothing_paid(system, "walt", treasury_before)
    row = await deposit_row(system, body["deposit_id"])
    assert row["confirm_answer"].startswith("refused: 400.002.02")
    assert "M-Pesa did not confirm it" in row["review_reason"]


async def test_a_forged_success_never_confirmed_goes_to_review_at_the_bound(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    treasury_before = await usdc_balance(system.w3, BASE_USDC_ADDRESS, system.treasury_address)
    system.simulator.set_scenario(NEVER_ANSWERED, next_push=True)
    body = (await system.initiate("xena", 1295)).json()
    await forge(system, body["checkout_request_id"], 1295, "FORGED0003")

    async def asked_three_times() -> bool:
        return (await deposit_row(system, body["deposit_id"]))["confirm_attempts"] >= 3

    await wait_for(asked_three_times)
    row = await deposit_row(system, body["deposit_id"])
    assert row["status"] == "processing" and row["confirmed_at"] is None
    assert row["confirm_answer"] == "pending: The transaction is being processed"
    job = await job_of(system, body["deposit_id"])
    assert job["status"] in ("retrying", "running") and job["failures"] == 0  # waiting is not failing
    await assert_nothing_paid(system, "xena", treasury_before)

    # A quarter of an hour later M-Pesa has still not said 0: a person looks; nothing is paid.
    await system.pool.execute(
        "UPDATE deposits SET confirm_started_at = now() - interval '15 minutes 1 second' WHERE id = $1::uuid",
        body["deposit_id"],
    )
    review = await system.wait_status("xena", body["deposit_id"], "needs_review")
    assert review["failure_reason"] == USER_CHECKING
    reason = (await deposit_row(system, body["deposit_id"]))["review_reason"]
    assert "no confirmation within 15 minutes" in reason and "pending: The transaction is being processed" in reason
    await assert_nothing_paid(system, "xena", treasury_before)


async def test_still_processing_for_a_while_then_0_is_paid_once(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    system.simulator.set_scenario(Scenario(outcome="success", query_pending_seconds=1.0), next_push=True)
    body = (await system.initiate("yuri", 1295)).json()
    done = await system.wait_status("yuri", body["deposit_id"], "completed")
    assert done["failure_reason"] is None
    row = await deposit_row(system, body["deposit_id"])
    assert row["confirmed_by"] == "stk_query" and row["confirm_attempts"] >= 2  # "being processed" first
    assert row["confirm_answer"].startswith("ResultCode 0")
    assert row["confirmed_at"] < (await system.pool.fetchval("SELECT signed_at FROM payouts"))
    assert len(await transfers_from(system, system.treasury_address)) == 1
    assert await balance(system.pool, user_account("yuri", "USDC")) == 10_000_000
    job = await job_of(system, body["deposit_id"])
    assert job["status"] == "succeeded" and job["failures"] == 0


@pytest.mark.no_worker
async def test_a_forged_success_never_rides_in_another_deposits_lane_turn(mpesa_system: MpesaSystem) -> None:
    """The lane's owner pays the other processing deposits in its turn: never an unconfirmed one."""
    system = mpesa_system
    treasury_before = await usdc_balance(system.w3, BASE_USDC_ADDRESS, system.treasury_address)
    system.simulator.set_scenario(PAID_CALLBACK_OURS, next_push=True)
    genuine = (await system.initiate("zoe", 1295)).json()
    system.simulator.set_scenario(NEVER_ANSWERED, next_push=True)
    forged = (await system.initiate("mallory", 1295)).json()
    await system.simulator.send_callback(genuine["checkout_request_id"])  # Daraja's own callback, delivered
    await forge(system, forged["checkout_request_id"], 1295, "FORGED0004")  # older in the queue of companions
    for user, deposit in (("zoe", genuine), ("mallory", forged)):
        assert (await system.deposit(user, deposit["deposit_id"]))["status"] == "processing"

    # The genuine deposit's job: confirmed by the query, then its turn of the lane, with room for companions.
    daraja = DarajaClient.from_settings(system.settings, redis=system.queue)
    treasury = treasury_for(system)
    try:
        assert (await confirm_success(system.pool, daraja, uuid.UUID(genuine["deposit_id"]))).verdict == "confirmed"
        result = await pay_deposit(system.pool, treasury, uuid.UUID(genuine["deposit_id"]), LaneConfig(max_in_flight=5))
    finally:
        await treasury.aclose()
        await daraja.aclose()
    assert result.outcome.value == "completed"
    assert len(await transfers_from(system, system.treasury_address)) == 1  # the genuine one, alone
    paid = await deposit_row(system, genuine["deposit_id"])
    assert (await system.w3.eth.get_transaction_receipt(paid["tx_hash"]))["status"] == 1
    assert await balance(system.pool, user_account("zoe", "USDC")) == 10_000_000
    assert await usdc_balance(system.w3, BASE_USDC_ADDRESS, system.treasury_address) == treasury_before - 10_000_000

    row = await deposit_row(system, forged["deposit_id"])
    assert row["status"] == "processing" and row["confirmed_at"] is None and row["tx_hash"] is None
    query = "SELECT count(*) FROM payouts WHERE deposit_id = $1::uuid"
    assert await system.pool.fetchval(query, forged["deposit_id"]) == 0  # not even a payout row
    assert await user_usdc_on_chain(system, "mallory") == 0
    assert await balance(system.pool, user_account("mallory", "USDC")) == 0


async def test_an_operator_retry_asks_again_and_an_operator_confirmation_pays(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    treasury_before = await usdc_balance(system.w3, BASE_USDC_ADDRESS, system.treasury_address)
    system.simulator.set_scenario(CANCELLED_BY_CUSTOMER, next_push=True)
    body = (await system.initiate("ursula", 1295)).json()
    await forge(system, body["checkout_request_id"], 1295, "FORGED0005")
    await system.wait_status("ursula", body["deposit_id"], "needs_review")
    first = await deposit_row(system, body["deposit_id"])

    # A retry never skips the confirmation: the query is asked again (a fresh bound) and still says 1032.
    retried = await ops.retry_deposit(system.pool, system.queue, uuid.UUID(body["deposit_id"]), "test")
    assert not retried.confirmed
    assert (await deposit_row(system, body["deposit_id"]))["status"] == "processing"
    await system.wait_status("ursula", body["deposit_id"], "needs_review")
    again = await deposit_row(system, body["deposit_id"])
    assert again["confirm_started_at"] > first["confirm_started_at"] and again["confirm_attempts"] == 1
    assert again["confirmed_at"] is None and "STK query said ResultCode 1032" in again["review_reason"]
    await assert_nothing_paid(system, "ursula", treasury_before)
    assert await system.pool.fetchval("SELECT status FROM review_items WHERE kind = 'unconfirmed_success'") == "open"

    # An operator finds the payment on the M-Pesa statement (the sandbox has said FAILED for paid pushes).
    await shell_operators(system.pool, "olga", "pat")
    code, out = await kiota_ops(
        system.settings.database_url, system.settings.redis_url,
        "confirm", body["deposit_id"], "--by", "olga", "--note", "statement line QWE123", password=SHELL_PASSWORD,
    )  # fmt: skip
    assert code == 0 and "proposed confirm_deposit" in out, out
    assert await deposit_row(system, body["deposit_id"]) == again  # one person's word moves nothing
    proposal_id = await system.pool.fetchval("SELECT id FROM money_proposals")
    code, out = await kiota_ops(
        system.settings.database_url, system.settings.redis_url, "approve", str(proposal_id), "--by", "pat",
        password=SHELL_PASSWORD,
    )  # fmt: skip
    assert code == 0 and f"completing {body['deposit_id']}" in out, out
    done = await system.wait_status("ursula", body["deposit_id"], "completed")
    assert done["failure_reason"] is None
    row = await deposit_row(system, body["deposit_id"])
    assert row["confirmed_by"] == "operator:olga" and "statement line QWE123" in row["confirm_answer"]
    item = await system.pool.fetchrow("SELECT * FROM review_items WHERE kind = 'unconfirmed_success'")
    assert item["status"] == "resolved" and "olga" in item["resolution"]
    assert len(await transfers_from(system, system.treasury_address)) == 1
    assert await balance(system.pool, user_account("ursula", "USDC")) == 10_000_000

    code, out = await kiota_ops(
        system.settings.database_url, system.settings.redis_url, "confirm", body["deposit_id"], "--by", "olga",
        password=SHELL_PASSWORD,
    )  # fmt: skip
    assert code == 2 and "confirmed already" in out  # once
    code, out = await kiota_ops(system.settings.database_url, system.settings.redis_url, "confirm", body["deposit_id"])
    assert code == 2 and "--by" in out  # who confirmed is never left to a default


async def test_an_operator_cannot_confirm_money_that_never_arrived(mpesa_system: MpesaSystem) -> None:
    """`kiota ops confirm` is an input that moves money: on a deposit no success was received for (still
    pending, no callback), it is refused and nothing is paid."""
    system = mpesa_system
    treasury_before = await usdc_balance(system.w3, BASE_USDC_ADDRESS, system.treasury_address)
    system.simulator.set_scenario(Scenario(outcome="none"), next_push=True)  # no callback ever comes
    body = (await system.initiate("oscar", 1295)).json()
    await shell_operators(system.pool, "mallory")
    code, out = await kiota_ops(
        system.settings.database_url, system.settings.redis_url, "confirm", body["deposit_id"], "--by", "mallory",
        password=SHELL_PASSWORD,
    )  # fmt: skip
    assert code == 2 and "only a success received" in out, out
    row = await deposit_row(system, body["deposit_id"])
    assert (row["status"], row["confirmed_at"]) == ("pending", None)
    await assert_nothing_paid(system, "oscar", treasury_before)


@pytest.mark.system_settings(mpesa_confirm_success="off")
async def test_with_confirmation_off_the_job_marks_the_deposit_confirmed_by_the_setting(
    mpesa_system: MpesaSystem,
) -> None:
    system = mpesa_system
    body = (await system.initiate("tara", 1295)).json()
    await system.wait_status("tara", body["deposit_id"], "completed")
    row = await deposit_row(system, body["deposit_id"])
    assert (row["confirmed_by"], row["confirm_attempts"]) == ("setting", 0)


async def test_confirmation_off_with_production_daraja_stops_the_api_with_one_line(
    database_url: str, tmp_path: Path
) -> None:
    env = {
        **{k.upper(): str(v) for k, v in settings_kwargs(database_url).items()},
        "MPESA_BASE_URL": "https://api.safaricom.co.ke",
        "MPESA_CONFIRM_SUCCESS": "off",
        "PATH": "/usr/bin:/bin",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kiota.cli", "api", env={**env, "PYTHONPATH": str(REPO)}, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "MPESA_CONFIRM_SUCCESS=off is refused with production Daraja" in lines[0]


# --------------------------------------------------------------------------------------- what users see


async def test_users_are_never_shown_daraja_or_callback_text(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    # The first push is refused; the next is accepted and never answered by Daraja (the callback below is ours).
    refusing = Scenario(outcome="none", push_error=PushError("400.002.02", times=1))
    system.simulator.set_scenario(refusing, default=True)
    refused = await system.initiate("sam", 500)
    assert refused.status_code == 502
    shown = await system.deposit("sam", refused.json()["deposit_id"])
    assert shown["status"] == "failed" and shown["failure_reason"] == USER_PROMPT_NOT_SENT

    body = (await system.initiate("sam", 600)).json()
    hostile = {
        "Body": {
            "stkCallback": {
                "MerchantRequestID": "m",
                "CheckoutRequestID": body["checkout_request_id"],
                "ResultCode": 9999,
                "ResultDesc": "<script>alert(1)</script> Web3RPCError at 0xdeadbeef: Traceback",
            }
        }
    }
    async with httpx.AsyncClient() as http:
        assert (await http.post(system.callback_url, json=hostile)).status_code == 200
    failed = await system.wait_status("sam", body["deposit_id"], "failed")
    assert failed["failure_reason"] == USER_NOT_PAID
    listed = (await system.http.get("/api/v1/deposits", headers=bearer("sam"))).json()["items"]
    assert {d["failure_reason"] for d in listed} == {USER_NOT_PAID, USER_PROMPT_NOT_SENT}


# ------------------------------------------------------------------- a push whose outcome is unknown


async def _admitted() -> None:
    """The request limits let this push through (they are not what this test is about)."""


async def test_a_push_cancelled_before_daraja_answers_goes_to_review(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    await ensure_user(system.pool, "pat", ExtendedPublicKey.parse(TEST_XPUB))
    system.simulator.set_scenario(Scenario(outcome="none", push_delay_seconds=2), next_push=True)
    daraja = DarajaClient.from_settings(system.settings)
    try:
        request = asyncio.create_task(
            initiate(
                system.pool, daraja, user_id="pat", amount_kes=800, phone="254708374149",
                kes_per_usd=Decimal("129.50"), callback_url=system.callback_url, query_after_seconds=3600,
                admit=_admitted,
            )
        )  # fmt: skip
        async with asyncio.timeout(5):
            while not system.simulator.pushes:  # the push is out; its answer takes 2 s
                await asyncio.sleep(0.01)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    finally:
        await daraja.aclose()
    row = await system.pool.fetchrow("SELECT * FROM deposits WHERE user_id = 'pat'")
    assert row["status"] == "needs_review" and row["checkout_request_id"] is None
    assert row["review_reason"] == PUSH_CANCELLED_REASON
    assert (await system.deposit("pat", str(row["id"])))["failure_reason"] == USER_CHECKING


@pytest.mark.no_worker
async def test_a_push_left_without_an_answer_by_a_dead_process_is_never_pending_forever(
    mpesa_system: MpesaSystem,
) -> None:
    system = mpesa_system
    await ensure_user(system.pool, "quinn", ExtendedPublicKey.parse(TEST_XPUB))
    insert = (
        "INSERT INTO deposits (id, user_id, status, amount_kes, kes_per_usd, amount_usdc, phone_masked, "
        "checkout_request_id, created_at) VALUES ($1, 'quinn', 'pending', 500, 129.50, 3861003, '2547****4149', $2, "
        "now() - make_interval(secs => $3))"
    )
    dead, young, asked = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await system.pool.execute(insert, dead, None, 121.0)  # killed between the insert and Daraja's answer
    await system.pool.execute(insert, young, None, 30.0)  # its push may still be on its way
    await system.pool.execute(insert, asked, "ws_CO_known", 3600.0)  # the STK query's to ask about
    report = await sweep(system.pool, system.queue, 3600)
    assert report.unknown_pushes == 1
    statuses = dict(await system.pool.fetch("SELECT id, status FROM deposits WHERE user_id = 'quinn'"))
    assert statuses == {dead: "needs_review", young: "pending", asked: "pending"}
    assert await system.pool.fetchval("SELECT review_reason FROM deposits WHERE id = $1", dead) == UNKNOWN_PUSH_REASON
    assert (await sweep(system.pool, system.queue, 3600)).unknown_pushes == 0  # once


# ------------------------------------------------------------------------ caps count by time signed


async def test_payouts_count_against_the_caps_from_when_they_were_signed(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    await system.pool.execute("UPDATE payout_guards SET hourly_cap_micro = 15000000")  # one 10 USDC payout fits
    first = (await system.initiate("ola", 1295)).json()
    await system.wait_status("ola", first["deposit_id"], "completed")
    payout = await system.pool.fetchrow("SELECT * FROM payouts")
    assert payout["signed_at"] is not None and payout["signed_at"] >= payout["created_at"]
    # Its row was created long ago (a backlog held back by a cap) but it was signed just now: it counts.
    await system.pool.execute("UPDATE payouts SET created_at = now() - interval '3 hours'")
    second = (await system.initiate("ola", 1295)).json()

    async def blocked() -> bool:
        return (await job_of(system, second["deposit_id"])).get("status") == "blocked"

    await wait_for(blocked)
    assert "hourly" in str((await job_of(system, second["deposit_id"]))["blocked_reason"])
    assert len(await transfers_from(system, system.treasury_address)) == 1

    # Signed over an hour ago: it no longer counts, and the next look pays the second.
    await system.pool.execute("UPDATE payouts SET signed_at = now() - interval '61 minutes'")
    await ops.release_blocked(system.pool, system.queue)
    await system.wait_status("ola", second["deposit_id"], "completed")
    assert len(await transfers_from(system, system.treasury_address)) == 2


# ---------------------------------------------------- the callback allowlist with production Daraja


@contextlib.asynccontextmanager
async def production_api(database_url: str, redis_url: str, **extra: object) -> AsyncIterator[httpx.AsyncClient]:
    values = {**settings_kwargs(database_url, redis_url), "mpesa_base_url": "https://api.safaricom.co.ke", **extra}
    app = create_app(Settings(_env_file=None, **values))  # type: ignore[arg-type]
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kiota.test") as http,
    ):
        yield http  # ASGITransport's client address is 127.0.0.1


def unknown_failure(checkout_request_id: str) -> dict[str, Any]:
    callback = {"MerchantRequestID": "m", "CheckoutRequestID": checkout_request_id, "ResultCode": 1032}
    return {"Body": {"stkCallback": {**callback, "ResultDesc": "Request cancelled by user"}}}


CALLBACK = f"/api/v1/deposit/mpesa-callback/{CALLBACK_TOKEN}"


async def test_with_production_daraja_only_safaricoms_addresses_may_call_back(
    database_url: str, redis_url: str, pool: asyncpg.Pool
) -> None:
    async with production_api(database_url, redis_url) as http:
        with capture_logs() as events:
            for _ in range(3):
                refused = await http.post(CALLBACK, json=unknown_failure("ws_CO_from_anywhere"))
                assert refused.status_code == 403
        refusals = [e for e in events if "allowlist" in e["event"]]
        assert len(refusals) == 1 and refusals[0]["client"] == "127.0.0.1"  # logged once per address
        # Without a trusted proxy, X-Forwarded-For is the caller's own words: never read.
        spoofed = await http.post(
            CALLBACK, json=unknown_failure("ws_CO_spoofed"), headers={"X-Forwarded-For": "196.201.214.200"}
        )
        assert spoofed.status_code == 403
    assert await pool.fetchval("SELECT count(*) FROM mpesa_callbacks") == 0

    async with production_api(database_url, redis_url, trusted_proxy_ips="127.0.0.1/32") as http:
        # Our proxy appended the address it saw: Safaricom's. Believed.
        via_proxy = await http.post(
            CALLBACK, json=unknown_failure("ws_CO_via_proxy"), headers={"X-Forwarded-For": "196.201.214.200"}
        )
        assert via_proxy.status_code == 200, via_proxy.text
        # A client wrote Safaricom's address at the left; our proxy appended the client's real one.
        leftmost = await http.post(
            CALLBACK,
            json=unknown_failure("ws_CO_leftmost"),
            headers={"X-Forwarded-For": "196.201.214.200, 6.6.6.6"},
        )
        assert leftmost.status_code == 403
        # The same, with our proxy's hop on a header line of its own: every line is read, in order.
        two_lines = await http.post(
            CALLBACK,
            content=json.dumps(unknown_failure("ws_CO_two_lines")),
            headers=[("X-Forwarded-For", "196.201.214.200"), ("X-Forwarded-For", "6.6.6.6")],
        )
        assert two_lines.status_code == 403
    rows = await pool.fetch("SELECT checkout_request_id, remote_addr FROM mpesa_callbacks")
    assert [(r["checkout_request_id"], r["remote_addr"]) for r in rows] == [("ws_CO_via_proxy", "196.201.214.200")]

    async with production_api(database_url, redis_url, mpesa_callback_allowed_ips="127.0.0.1/32") as http:
        assert (await http.post(CALLBACK, json=unknown_failure("ws_CO_overridden"))).status_code == 200


# ------------------------------------------------------------------------------------ the migration


async def test_migration_0010_leaves_processing_deposits_to_be_confirmed_and_dates_old_signatures(
    empty_database_url: str,
) -> None:
    before = [m for m in discover() if m.version < "0010"]
    await migrate(empty_database_url, before)
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(
            "INSERT INTO users (id, address_index, deposit_address) VALUES ('old', 0, $1)", TEST_CHILDREN[0]
        )
        insert = (
            "INSERT INTO deposits (id, user_id, status, amount_kes, kes_per_usd, amount_usdc, phone_masked, "
            "checkout_request_id, received_kes, processing_since) "
            "VALUES ($1, 'old', 'processing', 1295, 129.50, 10000000, '2547****4149', $2, 1295, now())"
        )
        in_flight, signed = uuid.uuid4(), uuid.uuid4()
        await conn.execute(insert, in_flight, "ws_CO_in_flight")
        await conn.execute(insert, signed, "ws_CO_signed")
        payout = await conn.fetchval(
            "INSERT INTO payouts (deposit_id, chain_id, token_address, from_address, to_address, amount_micro, nonce, "
            "status, created_at) VALUES ($1, 8453, 't', 'f', 'x', 10000000, 7, 'signed', now() - interval '2 days') "
            "RETURNING id",
            signed,
        )
        await conn.execute(
            "INSERT INTO payout_attempts (payout_id, nonce, tx_hash, raw_tx, max_fee_per_gas, "
            "max_priority_fee_per_gas, gas_limit, created_at) VALUES ($1, 7, '0xabc', '0x', 1, 1, 100000, "
            "now() - interval '20 minutes')",
            payout,
        )
        assert await migrate(empty_database_url) == [m.version for m in discover() if m.version >= "0010"]
        confirmed = dict(await conn.fetch("SELECT id, confirmed_by FROM deposits"))
        # The unsigned one's next job run asks the STK query; the signed one's payout is already out.
        assert confirmed == {in_flight: None, signed: "signed_before_confirmation"}
        age = await conn.fetchval("SELECT now() - signed_at FROM payouts WHERE id = $1", payout)
        assert timedelta(minutes=19) < age < timedelta(minutes=21)  # when its first attempt was signed
        # Signing stamps the time, whichever release signs.
        created = await conn.fetchval(
            "INSERT INTO payouts (deposit_id, chain_id, token_address, from_address, to_address, amount_micro, "
            "status) VALUES ($1, 8453, 't', 'f', 'x', 10000000, 'created') RETURNING id",
            in_flight,
        )
        assert await conn.fetchval("SELECT signed_at FROM payouts WHERE id = $1", created) is None
        # Whichever release signs, the database refuses a nonce for a deposit M-Pesa has not confirmed.
        with pytest.raises(asyncpg.CheckViolationError, match="not confirmed"):
            await conn.execute("UPDATE payouts SET nonce = 8, status = 'signed' WHERE id = $1", created)
        await conn.execute(
            "UPDATE deposits SET confirmed_at = now(), confirmed_by = 'stk_query' WHERE id = $1", in_flight
        )
        await conn.execute("UPDATE payouts SET nonce = 8, status = 'signed' WHERE id = $1", created)
        assert await conn.fetchval("SELECT signed_at IS NOT NULL FROM payouts WHERE id = $1", created)
    finally:
        await conn.close()
