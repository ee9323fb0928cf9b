"""``/v1/inbox/{account_id}/...``: the portal's notification inbox (scope ``inbox``)."""

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from notifier.store.apikeys import ApiClient
from notifier.store.deliveries.log import MAX_ID
from notifier.store.inbox import InboxItem
from notifier.web.deps import App, require_scope

router = APIRouter(tags=["inbox"])
InboxClient = Depends(require_scope("inbox"))
MAX_ACCOUNT = 64  # longer account ids are cut, as the inbox stores them


class Notification(BaseModel):
    id: int
    dossier_code: str
    agency_code: str
    status: str
    title: str
    body: str
    link: str | None
    created_at: datetime
    read: bool

    @classmethod
    def of(cls, item: InboxItem) -> "Notification":
        return cls(
            id=item.id,
            dossier_code=item.dossier_code,
            agency_code=item.agency_code,
            status=item.status,
            title=item.title,
            body=item.body,
            link=item.link,
            created_at=item.created_at,
            read=item.read_at is not None,
        )


class NotificationPage(BaseModel):
    items: list[Notification]
    next_before_id: int | None


class UnreadCount(BaseModel):
    unread: int


@router.get("/v1/inbox/{account_id}/notifications", response_model=NotificationPage)
def list_notifications(
    account_id: str,
    app: App,
    _client: Annotated[ApiClient, InboxClient],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    before_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    unread_only: bool = False,
) -> NotificationPage:
    items = app.inbox.list(
        account_id[:MAX_ACCOUNT], limit=limit, before_id=before_id, unread_only=unread_only
    )
    next_before = items[-1].id if len(items) == limit else None
    return NotificationPage(items=[Notification.of(i) for i in items], next_before_id=next_before)


@router.get("/v1/inbox/{account_id}/unread-count", response_model=UnreadCount)
def unread_count(
    account_id: str, app: App, _client: Annotated[ApiClient, InboxClient]
) -> UnreadCount:
    return UnreadCount(unread=app.inbox.unread_count(account_id[:MAX_ACCOUNT]))


@router.post("/v1/inbox/{account_id}/notifications/{notification_id}/read")
def mark_read(
    account_id: str,
    notification_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    app: App,
    _client: Annotated[ApiClient, InboxClient],
) -> dict[str, int]:
    account = account_id[:MAX_ACCOUNT]
    changed = app.inbox.mark_read(account, notification_id)
    if not changed and not any(
        i.id == notification_id
        for i in app.inbox.list(account, limit=1, before_id=notification_id + 1)
    ):
        raise HTTPException(404, "no such notification for this account")
    return {"marked": changed}


@router.post("/v1/inbox/{account_id}/read-all")
def mark_all_read(
    account_id: str, app: App, _client: Annotated[ApiClient, InboxClient]
) -> dict[str, int]:
    return {"marked": app.inbox.mark_read(account_id[:MAX_ACCOUNT])}


@router.get("/v1/inbox/{account_id}/stream", response_class=StreamingResponse)
async def stream(
    account_id: str,
    request: Request,
    app: App,
    _client: Annotated[ApiClient, InboxClient],
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-sent events: one ``notification`` event per new inbox item."""
    account = account_id[:MAX_ACCOUNT]
    start = int(last_event_id) if last_event_id and last_event_id.isdigit() else None
    if start is None:
        start = await asyncio.to_thread(app.inbox.latest_id, account)

    async def events() -> AsyncIterator[str]:
        seen, idle = start, 0.0
        yield "retry: 3000\n\n"
        while not await request.is_disconnected():
            items = await asyncio.to_thread(app.inbox.list, account, limit=50, after_id=seen)
            for item in reversed(items):
                seen = max(seen, item.id)
                data = Notification.of(item).model_dump_json()
                yield f"id: {item.id}\nevent: notification\ndata: {data}\n\n"
                idle = 0.0
            await asyncio.sleep(1.0)
            idle += 1.0
            if idle >= 15:
                yield ": keep-alive\n\n"
                idle = 0.0

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )
