"""``/v1/inbox/{account_id}/...``: the portal's notification inbox (scope ``inbox``).

The live stream (server-sent events) wakes when a notification for its account is
stored: on PostgreSQL the store NOTIFYs in the inserting transaction and one LISTEN
connection per API process (:class:`InboxWakeups`) wakes the streams of that account,
which then read what is new. Without it (SQLite, the embedded demo) a stream polls
every second.
"""

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from notifier.logging import get_logger
from notifier.store import Database
from notifier.store.apikeys import ApiClient
from notifier.store.deliveries.log import MAX_ID
from notifier.store.inbox import InboxItem, account_key
from notifier.store.notify import INBOX, Listener
from notifier.web.deps import App, State, require_scope

log = get_logger(__name__)
router = APIRouter(tags=["inbox"])
InboxClient = Depends(require_scope("inbox"))
MAX_ACCOUNT = 64  # longer account ids are cut, as the inbox stores them
KEEP_ALIVE_S = 15.0
POLL_S = 1.0  # without NOTIFY (SQLite)
LISTEN_READY_S = 5.0


class InboxWakeups:
    """Wakes the open inbox streams of an account when a notification for it is stored.

    One LISTEN connection for the whole API process, on a thread that runs while any
    stream is open. A stream subscribes before its first read, so nothing stored after
    that read is missed; if the connection fails, every stream is woken to read (and
    the thread connects again)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.available = not database.is_sqlite
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def subscribe(self, key: str, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        """An event set whenever ``key``'s account may have something new (blocking:
        returns once the listener is connected, or after a few seconds)."""
        wake = asyncio.Event()
        with self._lock:
            self._waiters.setdefault(key, set()).add((loop, wake))
            if self._thread is None:
                self._ready.clear()
                self._thread = threading.Thread(
                    target=self._run, name="notifier-inbox-listen", daemon=True
                )
                self._thread.start()
        self._ready.wait(LISTEN_READY_S)
        return wake

    def unsubscribe(self, key: str, wake: asyncio.Event) -> None:
        with self._lock:
            waiters = self._waiters.get(key, set())
            for entry in [w for w in waiters if w[1] is wake]:
                waiters.discard(entry)
            if not waiters:
                self._waiters.pop(key, None)

    def _run(self) -> None:
        listener = Listener(self.database, INBOX)
        try:
            while True:
                with self._lock:
                    if not self._waiters:
                        self._thread = None  # the next subscriber starts a new one
                        return
                try:
                    listener.start()
                    self._ready.set()
                    keys = set(listener.wait(1.0))
                except Exception:
                    log.warning("inbox streams cannot listen for changes; reading instead")
                    listener.close()
                    self._ready.set()
                    with self._lock:
                        keys = set(self._waiters)
                    threading.Event().wait(1.0)
                self._wake(keys)
        finally:
            listener.close()

    def _wake(self, keys: set[str]) -> None:
        with self._lock:
            targets = [w for key in keys for w in self._waiters.get(key, ())]
        for loop, wake in targets:
            with contextlib.suppress(RuntimeError):  # its loop has closed
                loop.call_soon_threadsafe(wake.set)


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
    state: State,
    _client: Annotated[ApiClient, InboxClient],
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-sent events: one ``notification`` event per new inbox item."""
    app = state.notifier
    account = account_id[:MAX_ACCOUNT]
    start = int(last_event_id) if last_event_id and last_event_id.isdigit() else None
    if start is None:
        start = await asyncio.to_thread(app.inbox.latest_id, account)
    hub = state.inbox_wakeups
    key = account_key(account)

    async def events() -> AsyncIterator[str]:
        seen, idle = start, 0.0
        wake = (
            await asyncio.to_thread(hub.subscribe, key, asyncio.get_running_loop())
            if hub.available
            else None
        )
        try:
            yield "retry: 3000\n\n"
            while not await request.is_disconnected():
                if wake is not None:
                    wake.clear()  # before the read: a change during it wakes us again
                items = await asyncio.to_thread(app.inbox.list, account, limit=50, after_id=seen)
                for item in reversed(items):
                    seen = max(seen, item.id)
                    data = Notification.of(item).model_dump_json()
                    yield f"id: {item.id}\nevent: notification\ndata: {data}\n\n"
                    idle = 0.0
                if wake is None:
                    await asyncio.sleep(POLL_S)
                    idle += POLL_S
                else:
                    try:
                        await asyncio.wait_for(wake.wait(), KEEP_ALIVE_S - idle)
                        continue
                    except TimeoutError:
                        idle = KEEP_ALIVE_S
                if idle >= KEEP_ALIVE_S:
                    yield ": keep-alive\n\n"
                    idle = 0.0
        finally:
            if wake is not None:
                hub.unsubscribe(key, wake)

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )
