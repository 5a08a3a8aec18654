"""A real browser for the dashboard: Debian's chromium (`scripts/setup` installs it), driven by Playwright's
Python package through `executable_path`, so nothing is downloaded. Screenshots go to `tests/artifacts/browser/`
(CI keeps them as the run's artifacts)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "browser"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = shutil.which("chromium")
    assert executable, "chromium is missing: bash scripts/setup installs it"
    async with async_playwright() as playwright:
        # --no-sandbox: CI runs as root, where chromium's sandbox cannot start.
        chromium = await playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
