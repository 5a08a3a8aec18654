"""An Idempotency-Key left "in flight" by a dead process expires.

A real `kiota api` process claims a key and is SIGKILLed while Daraja (the simulator) holds its
push answer. Its claim stays in PostgreSQL with no answer; a retry with the same key is 409 while
the claim is younger than the bound, and runs once it is older. (The claim is aged in the
database, not waited for: the bound is 60 s.) Whatever runs again, the key's deposit is found:
a push that may have reached the phone is never sent twice; only a refused one is tried again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Coroutine
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.idempotency import IN_FLIGHT_EXPIRY_SECONDS
from kiota.daraja import DarajaClient
from kiota.deposits import Initiated, Uncertain, initiate
from kiota.dev.daraja_sim_behaviour import PushError, Scenario
from kiota.hdwallet import ExtendedPublicKey
from kiota.users import ensure_user
from tests.conftest import MpesaSystem
from tests.support import TEST_XPUB, bearer, free_port

PHONE = "254708374149"
BODY = {"amount_kes": 1500, "phone": PHONE}
KEY = {"Idempotency-Key": "retry-after-a-crash"}


async def _ready(url: str, proc: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            assert proc.returncode is None, "kiota api exited during start-up"
            try:
                if (await http.get(f"{url}/health", timeout=1)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("kiota api did not start")


async def _claims(system: MpesaSystem) -> list[tuple[int | None, bool]]:
    rows = await system.pool.fetch("SELECT response_status, completed_at IS NULL AS open FROM idempotency_keys")
    return [(r["response_status"], r["open"]) for r in rows]


async def test_a_key_left_in_flight_by_a_killed_process_expires(mpesa_system: MpesaSystem, tmp_path: Path) -> None:
    system = mpesa_system
    assert 10 < IN_FLIGHT_EXPIRY_SECONDS <= 120  # longer than initiate's 10 s, short enough to retry soon
    system.simulator.set_scenario(Scenario(outcome="none", push_delay_seconds=5), next_push=True)
    port = free_port()
    env = system.env(PORT=str(port), PUBLIC_BASE_URL=f"http://127.0.0.1:{port}", KIOTA_LOG_FORMAT="json")
    env.pop("TREASURY_PRIVATE_KEY", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kiota.cli", "api", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        await _ready(url, proc)
        async with httpx.AsyncClient(base_url=url, timeout=30) as doomed:
            request = asyncio.create_task(
                doomed.post("/api/v1/deposit/initiate", json=BODY, headers={**bearer("kim"), **KEY})
            )
            for _ in range(200):  # until the push reached Daraja: claimed, recorded, not answered
                if system.simulator.pushes and await _claims(system) == [(None, True)]:
                    break
                await asyncio.sleep(0.05)
            assert len(system.simulator.pushes) == 1
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            with pytest.raises(httpx.TransportError):
                await request
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert await _claims(system) == [(None, True)]  # the dead process's claim, never answered

    # Another API process (the in-process one): while the claim is young, the key is in flight.
    retry = await system.initiate("kim", 1500, PHONE, **KEY)
    assert retry.status_code == 409 and "in flight" in retry.json()["detail"]
    await system.pool.execute(
        "UPDATE idempotency_keys SET created_at = created_at - make_interval(secs => $1)",
        float(IN_FLIGHT_EXPIRY_SECONDS - 5),
    )
    assert (await system.initiate("kim", 1500, PHONE, **KEY)).status_code == 409  # still within the bound

    await system.pool.execute("UPDATE idempotency_keys SET created_at = created_at - interval '6 seconds'")
    # Past the bound, another body is still another body: 409, and the claim is not taken.
    other = await system.initiate("kim", 2000, PHONE, **KEY)
    assert other.status_code == 409 and "another request body" in other.json()["detail"]
    ran = await system.initiate("kim", 1500, PHONE, **KEY)
    assert "idempotent-replayed" not in ran.headers
    # The retry runs, but the key already made a deposit whose push went out: it answers from that
    # deposit (202 if its push was recorded before the kill, else 504 "outcome unknown") and never
    # rings the phone again.
    first = await system.pool.fetchrow("SELECT id, checkout_request_id FROM deposits WHERE user_id = 'kim'")
    assert ran.json()["deposit_id"] == str(first["id"])
    assert ran.status_code == (202 if first["checkout_request_id"] else 504), ran.text
    replay = await system.initiate("kim", 1500, PHONE, **KEY)
    assert (replay.status_code, replay.json(), replay.headers["idempotent-replayed"]) == (
        ran.status_code, ran.json(), "true"
    )  # fmt: skip
    assert await _claims(system) == [(ran.status_code, False)]
    assert len(system.simulator.pushes) == 1  # the dead process's push only


async def test_a_key_whose_push_daraja_refused_may_push_again(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    key = {"Idempotency-Key": "refused-then-retried"}
    system.simulator.set_scenario(Scenario(push_error=PushError(error_code="400.002.02", times=1)), default=True)
    refused = await system.initiate("lee", 1500, PHONE, **key)
    assert refused.status_code == 502, refused.text  # a 5xx frees the key; the refusal reached no phone
    again = await system.initiate("lee", 1500, PHONE, **key)
    assert again.status_code == 202, again.text
    assert again.json()["deposit_id"] != refused.json()["deposit_id"]
    statuses = await system.pool.fetch(
        "SELECT status, request_key FROM deposits WHERE user_id = 'lee' ORDER BY created_at"
    )
    assert [(r["status"], r["request_key"]) for r in statuses] == [
        ("failed", None),
        ("pending", "refused-then-retried"),
    ]


async def test_a_key_whose_request_was_cancelled_mid_push_never_pushes_twice(mpesa_system: MpesaSystem) -> None:
    """A request cancelled mid-push (the client went away) releases its Idempotency-Key at once; the
    retry that follows finds the key's deposit and answers from it (the service, called as the route does)."""
    system = mpesa_system
    await ensure_user(system.pool, "mo", ExtendedPublicKey.parse(TEST_XPUB))
    system.simulator.set_scenario(Scenario(outcome="none", push_delay_seconds=1.5), next_push=True)
    daraja = DarajaClient.from_settings(system.settings)

    def attempt() -> Coroutine[Any, Any, Initiated]:
        return initiate(
            system.pool, daraja, user_id="mo", amount_kes=1500, phone=PHONE, kes_per_usd=Decimal("129.50"),
            callback_url=system.callback_url, query_after_seconds=3600, admit=_admitted, request_key="k-mo",
        )  # fmt: skip

    try:
        request = asyncio.create_task(attempt())
        async with asyncio.timeout(5):
            while not system.simulator.pushes:
                await asyncio.sleep(0.01)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        retry = await attempt()
    finally:
        await daraja.aclose()
    deposit = await system.pool.fetchrow("SELECT id, status FROM deposits WHERE user_id = 'mo'")
    assert isinstance(retry, Uncertain) and retry.deposit_id == deposit["id"]
    assert deposit["status"] == "needs_review"
    assert len(system.simulator.pushes) == 1


async def _admitted() -> None:
    """The request limits let this push through (they are not what this test is about)."""
