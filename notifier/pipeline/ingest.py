"""Ingest: a raw event becomes recorded, rendered deliveries (or a kept rejection).

Everything for one event (the event row and all its deliveries) is written in one
transaction, so a crash leaves either nothing (the broker redelivers the event) or
everything (a redelivered copy only re-enqueues what is still unsent).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from notifier.adapter import RecipientKind
from notifier.events import DossierStatusEvent, EventRejected, parse_event
from notifier.logging import get_logger
from notifier.masking import mask_recipient, recipient_hash
from notifier.phones import InvalidPhone, PhoneFormat, parse_mobile
from notifier.pipeline.agencies import AgencyRegistry
from notifier.pipeline.received import KEPT_REJECT_BYTES, raw_body
from notifier.pipeline.rendering import TemplateSet
from notifier.pipeline.routing import Routing
from notifier.store import Database
from notifier.store.deliveries.lifecycle import DeliveryStatus, DeliveryStore, PlannedDelivery
from notifier.store.optouts import opted_out, suppress
from notifier.store.publishers import Authoriser, Submitter
from notifier.store.schema import deliveries, events, rejected_events, utcnow

log = get_logger(__name__)


@dataclass(frozen=True)
class IngestResult:
    outcome: str  # "accepted" | "duplicate" | "rejected"
    event_id: UUID | None = None
    to_enqueue: list[tuple[UUID, str]] = field(default_factory=list)  # (delivery id, channel)
    reason: str | None = None


def _phone(raw: str) -> str:
    """The canonical +84 form, so one number written two ways is one recipient. A number
    that does not parse is kept as written: the adapter fails it with the reason."""
    try:
        return parse_mobile(raw).format(PhoneFormat.E164)
    except InvalidPhone:
        return raw


def recipient_for(event: DossierStatusEvent, kind: RecipientKind) -> str | None:
    contacts = event.applicant.contacts
    match kind:
        case RecipientKind.EMAIL:
            return contacts.email
        case RecipientKind.PHONE:
            return None if contacts.phone is None else _phone(contacts.phone)
        case RecipientKind.ZALO:
            if contacts.zalo is None:
                return None
            if contacts.zalo.phone is not None:
                return _phone(contacts.zalo.phone)
            return contacts.zalo.user_id
        case RecipientKind.PORTAL_ACCOUNT:
            return contacts.portal_account_id


class Ingest:
    def __init__(
        self,
        *,
        database: Database,
        deliveries: DeliveryStore,
        routing: Routing,
        templates: TemplateSet,
        recipient_kinds: Mapping[str, RecipientKind],
        max_event_bytes: int,
        hash_key: str,
        authoriser: Authoriser,
        agencies: AgencyRegistry | None = None,
    ) -> None:
        self.database = database
        self.deliveries = deliveries
        self.routing = routing
        self.templates = templates
        self.recipient_kinds = dict(recipient_kinds)
        self.max_event_bytes = max_event_bytes
        self.hash_key = hash_key
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
        of opt-outs, and one transaction for every new event, delivery and rejection;
        duplicates only re-enqueue what is still unsent."""
        results: list[IngestResult | None] = [None] * len(items)
        rejects: list[dict[str, Any]] = []
        parsed: list[tuple[int, DossierStatusEvent, str, Mapping[str, Any], Submitter]] = []

        def rejected(
            index: int,
            raw: str,
            meta: Mapping[str, Any],
            submitter: Submitter,
            rejection: EventRejected,
            event_id: str | None = None,
        ) -> None:
            kept = raw_body(raw, meta)
            size = int(meta.get("size", len(kept)))
            rejects.append(self._rejected_row(kept, size, source, rejection, submitter, event_id))
            results[index] = IngestResult("rejected", reason=rejection.reason)

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
                rejected(index, raw, meta, submitter, EventRejected(refusal), str(event.event_id))
            else:
                authorised.append((index, event, raw, meta, submitter))
        known = self._known([event.event_id for _index, event, *_rest in authorised])
        duplicates: list[tuple[int, DossierStatusEvent]] = []
        new: list[tuple[int, DossierStatusEvent, list[PlannedDelivery]]] = []
        for index, event, raw, meta, submitter in authorised:
            if event.event_id in known:
                duplicates.append((index, event))
                continue
            known.add(event.event_id)  # a second copy in the same group is a duplicate
            try:
                new.append((index, event, self._deliveries_for(event)))
            except EventRejected as rejection:
                rejected(index, raw, meta, submitter, rejection, str(event.event_id))
        new = self._suppress_opted_out(new)
        try:
            with self.database.begin() as connection:
                if rejects:
                    connection.execute(rejected_events.insert(), rejects)
                if new:
                    connection.execute(events.insert(), [_event_row(e) for _i, e, _p in new])
                    self.deliveries.insert_planned(connection, [(e, p) for _i, e, p in new])
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
                "accepted",
                event.event_id,
                [(p.delivery_id, p.channel) for p in planned if p.status is DeliveryStatus.QUEUED],
            )
        if duplicates:
            # A redelivered event plans nothing new; whatever is still unsent is enqueued
            # again (a delivery is claimed before sending, so an extra copy is harmless).
            pending = self.deliveries.unfinished_for_events([e.event_id for _i, e in duplicates])
            for index, event in duplicates:
                requeued = pending.get(event.event_id, [])
                log.info(
                    "duplicate event dropped", event_id=str(event.event_id), requeued=len(requeued)
                )
                results[index] = IngestResult("duplicate", event.event_id, requeued)
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

    def _parse(self, raw: str, meta: Mapping[str, Any]) -> DossierStatusEvent:
        if meta.get("truncated"):
            raise EventRejected(
                f"event is {meta.get('size')} bytes, over the {self.max_event_bytes}-byte limit"
            )
        if meta.get("utf8") is False:
            raise EventRejected("body is not valid UTF-8 text")
        return parse_event(raw, max_bytes=self.max_event_bytes)

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

    def _suppress_opted_out(
        self, new: list[tuple[int, DossierStatusEvent, list[PlannedDelivery]]]
    ) -> list[tuple[int, DossierStatusEvent, list[PlannedDelivery]]]:
        """Opted-out deliveries become ``suppressed`` (kept, not sent); one lookup."""
        found = opted_out(
            self.database, [(p.recipient_hash, p.channel) for _i, _e, ps in new for p in ps]
        )
        if not found:
            return new
        return [(i, e, suppress(ps, found)) for i, e, ps in new]

    def _render_for(self, event: DossierStatusEvent, channels: list[str]) -> list[PlannedDelivery]:
        if self.agencies is not None:
            event = self.agencies.resolved(event)  # the registry's name, never the event's
        language = event.applicant.language
        planned = []
        for channel in channels:
            recipient = recipient_for(event, self.recipient_kinds[channel])
            if recipient is None:
                continue
            rendered = self.templates.render(event, channel, language)
            planned.append(
                PlannedDelivery(
                    delivery_id=uuid.uuid4(),
                    channel=channel,
                    recipient=recipient,
                    recipient_masked=mask_recipient(recipient),
                    recipient_hash=recipient_hash(recipient, self.hash_key),
                    language=language,
                    template=rendered.template,
                    content=rendered.parts,
                )
            )
        return planned

    def _deliveries_for(self, event: DossierStatusEvent) -> list[PlannedDelivery]:
        routed = self.routing.channels_for(event.agency.code, event.dossier.status)
        consented = event.applicant.channels
        candidates = [c for c in routed if consented is None or c in consented]
        planned = self._render_for(event, candidates)
        if routed and not planned:
            raise EventRejected(
                "no usable contact: the status goes to "
                + ", ".join(routed)
                + (
                    f" (citizen consented to {', '.join(consented)})"
                    if consented is not None
                    else ""
                )
                + " but the applicant has no contact for any of them"
            )
        return planned

    def plan_fallback(self, delivery_id: UUID) -> list[tuple[UUID, str]]:
        """After a permanent failure, plan the routing's fallback channels once each.

        The deliveries' unique key (event, channel, recipient) makes this at most once,
        also when the status already went to the fallback channel directly.
        """
        d = deliveries.c
        with self.database.engine.connect() as connection:
            failed = connection.execute(
                sa.select(d.event_id, d.channel, d.status, d.fallback_of).where(
                    d.delivery_id == delivery_id
                )
            ).first()
            if failed is None or failed.status != DeliveryStatus.PERMANENT_FAILURE.value:
                return []
            if failed.fallback_of is not None:
                return []  # a fallback does not fall back again
            targets = self.routing.fallback_for(failed.channel)
            if not targets:
                return []
            payload = connection.execute(
                sa.select(events.c.payload).where(events.c.event_id == failed.event_id)
            ).scalar_one_or_none()
        if payload is None:
            return []  # purged by retention: nothing left to render from
        event = DossierStatusEvent.model_validate(payload, strict=False)
        consented = event.applicant.channels
        planned = self._render_for(
            event,
            [
                c
                for c in targets
                if c in self.recipient_kinds and (consented is None or c in consented)
            ],
        )
        if not planned:
            return []
        planned = suppress(
            planned, opted_out(self.database, [(p.recipient_hash, p.channel) for p in planned])
        )
        with self.database.begin() as connection:
            for p in planned:
                self.deliveries.insert_planned(
                    connection, [(event, [p])], fallback_of=delivery_id, ignore_existing=True
                )
        created = self.deliveries.existing(
            event.event_id,
            [(p.channel, p.recipient_hash) for p in planned],
            fallback_of=delivery_id,
        )
        log.info(
            "fallback planned",
            failed_channel=failed.channel,
            channels=[channel for _id, channel in created],
        )
        return created

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
        row = self._rejected_row(kept, len(body), source, rejection, submitter, event_id)
        with self.database.begin() as connection:
            connection.execute(rejected_events.insert(), [row])
        return IngestResult("rejected", reason=rejection.reason)

    def _rejected_row(
        self,
        kept: bytes,
        size: int,
        source: str,
        rejection: EventRejected,
        submitter: Submitter,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        """A reject row: the bytes received (the text only for reading) and who sent them."""
        log.warning(
            "event rejected", reason=rejection.reason, source=source, submitter=submitter.describe()
        )
        return {
            "reject_id": uuid.uuid4(),
            "received_at": utcnow(),
            "source": source,
            "reason": rejection.reason[:2000],
            "errors": rejection.errors[:50],
            "event_id": event_id,
            "payload": kept.decode("utf-8", errors="replace"),
            "payload_raw": kept,
            "payload_bytes": size,
            **submitter.row(),
        }


def _event_row(event: DossierStatusEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "received_at": utcnow(),
        "occurred_at": event.occurred_at,
        "source_system": event.source_system,
        "agency_code": event.agency.code,
        "dossier_code": event.dossier.code,
        "procedure_code": event.dossier.procedure.code,
        "status": event.dossier.status.value,
        "payload": event.model_dump(mode="json"),
    }
