"""`kiota dev` as a newcomer runs it: the system comes up, the printed walk-through works, Ctrl-C stops all."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import asyncpg
import httpx

from kiota.dev.runner import WALKTHROUGH_BEGIN, WALKTHROUGH_END
from tests.support import ADMIN_DSN, dsn_for, free_port


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def _read_until(stream: asyncio.StreamReader, marker: str, seen: list[str], seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while True:
            line = (await stream.readline()).decode()
            if not line:
                raise AssertionError("kiota dev exited early:\n" + "".join(seen))
            seen.append(line)
            if marker in line:
                return


async def test_kiota_dev_comes_up_and_its_walkthrough_works_as_printed(tmp_path: Path) -> None:
    ports = {"api": free_port(), "anvil": free_port(), "sim": free_port()}
    database = f"kiota_dev_test_{os.getpid()}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kiota.cli",
        "dev",
        "--port",
        str(ports["api"]),
        "--anvil-port",
        str(ports["anvil"]),
        "--simulator-port",
        str(ports["sim"]),
        "--database-url",
        dsn_for(database),
        "--redis-url",
        "redis://127.0.0.1:6379/8",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        await _read_until(proc.stdout, WALKTHROUGH_END, seen, 90)
        output = "".join(seen)
        assert f"http://127.0.0.1:{ports['api']}/docs" in output
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{ports['api']}/health/ready")).status_code == 200

        script = output.split(WALKTHROUGH_BEGIN, 1)[1].split(WALKTHROUGH_END, 1)[0]
        run = await asyncio.create_subprocess_exec(
            "bash",
            "-euo",
            "pipefail",
            "-c",
            script,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(run.communicate(), 60)
        assert run.returncode == 0, err.decode()
        answers = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
        portfolio, ready, initiated, deposits, paid_portfolio, intent, mint, intent_done, final = answers
        assert portfolio["user_id"] == "dev-user"
        assert portfolio["balances"] == {"USDC": "0.000000"}
        assert initiated["status"] == "pending" and initiated["amount_usdc"] == "11.583011"
        (deposit,) = deposits["items"]
        assert deposit["status"] == "completed" and deposit["tx_hash"], deposit
        assert paid_portfolio["balances"] == {"USDC": "11.583011"}
        assert intent["status"] == "awaiting_payment" and intent["deposit_address"] == portfolio["deposit_address"]
        assert intent_done["status"] == "completed" and intent_done["received_amount_usdc"] == "25.500000"
        assert final["balances"] == {"USDC": "37.083011"}
        assert f"Its deposit address: {portfolio['deposit_address']}" in output
        assert ready["status"] == "ok"
        assert mint["result"].startswith("0x") and len(mint["result"]) == 66
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rest, _ = await asyncio.wait_for(proc.communicate(), 90)
        seen.append(rest.decode())
        admin = await asyncpg.connect(ADMIN_DSN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
    assert proc.returncode == 0, "".join(seen)
    assert "kiota dev: stopped" in seen[-1]
    for name, port in ports.items():
        assert _port_is_free(port), f"{name} still listening on {port}"
