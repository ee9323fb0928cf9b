"""Replay of dead letters and rejected events, through the normal path, idempotently.

A failed delivery (permanent-failure, or temporary-failure waiting for a retry) is
reset to ``queued`` in one conditional UPDATE, so of two concurrent replays only one
changes it and only that one enqueues: a second replay does nothing. The reset gives
the delivery a fresh round of attempts (``attempts`` back to 0) and is recorded in the
attempt log as outcome ``replayed``, with who asked. The worker then claims and sends
it like any other delivery, with the usual lease and fallback rules.

A delivery held as ``unknown`` (its last call's outcome is unknown and its provider
does not drop repeats) is *resolved* by an admin: ``resend`` puts it back to ``queued``
without its dispatch mark, so it is sent again; ``mark-sent`` records it as sent. Both
are one conditional UPDATE on ``unknown`` and an attempt row naming who decided.

A rejected event is replayed as it was received and as who sent it: its stored raw
bytes (a reject from before they were kept is replayed only if its text cannot have
been altered) go to the ingest actor again (source ``replay``) with the original
submitter, so ingest authorises it exactly as the first submission (the submitter's
scope as it is now). Before that, the replayer checks what ingest would: an event
that is still invalid, or for an agency outside its submitter's scope, is refused and
stays a reject, with the reason. Otherwise the reject is marked ``replayed_at`` in one
conditional UPDATE and the event id dedupes it: an event meanwhile accepted sends
nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from uuid import UUID

import sqlalchemy as sa

from notifier.events import EventRejected, parse_event
from notifier.logging import get_logger
from notifier.store.deliveries.lifecycle import DeliveryStatus, set_status
from notifier.store.deliveries.log import DeliveryLog, DeliveryQuery
from notifier.store.publishers import Submitter, SubmitterKind
from notifier.store.schema import deliveries, delivery_attempts, rejected_events, utcnow

if TYPE_CHECKING:
    from notifier.app import Notifier

log = get_logger(__name__)

REPLAYABLE = (DeliveryStatus.PERMANENT_FAILURE.value, DeliveryStatus.TEMPORARY_FAILURE.value)
# A fallback in one of these told the citizen: its failed original needs no replay.
TOLD_BY = (DeliveryStatus.SENT.value, DeliveryStatus.DELIVERED.value)
# A bound on one filtered replay, so a mistaken filter cannot flood the providers.
MAX_BATCH = 5_000


class ReplayOutcome(StrEnum):
    REPLAYED = "replayed"
    NOT_REPLAYABLE = "not-replayable"  # already queued, in flight, sent or replayed
    MISSING = "missing"
    CHANNEL_OFF = "channel-disabled"  # no enabled channel here to send it
    TOLD_BY_FALLBACK = "told-by-fallback"  # a fallback channel already reached the citizen
    NO_PAYLOAD = "no-payload"  # the payload was purged or cut at the size limit
    NOT_FAITHFUL = "not-faithful"  # only an altered text of the body is kept (old rejects)
    STILL_INVALID = "still-invalid"  # the event is still rejected: kept as it is
    REFUSED = "refused"  # its submitter may not publish it (now): kept as it is
    FAILED = "failed"  # could not enqueue; nothing changed
    MARKED_SENT = "marked-sent"  # an unknown delivery recorded as sent by an admin


class Resolution(StrEnum):
    """An admin's decision on a delivery held as ``unknown``."""

    RESEND = "resend"
    MARK_SENT = "mark-sent"


@dataclass(frozen=True)
class ReplayResult:
    kind: str  # "delivery" | "reject"
    id: UUID
    outcome: ReplayOutcome
    detail: str | None = None

    def as_json(self) -> dict[str, str | None]:
        return {
            "kind": self.kind,
            "id": str(self.id),
            "outcome": self.outcome.value,
            "detail": self.detail,
        }


