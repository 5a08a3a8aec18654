"""`kiota api` and `kiota worker` as processes: start-up checks and clean stops."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import asyncpg
import httpx

from tests.support import TREASURY_KEY, base_env, free_port

REPO = Path(__file__).resolve().parents[2]


def _env(extra: dict[str, str]) -> dict[str, str]:
    # Only PATH from outside: no stray variable may satisfy a required setting.
    return {"PATH": os.environ["PATH"], **extra}


async def _run(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kiota.cli",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, (out + err).decode()


async def test_kiota_api_refuses_to_start_without_jwt_secret(database_url: str, tmp_path: Path) -> None:
    env = base_env(database_url)
    del env["JWT_SECRET"]
    code, output = await _run(["api"], _env(env), tmp_path)
    assert code == 2
    assert output.strip() == "kiota: missing required setting JWT_SECRET"


async def test_kiota_worker_refuses_to_start_without_the_treasury_key(database_url: str, tmp_path: Path) -> None:
    code, output = await _run(["worker"], _env(base_env(database_url)), tmp_path)
    assert code == 2
    assert output.strip() == "kiota: missing required setting TREASURY_PRIVATE_KEY"


async def test_a_dangerous_pairing_stops_the_api(database_url: str, tmp_path: Path) -> None:
    env = {**base_env(database_url), "MPESA_BASE_URL": "https://api.safaricom.co.ke", "BASE_CHAIN_ID": "84532"}
    code, output = await _run(["api"], _env(env), tmp_path)
    assert code == 2
    assert "dangerous pairing" in output


async def _wait_for(url: str, process: asyncio.subprocess.Process, seconds: float = 20) -> httpx.Response:
    deadline = asyncio.get_running_loop().time() + seconds
    async with httpx.AsyncClient() as http:
        while True:
            assert process.returncode is None, "the process exited"
            try:
                return await http.get(url, timeout=1)
            except httpx.TransportError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)


async def test_kiota_api_starts_without_the_treasury_key_and_stops_on_sigterm(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = _env({**base_env(database_url, redis_url), "PORT": str(port)})
    assert "TREASURY_PRIVATE_KEY" not in env
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kiota.cli",
        "api",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        response = await _wait_for(f"http://127.0.0.1:{port}/health/ready", proc)
        assert response.status_code == 200, response.text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    text = out.decode()
    # uvicorn re-raises the signal after a clean shutdown, so -SIGTERM is a clean exit.
    assert proc.returncode in (0, -signal.SIGTERM), text
    assert "Application shutdown complete" in text
    assert "test-jwt-secret" not in text


async def test_kiota_worker_starts_heartbeats_and_stops_on_sigterm(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    env = _env({**base_env(database_url, redis_url), "TREASURY_PRIVATE_KEY": TREASURY_KEY})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kiota.cli",
        "worker",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    conn = await asyncpg.connect(database_url)
    try:
        for _ in range(200):
            if await conn.fetchval("SELECT count(*) FROM worker_heartbeats"):
                break
            await asyncio.sleep(0.05)
        assert await conn.fetchval("SELECT count(*) FROM worker_heartbeats") == 1
    finally:
        await conn.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert proc.returncode == 0, text
    assert TREASURY_KEY.removeprefix("0x") not in text
