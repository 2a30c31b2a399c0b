"""A real browser for the pages: headless Debian Chromium driven by Playwright, a screenshot per test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import pytest

from tests.support.system import ROOT

CHROMIUM = Path(os.environ.get("GC_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = ROOT / "tests" / "artifacts"  # screenshots the page tests save (git-ignored)


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM}: tests/services/browser.sh installs it (apt-get install chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="session")
async def chromium():
    """Headless Debian Chromium driven by Playwright; skips, saying why, when there is none."""
    why = chromium_missing()
    if why:
        pytest.skip(why)
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        await browser.close()


@contextlib.asynccontextmanager
async def watched_page(browser, screenshot: Path):
    """A fresh page of `browser` in a context of its own (no cookie of another page); on leaving, its
    screenshot goes to `screenshot`, and it fails if the page broke its Content-Security-Policy (an
    inline script or style, an eval, a request elsewhere)."""
    context = await browser.new_context(viewport={"width": 1400, "height": 900}, locale="zh-CN")
    pg = await context.new_page()
    violations: list[str] = []
    pg.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    yield pg
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        await pg.screenshot(path=str(screenshot), full_page=True)
    finally:
        await context.close()
    assert violations == [], f"the page broke its Content-Security-Policy: {violations}"


@pytest.fixture
async def page(chromium, request):
    """A fresh browser page (`watched_page`), its screenshot going to tests/artifacts/TEST.png."""
    async with watched_page(chromium, ARTIFACTS / f"{request.node.name}.png") as pg:
        yield pg


async def wait_for_js(page, expression: str, timeout: float = 30):
    """Wait until `expression` is truthy in the page and return its value. Playwright's own
    wait_for_function evaluates its predicate with eval inside the page, which the pages'
    Content-Security-Policy refuses (no 'unsafe-eval'); page.evaluate goes through the debugger."""
    deadline = time.monotonic() + timeout
    while not (value := await page.evaluate(expression)):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {expression}"
        await asyncio.sleep(0.05)  # polling a condition with a deadline
    return value
