"""Who submitted an event, and for which agencies they may publish.

Every event reaches ingest with its **submitter**: the HTTP API key that posted it, the
RabbitMQ user that published it (RabbitMQ's validated ``user_id`` message property),
or notifier itself. Ingest checks the event's agency against the submitter's scope as
it is *now* (a revoked key or a narrowed mapping counts at once), and a reject keeps
the submitter, so a replay is authorised exactly as the original submission was.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from notifier.logging import get_logger
from notifier.store import Database
from notifier.store.schema import api_clients, broker_publishers, utcnow

log = get_logger(__name__)

EVERY_AGENCY = "*"
# The message header in which notifier's own API tells the bridge which API key
# posted an event. The bridge trusts it only from notifier's own broker user.
SUBMITTER_HEADER = "x-notifier-submitter"


class SubmitterKind(StrEnum):
    API_KEY = "api-key"
    BROKER_USER = "broker-user"  # a publisher's RabbitMQ user, from the validated user_id
    SERVICE = "service"  # notifier itself: its own broker user, in-process callers
    UNIDENTIFIED = "unidentified"  # an AMQP message without user_id


class PublisherIdentity(StrEnum):
    """How the bridge treats AMQP publishers that notifier cannot bind to agencies."""

    STRICT = "strict"  # no user_id, or a user without registered agencies: rejected
    LENIENT = "lenient"  # accepted for any agency, with a warning (a transition only)


@dataclass(frozen=True)
class Submitter:
    kind: SubmitterKind
    name: str
    id: str | None = None
    # The scope at submission time, kept for the record (the check uses the current one).
    agencies: tuple[str, ...] = ()

    @classmethod
    def service(cls, name: str = "notifier") -> Submitter:
        return cls(SubmitterKind.SERVICE, name, agencies=(EVERY_AGENCY,))

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "name": self.name,
            "id": self.id,
            "agencies": list(self.agencies),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Submitter:
        return cls(
            SubmitterKind(value["kind"]),
            str(value["name"])[:100],
            None if value.get("id") is None else str(value["id"]),
            tuple(str(a) for a in value.get("agencies") or ()),
        )

    @classmethod
    def of_meta(cls, meta: Mapping[str, Any]) -> Submitter:
        """The submitter an ingest message names. In-process callers (the demo, tests,
        the CLI) name none and are notifier itself; the bridge and the API always name one."""
        found = meta.get("submitter")
        return cls.service("in-process") if found is None else cls.from_json(found)

    def describe(self) -> str:
        match self.kind:
            case SubmitterKind.API_KEY:
                return f"API key {self.name!r}"
            case SubmitterKind.BROKER_USER:
                return f"broker user {self.name!r}"
            case SubmitterKind.SERVICE:
                return f"notifier ({self.name})"
            case SubmitterKind.UNIDENTIFIED:
                return "an unidentified AMQP publisher (no user_id)"

    def row(self) -> dict[str, Any]:
        """The reject columns that record this submitter."""
        return {
            "submitter_kind": self.kind.value,
            "submitter_name": self.name[:100],
            "submitter_id": self.id,
            "submitter_agencies": list(self.agencies),
        }


@dataclass(frozen=True)
class Scope:
    """The agencies a submitter may publish for now, or why it may publish for none."""

    agencies: frozenset[str]
    problem: str | None = None

    def refusal(self, submitter: Submitter, agency_code: str) -> str | None:
        """Why ``submitter`` may not publish for ``agency_code``, or None if it may."""
        if self.problem is not None:
            return self.problem
        if EVERY_AGENCY in self.agencies or agency_code in self.agencies:
            return None
        return (
            f"{submitter.describe()} may not publish for agency {agency_code!r} "
            f"(its agencies: {', '.join(sorted(self.agencies)) or 'none'})"
        )


class Authoriser:
    """Resolves submitters' current scopes: one query per kind for a group of events."""

    def __init__(self, database: Database, identity: PublisherIdentity) -> None:
        self.database = database
        self.identity = identity

    def scopes(self, submitters: Iterable[Submitter]) -> dict[Submitter, Scope]:
        wanted = set(submitters)
        keys = {s for s in wanted if s.kind is SubmitterKind.API_KEY}
        users = {s for s in wanted if s.kind is SubmitterKind.BROKER_USER}
        found: dict[Submitter, Scope] = {}
        clients = self._api_clients(keys)
        mapped = BrokerPublishers(self.database).agencies_of([s.name for s in users])
        for submitter in wanted:
            match submitter.kind:
                case SubmitterKind.SERVICE:
                    found[submitter] = Scope(frozenset({EVERY_AGENCY}))
                case SubmitterKind.API_KEY:
                    found[submitter] = clients.get(
                        submitter.id or "",
                        Scope(frozenset(), f"{submitter.describe()} is revoked or unknown"),
                    )
                case SubmitterKind.BROKER_USER:
                    agencies = mapped.get(submitter.name)
                    found[submitter] = (
                        Scope(frozenset(agencies))
                        if agencies is not None
                        else self._unbound(
                            f"{submitter.describe()} has no agencies registered "
                            f"(notifier broker set-agencies {submitter.name} --agency CODE)"
                        )
                    )
                case SubmitterKind.UNIDENTIFIED:
                    found[submitter] = self._unbound(
                        "the message has no user_id property, so its publisher cannot be "
                        "bound to an agency (set user_id to your RabbitMQ user name)"
                    )
        return found

    def refusal(self, submitter: Submitter, agency_code: str) -> str | None:
        return self.scopes([submitter])[submitter].refusal(submitter, agency_code)

    def _unbound(self, problem: str) -> Scope:
        if self.identity is PublisherIdentity.LENIENT:
            log.warning("publisher not bound to agencies; accepted (lenient)", problem=problem)
            return Scope(frozenset({EVERY_AGENCY}))
        return Scope(frozenset(), problem)

    def _api_clients(self, keys: set[Submitter]) -> dict[str, Scope]:
        ids = []
        for key in keys:
            try:
                ids.append(uuid.UUID(key.id or ""))
            except ValueError:
                continue
        if not ids:
            return {}
        c = api_clients.c
        with self.database.engine.connect() as connection:
            rows = connection.execute(
                sa.select(c.client_id, c.scopes, c.agencies).where(
                    c.client_id.in_(ids), c.revoked_at.is_(None)
                )
            ).all()
        return {
            str(row.client_id): (
                Scope(frozenset(row.agencies))
                if "publish" in row.scopes
                else Scope(frozenset(), "the API key no longer has the 'publish' scope")
            )
            for row in rows
        }


