"""Publishers' signed HTTP callbacks: their targets, the callbacks due, and their health.

A **target** is one publisher's callback URL and signing secrets (an API key or a
broker user, by name; see notifier.store.publishers). Secrets are Fernet-encrypted with a
key derived from ``NOTIFIER_SECRET_KEY``, newest first; during a rotation there are two and
each callback carries a signature of each.

A **callback** is one status message for one target. Consuming a status message records
one row per target whose publisher's agencies include the message's agency (at most
once per message id and target, so a redelivered message adds nothing). Senders claim
due rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; one atomic ``UPDATE`` on SQLite),
moving ``due_at`` past the send's timeout, which is the lease: a sender killed mid-send
leaves the row due again. A try ends delivered, due again later (backoff), or dead (too
old): a dead letter an admin may replay.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken

from notifier.store import Database
from notifier.store.database import locked_once
from notifier.store.publishers import EVERY_AGENCY, SubmitterKind
from notifier.store.schema import (
    api_clients,
    broker_publishers,
    callback_audience,
    callback_deliveries,
    callback_targets,
    utcnow,
)

__all__ = [
    "PUBLISHER_KINDS",
    "CallbackError",
    "CallbackStatus",
    "CallbackStore",
    "CallbackTarget",
    "ClaimedCallback",
    "DeadCallback",
    "IncomingStatus",
    "TargetHealth",
]

# The publishers that may have a callback: the identities that publish events.
PUBLISHER_KINDS = (SubmitterKind.API_KEY, SubmitterKind.BROKER_USER)
MAX_SECRETS = 2  # the new one and the one being retired


class CallbackStatus(StrEnum):
    PENDING = "pending"  # due at due_at (or claimed, until then)
    DELIVERED = "delivered"  # the receiver answered 2xx
    DEAD = "dead"  # given up after the configured age; an admin may replay it


class CallbackError(Exception):
    """An operator's request about callbacks that cannot be done (unknown publisher...)."""


@dataclass(frozen=True)
class IncomingStatus:
    """A status message as the callbacks need it (validated by the consumer)."""

    id: str
    type: str
    agency: str | None
    sequence: int | None
    body: str


@dataclass(frozen=True)
class CallbackTarget:
    target_id: uuid.UUID
    publisher_kind: SubmitterKind
    publisher_name: str
    url: str
    secrets_in_use: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TargetHealth:
    """What an operator sees of one publisher's callbacks."""

    target: CallbackTarget
    agencies: tuple[str, ...] | None  # None: the publisher is gone (revoked, removed)
    last_success_at: datetime | None
    last_failure_at: datetime | None
    consecutive_failures: int
    last_error: str | None
    backlog: int  # pending callbacks
    oldest_pending_at: datetime | None
    dead_letters: int
    delivered: int


@dataclass(frozen=True)
class ClaimedCallback:
    callback_id: uuid.UUID
    message_id: str
    target_id: uuid.UUID
    url: str
    secrets: tuple[str, ...]
    body: str
    sequence: int | None
    attempts: int  # including this one
    window_start: datetime


@dataclass(frozen=True)
class DeadCallback:
    callback_id: uuid.UUID
    message_id: str
    publisher_kind: str
    publisher_name: str
    type: str
    agency: str | None
    sequence: int | None
    attempts: int
    created_at: datetime
    dead_at: datetime | None
    last_error: str | None
    last_status_code: int | None


NOT_ALLOWED = (
    "not sent: the publisher may no longer receive this agency's statuses "
    "(its key was revoked or its agencies changed)"
)


def _may_receive(agencies: tuple[str, ...] | None, agency: str | None) -> bool:
    """Whether a publisher with ``agencies`` (None: gone) may see a status of ``agency``
    (None: unreadable, for every-agency publishers only)."""
    if agencies is None:
        return False
    return EVERY_AGENCY in agencies or (agency is not None and agency in agencies)


def _kind(kind: SubmitterKind | str) -> SubmitterKind:
    chosen = SubmitterKind(kind)
    if chosen not in PUBLISHER_KINDS:
        raise CallbackError("a callback belongs to an API key or a broker user")
    return chosen


_AUDIENCE_VERSION = sa.select(callback_audience.c.version).where(callback_audience.c.id == 1)


