"""The dashboard's money views: search, a deposit's and an intent's timeline, and the review queue with the
two-person rule, through HTTP as an operator (and a viewer) uses them."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from kiota import ledger, operators
from kiota.hdwallet import ExtendedPublicKey
from kiota.settings import Settings
from kiota.users import ensure_user
from tests.conftest import MpesaSystem
from tests.integration.test_dashboard_queues import notice
from tests.integration.test_money_proposals import kes_in_suspense, reversed_usdc, unconfirmed_deposit
from tests.integration.test_operators import csrf_token
from tests.support import ADMIN_AUTH, TEST_XPUB

PASSWORD = "correct horse battery staple 7"
PAT = ("pat", PASSWORD)
VERA = ("vera", PASSWORD)
OLGA = ("olga", PASSWORD)


def token_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "the page carries no CSRF token"
    return found[1]


async def post(
    client: httpx.AsyncClient, settings: Settings, auth: tuple[str, str], path: str, page: str, **form: str
) -> httpx.Response:
    """A form posted from `page`, as a browser does: the page's token, our own Origin."""
    html = (await client.get(page, auth=auth)).text
    # A viewer's page has no form, so no token in it; the API gives one (its role is what refuses it).
    token = token_of(html) if "csrf_token" in html else await csrf_token(client, auth)
    return await client.post(
        path, data={"csrf_token": token, **form}, auth=auth, headers={"Origin": settings.public_url}
    )


@pytest.fixture
async def accounts(pool: asyncpg.Pool) -> None:
    """Two operators and a viewer: with accounts made, the bootstrap login moves no money (one person, one name)."""
    await operators.add_operator(pool, "pat", "operator", PASSWORD)
    await operators.add_operator(pool, "olga", "operator", PASSWORD)
    await operators.add_operator(pool, "vera", "viewer", PASSWORD)


async def test_a_paid_deposit_is_found_by_each_key_and_its_timeline_tells_its_story(mpesa_system: MpesaSystem) -> None:
    system = mpesa_system
    body = (await system.initiate("wanjiku", 1295)).json()
    done = await system.wait_status("wanjiku", body["deposit_id"], "completed", seconds=40)
    row = await system.pool.fetchrow("SELECT * FROM deposits WHERE id = $1", uuid.UUID(body["deposit_id"]))
    page = f"/admin/deposits/{body['deposit_id']}"
    for key in (
        body["deposit_id"],
        row["checkout_request_id"],
        row["mpesa_receipt"],
        row["mpesa_receipt"].lower(),
        done["tx_hash"],
        "wanjiku",
        "4149",
        "0708374149",
        "+254 708 374 149",
    ):
        found = await system.http.get("/admin/search", params={"q": key}, auth=ADMIN_AUTH)
        assert (found.status_code, found.headers.get("location")) == (303, page), key

    # Another deposit from a phone with the same last digits: a list, each masked, never a whole number.
    other = (await system.initiate("baraka", 1500, phone="0110004149")).json()
    await system.wait_status("baraka", other["deposit_id"], "completed", seconds=40)
    listed = await system.http.get("/admin/search", params={"q": "4149"}, auth=ADMIN_AUTH)
    assert listed.status_code == 200 and body["deposit_id"] in listed.text and other["deposit_id"] in listed.text
    assert "2547****4149" in listed.text and "2541****4149" in listed.text and "254708374149" not in listed.text
    only = await system.http.get("/admin/search", params={"q": "0110004149"}, auth=ADMIN_AUTH)
    assert only.headers.get("location") == f"/admin/deposits/{other['deposit_id']}"
    nothing = await system.http.get("/admin/search", params={"q": "no-such-thing"}, auth=ADMIN_AUTH)
    assert nothing.status_code == 200 and "nothing found" in nothing.text
    assert (await system.http.get("/admin/search", params={"q": "x" * 500}, auth=ADMIN_AUTH)).status_code == 422

    html = (await system.http.get(page, auth=ADMIN_AUTH)).text
    story = [
        "deposit of KES 1295",
        "STK push accepted by Daraja",
        "callback #",
        "ResultCode 0",
        "journal entry mpesa_received",
        "job complete_mpesa_deposit enqueued",
        "job attempt 1 started",
        "transaction " + done["tx_hash"],
        "journal entry mpesa_completed",
        "deposit completed",
    ]
    positions = [html.find(line) for line in story]
    assert all(p > 0 for p in positions), [line for line, p in zip(story, positions, strict=True) if p < 0]
    assert "/admin/jobs/" in html and "fee cap" in html and "254708374149" not in html
    assert (await system.http.get(f"/admin/deposits/{uuid.uuid4()}", auth=ADMIN_AUTH)).status_code == 404
    assert (await system.http.get("/admin/deposits/not-a-uuid", auth=ADMIN_AUTH)).status_code == 404


