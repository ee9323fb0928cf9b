"""Operator accounts for the console: scrypt-hashed passwords and two roles.

``viewer`` reads everything the console shows; ``admin`` may also replay dead letters
and rejected events. Accounts are created by whoever runs the service
(``notifier operators add``); there is no self-service sign-up.

A stored hash is one string, ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``, so the
cost parameters can be raised later without breaking existing passwords.

Console sessions are recorded here too (``console_sessions``, by the SHA-256 of their
random id): signing out deletes one, and a password change or disabling the account
deletes all of the operator's, so no cookie outlives any of them.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from notifier.store import Database
from notifier.store.schema import console_sessions, operators, utcnow

# 2**15 × 8 × 128 bytes = 32 MiB of memory per hash: slow for an attacker, about
# 0.1 s for a sign-in.
_N, _R, _P = 2**15, 8, 1
_MAXMEM = 64 * 1024 * 1024
_SALT_BYTES = 16
_KEY_BYTES = 32
MIN_PASSWORD_LENGTH = 12
USERNAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{1,63}$"
_SESSION_ID_BYTES = 32


class Role(StrEnum):
    VIEWER = "viewer"
    ADMIN = "admin"


@dataclass(frozen=True)
class Operator:
    operator_id: uuid.UUID
    username: str
    role: Role
    created_at: datetime
    disabled_at: datetime | None
    # A short digest of the stored hash: sessions carry it, so a password change
    # signs out every session made with the old password.
    password_stamp: str

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


class OperatorError(ValueError):
    """A refused account change, with a message fit to show."""


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM, dklen=_KEY_BYTES
    )
    return "$".join(
        ("scrypt", str(_N), str(_R), str(_P), _b64(salt), _b64(digest)),
    )


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a stored hash (False if malformed)."""
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(
            password.encode(),
            salt=_unb64(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_MAXMEM,
            dklen=len(_unb64(expected)),
        )
    except ValueError:
        return False
    return hmac.compare_digest(digest, _unb64(expected))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


@functools.cache
def _dummy_hash() -> str:
    """Verified against when a username does not exist, so an unknown name takes as
    long as a wrong password and sign-in timing does not tell which names exist."""
    return hash_password(secrets.token_urlsafe(16))


def _stamp(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


class OperatorStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def add(self, username: str, password: str, role: Role | str) -> Operator:
        username = username.strip().lower()
        if not re.fullmatch(USERNAME_PATTERN, username):
            raise OperatorError(
                "a username is 2-64 characters: lower-case letters, digits, '.', '_' or '-'"
            )
        check_password(password)
        try:
            role = Role(role)
        except ValueError:
            raise OperatorError("role must be viewer or admin") from None
        values = {
            "operator_id": uuid.uuid4(),
            "username": username,
            "password_hash": hash_password(password),
            "role": role.value,
            "created_at": utcnow(),
        }
        try:
            with self.database.begin() as connection:
                connection.execute(operators.insert().values(**values))
        except IntegrityError:
            raise OperatorError(f"an operator named {username!r} already exists") from None
        found = self.get(username)
        assert found is not None
        return found

    def set_password(self, username: str, password: str) -> bool:
        check_password(password)
        with self.database.begin() as connection:
            changed = connection.execute(
                sa.update(operators)
                .where(operators.c.username == username.strip().lower())
                .values(password_hash=hash_password(password))
            ).rowcount
            _end_sessions_of(connection, username)
        return bool(changed)

    def set_role(self, username: str, role: Role | str) -> bool:
        with self.database.begin() as connection:
            changed = connection.execute(
                sa.update(operators)
                .where(operators.c.username == username.strip().lower())
                .values(role=Role(role).value)
            ).rowcount
        return bool(changed)

    def disable(self, username: str) -> bool:
        with self.database.begin() as connection:
            changed = connection.execute(
                sa.update(operators)
                .where(
                    operators.c.username == username.strip().lower(),
                    operators.c.disabled_at.is_(None),
                )
                .values(disabled_at=utcnow())
            ).rowcount
            _end_sessions_of(connection, username)
        return bool(changed)

    def enable(self, username: str) -> bool:
        with self.database.begin() as connection:
            changed = connection.execute(
                sa.update(operators)
                .where(operators.c.username == username.strip().lower())
                .values(disabled_at=None)
            ).rowcount
        return bool(changed)

    def get(self, username: str) -> Operator | None:
        with self.database.engine.connect() as connection:
            row = connection.execute(
                sa.select(operators).where(operators.c.username == username.strip().lower())
            ).first()
        return None if row is None else _operator(row)

    def active(self, username: str) -> Operator | None:
        found = self.get(username)
        return found if found is not None and found.disabled_at is None else None

    def authenticate(self, username: str, password: str) -> Operator | None:
        """The active operator with this password, else None (same cost either way)."""
        with self.database.engine.connect() as connection:
            row = connection.execute(
                sa.select(operators).where(operators.c.username == username.strip().lower())
            ).first()
        if row is None:
            verify_password(password, _dummy_hash())
            return None
        if not verify_password(password, row._mapping["password_hash"]):
            return None
        found = _operator(row)
        return found if found.disabled_at is None else None

    # -- console sessions -----------------------------------------------------------------

    def start_session(self, operator: Operator, lifetime: timedelta) -> str:
        """Record a new session for ``operator``; its id, to carry in the cookie."""
        session_id = secrets.token_urlsafe(_SESSION_ID_BYTES)
        now = utcnow()
        with self.database.begin() as connection:
            # Expired sessions are swept here: the table holds live sessions only.
            connection.execute(
                sa.delete(console_sessions).where(console_sessions.c.expires_at <= now)
            )
            connection.execute(
                console_sessions.insert().values(
                    session_hash=_session_hash(session_id),
                    operator_id=operator.operator_id,
                    created_at=now,
                    expires_at=now + lifetime,
                )
            )
        return session_id

    def session_operator(self, session_id: str) -> Operator | None:
        """The active operator of a live session, else None (ended, expired, disabled)."""
        statement = (
            sa.select(operators)
            .join(console_sessions, console_sessions.c.operator_id == operators.c.operator_id)
            .where(
                console_sessions.c.session_hash == _session_hash(session_id),
                console_sessions.c.expires_at > utcnow(),
                operators.c.disabled_at.is_(None),
            )
        )
        with self.database.engine.connect() as connection:
            row = connection.execute(statement).first()
        return None if row is None else _operator(row)

    def end_session(self, session_id: str) -> None:
        with self.database.begin() as connection:
            connection.execute(
                sa.delete(console_sessions).where(
                    console_sessions.c.session_hash == _session_hash(session_id)
                )
            )

    def end_sessions(self, username: str) -> int:
        """End every session of an operator (e.g. a lost laptop); how many there were."""
        with self.database.begin() as connection:
            return _end_sessions_of(connection, username)

    def list(self) -> list[Operator]:
        with self.database.engine.connect() as connection:
            rows = connection.execute(sa.select(operators).order_by(operators.c.username))
            return [_operator(row) for row in rows]


def _session_hash(session_id: str) -> str:
    # The table holds hashes only: a copy of the database opens no session.
    return hashlib.sha256(session_id.encode()).hexdigest()


def _end_sessions_of(connection: sa.Connection, username: str) -> int:
    owner = sa.select(operators.c.operator_id).where(
        operators.c.username == username.strip().lower()
    )
    return connection.execute(
        sa.delete(console_sessions).where(
            console_sessions.c.operator_id.in_(owner.scalar_subquery())
        )
    ).rowcount


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise OperatorError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if password.strip() != password:
        raise OperatorError("a password may not start or end with spaces")


def _operator(row: sa.Row[tuple[object, ...]]) -> Operator:
    m = row._mapping
    return Operator(
        operator_id=m["operator_id"],
        username=m["username"],
        role=Role(m["role"]),
        created_at=m["created_at"],
        disabled_at=m["disabled_at"],
        password_stamp=_stamp(m["password_hash"]),
    )
