"""`kiota dev`: the whole system on this machine, from a clean slate.

It generates local secrets, recreates a development database and migrates it,
starts anvil with USDC at its real address and a funded treasury, serves the
Daraja simulator, then runs `kiota api` and `kiota worker` as child processes
with that configuration, exactly as they run in production. It prints the
secrets once, a ready-made bearer token, the URLs and a curl walk-through.
Ctrl-C (or SIGTERM) stops everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from redis.asyncio import Redis

from kiota.auth import issue_token
from kiota.db import create_pool
from kiota.dev.chain import BASE_CHAIN_ID, BASE_USDC_ADDRESS, connect, fund_eth, install_usdc, mint_usdc, start_anvil
from kiota.dev.daraja_sim import running_simulator
from kiota.dev.daraja_sim_behaviour import SimulatorConfig
from kiota.dev.daraja_sim_validation import SANDBOX_PASSKEY, SANDBOX_SHORTCODE
from kiota.dev.keys import DevSecrets, generate_dev_secrets
from kiota.dev.options import DevOptions
from kiota.hdwallet import ExtendedPublicKey
from kiota.migrate import migrate
from kiota.process import stop
from kiota.users import ensure_user

TREASURY_ETH_WEI = 100 * 10**18
TREASURY_USDC_MICRO = 1_000_000 * 10**6
BLOCK_SECONDS = 1.0  # blocks keep coming, as on Base (every 2 s there), so deposits gain confirmations
DEV_USER = "dev-user"
ANVIL_ACCOUNT_0 = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"  # unlocked on every anvil
DEV_TOKEN_TTL_SECONDS = 7 * 24 * 3600
WALKTHROUGH_BEGIN = "# --- walk-through (paste into a shell) ---"
WALKTHROUGH_END = "# --- end of walk-through ---"


def _say(message: str) -> None:
    print(f"kiota dev: {message}", flush=True)


async def recreate_database(url: str) -> None:
    """Drop and recreate the development database: the chain starts empty, so must the books."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name.replace("_", "").isalnum():
        raise ValueError(f"refusing to recreate a database named {name!r}")
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


def service_env(options: DevOptions, secrets: DevSecrets, rpc_url: str, simulator_url: str) -> dict[str, str]:
    """The environment `kiota api` and `kiota worker` run with."""
    return {
        "DATABASE_URL": options.database_url,
        "REDIS_URL": options.redis_url,
        "PORT": str(options.api_port),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{options.api_port}",
        "JWT_SECRET": secrets.jwt_secret,
        "ADMIN_USERNAME": "admin",
        "ADMIN_PASSWORD": secrets.admin_password,
        "MPESA_BASE_URL": simulator_url,
        "MPESA_CONSUMER_KEY": secrets.consumer_key,
        "MPESA_CONSUMER_SECRET": secrets.consumer_secret,
        "MPESA_SHORTCODE": SANDBOX_SHORTCODE,
        "MPESA_PASSKEY": SANDBOX_PASSKEY,
        "MPESA_CALLBACK_TOKEN": secrets.callback_token,
        "KES_PER_USD": options.kes_per_usd,
        "BASE_RPC_URL": rpc_url,
        "BASE_CHAIN_ID": str(BASE_CHAIN_ID),
        "BASE_USDC_ADDRESS": BASE_USDC_ADDRESS,
        "DEPOSIT_XPUB": secrets.deposit_xpub,
        "TREASURY_PRIVATE_KEY": secrets.treasury_private_key,
        # The local chain mines a block per transaction: keep scans and sweeps brisk.
        "INTENT_POLL_SECONDS": "5",
        "SWEEP_SECONDS": "30",
        "MPESA_QUERY_AFTER_SECONDS": "30",
        "KIOTA_LOG_FORMAT": "console",
    }


