"""Storage: one SQLAlchemy Core code path for PostgreSQL (production) and SQLite (embedded)."""

from notifier.store.database import Database

__all__ = ["Database"]
