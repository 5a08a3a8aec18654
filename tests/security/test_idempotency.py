"""An Idempotency-Key left "in flight" by a dead process expires.

A real `kiota api` process claims a key and is SIGKILLed while Daraja (the simulator) holds its
push answer. Its claim stays in PostgreSQL with no answer; a retry with the same key is 409 while
the claim is younger than the bound, and runs once it is older. (The claim is aged in the
database, not waited for: the bound is 60 s.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from api.idempotency import IN_FLIGHT_EXPIRY_SECONDS
from kiota.dev.daraja_sim import Scenario
from tests.conftest import MpesaSystem
from tests.support import bearer, free_port

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
    system.simulator.set_scenario(Scenario(outcome="none"), next_push=True)
    ran = await system.initiate("kim", 1500, PHONE, **KEY)
    assert ran.status_code == 202, ran.text
    assert "idempotent-replayed" not in ran.headers
    replay = await system.initiate("kim", 1500, PHONE, **KEY)
    assert (replay.status_code, replay.json(), replay.headers["idempotent-replayed"]) == (202, ran.json(), "true")
    assert await _claims(system) == [(202, False)]
    assert len(system.simulator.pushes) == 2  # the dead process's push and the retry's
