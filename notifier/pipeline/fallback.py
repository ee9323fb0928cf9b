"""Fallback: after a permanent failure, the routing's next channels, planned once each."""

from __future__ import annotations

from uuid import UUID

from notifier.adapter import ZALO_UID_PREFIX
from notifier.events import DossierStatusEvent
from notifier.logging import get_logger
from notifier.pipeline.planning import Planner
from notifier.store.deliveries.lifecycle import DeliveryStore

log = get_logger(__name__)


def _by_uid(recipient: str | None) -> bool:
    return recipient is not None and recipient.startswith(ZALO_UID_PREFIX)


class Fallback:
    """Plans a failed delivery's fallback deliveries through the :class:`Planner` (the
    same routing, consent, rendering and opt-outs as the original) and the store."""

    def __init__(self, planner: Planner, store: DeliveryStore) -> None:
        self.planner = planner
        self.store = store

    def applies_to(self, channel: str) -> bool:
        """Whether a permanent failure on this channel may plan a fallback (Zalo always
        may: a send by user id is tried again by phone)."""
        return self.planner.falls_back(channel) or self.planner.reaches_by_zalo(channel)

    def plan(self, delivery_id: UUID) -> list[tuple[UUID, str]]:
        """Plan the fallback of a permanently failed delivery; the deliveries to enqueue,
        as (id, channel). Nothing for a delivery that has not failed for good, for a
        fallback (it does not fall back again), or once the event's payload is purged.

        The deliveries' unique key (event, channel, recipient) makes this at most once,
        also when the status already went to the fallback channel directly, and when a
        redelivered message asks again."""
        failed = self.store.permanently_failed(delivery_id)
        if failed is None:
            return []
        # A fallback does not fall back again, except the ZNS-by-phone step of a Zalo
        # send by user id: it falls back as Zalo does (by UID, else by phone, else SMS).
        phone_step = (
            failed.fallback_of is not None
            and failed.original_recipient is not None
            and failed.original_recipient.startswith(ZALO_UID_PREFIX)
            and failed.recipient is not None
            and not failed.recipient.startswith(ZALO_UID_PREFIX)
        )
        if failed.fallback_of is not None and not phone_step:
            return []
        if not self.planner.falls_back(failed.channel) and not _by_uid(failed.recipient):
            return []
        if failed.payload is None:
            return []  # purged by retention: nothing left to render from
        event = DossierStatusEvent.model_validate(failed.payload, strict=False)
        planned = self.planner.plan_fallback(event, failed.channel, failed.recipient)
        if not planned:
            return []
        created = self.store.insert_fallbacks(event, planned, fallback_of=delivery_id)
        log.info(
            "fallback planned",
            failed_channel=failed.channel,
            channels=[channel for _id, channel in created],
        )
        return created