async def test_an_intent_page_shows_its_transfers_credits_and_review(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    item, _, transfer_id = await reversed_usdc(pool, "amani")
    intent_id = uuid.uuid4()
    now = datetime.now(UTC)
    await pool.execute(
        "INSERT INTO deposit_intents (id, user_id, status, deposit_address, expected_amount_usdc, "
        "received_amount_usdc, transfer_id, end_reason, flags, expires_at, ended_at) "
        "VALUES ($1, 'amani', 'completed', '0xaddr', 4000000, 5000000, $2, 'confirmed', '{overpaid}', $3, $4)",
        intent_id,
        transfer_id,
        now + timedelta(hours=1),
        now,
    )
    await pool.execute("UPDATE chain_transfers SET intent_id = $1", intent_id)
    for key in (str(intent_id), "0x" + "ab" * 32):
        found = await client.get("/admin/search", params={"q": key}, auth=ADMIN_AUTH)
        assert found.headers.get("location") == f"/admin/intents/{intent_id}", key
    html = (await client.get(f"/admin/intents/{intent_id}", auth=ADMIN_AUTH)).text
    for line in (
        "intent for user amani",
        "transfer of 5.000000 USDC seen",
        "journal entry usdc_received",
        "journal entry usdc_reversed",
        f"review item #{item} opened",
        "intent completed",
        "overpaid",
    ):
        assert line in html, line
    assert "propose: credit to user" in html and "propose: write off" in html


async def test_the_review_queue_resolves_money_with_two_operators(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings, accounts: None
) -> None:
    item = await kes_in_suspense(pool)
    deposit_id = await unconfirmed_deposit(pool)
    html = (await client.get("/admin/review", auth=ADMIN_AUTH)).text
    assert "no deposit has this CheckoutRequestID" in html and "STK query said 1032" in html
    assert "propose: write off" in html and "propose: credit (confirm paid)" in html and ">retry<" in html

    said = notice(
        await post(
            client,
            settings,
            OLGA,
            "/admin/proposals",
            "/admin/review",
            action="write_off",
            review_item_id=str(item),
            note="unclaimed",
        )
    )
    assert "recorded" in said, said
    proposal_id = await pool.fetchval("SELECT id FROM money_proposals WHERE review_item_id = $1", item)
    refused = notice(await post(client, settings, OLGA, f"/admin/proposals/{proposal_id}/approve", "/admin/review"))
    assert "two-person rule" in refused
    assert await pool.fetchval("SELECT status FROM review_items WHERE id = $1", item) == "open"
    page = (await client.get("/admin/review", auth=PAT)).text
    assert "proposed by <b>olga</b>" in page and f"/admin/proposals/{proposal_id}/approve" in page
    approved = notice(await post(client, settings, PAT, f"/admin/proposals/{proposal_id}/approve", "/admin/review"))
    assert "approved" in approved
    assert await ledger_balance(pool, ledger.WRITTEN_OFF["KES"]) == 1500
    again = notice(await post(client, settings, PAT, f"/admin/proposals/{proposal_id}/approve", "/admin/review"))
    assert "approved already" in again

    # The deposit's confirmation, proposed on its page and approved by the other operator, then shown there.
    here = f"/admin/deposits/{deposit_id}"
    notice(
        await post(
            client,
            settings,
            PAT,
            "/admin/proposals",
            here,
            action="confirm_deposit",
            deposit_id=str(deposit_id),
            note="statement line",
            next=here,
        )
    )
    confirm_id = await pool.fetchval("SELECT id FROM money_proposals WHERE deposit_id = $1", deposit_id)
    notice(await post(client, settings, OLGA, f"/admin/proposals/{confirm_id}/approve", here, next=here))
    assert await pool.fetchval("SELECT confirmed_by FROM deposits WHERE id = $1", deposit_id) == "operator:pat"
    shown = (await client.get(here, auth=ADMIN_AUTH)).text
    assert "pat (operator): propose_confirm_deposit" in shown and "olga (operator): approve_confirm_deposit" in shown
    recent = (await client.get("/admin/review", auth=ADMIN_AUTH)).text
    assert "approve_write_off" in recent and "approve_confirm_deposit" in recent


async def test_a_viewer_reads_the_money_views_without_a_button_and_cannot_post(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings, accounts: None
) -> None:
    item = await kes_in_suspense(pool)
    deposit_id = await unconfirmed_deposit(pool)
    for path in ("/admin/review", f"/admin/deposits/{deposit_id}"):
        html = (await client.get(path, auth=VERA)).text
        assert "no deposit has this" in html or "STK query said 1032" in html
        assert '<form method="post"' not in html and "propose:" not in html
    for path, form in (
        ("/admin/proposals", {"action": "write_off", "review_item_id": str(item)}),
        (f"/admin/deposits/{deposit_id}/retry", {}),
        ("/admin/proposals/1/approve", {}),
    ):
        response = await post(client, settings, VERA, path, "/admin/review", **form)
        assert response.status_code == 403, path
    assert await pool.fetchval("SELECT count(*) FROM money_proposals") == 0
    assert await pool.fetchval("SELECT count(*) FROM admin_actions") == 0
    # Without the page's token, even an operator is refused.
    bare = await client.post(
        "/admin/proposals", data={"action": "write_off"}, auth=ADMIN_AUTH, headers={"Origin": settings.public_url}
    )
    assert bare.status_code == 403


async def test_junk_proposals_are_refused_with_a_reason(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    await ensure_user(pool, "amani", ExtendedPublicKey.parse(TEST_XPUB))
    item = await kes_in_suspense(pool)
    for form, says in (
        ({"action": "drop_table"}, "not a money action"),
        ({"action": "credit_user", "review_item_id": str(item), "user_id": "amani"}, "not resolved by credit_user"),
        ({"action": "write_off", "review_item_id": "999999"}, "no review item"),
        ({"action": "confirm_deposit", "deposit_id": str(uuid.uuid4())}, "no deposit"),
    ):
        said = notice(await post(client, settings, ADMIN_AUTH, "/admin/proposals", "/admin/review", **form))
        assert says in said, (form, said)
    assert await pool.fetchval("SELECT count(*) FROM money_proposals") == 0


async def ledger_balance(pool: asyncpg.Pool, account: str) -> int:
    from kiota.store.ledger import balance

    return await balance(pool, account)


async def test_retry_from_the_review_queue_asks_the_query_again_and_is_recorded(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings, accounts: None
) -> None:
    deposit_id = await unconfirmed_deposit(pool)
    path = f"/admin/deposits/{deposit_id}/retry"
    said = notice(await post(client, settings, PAT, path, "/admin/review", next="/admin/review"))
    assert said.startswith(f"retrying {deposit_id} as job complete_mpesa_deposit:{deposit_id}"), said
    assert await pool.fetchval("SELECT status FROM deposits WHERE id = $1", deposit_id) == "processing"
    assert await pool.fetchval("SELECT confirmed_at FROM deposits WHERE id = $1", deposit_id) is None  # never skipped
    [action] = await pool.fetch("SELECT actor, action FROM admin_actions WHERE target_id = $1", str(deposit_id))
    assert tuple(action) == ("pat", "retry_deposit")
    refused = notice(await post(client, settings, PAT, path, "/admin/review", next="/admin/review"))
    assert refused.startswith("retrying")  # still processing: re-enqueued again, harmlessly
    junk = await post(client, settings, PAT, "/admin/deposits/not-a-uuid/retry", "/admin/review")
    assert junk.status_code == 404 and junk.json() == {"detail": "no such page"}


async def test_a_proposal_is_rejected_by_another_operator_or_withdrawn_by_its_proposer_and_nothing_moves(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings, accounts: None
) -> None:
    item = await kes_in_suspense(pool)
    suspense = ledger.SUSPENSE_KES
    held = await ledger_balance(pool, suspense)

    async def propose() -> int:
        form = {"action": "write_off", "review_item_id": str(item), "note": "unclaimed"}
        said = notice(await post(client, settings, OLGA, "/admin/proposals", "/admin/review", **form))
        assert "recorded" in said, said
        return int(await pool.fetchval("SELECT max(id) FROM money_proposals WHERE review_item_id = $1", item))

    first = await propose()
    said = notice(await post(client, settings, PAT, f"/admin/proposals/{first}/reject", "/admin/review"))
    assert said == f"proposal {first} rejected", said
    late = notice(await post(client, settings, PAT, f"/admin/proposals/{first}/approve", "/admin/review"))
    assert late.startswith("refused"), late  # a rejected proposal cannot be approved afterwards
    second = await propose()
    said = notice(await post(client, settings, OLGA, f"/admin/proposals/{second}/reject", "/admin/review"))
    assert said == f"proposal {second} withdrawn", said

    assert await pool.fetchval("SELECT status FROM review_items WHERE id = $1", item) == "open"
    assert await ledger_balance(pool, suspense) == held
    assert await ledger_balance(pool, ledger.WRITTEN_OFF["KES"]) == 0
    statuses = await pool.fetch("SELECT id, status, closed_by FROM money_proposals ORDER BY id")
    assert [tuple(row) for row in statuses] == [(first, "rejected", "pat"), (second, "withdrawn", "olga")]
    actions = await pool.fetch("SELECT actor, action FROM admin_actions WHERE action LIKE '%write_off' ORDER BY id")
    assert [tuple(a) for a in actions] == [
        ("olga", "propose_write_off"),
        ("pat", "reject_write_off"),
        ("olga", "propose_write_off"),
        ("olga", "withdraw_write_off"),
    ]
