"""Stores a notification in the citizen's portal inbox (served by ``notifier api``).

The inbox is notifier's own store, so a send is a database insert keyed by the
delivery id: repeating it stores nothing twice, and success is final delivery. Sends
that arrive while a write is running are stored together by the next one (a group
commit): one transaction for many at a burst, no wait for a lone send.
"""

from __future__ import annotations

import asyncio

from pydantic import Field

from notifier.adapter import (
    Adapter,
    AdapterContext,
    AdapterSettings,
    NewNotification,
    OutboundMessage,
    RecipientKind,
    SendResult,
    TemplatePart,
    TemporaryFailure,
    UncertainSendPolicy,
)

# The most notifications one transaction stores.
MAX_GROUP = 100


class PortalSettings(AdapterSettings):
    title_max_length: int = Field(default=300, ge=20, le=300)


class PortalInboxAdapter(Adapter[PortalSettings]):
    name = "portal"
    channel = "portal"
    description = "Public Service Portal inbox (stored here, served over HTTP)"
    settings_model = PortalSettings
    recipient_kind = RecipientKind.PORTAL_ACCOUNT
    # The inbox row is unique on the delivery id: a repeat inserts nothing, ever.
    uncertain_send_policy = UncertainSendPolicy.RESEND
    template_parts = (
        TemplatePart("title", max_length=300),
        TemplatePart("body"),
        TemplatePart("link"),
    )

    def __init__(self, settings: PortalSettings, context: AdapterContext) -> None:
        super().__init__(settings, context)
        self._waiting: list[tuple[NewNotification, asyncio.Future[int]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def send(self, message: OutboundMessage) -> SendResult:
        notification = NewNotification(
            delivery_id=message.delivery_id,
            account_id=message.recipient,
            agency_code=message.agency_code,
            dossier_code=message.dossier_code,
            status=message.status,
            title=message.parts["title"][: self.settings.title_max_length],
            body=message.parts["body"],
            link=message.parts.get("link") or None,
        )
        loop = asyncio.get_running_loop()
        stored: asyncio.Future[int] = loop.create_future()
        self._waiting.append((notification, stored))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_waiting())
        notification_id = await stored
        return SendResult(provider_message_id=f"inbox-{notification_id}", delivered=True)

    async def _write_waiting(self) -> None:
        """Store what waits, a group at a time, until nothing does (runs on the loop)."""
        while self._waiting:
            group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
            error = ""
            try:
                # The store is synchronous; keep the adapters' event loop free.
                ids = await asyncio.to_thread(self.context.inbox.add_many, [n for n, _ in group])
            except Exception as exc:  # the database is down or busy: try again later
                ids, error = {}, type(exc).__name__
            for notification, stored in group:
                found = ids.get(notification.delivery_id)
                if stored.done():
                    continue  # its send timed out
                if found is None:
                    stored.set_exception(
                        TemporaryFailure(f"inbox store unavailable: {error or 'not stored'}")
                    )
                else:
                    stored.set_result(found)
