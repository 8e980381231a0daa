"""The dashboard in a real browser: Debian's chromium, headless, driven by Selenium.

It opens /dashboard with no token, trips a breaker through the API and sees that endpoint's
row turn open without a page reload; a screenshot is saved under test-artifacts/.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support import IN_CI, ROOT, base_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = ROOT / "test-artifacts"
TOKEN = "dashboard-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _browser_or_skip():  # type: ignore[no-untyped-def]
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
    except ImportError:
        missing.append("the selenium package")
        webdriver = None
    if missing:
        message = (f"missing {', '.join(missing)}: run scripts/system-deps.sh test "
                   "and pip install -e '.[test]'")
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return webdriver


@pytest.fixture
def browser():  # type: ignore[no-untyped-def]
    webdriver = _browser_or_skip()
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="orchd-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-quic", "--no-first-run",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                "--window-size=1440,900", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                              options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# The page re-renders its rows as events arrive, so elements are read in one script call
# (a found element may be replaced before it is read).
def _row_state(driver, name: str) -> str | None:  # type: ignore[no-untyped-def]
    return driver.execute_script(  # type: ignore[no-any-return]
        "const r = document.querySelector(`tr[data-endpoint='${arguments[0]}']`);"
        "return r ? r.dataset.breaker : null;", name)


def _text(driver, selector: str) -> str | None:  # type: ignore[no-untyped-def]
    return driver.execute_script(  # type: ignore[no-any-return]
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
        selector)


async def test_trip_turns_the_row_open_live(browser, orchd_factory, upstream_factory, http):
    from selenium.webdriver.support.ui import WebDriverWait

    users = await upstream_factory()
    orders = await upstream_factory()
    daemon = orchd_factory(base_config(
        {"name": "users", "url": f"{users.url}/api", "methods": ["GET", "POST"]},
        {"name": "orders", "urls": [f"{orders.url}/a", f"{orders.url}/b"]},
        {"name": "payments", "url": f"{users.url}/pay"},
        server={"admin_token": TOKEN}))
    # Some traffic, so the figures have something to show.
    for _ in range(20):
        async with http.get(f"{daemon.url}/orchestrator/users/x") as r:
            assert r.status == 200
        async with http.get(f"{daemon.url}/orchestrator/orders/x") as r:
            assert r.status == 200

    def wait(predicate, what: str, timeout: float = 15):  # type: ignore[no-untyped-def]
        return WebDriverWait(browser, timeout, poll_frequency=0.1).until(
            lambda d: predicate(d), message=what)

    await asyncio.to_thread(browser.get, f"{daemon.url}/dashboard")
    await asyncio.to_thread(wait, lambda d: _row_state(d, "payments") == "closed",
                            "the payments row, closed")
    await asyncio.to_thread(
        wait, lambda d: d.execute_script("return document.getElementById('live').dataset.state")
        == "live", "the event stream to connect")
    marker = await asyncio.to_thread(browser.execute_script,
                                     "window.__sameDocument = 42; return 42;")
    assert marker == 42

    async with http.post(f"{daemon.url}/health/circuit-breakers/payments/trip",
                         headers=AUTH) as r:
        assert r.status == 200
    await asyncio.to_thread(wait, lambda d: _row_state(d, "payments") == "open",
                            "the payments row to turn open")
    # Same document: the page changed live, it was not reloaded.
    same = await asyncio.to_thread(browser.execute_script, "return window.__sameDocument;")
    assert same == 42
    text = await asyncio.to_thread(_text, browser, 'tr[data-endpoint="payments"] td.breaker')
    assert text is not None and "open" in text and "tripped by an operator" in text
    assert _row_state(browser, "users") == "closed"

    # The traffic figures arrive with the next stats event.
    await asyncio.to_thread(
        wait, lambda d: _text(d, 'tr[data-endpoint="users"] td.num') not in (None, "\u2013"),
        "the request rate of users")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    assert await asyncio.to_thread(browser.save_screenshot, str(shot))
    assert shot.stat().st_size > 10_000


async def test_swagger_ui_renders_the_document_offline(browser, orchd_factory):
    from selenium.webdriver.support.ui import WebDriverWait

    daemon = orchd_factory(base_config({"name": "users", "url": "http://127.0.0.1:9/api"}))
    await asyncio.to_thread(browser.get, f"{daemon.url}/docs")

    def operations(d) -> int:  # type: ignore[no-untyped-def]
        return int(d.execute_script("return document.querySelectorAll('.opblock').length"))

    await asyncio.to_thread(
        lambda: WebDriverWait(browser, 20, poll_frequency=0.1).until(
            lambda d: operations(d) >= 30, message="Swagger UI to list the operations"))
    errors = await asyncio.to_thread(
        browser.execute_script,
        "return Array.from(document.querySelectorAll('.errors-wrapper'))"
        ".map(e => e.textContent)")
    assert errors == []


def test_a_headless_screenshot_of_the_snapshot_view_finishes(orchd_factory):
    # A headless browser takes its picture once every request of the page has ended; the
    # event stream never ends, so ?live=0 renders the state without it.
    import subprocess

    _browser_or_skip()
    daemon = orchd_factory(base_config({"name": "users", "url": "http://127.0.0.1:9/api"}))
    out = Path(tempfile.mkdtemp(prefix="orchd-shot-"))
    try:
        shot = out / "dashboard.png"
        proc = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-quic", "--no-first-run", f"--user-data-dir={out / 'profile'}",
             "--virtual-time-budget=3000", "--window-size=1440,900", f"--screenshot={shot}",
             f"{daemon.url}/dashboard?live=0"],
            capture_output=True, text=True, timeout=60, check=False)
        assert shot.exists() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    finally:
        shutil.rmtree(out, ignore_errors=True)
