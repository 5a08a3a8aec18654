"""An operator's two minutes, in a real browser: a user says their deposit is missing; the operator finds it by
its M-Pesa receipt, reads its timeline, proposes crediting it, a second operator approves, and it completes.

The deposit is the sandbox's known lie: M-Pesa took the money and its STK query says 1032 (cancelled), so the
worker would not pay it and it waits in review. The time from "a user says it is missing" to "credited" is
measured and written beside the screenshots (`tests/artifacts/browser/`)."""

from __future__ import annotations

import time
from pathlib import Path

from playwright.async_api import Browser, BrowserContext, Page, expect

from kiota.operators import add_operator
from tests.conftest import MpesaSystem
from tests.integration.test_forged_callbacks import CANCELLED_BY_CUSTOMER, forge

PASSWORD = "a long operator password 42"
RECEIPT = "TLK4HX9QZ2"


async def operator(browser: Browser, system: MpesaSystem, name: str) -> tuple[BrowserContext, Page]:
    """A browser of an operator's own, logged in with their account (HTTP Basic)."""
    await add_operator(system.pool, name, "operator", PASSWORD)
    context = await browser.new_context(
        base_url=system.api_url, http_credentials={"username": name, "password": PASSWORD}
    )
    page = await context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # the approve button asks "move the money now?"
    return context, page


async def test_a_missing_deposit_is_found_by_its_receipt_and_credited_by_two_operators(
    browser: Browser, mpesa_system: MpesaSystem, artifacts: Path
) -> None:
    system = mpesa_system
    system.simulator.set_scenario(CANCELLED_BY_CUSTOMER, next_push=True)
    deposit = (await system.initiate("wambui", 1295)).json()
    await forge(system, deposit["checkout_request_id"], 1295, RECEIPT)  # M-Pesa's word that it was paid
    await system.wait_status("wambui", deposit["deposit_id"], "needs_review")

    # "My deposit is missing", says the user, with the receipt from their M-Pesa message.
    reported = time.monotonic()
    amina_context, amina = await operator(browser, system, "amina")
    baraka_context, baraka = await operator(browser, system, "baraka")
    try:
        await amina.goto("/admin/queues")
        await amina.get_by_role("searchbox", name="Search").fill(RECEIPT)
        await amina.get_by_role("searchbox", name="Search").press("Enter")
        await expect(amina).to_have_url(f"{system.api_url}/admin/deposits/{deposit['deposit_id']}")
        await expect(amina.locator("h1")).to_contain_text("needs_review")
        timeline = amina.locator("ol.timeline")
        for event in ("push", "callback", RECEIPT):
            await expect(timeline).to_contain_text(event)
        await amina.screenshot(path=artifacts / "1-deposit-found-by-receipt.png", full_page=True)

        await amina.get_by_label("note").fill(f"{RECEIPT} on the paybill statement")
        await amina.get_by_role("button", name="propose: credit (confirm paid)").click()
        await expect(amina.get_by_text("waiting for another operator").first).to_be_visible()
        await amina.screenshot(path=artifacts / "2-proposed.png", full_page=True)

        await baraka.goto("/admin/review")
        await expect(baraka.get_by_text("proposed by amina").first).to_be_visible()
        await baraka.screenshot(path=artifacts / "3-review-queue.png", full_page=True)
        await baraka.get_by_role("button", name="approve").first.click()

        await amina.goto(f"/admin/deposits/{deposit['deposit_id']}")
        heading = amina.locator("h1")
        deadline = time.monotonic() + 60
        while "completed" not in (await heading.inner_text()) and time.monotonic() < deadline:
            await amina.wait_for_timeout(250)
            await amina.reload()
        await expect(heading).to_contain_text("completed")
        credited = time.monotonic()
        await expect(amina.locator("ol.timeline")).to_contain_text("approved by baraka")
        await amina.screenshot(path=artifacts / "4-credited.png", full_page=True)
    finally:
        await amina_context.close()
        await baraka_context.close()

    body = await system.deposit("wambui", deposit["deposit_id"])
    assert body["status"] == "completed" and body["tx_hash"]
    elapsed = credited - reported
    (artifacts / "missing-to-credited.txt").write_text(f"{elapsed:.1f} s from 'my deposit is missing' to credited\n")
    print(f"\nmissing → credited in {elapsed:.1f} s")
    assert elapsed < 120  # the issue's two minutes, with the two operators' clicks


async def test_a_paused_queue_holds_its_jobs_in_the_browser_and_resuming_completes_them(
    browser: Browser, mpesa_system: MpesaSystem, artifacts: Path
) -> None:
    system = mpesa_system
    context, page = await operator(browser, system, "amina")
    try:
        await page.goto("/admin/queues")
        await page.get_by_role("button", name="pause payouts").click()
        await expect(page.locator(".notice")).to_have_text("queue payouts paused: its jobs wait")

        deposits = [(user, (await system.initiate(user, 1295)).json()["deposit_id"]) for user in ("kamau", "njeri")]
        held = page.locator('section[data-queue="payouts"] td[data-status="queued"]')
        await expect(held).to_have_text("2", timeout=15_000)  # the card refreshes itself every 5 s
        await page.wait_for_timeout(1_000)  # a worker polls every 50 ms: long enough to see nothing taken
        for user, deposit_id in deposits:  # M-Pesa said paid; the payout waits for the queue
            assert (await system.deposit(user, deposit_id))["status"] == "processing"
        await page.screenshot(path=artifacts / "5-payouts-paused-jobs-held.png", full_page=True)

        await page.get_by_role("button", name="resume payouts").click()
        await expect(page.locator(".notice")).to_have_text("queue payouts resumed")
        for user, deposit_id in deposits:
            await system.wait_status(user, deposit_id, "completed", seconds=30)
        await page.goto("/admin/queues")
        await expect(held).to_have_text("0")
        # The lane's owner pays both; the other deposit's job, which saw its payout in the owner's pipeline, looks
        # again a few seconds later (kiota/payouts/lane.py IN_FLIGHT_RECHECK_SECONDS), finds it paid and succeeds.
        succeeded = page.locator('section[data-queue="payouts"] td[data-status="succeeded"]')
        await expect(succeeded).to_have_text("2", timeout=15_000)
        await page.screenshot(path=artifacts / "6-payouts-resumed-jobs-done.png", full_page=True)
    finally:
        await context.close()
