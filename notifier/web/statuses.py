"""The status API for publishers (scope ``publish``): what became of an event, and a
dossier's whole history, for the key's own agencies only.

``GET /v1/events/{event_id}`` and ``GET /v1/dossiers/{code}/notifications``. Another
agency's event or dossier is 404, exactly as one that does not exist (a 403 would tell
that it exists). Rejects are included: the key's own (so it can fix and resend) and
those of its agencies. Recipients are masked. The same changes are pushed on the status
stream (docs/events.md, "Learning what happened").
"""

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import BaseModel, Field

from notifier.events import CODE_PATTERN
from notifier.store.apikeys import ApiClient
from notifier.store.history import (
    DeliveryRecord,
    EventRecord,
    History,
    Reader,
    RejectRecord,
)
from notifier.web.deps import App, require_scope

router = APIRouter(tags=["statuses"])
Publisher = Annotated[ApiClient, Depends(require_scope("publish"))]
# Ids and codes are stored only in this shape (a reject keeps an id only if it has it).
Identifier = Annotated[str, Path(min_length=1, max_length=64, pattern=CODE_PATTERN.pattern)]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such event or dossier for this key's agencies"}
}


class DeliveryState(BaseModel):
    id: UUID
    channel: str
    provider: str | None = Field(description="the provider of the last attempt, if any")
    status: str = Field(
        description="queued, sending, sent, delivered, temporary-failure, "
        "permanent-failure, suppressed, unknown (and states later versions add)"
    )
    attempts: int
    recipient: str = Field(description="masked")
    fallback_of: UUID | None = Field(description="the delivery this one stands in for")
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None

    @classmethod
    def of(cls, d: DeliveryRecord) -> "DeliveryState":
        return cls(
            id=d.delivery_id,
            channel=d.channel,
            provider=d.provider,
            status=d.status,
            attempts=d.attempts,
            recipient=d.recipient,
            fallback_of=d.fallback_of,
            created_at=d.created_at,
            updated_at=d.updated_at,
            sent_at=d.sent_at,
            delivered_at=d.delivered_at,
        )


class Rejection(BaseModel):
    event_id: str | None
    received_at: datetime
    reason: str
    source: str = Field(description="http, amqp or replay")

    @classmethod
    def of(cls, r: RejectRecord) -> "Rejection":
        return cls(event_id=r.event_id, received_at=r.received_at, reason=r.reason, source=r.source)


class EventState(BaseModel):
    event_id: str
    outcome: Literal["accepted", "rejected"] = Field(
        description="accepted if it was ever accepted; rejected if every copy was"
    )
    agency: str | None
    dossier_code: str | None
    procedure_code: str | None
    dossier_status: str | None = Field(description="the dossier status the event reported")
    occurred_at: datetime | None
    received_at: datetime | None
    duplicates: int = Field(description="copies received again after it was accepted")
    deliveries: list[DeliveryState]
    rejections: list[Rejection] = Field(description="copies rejected at ingest, with why")

    @classmethod
    def accepted(cls, e: EventRecord, rejects: list[RejectRecord]) -> "EventState":
        return cls(
            event_id=str(e.event_id),
            outcome="accepted",
            agency=e.agency_code,
            dossier_code=e.dossier_code,
            procedure_code=e.procedure_code,
            dossier_status=e.status,
            occurred_at=e.occurred_at,
            received_at=e.received_at,
            duplicates=e.duplicates,
            deliveries=[DeliveryState.of(d) for d in e.deliveries],
            rejections=[Rejection.of(r) for r in rejects],
        )

    @classmethod
    def rejected(cls, event_id: str, rejects: list[RejectRecord]) -> "EventState":
        last = rejects[-1]
        return cls(
            event_id=event_id,
            outcome="rejected",
            agency=last.agency_code,
            dossier_code=last.dossier_code,
            procedure_code=None,
            dossier_status=None,
            occurred_at=None,
            received_at=last.received_at,
            duplicates=0,
            deliveries=[],
            rejections=[Rejection.of(r) for r in rejects],
        )


class DossierNotifications(BaseModel):
    dossier_code: str
    events: list[EventState] = Field(description="accepted events, oldest first")
    rejections: list[Rejection] = Field(description="events of the dossier rejected at ingest")


def _reader(client: ApiClient) -> Reader:
    return Reader(str(client.client_id), client.agencies)


@router.get("/v1/events/{event_id}", response_model=EventState, responses=NOT_FOUND)
def event_status(event_id: Identifier, app: App, client: Publisher) -> EventState:
    """What became of an event: accepted (with each delivery) or rejected (with why)."""
    found = History(app.database).event(event_id, _reader(client))
    if found is None:
        raise HTTPException(404, "no such event for this key's agencies")
    if found.event is not None:
        return EventState.accepted(found.event, found.rejects)
    return EventState.rejected(event_id, found.rejects)


@router.get(
    "/v1/dossiers/{code}/notifications", response_model=DossierNotifications, responses=NOT_FOUND
)
def dossier_notifications(code: Identifier, app: App, client: Publisher) -> DossierNotifications:
    """A dossier's whole history: every event, each delivery, and the rejects."""
    found = History(app.database).dossier(code, _reader(client))
    if found is None:
        raise HTTPException(404, "no such dossier for this key's agencies")
    return DossierNotifications(
        dossier_code=code,
        events=[EventState.accepted(e, []) for e in found.events],
        rejections=[Rejection.of(r) for r in found.rejects],
    )