class Replayer:
    def __init__(
        self,
        app: Notifier,
        *,
        submit: Callable[[bytes, Submitter], None] | None = None,
        delivery_log: DeliveryLog | None = None,
    ) -> None:
        self.app = app
        self.database = app.database
        # The ingest actor is the normal path for both brokers (the AMQP bridge feeds
        # it too); source "replay" tells a re-rejected replay apart in the log.
        self.submit = submit or (
            lambda body, submitter: app.submit(body, source="replay", submitter=submitter)
        )
        self.log = delivery_log or DeliveryLog(
            app.database, app.settings.recipient_hash_key.get_secret_value()
        )

    # -- deliveries -----------------------------------------------------------------------

    def delivery(self, delivery_id: UUID, *, actor: str) -> ReplayResult:
        d = deliveries.c
        now = utcnow()
        with self.database.begin() as connection:
            row = connection.execute(
                sa.select(d.channel, d.status, d.attempts, d.last_error, d.exhausted).where(
                    d.delivery_id == delivery_id
                )
            ).first()
            if row is None:
                return ReplayResult("delivery", delivery_id, ReplayOutcome.MISSING)
            if row.channel not in self.app.deliver_actors:
                return ReplayResult(
                    "delivery",
                    delivery_id,
                    ReplayOutcome.CHANNEL_OFF,
                    f"channel {row.channel} is not enabled here",
                )
            changed = set_status(
                connection,
                delivery_id,
                only_from=REPLAYABLE,
                values={
                    "status": DeliveryStatus.QUEUED.value,
                    "attempts": 0,
                    # Queued again with fresh retries: no longer a dead letter.
                    "exhausted": False,
                    "lease_until": None,
                    # An admin's replay is a decision to send: no uncertain-send policy.
                    "dispatch_provider": None,
                    "dispatch_attempt": None,
                    "updated_at": now,
                },
            )
            if not changed:
                return ReplayResult(
                    "delivery", delivery_id, ReplayOutcome.NOT_REPLAYABLE, f"status {row.status}"
                )
            note = f"by {actor}; was {row.status}: {row.last_error or '-'}"
            connection.execute(
                delivery_attempts.insert().values(
                    delivery_id=delivery_id,
                    number=row.attempts,
                    provider=None,
                    started_at=now,
                    finished_at=now,
                    outcome="replayed",
                    error=note[:2000],
                )
            )
        try:
            self.app.enqueue_deliveries([(delivery_id, row.channel)])
        except Exception as exc:
            # Not enqueued: put the delivery back as it was, so it stays a dead letter.
            self._undo(delivery_id, row.status, row.attempts, row.exhausted, actor, exc)
            return ReplayResult("delivery", delivery_id, ReplayOutcome.FAILED, repr(exc))
        log.info("delivery replayed", delivery_id=str(delivery_id), actor=actor)
        return ReplayResult("delivery", delivery_id, ReplayOutcome.REPLAYED, f"was {row.status}")

    def resolve(self, delivery_id: UUID, resolution: Resolution, *, actor: str) -> ReplayResult:
        """Resend, or mark as sent, a delivery held as ``unknown``."""
        d = deliveries.c
        now = utcnow()
        resend = resolution is Resolution.RESEND
        with self.database.begin() as connection:
            row = connection.execute(
                sa.select(d.channel, d.status, d.attempts, d.last_error).where(
                    d.delivery_id == delivery_id
                )
            ).first()
            if row is None:
                return ReplayResult("delivery", delivery_id, ReplayOutcome.MISSING)
            if resend and row.channel not in self.app.deliver_actors:
                return ReplayResult(
                    "delivery",
                    delivery_id,
                    ReplayOutcome.CHANNEL_OFF,
                    f"channel {row.channel} is not enabled here",
                )
            values: dict[str, object] = (
                {"status": DeliveryStatus.QUEUED.value, "attempts": 0}
                if resend
                else {"status": DeliveryStatus.SENT.value, "sent_at": now}
            )
            changed = set_status(
                connection,
                delivery_id,
                only_from=[DeliveryStatus.UNKNOWN.value],
                values={
                    **values,
                    "lease_until": None,
                    # Without the mark the next claim sends, as the admin decided.
                    "dispatch_provider": None,
                    "dispatch_attempt": None,
                    "updated_at": now,
                },
            )
            if not changed:
                return ReplayResult(
                    "delivery", delivery_id, ReplayOutcome.NOT_REPLAYABLE, f"status {row.status}"
                )
            connection.execute(
                delivery_attempts.insert().values(
                    delivery_id=delivery_id,
                    number=row.attempts,
                    started_at=now,
                    finished_at=now,
                    outcome=f"resolved:{resolution.value}",
                    error=f"by {actor}; was unknown: {row.last_error or '-'}"[:2000],
                )
            )
        log.info(
            "unknown delivery resolved",
            delivery_id=str(delivery_id),
            actor=actor,
            resolution=resolution.value,
        )
        if not resend:
            return ReplayResult("delivery", delivery_id, ReplayOutcome.MARKED_SENT, "was unknown")
        try:
            self.app.enqueue_deliveries([(delivery_id, row.channel)])
        except Exception as exc:
            self._undo(delivery_id, DeliveryStatus.UNKNOWN.value, row.attempts, False, actor, exc)
            return ReplayResult("delivery", delivery_id, ReplayOutcome.FAILED, repr(exc))
        return ReplayResult("delivery", delivery_id, ReplayOutcome.REPLAYED, "was unknown")

    def _undo(
        self,
        delivery_id: UUID,
        status: str,
        attempts: int,
        exhausted: bool,
        actor: str,
        exc: Exception,
    ) -> None:
        d = deliveries.c
        now = utcnow()
        with self.database.begin() as connection:
            # Back to what it was (queued with no attempt yet: nothing took it since).
            set_status(
                connection,
                delivery_id,
                only_from=[DeliveryStatus.QUEUED.value],
                only_if=d.attempts == 0,
                values={
                    "status": status,
                    "attempts": attempts,
                    "exhausted": exhausted,
                    "updated_at": now,
                },
            )
            connection.execute(
                delivery_attempts.insert().values(
                    delivery_id=delivery_id,
                    number=attempts,
                    started_at=now,
                    finished_at=now,
                    outcome="replay-failed",
                    error=f"by {actor}: could not enqueue: {exc!r}"[:2000],
                )
            )
        log.error("replay could not enqueue", delivery_id=str(delivery_id), error=repr(exc))

    def deliveries(
        self,
        query: DeliveryQuery,
        *,
        actor: str,
        include_told_by_fallback: bool = False,
        dry_run: bool = False,
    ) -> list[ReplayResult]:
        """Replay every failed delivery matching ``query`` (status defaults to
        permanent-failure), up to :data:`MAX_BATCH`.

        A failed delivery whose fallback was sent (the citizen heard on another
        channel) is skipped unless asked; replaying it by id always works.
        """
        if query.status is None:
            query = replace(query, status=DeliveryStatus.PERMANENT_FAILURE.value)
        if query.status not in REPLAYABLE:
            raise ValueError(f"only deliveries in {' or '.join(REPLAYABLE)} can be replayed")
        ids: list[UUID] = []
        offset = 0
        while len(ids) < MAX_BATCH:
            page = self.log.search(replace(query, limit=500, offset=offset))
            ids.extend(r.delivery_id for r in page)
            if len(page) < 500:
                break
            offset += 500
        ids = ids[:MAX_BATCH]
        told: set[UUID] = set()
        if not include_told_by_fallback:
            for failed, fallbacks in self.log.fallbacks_of(ids).items():
                if any(f.status in TOLD_BY for f in fallbacks):
                    told.add(failed)
        results = []
        for delivery_id in ids:
            if delivery_id in told:
                results.append(
                    ReplayResult("delivery", delivery_id, ReplayOutcome.TOLD_BY_FALLBACK)
                )
            elif dry_run:
                results.append(
                    ReplayResult("delivery", delivery_id, ReplayOutcome.REPLAYED, "dry run")
                )
            else:
                results.append(self.delivery(delivery_id, actor=actor))
        return results

    # -- rejected events ------------------------------------------------------------------

    def reject(self, reject_id: UUID, *, actor: str) -> ReplayResult:
        r = rejected_events.c
        with self.database.begin() as connection:
            row = connection.execute(
                sa.select(
                    r.source,
                    r.payload,
                    r.payload_raw,
                    r.payload_bytes,
                    r.submitter_kind,
                    r.submitter_name,
                    r.submitter_id,
                    r.submitter_agencies,
                ).where(r.reject_id == reject_id)
            ).first()
            if row is None:
                return ReplayResult("reject", reject_id, ReplayOutcome.MISSING)
            body, submitter, refused = self._replayable(row, reject_id)
            if refused is not None:
                connection.execute(
                    sa.update(rejected_events)
                    .where(r.reject_id == reject_id)
                    .values(replay_refusal=f"{refused.outcome.value}: {refused.detail}"[:2000])
                )
                log.info(
                    "reject not replayed",
                    reject_id=str(reject_id),
                    outcome=refused.outcome.value,
                    detail=refused.detail,
                    actor=actor,
                )
                return refused
            changed = connection.execute(
                sa.update(rejected_events)
                .where(r.reject_id == reject_id, r.replayed_at.is_(None))
                .values(replayed_at=utcnow())
            ).rowcount
        if not changed:
            return ReplayResult("reject", reject_id, ReplayOutcome.NOT_REPLAYABLE, "replayed")
        try:
            self.submit(body, submitter)
        except Exception as exc:
            with self.database.begin() as connection:
                connection.execute(
                    sa.update(rejected_events)
                    .where(r.reject_id == reject_id)
                    .values(replayed_at=None)
                )
            log.error("reject replay could not enqueue", reject_id=str(reject_id), error=repr(exc))
            return ReplayResult("reject", reject_id, ReplayOutcome.FAILED, repr(exc))
        log.info("rejected event replayed", reject_id=str(reject_id), actor=actor)
        return ReplayResult("reject", reject_id, ReplayOutcome.REPLAYED)

    def _replayable(
        self, row: Any, reject_id: UUID
    ) -> tuple[bytes, Submitter, ReplayResult | None]:
        """The bytes and submitter to replay, or why this reject is not replayed."""

        def no(outcome: ReplayOutcome, detail: str) -> tuple[bytes, Submitter, ReplayResult]:
            return b"", Submitter.service(), ReplayResult("reject", reject_id, outcome, detail)

        if row.payload_raw is not None:
            body = bytes(row.payload_raw)
        elif row.payload is None:
            return no(ReplayOutcome.NO_PAYLOAD, "the stored payload is purged")
        elif "\ufffd" in row.payload:
            # Kept before raw bytes were: U+FFFD may stand for bytes that were not
            # UTF-8, and replaying the text could make a different, valid event.
            return no(
                ReplayOutcome.NOT_FAITHFUL,
                "only a text with replaced bytes is kept; publish the event again",
            )
        else:
            body = row.payload.encode()
        if len(body) < row.payload_bytes:
            return no(ReplayOutcome.NO_PAYLOAD, "the stored payload is purged or incomplete")
        submitter = self._submitter(row)
        if submitter is None:
            return no(
                ReplayOutcome.REFUSED,
                "who submitted it was not recorded (a reject kept before submitters "
                "were); publish the event again from its system",
            )
        try:
            event = parse_event(body, max_bytes=self.app.settings.events.max_bytes)
        except EventRejected as rejection:
            return no(ReplayOutcome.STILL_INVALID, rejection.reason)
        refusal = self.app.authoriser.refusal(submitter, event.agency.code)
        if refusal is not None:
            return no(ReplayOutcome.REFUSED, refusal)
        if self.app.agencies is not None:
            unknown = self.app.agencies.unknown(event.agency.code)
            if unknown is not None:
                return no(ReplayOutcome.STILL_INVALID, unknown)
        return body, submitter, None

    @staticmethod
    def _submitter(row: Any) -> Submitter | None:
        if row.submitter_kind is not None:
            return Submitter(
                SubmitterKind(row.submitter_kind),
                row.submitter_name or "-",
                row.submitter_id,
                tuple(row.submitter_agencies or ()),
            )
        # Older rejects: over AMQP the publisher was never known, which is what an
        # unidentified publisher is (refused unless events.amqp_identity is lenient).
        if row.source == "amqp":
            return Submitter(SubmitterKind.UNIDENTIFIED, "-")
        return None

    def rejects(
        self,
        *,
        actor: str,
        since: datetime | None = None,
        until: datetime | None = None,
        dry_run: bool = False,
    ) -> list[ReplayResult]:
        """Replay every not yet replayed rejected event received in [since, until)."""
        r = rejected_events.c
        statement = (
            sa.select(r.reject_id)
            .where(r.replayed_at.is_(None))
            .order_by(r.received_at)
            .limit(MAX_BATCH)
        )
        if since is not None:
            statement = statement.where(r.received_at >= since)
        if until is not None:
            statement = statement.where(r.received_at < until)
        with self.database.engine.connect() as connection:
            ids = [row.reject_id for row in connection.execute(statement)]
        if dry_run:
            return [ReplayResult("reject", i, ReplayOutcome.REPLAYED, "dry run") for i in ids]
        return [self.reject(i, actor=actor) for i in ids]


def summarise(results: list[ReplayResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for result in results:
        counts[result.outcome.value] = counts.get(result.outcome.value, 0) + 1
    return counts
