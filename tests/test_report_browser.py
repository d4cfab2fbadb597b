"""The report in a real browser: headless Chromium opens `runs/demo/report.html` from disk.

Selenium drives Debian's `chromium` through `chromedriver` (`.ci/run` installs both). The
session's `demo` run (tests/conftest.py) supplies the page. The tests check that every embedded
figure decodes, that every section of `report.SECTIONS` is on the page and its nav link shows
its heading, and save a full-page screenshot into the test's tmp folder (its path is printed).
Without a browser or driver the tests skip, except under CI=true, where that is a failure.

    python -m pytest -q tests/test_report_browser.py   # the screenshot's path is printed
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from pipeline.reporting.report import FIGURES, SECTIONS

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1440, 1000)  # the report's main column is at most 1440 px wide

# Waits for every <img> to decode (decode() rejects for a broken image) and describes each.
IMAGES_JS = """
const done = arguments[arguments.length - 1];
const images = Array.from(document.images);
Promise.all(images.map(img => img.decode().then(() => "", err => String(err)))).then(errors =>
  done(images.map((img, k) => {
    const box = img.getBoundingClientRect();
    return {figure: img.dataset.figure || img.src.slice(0, 40), complete: img.complete,
            naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
            width: box.width, height: box.height, right: box.right + window.scrollX,
            error: errors[k]};
  })));
"""


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """Paths of a Chromium binary and chromedriver; skip (fail under CI=true) without them."""
    browser = next((path for path in map(shutil.which, BROWSERS) if path), None)
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", browser), ("chromedriver", driver)) if not path]
    if missing:
        why = (f"no {' and no '.join(missing)} on PATH (Debian: apt-get install chromium "
               "chromium-driver)")
        if _in_ci():
            pytest.fail(f"CI=true but {why}; .ci/run installs them", pytrace=False)
        pytest.skip(f"browser test needs a real browser: {why}")
    return browser, driver


@pytest.fixture(scope="module")
def page(chromium: tuple[str, str], tiny_run: SimpleNamespace) -> Iterator[webdriver.Chrome]:
    """Headless Chromium with the demo run's report.html loaded from disk (file://)."""
    browser, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new",
                "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
                "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
                "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
                f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(arg)
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        driver.set_page_load_timeout(60)
        driver.set_script_timeout(60)
        driver.get((tiny_run.run_dir / "report.html").resolve().as_uri())
        yield driver
    finally:
        driver.quit()


def test_every_figure_decodes_and_fits_the_window(page: webdriver.Chrome,
                                                   tiny_run: SimpleNamespace) -> None:
    from PIL import Image

    images = page.execute_async_script(IMAGES_JS)
    pngs = {p.name: p for p in (tiny_run.run_dir / "figures").glob("*.png")}
    assert sorted(img["figure"] for img in images) == sorted(pngs)
    broken = [img for img in images if img["error"] or not img["complete"]
              or img["naturalWidth"] <= 0 or img["naturalHeight"] <= 0]
    assert not broken, broken
    width = page.execute_script("return window.innerWidth")
    for img in images:
        with Image.open(pngs[img["figure"]]) as im:  # the browser decoded the whole PNG
            assert (img["naturalWidth"], img["naturalHeight"]) == im.size, img
        assert img["width"] > 0 and img["height"] > 0, img  # shown, not collapsed
        assert img["right"] <= width + 0.5, img  # scaled down to the page, no sideways scrolling
    assert page.execute_script("return document.documentElement.scrollWidth") <= width
    severe = [entry for entry in page.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe


def test_every_section_is_on_the_page_in_order(page: webdriver.Chrome) -> None:
    tops = []
    for key, title in SECTIONS:
        found = page.find_elements(By.CSS_SELECTOR, f"section#{key}")
        assert len(found) == 1, f"section #{key} ({title}) missing"
        section = found[0]
        assert section.find_element(By.TAG_NAME, "h2").text == title
        assert section.is_displayed() and section.size["height"] > 0, key
        assert page.find_elements(By.CSS_SELECTOR, f'nav a[href="#{key}"]'), key
        tops.append(section.location["y"])
    assert tops == sorted(tops), list(zip(tops, SECTIONS))
    # Each figure sits in the section FIGURES names for it.
    placed = page.execute_script(
        "return Array.from(document.querySelectorAll('figure')).map("
        "f => [f.id, f.closest('section') ? f.closest('section').id : null])")
    sections = {f"fig-{spec.name}": spec.section for spec in FIGURES}
    assert placed and all(sections.get(fig, "tuning") == sec for fig, sec in placed), placed


def test_nav_links_land_below_the_sticky_nav(page: webdriver.Chrome) -> None:
    try:
        for key, title in SECTIONS:
            page.find_element(By.CSS_SELECTOR, f'nav a[href="#{key}"]').click()
            nav_bottom, heading_top = page.execute_script(
                "return [document.querySelector('nav').getBoundingClientRect().bottom, "
                f"document.querySelector('section#{key} h2').getBoundingClientRect().top]")
            if page.execute_script("return window.scrollY + window.innerHeight "
                                   "< document.documentElement.scrollHeight - 1"):
                # (the last sections cannot scroll to the top: the page ends first)
                assert heading_top >= nav_bottom, f"'{title}' is hidden under the nav bar"
    finally:
        page.execute_script("window.scrollTo(0, 0)")


def test_full_page_screenshot(page: webdriver.Chrome, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    page.execute_script("window.scrollTo(0, 0)")  # the sticky nav stays at the top of the picture
    size = page.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = page.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    path = tmp_path / "report.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    with capsys.disabled():
        print(f"\nreport screenshot: {path}")
    with Image.open(path) as im:
        assert im.size == (round(size["width"]), round(size["height"]))
        gray = np.asarray(im.convert("L"), dtype=np.float64)
    assert gray.shape[0] > 2 * WINDOW[1]  # the whole page, not one window's worth
    assert gray.std() > 20 and (gray < 128).mean() > 0.01, "the screenshot looks blank"
