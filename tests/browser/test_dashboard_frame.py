"""The dashboard's frame in a real browser: credentials asked for, then the pages with their own assets."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Browser
from playwright.async_api import Error as PlaywrightError

from tests.conftest import MpesaSystem
from tests.support import ADMIN_AUTH


async def test_a_browser_is_refused_without_credentials_and_sees_the_styled_frame_with_them(
    browser: Browser, mpesa_system: MpesaSystem, artifacts: Path
) -> None:
    stranger = await browser.new_context()
    # Headless chromium has no one to ask for credentials: the 401's Basic challenge ends the navigation.
    with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
        await (await stranger.new_page()).goto(f"{mpesa_system.api_url}/admin")
    await stranger.close()

    context = await browser.new_context(http_credentials={"username": ADMIN_AUTH[0], "password": ADMIN_AUTH[1]})
    page = await context.new_page()
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    answer = await page.goto(f"{mpesa_system.api_url}/admin/static/admin.css")
    assert answer is not None and answer.status == 200
    await context.close()
    assert not failed
