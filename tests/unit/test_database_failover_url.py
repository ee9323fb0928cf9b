"""libpq multi-host connection strings (database failover): how the setting is read,
what SQLAlchemy hands to libpq, and the libpq defaults notifier adds unless the URL
sets them. The last test connects for real: a host that refuses, then the machine's
PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from notifier.settings import database_url_for_sqlalchemy
from notifier.store import Database
from tests.support import make_settings

FAILOVER = "postgresql://notifier:pw@pg1:5432,pg2:5433/notifier?target_session_attrs=read-write"


def _libpq_arguments(url: str) -> dict[str, object]:
    engine = sa.create_engine(database_url_for_sqlalchemy(url))
    _args, kwargs = engine.dialect.create_connect_args(engine.url)
    return dict(kwargs)


def test_a_libpq_list_of_hosts_reaches_libpq_as_one_multi_host_connection() -> None:
    arguments = _libpq_arguments(FAILOVER)
    assert arguments["host"] == "pg1,pg2"
    assert arguments["port"] == "5432,5433"
    assert arguments["target_session_attrs"] == "read-write"
    assert arguments["dbname"] == "notifier"
    assert (arguments["user"], arguments["password"]) == ("notifier", "pw")


def test_the_setting_takes_the_libpq_form_and_keeps_it_for_every_process() -> None:
    settings = make_settings(database_url=FAILOVER)
    assert settings.database_url == (
        "postgresql+psycopg://notifier:pw@/notifier"
        "?host=pg1:5432&host=pg2:5433&target_session_attrs=read-write"
    )


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///notifier.db",
        "postgresql+psycopg://notifier:pw@pg1:5432/notifier",
        "postgresql+psycopg://notifier@/notifier?host=pg1:5432&host=pg2:5432",
    ],
)
def test_single_host_and_sqlalchemy_style_urls_are_kept_as_they_are(url: str) -> None:
    assert database_url_for_sqlalchemy(url) == url


def test_a_plain_postgresql_url_gets_psycopg_3_as_its_driver() -> None:
    assert database_url_for_sqlalchemy("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"


def test_notifier_bounds_each_hosts_connect_time_unless_the_url_says_otherwise() -> None:
    default = Database(FAILOVER)
    explicit = Database(FAILOVER + "&connect_timeout=11")
    try:
        assert _libpq_options(default)["connect_timeout"] == 5
        assert _libpq_options(default)["keepalives"] == 1
        assert _libpq_options(explicit)["connect_timeout"] == "11"  # the URL's own
    finally:
        default.dispose()
        explicit.dispose()


def _libpq_options(database: Database) -> dict[str, object]:
    """The keyword arguments a new connection would get from libpq's caller (the URL's
    and notifier's connect_args), caught before any connection is made."""
    captured: dict[str, object] = {}

    def capture(
        _dialect: object, _record: object, _cargs: object, cparams: dict[str, object]
    ) -> None:
        captured.update(cparams)
        raise _Captured

    sa.event.listen(database.engine, "do_connect", capture)
    with pytest.raises(_Captured):
        database.engine.connect()
    sa.event.remove(database.engine, "do_connect", capture)
    return captured


class _Captured(Exception):
    pass


@pytest.mark.integration
def test_a_host_that_refuses_is_skipped_for_the_next_one_that_is_read_write() -> None:
    # Port 1 refuses at once; the machine's PostgreSQL (a primary) comes next.
    database = Database(
        "postgresql://postgres@127.0.0.1:1,127.0.0.1:5432/postgres?target_session_attrs=read-write"
    )
    try:
        with database.engine.connect() as connection:
            port = connection.execute(sa.text("SELECT inet_server_port()")).scalar_one()
            read_only = connection.execute(sa.text("SHOW transaction_read_only")).scalar_one()
        assert (port, read_only) == (5432, "off")
    finally:
        database.dispose()
