"""``POST /v1/events``: an agency's event submitted over HTTP, checked, then queued."""

import asyncio
import contextlib
import json
import threading
import time
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel

from notifier.app import Notifier
from notifier.events import EventRejected, parse_event
from notifier.publisher import EventPublisher
from notifier.store.apikeys import ApiClient
from notifier.store.publishers import SUBMITTER_HEADER, Submitter, SubmitterKind
from notifier.web.deps import State, bounded_body, require_scope

router = APIRouter(tags=["events"])


class Accepted(BaseModel):
    event_id: UUID
    status: str = "accepted"


class EventSubmitter:
    """Puts an accepted event on the same queue TTHC systems publish to."""

    def __init__(self, app: Notifier) -> None:
        self.app = app
        self._publisher: EventPublisher | None = None
        self._lock = threading.Lock()

    def __call__(self, body: bytes, submitter: Submitter) -> None:
        if not self.app.settings.uses_rabbitmq:
            # Published now: where the latency histogram publish -> accepted starts.
            self.app.submit(
                body, source="http", submitter=submitter, published_at_ms=time.time_ns() // 10**6
            )
            return
        # Published as notifier's own broker user (user_id), which alone the bridge
        # trusts to name the API key that posted the event.
        headers = {SUBMITTER_HEADER: json.dumps(submitter.as_json())}
        with self._lock:
            try:
                self._current().publish(body, headers=headers)
            except Exception:
                # One reconnect: the broker may have restarted since the last call.
                self._drop()
                self._current().publish(body, headers=headers)

    def _current(self) -> EventPublisher:
        if self._publisher is None:
            self._publisher = EventPublisher(self.app.settings.broker_url, self.app.settings.events)
        return self._publisher

    def _drop(self) -> None:
        if self._publisher is not None:
            with contextlib.suppress(Exception):  # the connection is already gone
                self._publisher.close()
            self._publisher = None


@router.post(
    "/v1/events",
    status_code=202,
    response_model=Accepted,
    responses={413: {"description": "too large"}, 422: {"description": "invalid"}},
)
async def submit_event_route(
    request: Request,
    state: State,
    client: Annotated[ApiClient, Depends(require_scope("publish"))],
) -> Accepted:
    app = state.notifier
    body = await bounded_body(request, app.settings.api.max_body_bytes)
    submitter = Submitter(
        SubmitterKind.API_KEY, client.name, str(client.client_id), client.agencies
    )

    async def rejected(rejection: EventRejected, event_id: str | None = None) -> None:
        # Kept with the bytes received and the key that sent them: a replay is
        # authorised as this submission was.
        await asyncio.to_thread(
            app.ingest.reject,
            body,
            source="http",
            rejection=rejection,
            submitter=submitter,
            event_id=event_id,
        )

    try:
        event = parse_event(body, max_bytes=app.settings.events.max_bytes)
    except EventRejected as rejection:
        await rejected(rejection)
        raise HTTPException(422, {"reason": rejection.reason, "errors": rejection.errors}) from None
    if not client.may_publish_for(event.agency.code):
        raise HTTPException(403, f"this key may not publish for agency {event.agency.code!r}")
    unknown = None if app.agencies is None else app.agencies.unknown(event.agency.code)
    if unknown is not None:
        await rejected(EventRejected(unknown), str(event.event_id))
        raise HTTPException(422, {"reason": unknown, "errors": [f"agency.code: {unknown}"]})
    await asyncio.to_thread(state.submit_event, body, submitter)
    return Accepted(event_id=event.event_id)
