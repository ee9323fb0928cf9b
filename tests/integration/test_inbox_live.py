"""The portal inbox's live stream on PostgreSQL (issue 17, item 6): woken by the
NOTIFY of the transaction that stores a notification, not by polling; an idle stream
reads nothing, and another account's notification does not wake it."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from notifier.app import Notifier
from notifier.store import Database
from notifier.store.apikeys import ApiKeys
from notifier.web.api import create_api
from tests.support import ServedApi, make_settings, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def app(pg_url: str, pg_database: Database) -> Iterator[Notifier]:
    notifier = Notifier(make_settings(database_url=pg_url))
    yield notifier
    notifier.close()


def add(app: Notifier, account: str, title: str) -> None:
    app.inbox.add(
        delivery_id=uuid.uuid4(),
        account_id=account,
        agency_code="A",
        dossier_code="D-1",
        status="result_ready",
        title=title,
        body="-",
        link=None,
    )


def test_an_idle_stream_reads_nothing_until_its_account_gets_a_notification(
    app: Notifier, pg_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = ApiKeys(pg_database).create("portal", ["inbox"], [])
    reads: list[str] = []
    list_items = app.inbox.list

    def counted(account: str, **kwargs: Any) -> Any:
        reads.append(account)
        return list_items(account, **kwargs)

    monkeypatch.setattr(app.inbox, "list", counted)  # a spy: the real query still runs
    received: list[str] = []
    connected = threading.Event()
    with ServedApi(create_api(app)) as api:

        def listen() -> None:
            with httpx.stream(
                "GET",
                f"{api.base_url}/v1/inbox/acc-7/stream",
                headers={"Authorization": f"Bearer {reader}"},
                timeout=30,
            ) as response:
                for line in response.iter_lines():
                    if line.startswith("retry:"):
                        connected.set()
                    if line.startswith("data: "):
                        received.append(line)
                        return

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        assert connected.wait(timeout=10)
        wait_until(lambda: reads)
        # Idle for what would have been three polls, and another account's news.
        add(app, "acc-8", "someone else")
        time.sleep(3)
        assert reads == ["acc-7"]  # the first read only
        add(app, "acc-7", "Hồ sơ đã có kết quả")
        thread.join(timeout=10)
    assert len(received) == 1
    assert "Hồ sơ đã có kết quả" in received[0]
    assert reads == ["acc-7", "acc-7"]
