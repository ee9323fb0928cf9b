"""Provider OAuth tokens (e.g. Zalo's), encrypted at rest, refreshed by one worker at a time.

Some providers hand out single-use refresh tokens: each refresh returns a new one
and kills the old. Two workers refreshing at once would leave one of them holding a
dead token, so :meth:`TokenStore.refresh` runs the provider call under a row lock
(taken by an UPDATE, which locks in PostgreSQL and SQLite alike) and skips the call
when another worker has already refreshed.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken

from notifier.adapter import Token, TokenGrant, TokenStoreError
from notifier.store import Database
from notifier.store.schema import provider_tokens, utcnow


class TokenStore:
    def __init__(self, database: Database, secret_key: str) -> None:
        self.database = database
        digest = hashlib.sha256(b"notifier-token-store:" + secret_key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def _seal(self, value: str | None) -> str | None:
        return None if value is None else self._fernet.encrypt(value.encode()).decode()

    def _open(self, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return self._fernet.decrypt(value.encode()).decode()
        except InvalidToken:
            raise TokenStoreError(
                "stored token cannot be decrypted: NOTIFIER_SECRET_KEY changed; "
                "store the tokens again with `notifier tokens set`"
            ) from None

    def get(self, name: str) -> Token | None:
        with self.database.engine.connect() as connection:
            row = connection.execute(
                sa.select(provider_tokens).where(provider_tokens.c.name == name)
            ).first()
        return None if row is None else self._token(row)

    def put(
        self,
        name: str,
        *,
        refresh_token: str,
        access_token: str | None = None,
        expires_at: datetime | None = None,
    ) -> Token:
        """Store tokens given by an operator (first authorisation or a manual re-grant)."""
        values = {
            "access_token": self._seal(access_token),
            "refresh_token": self._seal(refresh_token),
            "expires_at": expires_at,
            "updated_at": utcnow(),
        }
        with self.database.begin() as connection:
            changed = connection.execute(
                sa.update(provider_tokens)
                .where(provider_tokens.c.name == name)
                .values(version=provider_tokens.c.version + 1, **values)
            ).rowcount
            if not changed:
                connection.execute(provider_tokens.insert().values(name=name, version=1, **values))
        token = self.get(name)
        assert token is not None
        return token

    def refresh(
        self, name: str, refresher: Callable[[Token], TokenGrant], *, seen_version: int
    ) -> Token:
        """Refresh under the row lock, unless someone refreshed after ``seen_version``.

        ``refresher`` is the provider call; it runs inside the lock, so only one worker
        anywhere spends the refresh token. If it raises, nothing is stored.
        """
        with self.database.begin() as connection:
            locked = connection.execute(
                sa.update(provider_tokens)
                .where(provider_tokens.c.name == name)
                .values(name=provider_tokens.c.name)
            ).rowcount
            if not locked:
                raise TokenStoreError(f"no tokens stored for {name!r}: run `notifier tokens set`")
            row = connection.execute(
                sa.select(provider_tokens).where(provider_tokens.c.name == name)
            ).one()
            current = self._token(row)
            if current.version != seen_version:
                return current
            grant = refresher(current)
            connection.execute(
                sa.update(provider_tokens)
                .where(provider_tokens.c.name == name)
                .values(
                    access_token=self._seal(grant.access_token),
                    refresh_token=self._seal(grant.refresh_token),
                    expires_at=grant.expires_at,
                    version=current.version + 1,
                    updated_at=utcnow(),
                )
            )
        return Token(
            name, grant.access_token, grant.refresh_token, grant.expires_at, current.version + 1
        )

    def _token(self, row: sa.Row[tuple[object, ...]]) -> Token:
        m = row._mapping
        refresh = self._open(m["refresh_token"])
        assert refresh is not None
        return Token(
            name=m["name"],
            access_token=self._open(m["access_token"]),
            refresh_token=refresh,
            expires_at=m["expires_at"],
            version=m["version"],
        )
