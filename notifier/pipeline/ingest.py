"""Ingest: a raw event becomes recorded, planned deliveries (or a kept rejection).

Everything for one event (the event row and all its deliveries) is written in one
transaction, so a crash leaves either nothing (the broker redelivers the event) or
everything (a redelivered copy only re-enqueues what is still unsent).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from notifier.events import CODE_PATTERN, DossierStatusEvent, EventRejected, parse_event
from notifier.logging import get_logger
from notifier.pipeline.agencies import AgencyRegistry
from notifier.pipeline.coalescing import hold_for_window, keys_of
from notifier.pipeline.planning import Planner
from notifier.pipeline.received import KEPT_REJECT_BYTES, published_at, raw_body
from notifier.store import Database
from notifier.store.deliveries.lifecycle import DeliveryStatus, DeliveryStore, PlannedDelivery
from notifier.store.publishers import Authoriser, Submitter
from notifier.store.schema import events, rejected_events, utcnow
from notifier.store.statuses import EventChange, EventStatusChange, record_event_changes

log = get_logger(__name__)


class IngestOutcome(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True)
class IngestResult:
    outcome: IngestOutcome
    event_id: UUID | None = None
    to_enqueue: list[tuple[UUID, str]] = field(default_factory=list)  # (delivery id, channel)
    reason: str | None = None


class Ingest:
    """Validates, authorises and de-duplicates events; the :class:`Planner` plans their
    deliveries; everything is recorded in one transaction per group."""

    def __init__(
        self,
        *,
        database: Database,
        deliveries: DeliveryStore,
        planner: Planner,
        max_event_bytes: int,
        authoriser: Authoriser,
        agencies: AgencyRegistry | None = None,
    ) -> None:
        self.database = database
        self.deliveries = deliveries
        self.planner = planner
        self.max_event_bytes = max_event_bytes
        self.authoriser = authoriser
        self.agencies = agencies

    def handle(
        self, raw: str, *, source: str, meta: Mapping[str, Any] | None = None
    ) -> IngestResult:
        """Ingest one raw event (see :meth:`handle_batch`)."""
        return self.handle_batch([(raw, meta or {})], source=source)[0]

    def handle_batch(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], *, source: str
    ) -> list[IngestResult]:
        """Ingest raw events (text, and the bridge's facts: size, raw bytes, submitter):
        one result each, in order.

        The group costs one lookup of the submitters' scopes, one of known events, one
        of preferences, one of opt-outs, and one transaction for every new event,
        delivery and rejection; duplicates only re-enqueue what is still unsent."""
        results: list[IngestResult | None] = [None] * len(items)
        rejects: list[dict[str, Any]] = []
        reject_submitters: list[Submitter] = []
        parsed: list[tuple[int, DossierStatusEvent, str, Mapping[str, Any], Submitter]] = []

        def rejected(
            index: int,
            raw: str,
            meta: Mapping[str, Any],
            submitter: Submitter,
            rejection: EventRejected,
            event: DossierStatusEvent | None = None,
        ) -> None:
            kept = raw_body(raw, meta)
            size = int(meta.get("size", len(kept)))
            told = Readable.of_event(event) if event is not None else Readable.of_raw(raw)
            rejects.append(self._rejected_row(kept, size, source, rejection, submitter, told))
            reject_submitters.append(submitter)
            results[index] = IngestResult(IngestOutcome.REJECTED, reason=rejection.reason)

        for index, (raw, meta) in enumerate(items):
            submitter = Submitter.of_meta(meta)
            try:
                parsed.append((index, self._parse(raw, meta), raw, meta, submitter))
            except EventRejected as rejection:
                rejected(index, raw, meta, submitter, rejection)
        # Who may speak for which agency, before anything else: an event its submitter
        # may not send is a reject, even when its id is already known.
        scopes = self.authoriser.scopes({submitter for *_rest, submitter in parsed})
        authorised: list[tuple[int, DossierStatusEvent, str, Mapping[str, Any], Submitter]] = []
        for index, event, raw, meta, submitter in parsed:
            refusal = scopes[submitter].refusal(submitter, event.agency.code)
            if refusal is None and self.agencies is not None:
                refusal = self.agencies.unknown(event.agency.code)
            if refusal is not None:
                rejected(index, raw, meta, submitter, EventRejected(refusal), event)
            else:
                authorised.append((index, event, raw, meta, submitter))
        known = self._known([event.event_id for _index, event, *_rest in authorised])
        # The citizens' preferences for the whole group, in one lookup.
        preferences = self.planner.preferences_for([event for _index, event, *_rest in authorised])
        duplicates: list[tuple[int, DossierStatusEvent]] = []
        new: list[tuple[int, DossierStatusEvent, list[PlannedDelivery]]] = []
        for index, event, raw, meta, submitter in authorised:
            if event.event_id in known:
                duplicates.append((index, event))
                continue
            known.add(event.event_id)  # a second copy in the same group is a duplicate
            try:
                new.append((index, event, self.planner.plan(event, preferences)))
            except EventRejected as rejection:
                rejected(index, raw, meta, submitter, rejection, event)
        suppressed = self.planner.suppress_opted_out([p for _i, _e, p in new])
        self._own_rejects(rejects, reject_submitters)
        # Channels with a coalescing window: held, to be merged with later news.
        rules = self.planner.routing.coalescing
        now = utcnow()
        new = [
            (i, e, hold_for_window(e, p, rules, now))
            for (i, e, _p), p in zip(new, suppressed, strict=True)
        ]
        keys = [key for _i, e, p in new for key in keys_of(e, p, rules)]
        try:
            with self.database.begin() as connection:
                if keys:
                    self.deliveries.lock_dossiers(connection, keys)
                if rejects:
                    connection.execute(rejected_events.insert(), rejects)
                if new:
                    connection.execute(
                        events.insert(),
                        [_event_row(e, now, published_at(items[i][1])) for i, e, _p in new],
                    )
                    self.deliveries.insert_planned(connection, [(e, p) for _i, e, p in new])
                record_event_changes(
                    connection,
                    [_rejected_change(row) for row in rejects]
                    + [_change(EventChange.ACCEPTED, e, now) for _i, e, _p in new],
                )
                if keys:
                    self.deliveries.coalesce(
                        connection, keys, [p.delivery_id for _i, _e, g in new for p in g]
                    )
        except IntegrityError:
            # Another worker recorded one of these events between our lookup and insert.
            if len(items) > 1:
                return [self.handle(raw, source=source, meta=meta) for raw, meta in items]
            duplicates, new = [(i, e) for i, e, _p in new], []
        for index, event, planned in new:
            log.debug(
                "event accepted",
                event_id=str(event.event_id),
                dossier_code=event.dossier.code,
                status=event.dossier.status.value,
                agency=event.agency.code,
                channels=[p.channel for p in planned],
            )
            results[index] = IngestResult(
                IngestOutcome.ACCEPTED,
                event.event_id,
                [(p.delivery_id, p.channel) for p in planned if p.status is DeliveryStatus.QUEUED],
            )
        if duplicates:
            self._record_duplicates([e for _i, e in duplicates])
            # A redelivered event plans nothing new; whatever is still unsent is enqueued
            # again (a delivery is claimed before sending, so an extra copy is harmless).
            pending = self.deliveries.unfinished_for_events([e.event_id for _i, e in duplicates])
            for index, event in duplicates:
                requeued = pending.get(event.event_id, [])
                log.info(
                    "duplicate event dropped", event_id=str(event.event_id), requeued=len(requeued)
                )
                results[index] = IngestResult(IngestOutcome.DUPLICATE, event.event_id, requeued)
        done = [r for r in results if r is not None]
        assert len(done) == len(items), "every event has a result"
        log.info(
            "events ingested",
            source=source,
            accepted=len(new),
            duplicates=len(duplicates),
            rejected=len(rejects),
        )
        return done

    def _record_duplicates(self, duplicates: Sequence[DossierStatusEvent]) -> None:
        """Count each copy received again on its event and announce it, together."""
        now = utcnow()
        e = events.c
        with self.database.begin() as connection:
            for event in duplicates:
                connection.execute(
                    sa.update(events)
                    # Only a copy for the same agency counts on the event.
                    .where(e.event_id == event.event_id, e.agency_code == event.agency.code)
                    .values(duplicates=e.duplicates + 1)
                )
            record_event_changes(
                connection, [_change(EventChange.DUPLICATE, event, now) for event in duplicates]
            )

    def _own_rejects(self, rows: Sequence[dict[str, Any]], submitters: Sequence[Submitter]) -> None:
        """A reject belongs to the agency it names only if its submitter may publish for
        that agency: then that agency's publishers see it (status API, status stream).
        Otherwise (an agency it may not speak for, or none readable) only its submitter
        does, and ``agency_code`` stays NULL."""
        scopes = self.authoriser.scopes(set(submitters)) if rows else {}
        for row, submitter in zip(rows, submitters, strict=True):
            agency = row["agency_code"]
            if agency is not None and scopes[submitter].refusal(submitter, agency) is not None:
                row["agency_code"] = None

    def _parse(self, raw: str, meta: Mapping[str, Any]) -> DossierStatusEvent:
        if meta.get("truncated"):
            raise EventRejected(
                f"event is {meta.get('size')} bytes, over the {self.max_event_bytes}-byte limit"
            )
        if meta.get("utf8") is False:
            raise EventRejected("body is not valid UTF-8 text")
        return parse_event(raw, max_bytes=self.max_event_bytes)

    def known(self, event_ids: Sequence[UUID]) -> set[UUID]:
        """Which of these events are already recorded (accepted, not rejected)."""
        return self._known(event_ids)

    def _known(self, event_ids: Sequence[UUID]) -> set[UUID]:
        """Which of these events are already recorded."""
        if not event_ids:
            return set()
        with self.database.engine.connect() as connection:
            return set(
                connection.execute(
                    sa.select(events.c.event_id).where(events.c.event_id.in_(event_ids))
                ).scalars()
            )

    def reject(
        self,
        body: bytes,
        *,
        source: str,
        rejection: EventRejected,
        submitter: Submitter,
        event_id: str | None = None,
    ) -> IngestResult:
        """Keep a rejected event for operators (when it was refused before ingest)."""
        kept = body[:KEPT_REJECT_BYTES]
        told = Readable.of_raw(body.decode("utf-8", errors="replace"))
        if event_id is not None:
            told = Readable(event_id[:64], told.agency, told.dossier)
        row = self._rejected_row(kept, len(body), source, rejection, submitter, told)
        self._own_rejects([row], [submitter])
        with self.database.begin() as connection:
            connection.execute(rejected_events.insert(), [row])
            record_event_changes(connection, [_rejected_change(row)])
        return IngestResult(IngestOutcome.REJECTED, reason=rejection.reason)

    def _rejected_row(
        self,
        kept: bytes,
        size: int,
        source: str,
        rejection: EventRejected,
        submitter: Submitter,
        told: Readable,
    ) -> dict[str, Any]:
        """A reject row: the bytes received (the text only for reading), who sent them
        and what could be read of the event (the caller settles ``agency_code``)."""
        log.warning(
            "event rejected", reason=rejection.reason, source=source, submitter=submitter.describe()
        )
        return {
            "reject_id": uuid.uuid4(),
            "received_at": utcnow(),
            "source": source,
            "reason": rejection.reason[:2000],
            "errors": rejection.errors[:50],
            "event_id": told.event_id,
            "agency_code": told.agency,
            "dossier_code": told.dossier,
            "payload": kept.decode("utf-8", errors="replace"),
            "payload_raw": kept,
            "payload_bytes": size,
            **submitter.row(),
        }


@dataclass(frozen=True)
class Readable:
    """What can be read of an event, valid or not: kept on its reject, so a publisher
    finds its rejects by event id or dossier code after the payload is purged."""

    event_id: str | None = None
    agency: str | None = None
    dossier: str | None = None

    @classmethod
    def of_event(cls, event: DossierStatusEvent) -> Readable:
        return cls(str(event.event_id), event.agency.code, event.dossier.code)

    @classmethod
    def of_raw(cls, raw: str) -> Readable:
        """Leniently, from a body that failed validation: each field only if it is a
        string of the shape of a code (so nothing else, e.g. a contact, is kept)."""
        try:
            document = json.loads(raw)
        except (ValueError, RecursionError):
            return cls()
        if not isinstance(document, dict):
            return cls()

        def code(value: Any) -> str | None:
            return value if isinstance(value, str) and CODE_PATTERN.fullmatch(value) else None

        def inner(name: str) -> Any:
            found = document.get(name)
            return found.get("code") if isinstance(found, dict) else None

        return cls(code(document.get("event_id")), code(inner("agency")), code(inner("dossier")))


def _change(kind: EventChange, event: DossierStatusEvent, now: datetime) -> EventStatusChange:
    return EventStatusChange(kind, event.agency.code, str(event.event_id), event.dossier.code, now)


def _rejected_change(row: Mapping[str, Any]) -> EventStatusChange:
    return EventStatusChange(
        EventChange.REJECTED,
        row["agency_code"],
        row["event_id"],
        row["dossier_code"] if row["agency_code"] is not None else None,
        row["received_at"],
        row["reason"],
    )


def _event_row(
    event: DossierStatusEvent, now: datetime, published: datetime | None
) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "received_at": now,
        "published_at": published,
        "occurred_at": event.occurred_at,
        "source_system": event.source_system,
        "agency_code": event.agency.code,
        "dossier_code": event.dossier.code,
        "procedure_code": event.dossier.procedure.code,
        "status": event.dossier.status.value,
        "payload": event.model_dump(mode="json"),
    }
