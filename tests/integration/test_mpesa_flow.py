"""M-Pesa deposits end to end: real PostgreSQL, Redis, anvil, the Daraja simulator, HTTP and a real worker."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import httpx
import pytest

from kiota.dev.chain import BASE_USDC_ADDRESS, usdc_balance
from kiota.dev.daraja_sim_behaviour import PushError, Scenario
from kiota.ledger import user_account
from kiota.money import format_usdc, kes_to_usdc
from kiota.mpesa import RESULT_REASONS, USER_CHECKING
from kiota.store.ledger import balance
from tests.conftest import MpesaSystem
from tests.support import bearer, success_body

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


async def transfers_from(system: MpesaSystem, sender: str) -> list[dict[str, Any]]:
    logs = await system.w3.eth.get_logs(
        {
            "fromBlock": 0,
            "toBlock": "latest",
            "address": system.w3.to_checksum_address(BASE_USDC_ADDRESS),
            "topics": [TRANSFER_TOPIC, "0x" + sender.lower()[2:].rjust(64, "0")],  # type: ignore[list-item]
        }
    )
    return [dict(log) for log in logs]


async def counts(system: MpesaSystem) -> dict[str, int]:
    row = await system.pool.fetchrow(
        "SELECT (SELECT count(*) FROM journal_entries) AS entries, (SELECT count(*) FROM payouts) AS payouts, "
        "(SELECT count(*) FROM payout_attempts) AS attempts"
    )
    assert row is not None
    return dict(row)


async def test_happy_path_pays_on_chain_and_credits_once(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    response = await system.initiate("alice", 1500, "0708374149")
    assert response.status_code == 202, response.text
    body = response.json()
    quote = kes_to_usdc(1500, Decimal("129.50"))
    assert body["status"] == "pending"
    assert body["kes_per_usd"] == "129.50"
    assert body["amount_usdc"] == format_usdc(quote.amount_usdc_micro) == "11.583011"
    assert body["checkout_request_id"].startswith("ws_CO_")
    assert set(body) == {
        "deposit_id",
        "status",
        "checkout_request_id",
        "customer_message",
        "kes_per_usd",
        "amount_usdc",
    }

    done = await system.wait_status("alice", body["deposit_id"], "completed")
    assert done["kind"] == "mpesa"
    assert done["amount_kes"] == 1500 and done["amount_usdc"] == "11.583011" and done["kes_per_usd"] == "129.50"
    assert done["mpesa_receipt"] and done["tx_hash"] and done["completed_at"] and done["failure_reason"] is None

    portfolio = (await system.http.get("/api/v1/portfolio", headers=bearer("alice"))).json()
    assert portfolio["balances"] == {"USDC": "11.583011"}
    on_chain = await usdc_balance(system.w3, BASE_USDC_ADDRESS, portfolio["deposit_address"])
    assert on_chain == quote.amount_usdc_micro
    receipt = await system.w3.eth.get_transaction_receipt(done["tx_hash"])
    assert receipt["status"] == 1
    assert len(await transfers_from(system, system.treasury_address)) == 1
    assert await balance(system.pool, user_account("alice", "USDC")) == quote.amount_usdc_micro
    assert await balance(system.pool, "customer_pending:KES") == 0
    assert await balance(system.pool, "fx:KES") == 1500
    cached = await system.pool.fetchval("SELECT usdc_micro FROM wallet_balances WHERE user_id = 'alice'")
    assert cached == on_chain
    job = await system.pool.fetchrow("SELECT * FROM jobs WHERE deposit_id = $1::uuid", body["deposit_id"])
    assert job["status"] == "succeeded" and job["failures"] == 0


async def test_every_failure_code_fails_the_deposit_with_its_reason(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    deposits: dict[int, str] = {}
    for code in RESULT_REASONS:
        system.simulator.set_scenario(Scenario(outcome=code, delay_seconds=0.3), next_push=True)
        # One user per push: a user may have at most 3 deposits pending at once.
        response = await system.initiate(f"bob-{code}", 100)
        assert response.status_code == 202, response.text
        deposits[code] = response.json()["deposit_id"]
    for code, deposit_id in deposits.items():
        failed = await system.wait_status(f"bob-{code}", deposit_id, "failed", "completed", "processing")
        assert failed["status"] == "failed", (code, failed)
        assert failed["failure_reason"] == RESULT_REASONS[code]
        assert failed["tx_hash"] is None and failed["mpesa_receipt"] is None
    assert await counts(system) == {"entries": 0, "payouts": 0, "attempts": 0}
    assert await transfers_from(system, system.treasury_address) == []


async def test_the_same_callback_ten_times_at_once_pays_once(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    # Paid (the STK query says so), and its callback is ours to deliver.
    system.simulator.set_scenario(Scenario(outcome="success", lose_callback=True, delay_seconds=0), next_push=True)
    body = (await system.initiate("carol", 2590)).json()
    payload = success_body(body["checkout_request_id"], 2590.0)
    async with httpx.AsyncClient(timeout=15) as http:
        answers = await asyncio.gather(*(http.post(system.callback_url, json=payload) for _ in range(10)))
    assert [a.status_code for a in answers] == [200] * 10
    assert all(a.json() == {"ResultCode": 0, "ResultDesc": "Accepted"} for a in answers)
    done = await system.wait_status("carol", body["deposit_id"], "completed")
    await asyncio.sleep(0.5)  # any second payout would have had time to start
    assert done["amount_usdc"] == "20.000000"
    assert len(await transfers_from(system, system.treasury_address)) == 1
    assert await counts(system) == {"entries": 2, "payouts": 1, "attempts": 1}
    dispositions = await system.pool.fetch("SELECT disposition, count(*) FROM mpesa_callbacks GROUP BY 1")
    assert {r["disposition"]: r["count"] for r in dispositions} == {"succeeded": 1, "duplicate": 9}


async def test_simulator_duplicates_are_ignored(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    system.simulator.set_scenario(Scenario(outcome="success", duplicates=3, delay_seconds=0.3), next_push=True)
    body = (await system.initiate("dave", 1295)).json()
    await system.wait_status("dave", body["deposit_id"], "completed")
    async with asyncio.timeout(10):
        await system.simulator.wait_for_callbacks(body["checkout_request_id"], 4)
    assert len(await transfers_from(system, system.treasury_address)) == 1
    assert (await system.http.get("/api/v1/portfolio", headers=bearer("dave"))).json()["balances"][
        "USDC"
    ] == "10.000000"


async def test_a_contradicting_second_callback_goes_to_review_without_a_second_credit(
    mpesa_system: MpesaSystem,
) -> None:
    system = mpesa_system
    system.simulator.set_scenario(Scenario(outcome="success", contradict_with=1032, delay_seconds=0.3), next_push=True)
    body = (await system.initiate("erin", 1295)).json()
    await system.wait_status("erin", body["deposit_id"], "completed")
    async with asyncio.timeout(10):
        await system.simulator.wait_for_callbacks(body["checkout_request_id"], 2)
    review = await system.pool.fetch("SELECT kind, reason FROM review_items")
    assert [r["kind"] for r in review] == ["contradiction"]
    assert len(await transfers_from(system, system.treasury_address)) == 1
    assert await balance(system.pool, user_account("erin", "USDC")) == 10_000_000


async def test_a_success_after_a_failure_is_money_for_review(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    system.simulator.set_scenario(Scenario(outcome=1032, contradict_with="success", delay_seconds=0.3), next_push=True)
    body = (await system.initiate("erin", 500)).json()
    review = await system.wait_status("erin", body["deposit_id"], "needs_review", seconds=10)
    assert review["failure_reason"] == USER_CHECKING
    assert "after the deposit had failed" in await system.review_reason(body["deposit_id"])
    assert await balance(system.pool, "suspense:KES") == 500
    assert await balance(system.pool, user_account("erin", "USDC")) == 0
    assert await transfers_from(system, system.treasury_address) == []


async def test_an_amount_mismatch_goes_to_review_uncredited(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    system.simulator.set_scenario(Scenario(outcome="success", amount_override=1, delay_seconds=0.3), next_push=True)
    body = (await system.initiate("frank", 1500)).json()
    review = await system.wait_status("frank", body["deposit_id"], "needs_review", seconds=10)
    assert review["failure_reason"] == USER_CHECKING
    assert "amount mismatch" in await system.review_reason(body["deposit_id"])
    assert await balance(system.pool, "suspense:KES") == 1
    assert await balance(system.pool, user_account("frank", "USDC")) == 0
    assert await transfers_from(system, system.treasury_address) == []


async def test_an_unknown_checkout_request_id_success_is_listed_for_review(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    async with httpx.AsyncClient() as http:
        answer = await http.post(system.callback_url, json=success_body("ws_CO_000000000000000000", 700, "QWE123RTY9"))
        again = await http.post(system.callback_url, json=success_body("ws_CO_000000000000000000", 700, "QWE123RTY9"))
    assert answer.status_code == again.status_code == 200
    review = await system.pool.fetch("SELECT kind, amount_kes, reason FROM review_items")
    assert [(r["kind"], r["amount_kes"]) for r in review] == [("mpesa_callback", 700)]
    assert await balance(system.pool, "suspense:KES") == 700  # booked once, though delivered twice
    assert await counts(system) == {"entries": 1, "payouts": 0, "attempts": 0}


async def test_an_unknown_failure_callback_is_recorded_and_accepted(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    payload = {
        "Body": {
            "stkCallback": {
                "MerchantRequestID": "m",
                "CheckoutRequestID": "ws_CO_9",
                "ResultCode": 1032,
                "ResultDesc": "Request cancelled by user",
            }
        }
    }
    async with httpx.AsyncClient() as http:
        answer = await http.post(system.callback_url, json=payload)
    assert answer.status_code == 200
    assert await system.pool.fetchval("SELECT disposition FROM mpesa_callbacks") == "unknown_failure"
    assert await counts(system) == {"entries": 0, "payouts": 0, "attempts": 0}


@pytest.mark.parametrize(
    ("error_code", "times", "expected_status"),
    [("400.002.02", None, 502), ("500.001.1001", None, 502), ("500.003.02", 2, 502), ("500.003.02", 1, 202)],
)
async def test_daraja_refusing_the_push_is_502_and_leaves_nothing_pending(
    mpesa_system: MpesaSystem, error_code: str, times: int | None, expected_status: int
) -> None:
    system = mpesa_system
    system.simulator.set_scenario(Scenario(push_error=PushError(error_code=error_code, times=times)), default=True)
    response = await system.initiate("gina", 200)
    assert response.status_code == expected_status, response.text
    if expected_status == 502:
        assert response.json()["detail"]
        listed = (await system.http.get("/api/v1/deposits", headers=bearer("gina"))).json()["items"]
        assert [d["status"] for d in listed] == ["failed"]


async def test_deposits_are_private_and_listed_newest_first(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    first = (await system.initiate("hana", 100)).json()["deposit_id"]
    second = (await system.initiate("hana", 200)).json()["deposit_id"]
    listed = (await system.http.get("/api/v1/deposits", headers=bearer("hana"))).json()["items"]
    assert [d["deposit_id"] for d in listed] == [second, first]
    assert (await system.http.get(f"/api/v1/deposits/{first}", headers=bearer("ivan"))).status_code == 404
    assert (await system.http.get("/api/v1/deposits/not-a-uuid", headers=bearer("hana"))).status_code == 404
    assert (await system.http.get("/api/v1/deposits", headers=bearer("ivan"))).json() == {"items": []}


async def test_initiate_replays_with_the_same_idempotency_key(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    first = await system.initiate("jo", 300, **{"Idempotency-Key": "abc"})
    second = await system.initiate("jo", 300, **{"Idempotency-Key": "abc"})
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    other = await system.initiate("jo", 301, **{"Idempotency-Key": "abc"})
    assert other.status_code == 409
    async with httpx.AsyncClient() as http:
        pushes = (await http.get(f"{system.simulator_url}/_sim/pushes")).json()
    assert len(pushes["pushes"] if isinstance(pushes, dict) else pushes) == 1
