"""Shared fixtures: real PostgreSQL and RabbitMQ (a throwaway database and vhost per
session) and SQLite in a temporary folder. Helpers live in tests/support.py.

The suite runs in random order (pytest-randomly prints its seed in the header;
``--randomly-seed=N`` repeats an order, ``-p no:randomly`` turns it off: see
docs/development.md). The fault tests are the exception: they restart the services, so
they run last and in the order they are written in."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from notifier.store import Database
from notifier.store.migrate import upgrade
from notifier.store.schema import metadata
from tests.service_log import capture_service_log, scan_service_log

PG_ADMIN_URL = os.environ.get("NOTIFIER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_HOST = os.environ.get("NOTIFIER_TEST_AMQP_HOST", "127.0.0.1:5672")


@pytest.fixture(scope="session", autouse=True)
def service_log() -> Iterator[Path]:
    """Every record logged in this session, through the service's masked JSON pipeline,
    in test-artifacts/service-log.jsonl. After the last test (whatever the order), the
    whole log is scanned, and a phone, email, citizen id or secret in clear fails the
    session (as an error at the teardown of the last test)."""
    with capture_service_log() as path:
        yield path
        problem = scan_service_log(path, frozenset(_PASSED))
        if problem is not None:
            pytest.fail(f"service log scan ({path}): {problem}", pytrace=False)


@pytest.fixture(autouse=True)
def _root_log_level_restored() -> Iterator[None]:
    """A CLI command a test runs in-process sets the root logger's level from its
    settings (``NOTIFIER_LOG_LEVEL=WARNING``, say); put the session's back after each
    test, so no later test's records are silently dropped from the service log."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


_PASSED: set[str] = set()  # names of the test functions that passed in this session


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed:
        _PASSED.add(report.nodeid.rsplit("::", 1)[-1].split("[", 1)[0])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fault tests last, in the order they are written in: they kill workers and
    restart RabbitMQ and PostgreSQL, so they are kept out of the random order (this runs
    after pytest-randomly has shuffled the rest)."""
    faults = [item for item in items if item.get_closest_marker("faults") is not None]
    if not faults:
        return
    others = [item for item in items if item.get_closest_marker("faults") is None]
    faults.sort(key=lambda item: (str(item.path), item.location[1] or 0))
    items[:] = others + faults


def _pg_database() -> Iterator[str]:
    name = f"notifier_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A migrated PostgreSQL database for this test session."""
    for url in _pg_database():
        database = Database(url)
        upgrade(database)
        database.dispose()
        yield url


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """A PostgreSQL database of its own with no schema yet (for migration tests)."""
    yield from _pg_database()


@pytest.fixture
def pg_database(pg_url: str) -> Iterator[Database]:
    """The session's PostgreSQL database, emptied before each test."""
    database = Database(pg_url)
    truncate(database)
    yield database
    database.dispose()


def truncate(database: Database) -> None:
    with database.begin() as connection:
        names = ", ".join(t.name for t in reversed(metadata.sorted_tables))
        connection.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/notifier.db")
    upgrade(database)
    yield database
    database.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> Database:
    """Both storage paths: every test using this runs on SQLite and on PostgreSQL."""
    fixture = "sqlite_database" if request.param == "sqlite" else "pg_database"
    db: Database = request.getfixturevalue(fixture)
    return db


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A RabbitMQ vhost of its own for this session (deleted after, with its queues)."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl not found: RabbitMQ must be installed and running")
    vhost = f"notifier-test-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@{AMQP_HOST}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def queue_prefix() -> str:
    """Queues and exchange of their own per test, inside the session's vhost."""
    return f"t{uuid.uuid4().hex[:8]}"
