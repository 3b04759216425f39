"""End to end in a real browser: Debian's chromium (``apt-get install -y chromium``) driven by
Playwright opens the page offline, picks a test image, and checks the panels, the metrics table
and the undecodable-token warning appear. Never ``playwright install`` (it downloads a browser)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest

from test_demo import server  # noqa: F401  (the launched app on a free localhost port)

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.slow, pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.exists(),
                                 reason=f"{CHROMIUM} absent: apt-get install -y chromium")]


def open_page(playwright, url: str):
    """A chromium page on ``url`` where every request off 127.0.0.1 is refused and recorded, so
    the page is shown to work offline."""
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
    page = browser.new_page(viewport={"width": 1500, "height": 1900})
    outside: list[str] = []

    def gate(route):
        host = urlparse(route.request.url).hostname
        if route.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    page.route("**/*", gate)
    page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    return browser, page, outside


def test_browser_compares_a_test_image(server, tmp_path):  # noqa: F811
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser, page, outside = open_page(p, server["url"])
        try:
            page.locator("#test-gallery button img").first.wait_for(timeout=30_000)
            page.locator("#test-gallery button img").nth(1).click()
            metrics = page.locator("#metrics")
            sync_api.expect(metrics).to_contain_text("pixel", timeout=60_000)
            sync_api.expect(metrics).to_contain_text("bicubic")
            sync_api.expect(metrics).to_contain_text("make eval (step_000300-ema)")
            panels = page.locator("#panels img")
            sync_api.expect(panels).to_have_count(6)          # input, 4 modes, target
            page.wait_for_function(
                "() => [...document.querySelectorAll('#panels img')].every("
                "i => i.complete && i.naturalWidth === 256)", timeout=30_000)
            assert all(".png" in panels.nth(k).get_attribute("src") for k in range(6))
            sync_api.expect(page.locator("#reports")).to_contain_text("undecodable token")
            sync_api.expect(page.locator("#zoomed img")).to_have_count(6)
            sync_api.expect(page.locator("#errmaps img")).to_have_count(4)
            # A click on the overview moves the zoom box: every zoomed panel follows.
            note = page.locator("#box-note")
            sync_api.expect(note).to_contain_text("Region x 24-40, y 24-40")
            overview = page.locator("#overview img")
            size = overview.bounding_box()
            overview.click(position={"x": size["width"] * 0.15, "y": size["height"] * 0.5})
            sync_api.expect(note).not_to_contain_text("Region x 24-40", timeout=30_000)
            # x ~ 0.15 of 64 px with a 16 px box; the exact pixel depends on the layout.
            sync_api.expect(note).to_contain_text(re.compile(r"Region x [0-4]-1[6-9], y 2[2-6]"))
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert outside == [], f"the page tried to reach the internet: {outside}"
