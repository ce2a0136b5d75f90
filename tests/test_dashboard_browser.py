"""The dashboard in a real browser: Debian's Chromium, headless, driven by
Playwright, against hypercorn serving tests/browser_app.py.

It watches a task go from PENDING to RUNNING with its bar moving, cancels it
from the page, sees CANCELLED, checks that hostile text is shown as text, and
saves a screenshot (to GENRO_TASKS_SCREENSHOT if set, else the test's tmp dir).
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from browser_helpers import CHROMIUM, CHROMIUM_ARGS, serve

if TYPE_CHECKING:
    from playwright.sync_api import Page

HERE = Path(__file__).parent
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium found: install Debian's 'chromium' package (.ci/run does)"
)


@pytest.fixture
def server() -> Iterator[str]:
    with serve("browser_app:app") as url:
        yield url


def post(url: str) -> None:
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=30) as reply:
        assert reply.status == 204


def bar_width(page: Page, task_id: str) -> float:
    value = page.eval_on_selector(f'tr[data-task-id="{task_id}"] .bar > div', "e => parseFloat(e.style.width) || 0")
    return float(value)


def test_dashboard_live_cancel_and_escaping(server: str, tmp_path: Path) -> None:
    post(server + "/setup")
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 420})
            page.set_default_timeout(30_000)
            page.on("dialog", lambda dialog: dialog.accept())  # the hard-kill confirmation
            page.goto(server + "/tasks/")
            target = 'tr[data-task-id="target"]'
            page.wait_for_selector(f"{target}.pending")
            assert page.inner_text(f"{target} .status") == "PENDING"
            page.wait_for_selector("#conn.live")

            post(server + "/release")  # the blocker is cancelled: the target starts
            page.wait_for_selector(f"{target}.running")
            assert page.inner_text(f"{target} .status") == "RUNNING"
            page.wait_for_function(
                "s => parseFloat(document.querySelector(s).style.width) > 3", arg=f"{target} .bar > div"
            )
            first = bar_width(page, "target")
            page.wait_for_function(
                "([s, w]) => parseFloat(document.querySelector(s).style.width) > w + 3",
                arg=[f"{target} .bar > div", first],
            )
            assert bar_width(page, "target") > first  # the bar moves

            page.click(f"{target} button.cancel")
            page.wait_for_selector(f"{target}.cancelled")
            assert page.inner_text(f"{target} .status") == "CANCELLED"

            # The next task carries hostile text: shown verbatim, never executed.
            hostile = 'tr[data-task-id="hostile"]'
            page.wait_for_selector(f"{hostile}.running")
            page.wait_for_function(
                "s => document.querySelector(s).textContent.includes('onerror')", arg=f"{hostile} td.msg"
            )
            assert page.inner_text(f"{hostile} td.msg") == '<img src=x onerror="window.pwned=1">'
            assert page.evaluate("() => window.pwned === undefined")
            assert page.query_selector(f"{hostile} td.msg img") is None

            # The filter hides what does not match.
            page.select_option("#filter-status", "cancelled")
            page.wait_for_selector(hostile, state="detached")
            assert page.is_visible(target)
            page.select_option("#filter-status", "")
            page.wait_for_selector(hostile)

            shot = Path(os.environ.get("GENRO_TASKS_SCREENSHOT", tmp_path / "dashboard.png"))
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()


def test_dashboard_group_row_expands_and_cancels(server: str, tmp_path: Path) -> None:
    post(server + "/setup-group")
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 520})
            page.set_default_timeout(30_000)
            page.on("dialog", lambda dialog: dialog.accept())  # the hard-kill confirmation
            page.goto(server + "/tasks/")
            group = 'tr.group[data-group="nightly"]'
            page.wait_for_selector(group)
            # One row for the group; its tasks are not rows of the main table.
            page.wait_for_selector('#rows tr[data-task-id="loose"]')
            assert page.query_selector('#rows tr[data-task-id="n-slow"]') is None
            page.wait_for_function(
                "s => document.querySelector(s).textContent.includes('1/3 done')", arg=f"{group} td.counts"
            )
            assert "1 running" in page.inner_text(f"{group} td.status")

            page.click(f"{group} td.gname")  # expands
            page.wait_for_selector('tr.member[data-task-id="n-slow"].running')
            assert len(page.query_selector_all("tr.member")) == 3

            page.click(f"{group} button.cancel")
            page.wait_for_function(
                "s => document.querySelector(s).textContent.includes('3/3 done')", arg=f"{group} td.counts"
            )
            assert "2 cancelled" in page.inner_text(f"{group} td.status")
            page.wait_for_selector('tr.member[data-task-id="n-queued"].cancelled')
            assert page.is_hidden(f"{group} button.cancel")

            shot = Path(os.environ.get("GENRO_TASKS_GROUP_SCREENSHOT", tmp_path / "dashboard-group.png"))
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
