"""Paybill reconciliation on the dashboard: an operator uploads the M-Pesa statement (multipart, its CSRF token
in the form), receipts are matched to deposits, leftovers and amount mismatches listed; junk is refused on the
page with a reason, never a 500."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import httpx

from kiota import operators
from kiota.hdwallet import ExtendedPublicKey
from kiota.settings import Settings
from kiota.users import ensure_user
from tests.integration.test_dashboard_money import PASSWORD, token_of
from tests.integration.test_operators import csrf_token
from tests.support import ADMIN_AUTH, TEST_XPUB
from tests.unit.test_paybill import HEADER, PREAMBLE, ROWS


async def paid(pool: asyncpg.Pool, receipt: str, kes: int, at: datetime) -> uuid.UUID:
    deposit_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO deposits (id, user_id, status, amount_kes, kes_per_usd, amount_usdc, phone_masked, "
        "checkout_request_id, mpesa_receipt, received_kes, paid_at_mpesa, tx_hash, completed_at) "
        "VALUES ($1, 'amani', 'completed', $3, 129.5, 10000000, '2547****4149', $2, $2, $3, $4, $5, $4)",
        deposit_id,
        receipt,
        kes,
        at,
        "0x" + uuid.uuid4().hex * 2,
    )
    return deposit_id


async def upload(
    client: httpx.AsyncClient,
    settings: Settings,
    data: bytes,
    auth: tuple[str, str] = ADMIN_AUTH,
    token: str | None = None,
) -> httpx.Response:
    if token is None:
        html = (await client.get("/admin/paybill", auth=auth)).text
        token = token_of(html) if "csrf_token" in html else await csrf_token(client, auth)
    return await client.post(
        "/admin/paybill",
        data={"csrf_token": token},
        files={"statement": ("statement.csv", data, "text/csv")},
        auth=auth,
        headers={"Origin": settings.public_url},
    )


async def test_a_statement_is_matched_to_deposits_with_leftovers_on_both_sides(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    await ensure_user(pool, "amani", ExtendedPublicKey.parse(TEST_XPUB))
    matched = await paid(pool, "NLJ7RT61SV", 1295, datetime(2026, 12, 7, 6, 15, 2, tzinfo=UTC))
    differs = await paid(pool, "NLJ7RT61SW", 1400, datetime(2026, 12, 7, 7, 0, tzinfo=UTC))
    missing = await paid(pool, "QQQ1234567", 900, datetime(2026, 12, 7, 6, 30, tzinfo=UTC))
    outside = await paid(pool, "ZZZ1234567", 900, datetime(2026, 11, 1, tzinfo=UTC))  # before the statement
    extra = '"NLJ7RT61ST","2026-12-07 10:30:00",,"Pay Bill Online","Completed","700.00","","0",,,"0711000000 - X",,\n'
    response = await upload(client, settings, (PREAMBLE + HEADER + ROWS + extra).encode())
    assert response.status_code == 200, response.text
    html = response.text
    assert "<b>1</b> matched" in html and "<b>1</b> amount mismatch(es)" in html
    assert "<b>1</b> on the statement only" in html and "<b>1</b> of ours missing from it" in html
    assert f"/admin/deposits/{matched}" in html and f"/admin/deposits/{differs}" in html
    assert f"/admin/deposits/{missing}" in html and str(outside) not in html
    assert "NLJ7RT61ST" in html and "2547****0000 - X" in html and "254708374149" not in html
    assert "0711000000" not in html


async def test_junk_is_refused_on_the_page_and_the_form_needs_its_token(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    for data, says in (
        (b"", "choose the statement"),
        (b"\x00\x01\x02 binary", "binary content"),
        (b"<html>not a csv</html>", "no header row"),
        (HEADER.encode() + b'"x","y","z"\n', "no transaction could be read"),
    ):
        response = await upload(client, settings, data)
        assert response.status_code == 422 and says in response.text, (data, response.text[:300])
    forged = await upload(client, settings, (HEADER + ROWS).encode(), token="1.forged")
    assert forged.status_code == 403  # the multipart form's token is checked like an urlencoded one
    too_large = await upload(client, settings, HEADER.encode() + b"x" * (5 * 1024 * 1024))
    assert too_large.status_code == 413


async def test_a_viewer_cannot_upload(client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings) -> None:
    await operators.add_operator(pool, "vera", "viewer", PASSWORD)
    page = await client.get("/admin/paybill", auth=("vera", PASSWORD))
    assert page.status_code == 200 and 'type="file"' not in page.text
    assert (await upload(client, settings, (HEADER + ROWS).encode(), auth=("vera", PASSWORD))).status_code == 403
