"""Coalescing: status changes of one dossier within a channel's window make one message,
the latest status's (routing's ``[coalescing]``).

On the one held mechanism (:class:`~notifier.store.deliveries.lifecycle.HoldReason`):
a new delivery on a channel with a window is recorded held (``scheduled``, reason
``coalescing``) until now + window, unless its status is one routing marks ``always``;
in the same transaction, :meth:`DeliveryStore.coalesce` supersedes the older held
deliveries of that dossier, channel and recipient (status ``superseded``, linked to the
one kept), and keeps the group's first due time. The sweeper releases the survivor
into the normal send path when it is due. Held rows live in the database, so a restart
inside the window loses nothing and sends nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from notifier.events import DossierStatusEvent
from notifier.pipeline.routing import Coalescing
from notifier.store.deliveries.lifecycle import (
    CoalescingKey,
    DeliveryStatus,
    HoldReason,
    PlannedDelivery,
)


def hold_for_window(
    event: DossierStatusEvent,
    planned: Sequence[PlannedDelivery],
    rules: Coalescing,
    now: datetime,
) -> list[PlannedDelivery]:
    """The event's deliveries, those on a channel with a window held until it ends
    (statuses marked ``always`` and deliveries not waiting to be sent are left as is)."""
    if event.dossier.status in rules.always:
        return list(planned)
    result = []
    for p in planned:
        window = rules.window_for(p.channel)
        if window > 0 and p.status is DeliveryStatus.QUEUED:
            p = p.held_until(now + timedelta(seconds=window), HoldReason.COALESCING)
        result.append(p)
    return result


def keys_of(
    event: DossierStatusEvent, planned: Sequence[PlannedDelivery], rules: Coalescing
) -> list[CoalescingKey]:
    """What the event's deliveries coalesce by, on channels with a window."""
    return [
        CoalescingKey(event.agency.code, event.dossier.code, p.channel, p.recipient_hash)
        for p in planned
        if rules.window_for(p.channel) > 0
    ]
