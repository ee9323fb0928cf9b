"""Fixtures: the Zalo simulator over real HTTP, and a real token store (SQLite)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from notifier_simulators.zalo import ZaloSimulator
from notifier_zalo import ZaloSettings, ZaloZnsAdapter

from notifier.adapter import AdapterContext
from notifier.store import Database
from notifier.store.migrate import upgrade
from notifier.store.tokens import TokenStore

APP_ID = "1234567890123456789"
APP_SECRET = "sim-app-secret-Xy7"
OA_SECRET = "sim-oa-secret-Qw3"
FIRST_REFRESH_TOKEN = "rt-initial-0001"


@pytest.fixture
def sim() -> Iterator[ZaloSimulator]:
    with ZaloSimulator(
        app_id=APP_ID,
        app_secret=APP_SECRET,
        oa_secret_key=OA_SECRET,
        initial_refresh_token=FIRST_REFRESH_TOKEN,
    ) as simulator:
        yield simulator


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path}/t.db")
    upgrade(db)
    yield db
    db.dispose()


@pytest.fixture
def tokens(database: Database) -> TokenStore:
    store = TokenStore(database, "k" * 32)
    store.put("zalo", refresh_token=FIRST_REFRESH_TOKEN)
    return store


def _settings(sim: ZaloSimulator, **overrides: Any) -> ZaloSettings:
    values: dict[str, Any] = {
        "app_id": APP_ID,
        "app_secret": APP_SECRET,
        "oa_secret_key": OA_SECRET,
        "base_url": sim.base_url,
        "oauth_url": sim.oauth_url,
        "uid_url": sim.uid_url,
        "timeout_s": 2.0,
    }
    values.update(overrides)
    return ZaloSettings(**values)


@pytest.fixture
def make_settings(sim: ZaloSimulator) -> Callable[..., ZaloSettings]:
    """Settings pointing at the simulator; keyword arguments override."""

    def factory(**overrides: Any) -> ZaloSettings:
        return _settings(sim, **overrides)

    return factory


@pytest.fixture
def make_adapter(sim: ZaloSimulator, tokens: TokenStore) -> Callable[..., ZaloZnsAdapter]:
    """A new adapter (a new worker, as far as tokens go) sharing the token store."""

    def factory(*, store: TokenStore | None = None, **overrides: Any) -> ZaloZnsAdapter:
        context = AdapterContext(
            inbox=None,  # type: ignore[arg-type]
            tokens=store or tokens,
            http_transport=None,
        )
        return ZaloZnsAdapter(_settings(sim, **overrides), context)

    return factory