@dataclass(frozen=True)
class BrokerPublisher:
    name: str
    agencies: tuple[str, ...]


class BrokerPublishers:
    """notifier's record of which agencies each RabbitMQ publisher user may publish for."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def set(self, name: str, agencies: Iterable[str]) -> None:
        chosen = sorted(set(agencies))
        if not chosen:
            raise ValueError("give at least one agency code (or '*' for every agency)")
        now = utcnow()
        with self.database.begin() as connection:
            changed = connection.execute(
                sa.update(broker_publishers)
                .where(broker_publishers.c.name == name)
                .values(agencies=chosen, updated_at=now)
            ).rowcount
            if not changed:
                connection.execute(
                    broker_publishers.insert().values(
                        name=name, agencies=chosen, created_at=now, updated_at=now
                    )
                )

    def remove(self, name: str) -> bool:
        with self.database.begin() as connection:
            return bool(
                connection.execute(
                    sa.delete(broker_publishers).where(broker_publishers.c.name == name)
                ).rowcount
            )

    def agencies_of(self, names: Iterable[str]) -> dict[str, tuple[str, ...]]:
        wanted = sorted(set(names))
        if not wanted:
            return {}
        b = broker_publishers.c
        with self.database.engine.connect() as connection:
            rows = connection.execute(sa.select(b.name, b.agencies).where(b.name.in_(wanted)))
            return {row.name: tuple(row.agencies) for row in rows}

    def list(self) -> list[BrokerPublisher]:
        b = broker_publishers.c
        with self.database.engine.connect() as connection:
            rows = connection.execute(sa.select(b.name, b.agencies).order_by(b.name))
            return [BrokerPublisher(row.name, tuple(row.agencies)) for row in rows]
