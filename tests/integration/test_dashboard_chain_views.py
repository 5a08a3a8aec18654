"""The dashboard's chain views: USDC transfers flagged as exceptions, and the ledger reconciled against the chain
(anvil), with an unreachable node said plainly rather than a 500."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from api.app import create_app
from kiota import ledger
from kiota.dev.chain import BASE_USDC_ADDRESS, AnvilNode, Web3Client, mint_usdc
from kiota.hdwallet import ExtendedPublicKey
from kiota.settings import Settings
from kiota.store.ledger import post_entry
from kiota.users import ensure_user
from tests.support import ADMIN_AUTH, TEST_XPUB, settings_kwargs


@contextlib.asynccontextmanager
async def dashboard(database_url: str, redis_url: str, rpc_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(_env_file=None, **{**settings_kwargs(database_url, redis_url), "base_rpc_url": rpc_url})  # type: ignore[call-arg]
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kiota.test") as http:
            yield http


async def transfer(
    pool: asyncpg.Pool, user: str, n: int, amount: int, flags: list[str], status: str = "credited"
) -> int:
    transfer_id: int = await pool.fetchval(
        "INSERT INTO chain_transfers (chain_id, tx_hash, log_index, block_number, block_hash, token_address, "
        "from_address, to_address, amount_micro, user_id, kind, status, flags, credit_key) "
        "VALUES (8453, $1, 0, $2, $1, '0xusdc', '0xfrom', '0xto', $3, $4, 'deposit', $5, $6, $7) RETURNING id",
        f"0x{n:064x}",
        n,
        amount,
        user,
        status,
        flags,
        f"usdc:8453:0x{n:064x}:0" if status == "credited" else None,
    )
    return transfer_id


async def test_transfers_flagged_late_unsolicited_underpaid_or_overpaid_are_listed_as_exceptions(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await ensure_user(pool, "amani", ExtendedPublicKey.parse(TEST_XPUB))
    ids = {
        flag: await transfer(pool, "amani", n, 1_000_000 * n, [flag])
        for n, flag in enumerate(("late", "unsolicited", "underpaid", "overpaid"), start=1)
    }
    plain = await transfer(pool, "amani", 9, 7_000_000, [])
    held = await transfer(pool, "amani", 10, 9_000_000, [], status="review")
    item = await pool.fetchval(
        "INSERT INTO review_items (kind, dedupe_key, chain_transfer_id, amount_usdc_micro, reason) "
        "VALUES ('usdc_too_large', 'k', $1, 9000000, 'too large') RETURNING id",
        held,
    )
    html = (await client.get("/admin/transfers", auth=ADMIN_AUTH)).text
    for flag, transfer_id in ids.items():
        assert f'id="t{transfer_id}"' in html and f"flag-{flag}" in html, flag
    assert f'id="t{held}"' in html and f"/admin/review#r{item}" in html
    assert f'id="t{plain}"' not in html  # credited as asked: no exception
    only = (await client.get("/admin/transfers", params={"flag": "overpaid"}, auth=ADMIN_AUTH)).text
    assert f'id="t{ids["overpaid"]}"' in only and f'id="t{ids["late"]}"' not in only
    assert (await client.get("/admin/transfers", params={"flag": "bogus"}, auth=ADMIN_AUTH)).status_code == 422


async def test_reconciliation_shows_differences_and_survives_a_dead_node(
    database_url: str, redis_url: str, pool: asyncpg.Pool, anvil: AnvilNode, chain: Web3Client
) -> None:
    key = ExtendedPublicKey.parse(TEST_XPUB)
    even, short = await ensure_user(pool, "even", key), await ensure_user(pool, "short", key)
    await mint_usdc(chain, BASE_USDC_ADDRESS, even.deposit_address, 5_000_000)
    async with pool.acquire() as conn, conn.transaction():
        await post_entry(conn, ledger.usdc_received(8453, "0x" + "01" * 32, 0, "even", 5_000_000))
        await post_entry(conn, ledger.usdc_received(8453, "0x" + "02" * 32, 0, "short", 3_000_000))
    async with dashboard(database_url, redis_url, anvil.rpc_url) as http:
        page = await http.get("/admin/reconciliation", auth=ADMIN_AUTH)
    assert page.status_code == 200, page.text
    # short's 3 USDC is not at its address, so custody (8 per ledger) is not what the addresses hold (5) either.
    assert "2 difference(s)" in page.text and "user short" in page.text and short.deposit_address in page.text
    assert "-3.000000" in page.text and "custody:USDC" in page.text

    async with dashboard(database_url, redis_url, "http://127.0.0.1:9") as http:  # nothing listens there
        dead = await http.get("/admin/reconciliation", auth=ADMIN_AUTH)
    assert dead.status_code == 503 and "did not answer" in dead.text and "custody:USDC" in dead.text


@pytest.mark.parametrize("path", ["/admin/transfers", "/admin/reconciliation"])
async def test_the_chain_views_are_closed_without_credentials(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 401
