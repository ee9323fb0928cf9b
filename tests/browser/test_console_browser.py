"""The console in a real (headless) Chromium: sign in, search a dossier code, open its
timeline, replay a dead letter as an admin and see it sent again.

Screenshots of each step land in test-artifacts/browser/ for people to look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from notifier_simulators.smtp import SmtpCatcher

from notifier.app import Notifier
from notifier.store import Database
from notifier.store.operators import OperatorStore
from notifier.store.schema import utcnow
from notifier.web.api import create_api
from tests.integration.test_console import PASSWORD, seed_log
from tests.integration.test_reports_and_replay import make_dead_letter
from tests.support import RunningWorker, ServedApi, make_settings, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def smtp() -> Iterator[SmtpCatcher]:
    with SmtpCatcher() as catcher:
        yield catcher


@pytest.fixture
def app(pg_url: str, pg_database: Database, smtp: SmtpCatcher) -> Notifier:
    """The in-process broker: a replay is enqueued and sent in this process."""
    return Notifier(
        make_settings(
            database_url=pg_url,
            adapters={"email": {"host": "127.0.0.1", "port": smtp.port}},
            worker={"min_backoff_ms": 50, "max_backoff_ms": 500, "send_timeout_s": 10},
        )
    )


class Steps:
    """The browser, with a full-page screenshot per step."""

    def __init__(self, driver: Any, base_url: str, folder: Path) -> None:
        self.driver, self.base_url, self.folder = driver, base_url, folder
        self.count = 0

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        found: list[Any] = self.driver.find_elements(By.CSS_SELECTOR, css)
        return found

    def shot(self, name: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        self.driver.execute_script("window.scrollTo(0, 0)")
        height = self.driver.execute_script(
            "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"
        )
        self.driver.set_window_size(1440, min(max(int(height) + 40, 800), 4000))
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(1440, 1000)
        assert path.stat().st_size > 10_000, "an empty screenshot"
        return path


def test_sign_in_search_timeline_and_replay(
    browser: Any,
    artifacts: Path,
    app: Notifier,
    pg_database: Database,
    smtp: SmtpCatcher,
) -> None:
    seed_log(pg_database)
    code, email_id = make_dead_letter(app)
    OperatorStore(pg_database).add("lan.admin", PASSWORD, "admin")

    with RunningWorker(app), ServedApi(create_api(app)) as api:
        steps = Steps(browser, api.base_url, artifacts)

        # Anyone is sent to sign in first.
        steps.open("/console/overview")
        assert "/console/sign-in" in browser.current_url
        steps.shot("sign-in")
        steps.find("#username").send_keys("lan.admin")
        steps.find("#password").send_keys(PASSWORD)
        steps.find("#sign-in").click()
        wait_until(lambda: "/console/overview" in browser.current_url, timeout=10)
        assert steps.find("#kpi-total").text.strip() != "0"
        assert "Tổng quan" in browser.page_source
        steps.shot("overview")

        # Search the dossier code, open its timeline.
        steps.find('.mainnav a[href="/console/deliveries"]').click()
        steps.find("#dossier_code").send_keys(code)
        steps.find("#search").click()
        wait_until(lambda: "dossier_code=" in browser.current_url, timeout=10)
        rows = steps.all("#results tbody tr")
        assert len(rows) == 2  # email and portal
        steps.shot("search-results")
        steps.all(".timeline-link")[0].click()
        wait_until(lambda: "/console/dossiers/" in browser.current_url, timeout=10)
        assert steps.find("#dossier-code").text == code
        assert "gave up after 8 attempts" in browser.page_source
        assert len(steps.all(f"#d-{email_id} .attempt")) == 8
        steps.shot("dossier-timeline")

        # Replay the dead letter from the dead-letters page.
        steps.find('.mainnav a[href="/console/dead-letters"]').click()
        box = steps.find(f'input[name="ids"][value="{email_id}"]')
        steps.shot("dead-letters")
        box.click()
        steps.find("#replay-selected").click()
        browser.switch_to.alert.accept()  # "send these again?"
        wait_until(lambda: "done=1" in browser.current_url, timeout=10)
        assert "notice-ok" in browser.page_source
        steps.shot("replayed")

        # The worker sends it again, once.
        wait_until(lambda: len(smtp.messages) == 1, timeout=20)
        steps.open(f"/console/deliveries/{email_id}")
        wait_until(lambda: "/console/dossiers/" in browser.current_url, timeout=10)
        card = steps.find(f"#d-{email_id}")
        assert "s-sent" in card.get_attribute("innerHTML")
        outcomes = [a.get_attribute("class") for a in steps.all(f"#d-{email_id} .attempt")]
        assert outcomes[-2:] == ["attempt o-replayed", "attempt o-sent"]
        steps.shot("dossier-after-replay")

        # The other pages, for the record (and in English once).
        for path, name in [
            ("/console/providers", "providers"),
            ("/console/callbacks", "callbacks"),
            ("/console/rejects", "rejects"),
            ("/console/overview?window=month&lang=en", "overview-month-en"),
        ]:
            steps.open(path)
            steps.shot(name)
        today = utcnow().date()
        steps.open(
            f"/console/reports?from={today - timedelta(days=6)}&to={today + timedelta(days=1)}"
        )
        assert steps.find("#report-total").text.strip() != "0"
        steps.shot("report")
    assert len(smtp.messages) == 1
