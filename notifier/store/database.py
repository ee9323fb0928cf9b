"""The engine, with the few differences between SQLite and PostgreSQL kept here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from notifier.settings import database_url_for_sqlalchemy

# libpq settings for PostgreSQL unless the URL sets them. connect_timeout is per host: a
# primary that is gone (its machine, not just its process) costs each new connection
# this long before libpq tries the next host. Keepalives find a connection to a machine
# that vanished without a word, instead of waiting on it for the OS's 2 hours.
_LIBPQ_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


class Database:
    """A pooled engine plus the dialect-aware statements the rest of the code needs."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        url = database_url_for_sqlalchemy(url)
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine: Engine = sa.create_engine(
                url,
                echo=echo,
                connect_args={"check_same_thread": False, "timeout": 30},
                pool_size=20,
                max_overflow=20,
            )
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            # No pre-ping: it costs a round trip on every checkout, several per delivery.
            # A connection that died (a database restart, or a failover: the primary is
            # gone and a standby promoted) fails its first statement; SQLAlchemy then
            # invalidates the whole pool, new connections go to whichever host libpq
            # finds read-write (target_session_attrs in the URL), and the message or the
            # write is retried (docs/deployment.md, "Database failover").
            given = sa.make_url(url).query
            self.engine = sa.create_engine(
                url,
                echo=echo,
                pool_size=10,
                max_overflow=20,
                pool_recycle=300,
                connect_args={k: v for k, v in _LIBPQ_DEFAULTS.items() if k not in given},
            )

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction: committed on success, rolled back on error."""
        with self.engine.begin() as connection:
            yield connection

    def insert_ignore(self, table: sa.Table, *conflict_columns: str) -> Any:
        """``INSERT ... ON CONFLICT DO NOTHING`` for either dialect."""
        insert = sqlite.insert if self.is_sqlite else postgresql.insert
        return insert(table).on_conflict_do_nothing(index_elements=list(conflict_columns) or None)

    def dispose(self) -> None:
        self.engine.dispose()


def locked_once(rows: sa.Select[Any], name: str) -> sa.CTE:
    """The rows a ``... LIMIT n FOR UPDATE SKIP LOCKED`` select takes, computed once.

    Written inline as ``UPDATE ... WHERE id IN (that select)``, PostgreSQL may plan a
    nested-loop semi-join that runs the subquery again for each outer row; every rerun
    skips the rows this statement has already updated and takes the next ones, so the
    update goes past its limit (a release of 3 due rows released 6 with 4 locked by
    another sweeper: tests/test_held.py). A materialised CTE runs once. SQLite plans an
    ``IN`` subquery once anyway and takes no row locks, so it needs no keyword.
    """
    return rows.cte(name).prefix_with("MATERIALIZED", dialect="postgresql")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while worker threads write; foreign keys are off by default.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
