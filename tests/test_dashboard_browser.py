"""End to end: `smartregion demo` runs a region; a real headless Chromium logs into a hub's
dashboard and sees its peers, agreements, chart and map. Saves test-artifacts/dashboard.png."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT
from tests.test_query_dp import pair  # noqa: F401  (a fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO_ROOT / "test-artifacts"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed: run `make browser` (make test does)")


@pytest.fixture(scope="module")
def demo_region(tmp_path_factory):
    directory = tmp_path_factory.mktemp("demo") / "region"
    log = directory.parent / "demo.log"
    env = dict(os.environ, COLUMNS="200", TERM="dumb")
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "node.app.cli.main", "demo", "--dir", str(directory)],
                                   stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "The region keeps running" not in log.read_text(errors="replace"):
            assert process.poll() is None, f"the demo exited early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the demo did not come up:\n{log.read_text()}"
            time.sleep(0.5)
        urls = re.findall(r"Stavanger\s+(https://127\.0\.0\.1:\d+)/", log.read_text())
        yield {"url": urls[0], "token": (directory / "stavanger" / "admin.token").read_text().strip(), "log": log}
    finally:
        process.send_signal(signal.SIGTERM)  # the demo stops its hubs on SIGTERM as on Ctrl-C
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        # The hubs run in sessions of their own: never leave one behind, whatever the demo did.
        for endpoint in directory.glob("*/run/endpoint.json"):
            with contextlib.suppress(ProcessLookupError, ValueError, KeyError):
                os.kill(json.loads(endpoint.read_text())["pid"], signal.SIGKILL)


def test_dashboard_shows_the_region(demo_region):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--ignore-certificate-errors"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800}, ignore_https_errors=True)
            page.goto(demo_region["url"] + "/")
            # Without the credential nothing but the login form is shown.
            page.wait_for_selector("#login:not([hidden])")
            assert page.locator("#dashboard").is_hidden()
            page.fill("#token", "sra_not-the-token")
            page.click("#login-form button")
            page.wait_for_selector("#login-error:text('not this hub')")
            page.fill("#token", demo_region["token"])
            page.click("#login-form button")
            page.wait_for_selector("body[data-loaded='true']", timeout=30_000)

            assert page.locator("#hub-name").inner_text() == "Stavanger hub"
            peers = page.locator("#peers tr").all_inner_texts()[1:]
            assert len(peers) == 4 and all("reachable" in row for row in peers)
            assert {"Bergen", "Porsgrunn", "Fredrikstad", "Tønsberg"} == {row.split(" (")[0] for row in peers}
            agreements = page.locator("#agreements tr").all_inner_texts()[1:]
            assert len(agreements) == 9  # 4 as provider, 4 as consumer, 1 with the partner
            assert all("active" in row and "both ✓" in row for row in agreements)
            assert page.locator("#chart svg polyline.series").count() == 5
            assert page.locator("#legend").inner_text().count("\n") == 4
            assert page.locator("#map svg circle.hub-dot").count() == 5
            assert page.locator("#map svg circle").count() == 357  # the 2024 register (node/data/kommuner-2024.csv)
            assert "query.run" in page.locator("#audit").inner_text()
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            page.set_viewport_size({"width": 1400, "height": 900})
            page.screenshot(path=str(ARTIFACTS / "dashboard-top.png"))
        finally:
            browser.close()


async def test_the_dashboard_shows_the_lifetime_privacy_budget(pair):  # noqa: F811
    """The agreements table shows the LIFETIME differential-privacy budget from the provider's
    ledger (what `smartregion agreement budget ID` shows), on a real page in Chromium."""
    from node import hubdir
    from tests.test_query_dp import ask, spec

    consumer, provider, _ = pair
    await ask(consumer, spec("count", 0.5, provider))
    await ask(consumer, spec("sum", 0.25, provider))

    def agreement_rows_in_browser(*hubs) -> list[list[str]]:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--ignore-certificate-errors"])
            try:
                tables = []
                for live in hubs:
                    page = browser.new_page(ignore_https_errors=True)
                    page.goto(live.hub.endpoint.http_url + "/")
                    page.fill("#token", hubdir.HubDir(live.data_dir).admin_token())
                    page.click("#login-form button")
                    page.wait_for_selector("body[data-loaded='true']", timeout=30_000)
                    tables.append(page.locator("#agreements tr").all_inner_texts())
                return tables
            finally:
                browser.close()

    [header, row], [_, seen] = await asyncio.to_thread(agreement_rows_in_browser, provider, consumer)
    assert "privacy budget (lifetime)" in header and "ε 0.75 of 2 spent, 1.25 left" in row, row
    assert "ε 2 (ledger at the provider)" in seen, seen
