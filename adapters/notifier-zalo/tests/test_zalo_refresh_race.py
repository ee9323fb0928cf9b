"""Two workers, each with its own adapter, event loop and database engine, find the
access token expired at the same moment: Zalo's single-use refresh token is spent once.

The refresh goes through TokenStore.refresh, which holds a row lock around the call
to Zalo. Without it both workers would call the OAuth endpoint, the second with a
token the first had just killed.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from notifier_simulators.zalo import ZaloSimulator
from notifier_zalo import ZaloSettings, ZaloZnsAdapter

from notifier.adapter import AdapterContext, OutboundMessage, SendResult
from notifier.store import Database
from notifier.store.migrate import upgrade
from notifier.store.schema import utcnow
from notifier.store.tokens import TokenStore

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
KEY = "k" * 32


@pytest.fixture
def postgres_url() -> Iterator[str]:
    name = f"zalo_test_{secrets.token_hex(6)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def race(sim: ZaloSimulator, url: str) -> None:
    setup = Database(url)
    upgrade(setup)
    store = TokenStore(setup, KEY)
    # An access token that has expired: every worker must refresh before sending.
    store.put(
        "zalo",
        refresh_token=sim.current_refresh_token,
        access_token="expired-access-token",
        expires_at=utcnow() - timedelta(minutes=1),
    )
    first_refresh_token = sim.current_refresh_token
    sim.refresh_latency_s = 0.5  # both workers are surely inside refresh together

    settings = ZaloSettings(
        app_id=sim.app_id,
        app_secret=sim.app_secret,
        base_url=sim.base_url,
        oauth_url=sim.oauth_url,
        timeout_s=5,
    )
    start = threading.Barrier(2)
    results: list[SendResult] = []
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        # A worker process of its own: engine, token store, adapter, event loop.
        database = Database(url)
        context = AdapterContext(inbox=None, tokens=TokenStore(database, KEY))  # type: ignore[arg-type]
        adapter = ZaloZnsAdapter(settings, context)
        message = OutboundMessage(
            delivery_id=uuid.uuid4(),
            event_id=uuid.uuid4(),
            channel="zalo",
            recipient=f"+8490188848{index}",
            language="vi",
            parts={"template_id": "245004", "template_data": '{"customer_name": "An"}'},
            dossier_code="000.00.12.H29-231025-0001",
            agency_code="000.00.12.H29",
            status="processing",
        )

        async def run() -> SendResult:
            try:
                start.wait(5)
                return await adapter.send(message)
            finally:
                await adapter.close()

        try:
            results.append(asyncio.run(run()))
        except BaseException as exc:
            errors.append(exc)
        finally:
            database.dispose()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert sim.refresh_count == 1
    assert sim.refresh_failures == 0
    assert len(results) == 2
    assert len(sim.messages) == 2
    assert {m.access_token for m in sim.messages} == {sim.current_access_token}
    stored = store.get("zalo")
    assert stored is not None
    assert stored.refresh_token == sim.current_refresh_token != first_refresh_token
    assert stored.version == 2
    setup.dispose()


@pytest.mark.integration
def test_two_workers_refresh_once_on_postgresql(sim: ZaloSimulator, postgres_url: str) -> None:
    race(sim, postgres_url)


def test_two_workers_refresh_once_on_sqlite(sim: ZaloSimulator, tmp_path: Path) -> None:
    race(sim, f"sqlite:///{tmp_path}/race.db")
