"""API keys for HTTP callers: stored as SHA-256 hashes, scoped, limited to agencies, revocable.

Scopes: ``publish`` (POST /v1/events for the key's agencies), ``inbox`` (the portal
backend reading citizens' inboxes), ``operator`` (the delivery log and rejects),
``admin`` (operator, plus replays), ``metrics`` (only /metrics, for Prometheus).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from notifier.store import Database
from notifier.store.schema import api_clients, utcnow

SCOPES = ("publish", "inbox", "operator", "admin", "metrics", "preferences")
KEY_PREFIX = "ntf_"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiClient:
    client_id: uuid.UUID
    name: str
    scopes: tuple[str, ...]
    agencies: tuple[str, ...]  # "*" means every agency
    created_at: datetime
    revoked_at: datetime | None

    def may_publish_for(self, agency_code: str) -> bool:
        return "*" in self.agencies or agency_code in self.agencies


class ApiKeys:
    def __init__(self, database: Database) -> None:
        self.database = database

    def create(self, name: str, scopes: list[str], agencies: list[str]) -> str:
        """Create a client and return its key; only the hash is kept, so show it once."""
        unknown = set(scopes) - set(SCOPES)
        if unknown or not scopes:
            raise ValueError(f"scopes must be among {', '.join(SCOPES)}")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self.database.begin() as connection:
            connection.execute(
                api_clients.insert().values(
                    client_id=uuid.uuid4(),
                    name=name,
                    key_hash=_hash(key),
                    scopes=sorted(set(scopes)),
                    agencies=sorted(set(agencies)) or ["*"],
                    created_at=utcnow(),
                )
            )
        return key

    def authenticate(self, key: str) -> ApiClient | None:
        statement = sa.select(api_clients).where(
            api_clients.c.key_hash == _hash(key), api_clients.c.revoked_at.is_(None)
        )
        with self.database.engine.connect() as connection:
            row = connection.execute(statement).first()
        return None if row is None else _client(row)

    def revoke(self, name: str) -> bool:
        with self.database.begin() as connection:
            changed = connection.execute(
                sa.update(api_clients)
                .where(api_clients.c.name == name, api_clients.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            ).rowcount
        return bool(changed)

    def list(self) -> list[ApiClient]:
        with self.database.engine.connect() as connection:
            rows = connection.execute(sa.select(api_clients).order_by(api_clients.c.name))
            return [_client(row) for row in rows]


def _client(row: sa.Row[tuple[object, ...]]) -> ApiClient:
    m = row._mapping
    scopes = tuple(m["scopes"])
    if "admin" in scopes and "operator" not in scopes:
        scopes += ("operator",)  # admin = operator + replay
    return ApiClient(
        client_id=m["client_id"],
        name=m["name"],
        scopes=scopes,
        agencies=tuple(m["agencies"]),
        created_at=m["created_at"],
        revoked_at=m["revoked_at"],
    )