@contextlib.asynccontextmanager
async def child_process(name: str, args: list[str], env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """A `kiota` child whose output is prefixed with its name; stopped with SIGTERM on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kiota.cli",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
    )

    async def relay() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            sys.stdout.write(f"[{name}] {line.decode(errors='replace')}")
            sys.stdout.flush()

    relay_task = asyncio.create_task(relay())
    try:
        yield proc
    finally:
        await stop(proc, grace=60)
        await relay_task


async def wait_ready(url: str, processes: list[asyncio.subprocess.Process], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=2) as http:
        while True:
            for proc in processes:
                if proc.returncode is not None:
                    raise RuntimeError(f"a child process exited with code {proc.returncode} during start-up")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(url)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} was not ready within {seconds:.0f} s")
            await asyncio.sleep(0.2)


def banner(options: DevOptions, secrets: DevSecrets, rpc_url: str, simulator_url: str, user_address: str) -> str:
    api = f"http://127.0.0.1:{options.api_port}"
    token = issue_token(DEV_USER, secrets.jwt_secret, DEV_TOKEN_TTL_SECONDS, int(time.time()))
    # mint(address,uint256) of the test token: 25.50 USDC to the user's deposit address.
    mint_data = "0x40c10f19" + user_address[2:].lower().rjust(64, "0") + f"{25_500_000:064x}"
    return f"""
================================ Kiota is up ================================
API        {api}          (docs: {api}/docs)
Simulator  {simulator_url}          (Daraja; scenarios under /_sim)
Chain      {rpc_url}          (anvil, chain id {BASE_CHAIN_ID}, USDC at {BASE_USDC_ADDRESS})
Database   {options.database_url}
Redis      {options.redis_url}

Local secrets (generated for this run only; shown once):
  mnemonic (deposit addresses)  {secrets.mnemonic}
  DEPOSIT_XPUB                  {secrets.deposit_xpub}
  treasury                      {secrets.treasury_address}  key {secrets.treasury_private_key}
  JWT_SECRET                    {secrets.jwt_secret}
  MPESA_CALLBACK_TOKEN          {secrets.callback_token}
  admin                         admin / {secrets.admin_password}

Bearer token for user "{DEV_USER}" (valid 7 days)
Its deposit address: {user_address}

{WALKTHROUGH_BEGIN}
export KIOTA={api} RPC={rpc_url} USDC={BASE_USDC_ADDRESS}
export TOKEN={token}
export MINTER={ANVIL_ACCOUNT_0} MINT_DATA={mint_data}
# Your portfolio (first sight of the token creates your user and deposit address):
curl -s $KIOTA/api/v1/portfolio -H "Authorization: Bearer $TOKEN"; echo
# Readiness of the whole system:
curl -s $KIOTA/health/ready; echo
# An M-Pesa deposit of 1,500 KES: the simulator answers as Safaricom would, calls back ~2 s later,
# and the worker pays the USDC on-chain from the treasury to your deposit address:
curl -s $KIOTA/api/v1/deposit/initiate -H "Authorization: Bearer $TOKEN" -H "Idempotency-Key: walk-$$" \\
  -H 'content-type: application/json' -d '{{"amount_kes": 1500, "phone": "0708374149"}}'; echo
sleep 8
curl -s $KIOTA/api/v1/deposits -H "Authorization: Bearer $TOKEN"; echo
curl -s $KIOTA/api/v1/portfolio -H "Authorization: Bearer $TOKEN"; echo
# A USDC deposit: say you are about to send 25.50 USDC (an intent), then send it to your deposit address
# on the local chain (anvil's account 0 mints it). The ingester credits it after 2 confirmations:
INTENT=$(curl -s $KIOTA/api/v1/deposit/intent/create -H "Authorization: Bearer $TOKEN" \\
  -H 'content-type: application/json' -d '{{"expected_amount_usdc": "25.50"}}'); echo "$INTENT"
INTENT_ID=$(echo "$INTENT" | sed -E 's/.*"intent_id":"([^"]+)".*/\\1/')
curl -s $RPC -H 'content-type: application/json' -d '{{"jsonrpc":"2.0","id":1,"method":"eth_sendTransaction",\
  "params":[{{"from":"'$MINTER'","to":"'$USDC'","data":"'$MINT_DATA'"}}]}}'; echo
sleep 12
curl -s $KIOTA/api/v1/deposit/intents/$INTENT_ID -H "Authorization: Bearer $TOKEN"; echo
curl -s $KIOTA/api/v1/portfolio -H "Authorization: Bearer $TOKEN"; echo
{WALKTHROUGH_END}

Ctrl-C stops everything.
=============================================================================
"""


async def run_dev(options: DevOptions, stop: asyncio.Event) -> None:
    secrets = generate_dev_secrets()
    _say(f"recreating {options.database_url} and applying migrations")
    await recreate_database(options.database_url)
    await migrate(options.database_url)
    pool = await create_pool(options.database_url, min_size=1, max_size=1)
    try:  # the dev user exists before anyone calls, so the printed address is theirs
        dev_user = await ensure_user(pool, DEV_USER, ExtendedPublicKey.parse(secrets.deposit_xpub))
    finally:
        await pool.close()
    redis = Redis.from_url(options.redis_url)
    try:
        await redis.flushdb()  # jobs of an earlier run name rows that no longer exist
    finally:
        await redis.aclose()
    _say(f"starting anvil on 127.0.0.1:{options.anvil_port} (chain id {BASE_CHAIN_ID})")
    async with (
        start_anvil(options.anvil_port, BASE_CHAIN_ID, block_time=BLOCK_SECONDS) as node,
        connect(node.rpc_url) as w3,
    ):
        await install_usdc(w3, BASE_USDC_ADDRESS)
        await fund_eth(w3, secrets.treasury_address, TREASURY_ETH_WEI)
        await mint_usdc(w3, BASE_USDC_ADDRESS, secrets.treasury_address, TREASURY_USDC_MICRO)
        _say("USDC installed at its Base address; treasury funded with 100 ETH and 1,000,000 USDC")
        config = SimulatorConfig(
            consumer_key=secrets.consumer_key,
            consumer_secret=secrets.consumer_secret,
            callback_delay_seconds=options.callback_delay_seconds,
        )
        async with running_simulator(config, "127.0.0.1", options.simulator_port) as simulator:
            _say(f"Daraja simulator on {simulator.base_url}")
            env = service_env(options, secrets, node.rpc_url, simulator.base_url)
            async with (
                child_process("api", ["api"], env) as api,
                child_process("worker", ["worker"], env) as worker,
            ):
                await wait_ready(f"http://127.0.0.1:{options.api_port}/health/ready", [api, worker])
                print(banner(options, secrets, node.rpc_url, simulator.base_url, dev_user.deposit_address), flush=True)
                waiters = [
                    asyncio.create_task(stop.wait()),
                    asyncio.create_task(api.wait()),
                    asyncio.create_task(worker.wait()),
                ]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
                if not stop.is_set():
                    _say("a child process exited; stopping everything")
                _say("stopping the API and the worker")
    _say("stopped")


def main(options: DevOptions) -> int:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_dev(options, stop)

    os.chdir(Path(__file__).resolve().parents[2])  # node_modules/ and sql/ are found from the repo
    asyncio.run(runner())
    return 0
