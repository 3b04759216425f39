"""End to end in a real browser: Debian's chromium (``apt-get install -y chromium``) driven by
Playwright opens the page offline and uses it the way a clinician would: the banner, a test
image with its reference report and agreement per finding, readable mode names, the colour bar,
the zoom drawn at native pixels times the factor (no browser scaling) with its pan buttons, alt
text on every image, the before/after slider from the keyboard, the enhancement control
hidden for test images, a refused upload whose reason stays on the page, and the login with its
logout link. Never ``playwright install`` (it downloads a browser)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from fakes import FUNDUS_SAMPLES

CHROMIUM = Path("/usr/bin/chromium")
DRIVE_PHOTO = FUNDUS_SAMPLES / "drive-train" / "images" / "21_training.tif"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.slow, pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.exists(),
                                 reason=f"{CHROMIUM} absent: apt-get install -y chromium")]


def open_page(playwright, url: str, viewport=(1500, 1900)):
    """A chromium page on ``url`` where every request off 127.0.0.1 is refused and recorded, so
    the page is shown to work offline."""
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
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


def images_without_alt(page) -> list[str]:
    return page.eval_on_selector_all(
        "img", "els => els.filter(e => !(e.getAttribute('alt') || '').trim())"
               ".map(e => e.src.slice(-40))")


def zoomed_sizes(page, natural: int) -> list[tuple[float, float]]:
    """The (width, height) each zoomed view is drawn at, in screen pixels, once every one has
    loaded at ``natural`` pixels across; each must be its natural size (no browser scaling)."""
    page.wait_for_function(
        "n => { const els = [...document.querySelectorAll('#zoomed img')];"
        " return els.length && els.every(i => i.complete && i.naturalWidth === n); }",
        arg=natural, timeout=30_000)
    assert page.evaluate("window.devicePixelRatio") == 1       # a CSS pixel is a screen pixel
    drawn = page.eval_on_selector_all(
        "#zoomed img", "els => els.map(e => { const r = e.getBoundingClientRect();"
                       " return [r.width, r.height, e.naturalWidth, e.naturalHeight]; })")
    assert all((w, h) == (nw, nh) for w, h, nw, nh in drawn), drawn
    return [(w, h) for w, h, _, _ in drawn]


def clip_percent(page) -> float:
    style = page.locator("#slider [style*='clip-path']").first.get_attribute("style")
    return float(re.search(r"inset\([^)]*?([\d.]+)%\)", style).group(1))


def test_browser_compares_a_test_image(server, tmp_path):  # noqa: F811
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    with sync_api.sync_playwright() as p:
        t0 = time.perf_counter()
        browser, page, outside = open_page(p, server["url"], viewport=(1366, 768))
        try:
            expect(page.locator("#banner")).to_contain_text(
                "small models trained on synthetic fundus images. Not for diagnosis",
                timeout=30_000)
            # Upload and Compare above the fold of a 1366 x 768 laptop screen.
            page.locator("#compare").wait_for(timeout=30_000)
            for sel in ("#upload", "#compare"):
                box = page.locator(sel).bounding_box()
                assert box["y"] >= 0 and box["y"] + box["height"] <= 768, (sel, box)
            page.screenshot(path=str(tmp_path / "fold.png"))
            page.set_viewport_size({"width": 1500, "height": 1900})
            expect(page.locator("#logout")).to_have_count(0)          # no login, no logout
            expect(page.locator("#mode-help")).to_be_hidden()         # folded away
            page.get_by_text("What each mode is").click()
            expect(page.locator("#mode-help")).to_contain_text(
                "SSIM fine-tune (v3): trained for structural similarity")
            page.locator("#test-gallery button img").first.wait_for(timeout=30_000)
            page.locator("#test-gallery button img").nth(1).click()
            metrics = page.locator("#metrics")
            expect(metrics).to_contain_text("Pixel-loss fine-tune", timeout=60_000)
            expect(metrics).to_contain_text("Bicubic upscaling")
            expect(metrics).to_contain_text("make eval (step_000300-ema)")
            panels = page.locator("#panels img")
            expect(panels).to_have_count(6)          # input, 4 modes, target
            page.wait_for_function(
                "() => [...document.querySelectorAll('#panels img')].every("
                "i => i.complete && i.naturalWidth === 256)", timeout=30_000)
            first_comparison = time.perf_counter() - t0
            assert all(".png" in panels.nth(k).get_attribute("src") for k in range(6))
            reports = page.locator("#reports")
            expect(reports).to_contain_text("Reference report")
            expect(reports).to_contain_text("agree")
            expect(reports).to_contain_text("disagree")
            expect(reports).to_contain_text("undecodable token")
            # A grade only from a mode whose reports read grades on the test set (pixel's);
            # a test-set kappa only as the reason a grade is withheld, never beside a grade.
            expect(reports).to_contain_text("DR grade not assessed: this model's reports did not "
                                            "read the DR grade reliably on the test images")
            for line in reports.inner_text().splitlines():
                assert "kappa" not in line or ("not assessed" in line
                                               and not re.search(r"grade \d", line)), line
            expect(page.locator("#zoomed img")).to_have_count(6)
            expect(page.locator("#errmaps img")).to_have_count(4)
            expect(page.locator("#colour-bar img")).to_have_count(1)
            # The zoom: the same region of every view at native pixels times the factor, drawn
            # by the browser at exactly that size (default factor 2: 128 of the 256 px).
            note = page.locator("#box-note")
            expect(note).to_contain_text("Region x 64-192, y 64-192 of the 256x256 target, each "
                                         "image pixel a 2x2 block of screen pixels")
            assert zoomed_sizes(page, 128 * 2) == [(256, 256)] * 6
            # Factor 3, typed into the slider's box: 85 image pixels, each 3x3 screen pixels.
            factor = page.locator("#zoom-factor input[type=number]")
            factor.fill("3")
            factor.press("Enter")
            expect(note).to_contain_text("Region x 86-171, y 86-171", timeout=30_000)
            assert zoomed_sizes(page, 85 * 3) == [(255, 255)] * 6
            # A pan button moves the region by half its side; every view follows.
            page.locator("#pan-right").click()
            expect(note).to_contain_text("Region x 128-213, y 86-171", timeout=30_000)
            page.locator("#pan-down").click()
            expect(note).to_contain_text("Region x 128-213, y 128-213", timeout=30_000)
            assert zoomed_sizes(page, 85 * 3) == [(255, 255)] * 6
            # A click on the overview moves the zoom box there.
            overview = page.locator("#overview img")
            size = overview.bounding_box()
            overview.click(position={"x": size["width"] * 0.15, "y": size["height"] * 0.5})
            # x ~ 0.15 of 256 px: the 85 px box stops at the left edge; y ~ the middle.
            expect(note).to_contain_text(re.compile(r"Region x 0-85, y 8[0-9]-1[6-7]\d"),
                                         timeout=30_000)
            # The before/after slider from the keyboard: Tab to its position, arrow keys.
            page.wait_for_timeout(500)
            assert clip_percent(page) == pytest.approx(50, abs=1)
            page.locator("#slider-position input[type=range]").focus()
            for _ in range(4):
                page.keyboard.press("ArrowRight")
            expect(page.locator("#slider-position input[type=number]")).to_have_value("70")
            # The divider follows (its clip is measured on the slider's box, wider than the image,
            # so 70 % of the position is ~61 % of the clip here): it moved right, clearly.
            deadline = time.monotonic() + 30
            while clip_percent(page) < 55 and time.monotonic() < deadline:
                page.wait_for_timeout(250)
            assert clip_percent(page) >= 55, page.locator("#slider").inner_html()[-600:]
            # Every image has alt text saying what it is.
            page.wait_for_timeout(500)
            assert images_without_alt(page) == []
            alts = page.eval_on_selector_all("#slider img", "els => els.map(e => e.alt)")
            assert alts and all(re.search(r"fine-tune( \(v3\))? \(left\) and Target \(right\)",
                                          a) for a in alts), alts
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
            # Enhancement on a test image: its own instruction, the control is hidden.
            page.get_by_label("Enhancement").check()
            page.locator("#test-gallery button img").first.wait_for(timeout=30_000)
            page.locator("#test-gallery button img").first.click()
            expect(page.locator("#reports")).to_contain_text("dehaze this retinal photo",
                                                             timeout=60_000)
            expect(page.locator("#enhance-kind")).to_be_hidden()
            # An upload that is not a fundus photograph: the reason stays on the page (no
            # vanishing pop-up), with the file's own name and size.
            noise = tmp_path / "holiday.png"
            Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3),
                                                              np.uint8)).save(noise)
            page.set_input_files("#upload input[type=file]", str(noise))
            status = page.locator("#status")
            expect(status).to_contain_text("holiday.png (400x300) is not a colour fundus "
                                           "photograph", timeout=60_000)
            expect(page.locator("#enhance-kind")).to_be_visible()   # an upload on enhance
            page.wait_for_timeout(11_000)
            expect(status).to_contain_text("not a colour fundus photograph")
            assert "/tmp" not in status.inner_text()
            expect(page.locator(".toast-body:visible, .error:visible")).to_have_count(0)
            if DRIVE_PHOTO.is_file():
                # A real photograph: the reports are "not assessed", no grade is shown.
                page.locator("#upload button[aria-label='Clear']").click()
                page.set_input_files("#upload input[type=file]", str(DRIVE_PHOTO))
                expect(page.locator("#reports")).to_contain_text(
                    "Reports not assessed: this photograph is unlike the images the report "
                    "model was trained on", timeout=120_000)
                assert not re.search(r"grade \d", page.locator("#reports").inner_text())
                expect(page.locator("#status")).to_contain_text("Reports not assessed")
                # At its own size, and the page says so.
                expect(page.locator("#status")).to_contain_text("Worked at its own size")
            # The Results tab: one short table per task in the Compare tab's names, the finding.
            page.get_by_role("tab", name="Results").click()
            board = page.locator("#results")
            expect(board).to_contain_text("The best fine-tune, SSIM fine-tune (v3)")
            expect(board).to_contain_text("0.884 [0.874, 0.894]")
            expect(page.locator("#leaderboard-files")).to_contain_text(re.compile(r"leaderboard\s*\.csv"))
            assert images_without_alt(page) == []
            # The browser session ends: its uploads are deleted from the server's disk.
            from demo.hygiene import temp_root
            assert list(temp_root().rglob("holiday.png"))
            page.close()
            deadline = time.monotonic() + 30
            while list(temp_root().rglob("holiday.png")) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert not list(temp_root().rglob("holiday.png"))
        finally:
            browser.close()
    print(f"\n[measure] page load -> first comparison shown: {first_comparison:.2f} s")
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert outside == [], f"the page tried to reach the internet: {outside}"


def test_browser_login_and_logout(tmp_path, monkeypatch):
    from fakes.demo import launch_login_demo

    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    app, _, url = launch_login_demo(tmp_path, monkeypatch)
    try:
        with sync_api.sync_playwright() as p:
            browser, page, _ = open_page(p, url)
            try:
                page.get_by_label("username").fill("ann")
                page.get_by_label("password").fill("s3cret")
                page.get_by_role("button", name="Login").click()
                logout = page.locator("#logout")
                expect(logout).to_be_visible(timeout=60_000)
                expect(page.locator("#banner")).to_contain_text("Not for diagnosis")
                logout.click()
                expect(page.get_by_label("password")).to_be_visible(timeout=30_000)
                # Five wrong passwords: the login page says the user is locked, and how long.
                for k in range(5):
                    page.get_by_label("username").fill("ann")
                    page.get_by_label("password").fill(f"guess{k}")
                    page.get_by_role("button", name="Login").click()
                    page.wait_for_timeout(700)
                expect(page.get_by_text(re.compile(
                    r"User ann is locked after too many wrong passwords: try again in \d+ s")
                )).to_be_visible(timeout=30_000)
            finally:
                browser.close()
    finally:
        app.close()