class CallbackStore:
    def __init__(self, database: Database, secret_key: str) -> None:
        self.database = database
        # (audience version, each target's publisher's agencies): see _audience.
        self._audience_cache: tuple[int, dict[uuid.UUID, tuple[str, ...]]] | None = None
        digest = hashlib.sha256(b"notifier-callback-secrets:" + secret_key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    # -- secrets ----------------------------------------------------------------------

    def _seal(self, secrets: Sequence[str]) -> str:
        return self._fernet.encrypt(json.dumps(list(secrets)).encode()).decode()

    def _open(self, sealed: str) -> tuple[str, ...]:
        try:
            return tuple(json.loads(self._fernet.decrypt(sealed.encode())))
        except InvalidToken:
            raise CallbackError(
                "a callback secret cannot be decrypted: NOTIFIER_SECRET_KEY changed; "
                "rotate the publisher's secret (`notifier callbacks rotate-secret`)"
            ) from None

    # -- targets (operators) ----------------------------------------------------------

    def set_target(
        self, kind: SubmitterKind | str, name: str, url: str, secret: str
    ) -> tuple[CallbackTarget, bool]:
        """Set a publisher's callback URL. A new target takes ``secret``; an existing
        one keeps its secrets. Returns the target and whether it is new."""
        chosen = _kind(kind)
        if not self._publisher_exists(chosen, name):
            raise CallbackError(
                f"no {chosen.value} named {name!r} (create it first: "
                + (
                    "`notifier api-keys create`)"
                    if chosen is SubmitterKind.API_KEY
                    else "`notifier broker add-publisher`)"
                )
            )
        now = utcnow()
        t = callback_targets.c
        with self.database.begin() as connection:
            changed = connection.execute(
                sa.update(callback_targets)
                .where(t.publisher_kind == chosen.value, t.publisher_name == name)
                .values(url=url, updated_at=now)
            ).rowcount
            if not changed:
                connection.execute(
                    callback_targets.insert().values(
                        target_id=uuid.uuid4(),
                        publisher_kind=chosen.value,
                        publisher_name=name,
                        url=url,
                        secrets=self._seal([secret]),
                        created_at=now,
                        updated_at=now,
                    )
                )
        target = self.target(chosen, name)
        assert target is not None
        return target, not changed

    def rotate_secret(self, kind: SubmitterKind | str, name: str, secret: str) -> None:
        """``secret`` signs from now on, beside the current one until the rotation ends."""
        self._update_secrets(kind, name, lambda old: [secret, old[0]])

    def end_rotation(self, kind: SubmitterKind | str, name: str) -> None:
        """Only the newest secret signs from now on."""
        self._update_secrets(kind, name, lambda old: [old[0]])

    def _update_secrets(self, kind: SubmitterKind | str, name: str, change: object) -> None:
        chosen = _kind(kind)
        t = callback_targets.c
        with self.database.begin() as connection:
            row = connection.execute(
                sa.select(t.target_id, t.secrets)
                .where(t.publisher_kind == chosen.value, t.publisher_name == name)
                .with_for_update()
            ).first()
            if row is None:
                raise CallbackError(f"{chosen.value} {name!r} has no callback")
            assert callable(change)
            secrets = list(change(self._open(row.secrets)))[:MAX_SECRETS]
            connection.execute(
                sa.update(callback_targets)
                .where(t.target_id == row.target_id)
                .values(secrets=self._seal(secrets), updated_at=utcnow())
            )

    def remove_target(self, kind: SubmitterKind | str, name: str) -> bool:
        """Remove a publisher's callback, with its pending callbacks and dead letters."""
        chosen = _kind(kind)
        t = callback_targets.c
        with self.database.begin() as connection:
            found = connection.execute(
                sa.select(t.target_id).where(
                    t.publisher_kind == chosen.value, t.publisher_name == name
                )
            ).scalar()
            if found is None:
                return False
            connection.execute(
                sa.delete(callback_deliveries).where(callback_deliveries.c.target_id == found)
            )
            connection.execute(sa.delete(callback_targets).where(t.target_id == found))
            return True

    def target(self, kind: SubmitterKind | str, name: str) -> CallbackTarget | None:
        t = callback_targets.c
        with self.database.engine.connect() as connection:
            row = connection.execute(
                sa.select(callback_targets).where(
                    t.publisher_kind == _kind(kind).value, t.publisher_name == name
                )
            ).first()
        return None if row is None else self._target(row)

    def targets(self) -> list[CallbackTarget]:
        t = callback_targets.c
        with self.database.engine.connect() as connection:
            rows = connection.execute(
                sa.select(callback_targets).order_by(t.publisher_name, t.publisher_kind)
            ).all()
        return [self._target(row) for row in rows]

    def _target(self, row: sa.Row[tuple[object, ...]]) -> CallbackTarget:
        m = row._mapping
        return CallbackTarget(
            target_id=m["target_id"],
            publisher_kind=SubmitterKind(m["publisher_kind"]),
            publisher_name=m["publisher_name"],
            url=m["url"],
            secrets_in_use=len(self._open(m["secrets"])),
            created_at=m["created_at"],
            updated_at=m["updated_at"],
        )

    def _publisher_exists(self, kind: SubmitterKind, name: str) -> bool:
        with self.database.engine.connect() as connection:
            if kind is SubmitterKind.API_KEY:
                statement = sa.select(api_clients.c.client_id).where(
                    api_clients.c.name == name, api_clients.c.revoked_at.is_(None)
                )
            else:
                statement = sa.select(broker_publishers.c.name).where(
                    broker_publishers.c.name == name
                )
            return connection.execute(statement).first() is not None

    def _agencies(self, connection: sa.Connection) -> dict[uuid.UUID, tuple[str, ...]]:
        """Each target's publisher's agencies now (absent: publisher gone or not allowed
        to publish, so it is told nothing)."""
        t = callback_targets.c
        keys = connection.execute(
            sa.select(t.target_id, api_clients.c.scopes, api_clients.c.agencies)
            .join(api_clients, api_clients.c.name == t.publisher_name)
            .where(
                t.publisher_kind == SubmitterKind.API_KEY.value,
                api_clients.c.revoked_at.is_(None),
            )
        ).all()
        users = connection.execute(
            sa.select(t.target_id, broker_publishers.c.agencies)
            .join(broker_publishers, broker_publishers.c.name == t.publisher_name)
            .where(t.publisher_kind == SubmitterKind.BROKER_USER.value)
        ).all()
        found = {row.target_id: tuple(row.agencies) for row in keys if "publish" in row.scopes}
        found.update({row.target_id: tuple(row.agencies) for row in users})
        return found

    # -- consuming status messages ----------------------------------------------------

    def _audience(self, connection: sa.Connection) -> Mapping[uuid.UUID, tuple[str, ...]]:
        """:meth:`_agencies` as of this transaction, read again only when the audience's
        version moved since the last read (one primary-key lookup instead of two joins).

        Exact, unlike a snapshot kept for a while: the version is raised in the same
        transaction as any change of who hears what (triggers, migration 0020), so a
        transaction that sees the change sees the new version. The agencies are read
        after the version, never older than it; a change committed in between only
        makes the next group read again. A missing row (a TRUNCATE) is no version."""
        version = connection.execute(_AUDIENCE_VERSION).scalar()
        cached = self._audience_cache
        if version is not None and cached is not None and cached[0] == version:
            return cached[1]
        found = self._agencies(connection)
        self._audience_cache = None if version is None else (version, found)
        return found

    def record(self, messages: Iterable[IncomingStatus], now: datetime | None = None) -> int:
        """One pending callback per message and target whose publisher's agencies include
        the message's agency, all in one statement; repeats of a message id add nothing.
        A message without an agency goes only to every-agency publishers. Returns how
        many callbacks were added. Who may hear is decided in this transaction
        (:meth:`_audience`); :meth:`claim_due` checks the publisher's right again before
        any callback is sent."""
        now = now or utcnow()
        with self.database.begin() as connection:
            rows = self._rows(messages, self._audience(connection), now)
            if not rows:
                return 0
            # RETURNING, not rowcount: psycopg reports -1 for ON CONFLICT inserts.
            statement = self.database.insert_ignore(
                callback_deliveries, "message_id", "target_id"
            ).returning(callback_deliveries.c.callback_id)
            return len(connection.execute(statement, rows).all())

    @staticmethod
    def _rows(
        messages: Iterable[IncomingStatus],
        recipients: Mapping[uuid.UUID, tuple[str, ...]],
        now: datetime,
    ) -> list[dict[str, Any]]:
        return [
            {
                "callback_id": uuid.uuid4(),
                "message_id": message.id,
                "target_id": target_id,
                "type": message.type[:64],
                "agency": None if message.agency is None else message.agency[:64],
                "sequence": message.sequence,
                "body": message.body,
                "status": CallbackStatus.PENDING.value,
                "due_at": now,
                "attempts": 0,
                "created_at": now,
                "window_start": now,
                "updated_at": now,
            }
            for message in messages
            for target_id, theirs in recipients.items()
            if _may_receive(theirs, message.agency)
        ]

    # -- sending ----------------------------------------------------------------------

    def claim_due(self, now: datetime, limit: int, lease: timedelta) -> list[ClaimedCallback]:
        """Claim up to ``limit`` due callbacks: each is due again after ``lease`` unless
        its try is recorded before then. Two senders never claim the same row at once.

        The publisher's right to the status is checked again here, as at intake: a
        callback whose publisher was revoked, or no longer holds the status's agency, is
        not sent but made a dead letter with that reason (a replay meets the same check).
        """
        c = callback_deliveries.c
        due_now = sa.and_(c.status == CallbackStatus.PENDING.value, c.due_at <= now)
        with self.database.engine.connect() as connection:
            # A read first: an idle sender takes no write lock (SQLite) every round.
            if connection.execute(sa.select(c.callback_id).where(due_now).limit(1)).first() is None:
                return []
        due = locked_once(
            sa.select(c.callback_id)
            .where(due_now)
            .order_by(c.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True),
            "due",
        )
        with self.database.begin() as connection:
            claimed = [
                row.callback_id
                for row in connection.execute(
                    sa.update(callback_deliveries)
                    .where(c.callback_id.in_(sa.select(due.c.callback_id)))
                    .values(due_at=now + lease, attempts=c.attempts + 1, updated_at=now)
                    .returning(c.callback_id)
                )
            ]
            if not claimed:
                return []
            t = callback_targets.c
            rows = connection.execute(
                sa.select(
                    c.callback_id,
                    c.message_id,
                    c.target_id,
                    c.agency,
                    c.body,
                    c.sequence,
                    c.attempts,
                    c.window_start,
                    t.url,
                    t.secrets,
                )
                .join(callback_targets, t.target_id == c.target_id)
                .where(c.callback_id.in_(claimed))
                .order_by(c.due_at)
            ).all()
            agencies = self._agencies(connection)
            allowed = [row for row in rows if _may_receive(agencies.get(row.target_id), row.agency)]
            kept = {row.callback_id for row in allowed}
            refused = [row.callback_id for row in rows if row.callback_id not in kept]
            if refused:
                connection.execute(
                    sa.update(callback_deliveries)
                    .where(c.callback_id.in_(refused))
                    .values(
                        status=CallbackStatus.DEAD.value,
                        dead_at=now,
                        attempts=c.attempts - 1,  # not tried
                        last_error=NOT_ALLOWED,
                    )
                )
        return [
            ClaimedCallback(
                callback_id=row.callback_id,
                message_id=row.message_id,
                target_id=row.target_id,
                url=row.url,
                secrets=self._open(row.secrets),
                body=row.body,
                sequence=row.sequence,
                attempts=row.attempts,
                window_start=row.window_start,
            )
            for row in allowed
        ]

    def delivered(self, claim: ClaimedCallback, now: datetime, status_code: int) -> None:
        c = callback_deliveries.c
        with self.database.begin() as connection:
            connection.execute(
                sa.update(callback_deliveries)
                .where(c.callback_id == claim.callback_id)
                .values(
                    status=CallbackStatus.DELIVERED.value,
                    delivered_at=now,
                    updated_at=now,
                    last_status_code=status_code,
                )
            )
            connection.execute(
                sa.update(callback_targets)
                .where(callback_targets.c.target_id == claim.target_id)
                .values(last_success_at=now, consecutive_failures=0)
            )

    def failed(
        self,
        claim: ClaimedCallback,
        now: datetime,
        error: str,
        status_code: int | None,
        retry_at: datetime | None,
    ) -> None:
        """A failed try: due again at ``retry_at``, or dead (a dead letter) if None."""
        c = callback_deliveries.c
        values: dict[str, object] = {
            "updated_at": now,
            "last_error": error[:1000],
            "last_status_code": status_code,
        }
        if retry_at is None:
            values.update(status=CallbackStatus.DEAD.value, dead_at=now)
        else:
            values.update(due_at=retry_at)
        t = callback_targets.c
        with self.database.begin() as connection:
            connection.execute(
                sa.update(callback_deliveries)
                .where(c.callback_id == claim.callback_id)
                .values(**values)
            )
            connection.execute(
                sa.update(callback_targets)
                .where(t.target_id == claim.target_id)
                .values(
                    last_failure_at=now,
                    consecutive_failures=t.consecutive_failures + 1,
                    last_error=error[:1000],
                )
            )

    # -- dead letters and health (operators) ------------------------------------------

    def _dead_query(self, publisher: str | None) -> sa.Select[tuple[object, ...]]:
        c, t = callback_deliveries.c, callback_targets.c
        query = (
            sa.select(
                c.callback_id,
                c.message_id,
                t.publisher_kind,
                t.publisher_name,
                c.type,
                c.agency,
                c.sequence,
                c.attempts,
                c.created_at,
                c.dead_at,
                c.last_error,
                c.last_status_code,
            )
            .join(callback_targets, t.target_id == c.target_id)
            .where(c.status == CallbackStatus.DEAD.value)
        )
        if publisher:
            query = query.where(t.publisher_name == publisher)
        return query

    def dead_letters(
        self, publisher: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[DeadCallback]:
        c = callback_deliveries.c
        query = (
            self._dead_query(publisher)
            .order_by(c.dead_at.desc(), c.callback_id)
            .limit(limit)
            .offset(offset)
        )
        with self.database.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [DeadCallback(**row._mapping) for row in rows]

    def dead_count(self, publisher: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(self._dead_query(publisher).subquery())
        with self.database.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def replay(
        self,
        ids: Iterable[uuid.UUID] | None = None,
        *,
        publisher: str | None = None,
        now: datetime | None = None,
    ) -> int:
        """Dead letters due again now, with a fresh give-up age: those in ``ids``, or
        (ids None) every dead letter, of ``publisher`` if given. Returns how many."""
        now = now or utcnow()
        c, t = callback_deliveries.c, callback_targets.c
        statement = sa.update(callback_deliveries).where(c.status == CallbackStatus.DEAD.value)
        if ids is not None:
            chosen = list(ids)
            if not chosen:
                return 0
            statement = statement.where(c.callback_id.in_(chosen))
        if publisher:
            statement = statement.where(
                c.target_id.in_(sa.select(t.target_id).where(t.publisher_name == publisher))
            )
        with self.database.begin() as connection:
            return int(
                connection.execute(
                    statement.values(
                        status=CallbackStatus.PENDING.value,
                        due_at=now,
                        window_start=now,
                        dead_at=None,
                        updated_at=now,
                    )
                ).rowcount
            )

    def health(self) -> list[TargetHealth]:
        c, t = callback_deliveries.c, callback_targets.c
        counts = sa.select(
            c.target_id,
            c.status,
            sa.func.count().label("n"),
            sa.func.min(c.created_at).label("oldest"),
        ).group_by(c.target_id, c.status)
        with self.database.engine.connect() as connection:
            targets = connection.execute(
                sa.select(callback_targets).order_by(t.publisher_name, t.publisher_kind)
            ).all()
            by_status: dict[tuple[uuid.UUID, str], tuple[int, datetime | None]] = {
                (row.target_id, row.status): (int(row.n), row.oldest)
                for row in connection.execute(counts)
            }
            agencies = self._agencies(connection)
        found = []
        for row in targets:
            m = row._mapping
            target_id = m["target_id"]
            pending = by_status.get((target_id, CallbackStatus.PENDING.value), (0, None))
            found.append(
                TargetHealth(
                    target=self._target(row),
                    agencies=agencies.get(target_id),
                    last_success_at=m["last_success_at"],
                    last_failure_at=m["last_failure_at"],
                    consecutive_failures=m["consecutive_failures"],
                    last_error=m["last_error"],
                    backlog=pending[0],
                    oldest_pending_at=pending[1],
                    dead_letters=by_status.get((target_id, CallbackStatus.DEAD.value), (0,))[0],
                    delivered=by_status.get((target_id, CallbackStatus.DELIVERED.value), (0,))[0],
                )
            )
        return found

    def prune_delivered(self, before: datetime, batch: int) -> int:
        """Forget up to ``batch`` callbacks delivered before ``before``."""
        c = callback_deliveries.c
        old = (
            sa.select(c.callback_id)
            .where(c.status == CallbackStatus.DELIVERED.value, c.delivered_at < before)
            .limit(batch)
        )
        with self.database.begin() as connection:
            return int(
                connection.execute(
                    sa.delete(callback_deliveries).where(c.callback_id.in_(old.scalar_subquery()))
                ).rowcount
            )
