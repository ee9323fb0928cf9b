"""The send-time gate: the citizen's choice checked again just before a send.

Planning applied opt-outs and preferences when the event came in; a citizen who opts
out or turns a channel off afterwards must not still get what was already queued (or
held for quiet hours). So after a group is claimed and before any provider call, each
claim is checked, in order:

1. an opt-out of (recipient, channel): ``suppressed``, reason ``opted_out``;
2. a channel the citizen turned off (not for mandatory statuses): ``channel_off``;
3. quiet hours: a delivery on a quiet channel about to go out inside the window (one
   queued just before it began, or released from a cap's hold into it) is held to the
   window's end, as at planning (not urgent statuses, nor a citizen who turned them off);
4. the channel's frequency cap (``config/routing.toml``, ``[frequency_caps.<channel>]``):
   the same text already sent to the recipient within ``identical_within_minutes`` is
   ``suppressed`` (``duplicate_content``): a TTHC system repeating itself in a loop sends
   one message; over ``per_hour`` or ``per_day`` the delivery is held to the next free
   slot (``scheduled``, ``frequency_cap``), or suppressed when the routing says
   ``over = "suppress"`` (a mandatory status is held instead).

Caps count the deliveries that passed this gate (``counted_at``), under a lock per
(channel, recipient) (:meth:`DeliveryStore.gate`), so concurrent workers never
overshoot. A claim whose last call's outcome is unknown skips the gate: it may already
have been sent, and its provider's policy decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from uuid import UUID

from notifier.logging import get_logger
from notifier.pipeline.choices import OverCap
from notifier.pipeline.recording import SendOutcome
from notifier.pipeline.routing import Routing
from notifier.store import Database
from notifier.store.deliveries.lifecycle import (
    ClaimedDelivery,
    DeliveryStatus,
    DeliveryStore,
    Hold,
    HoldReason,
    RecipientHistory,
    Suppress,
    SuppressReason,
    Verdict,
)
from notifier.store.optouts import opted_out
from notifier.store.preferences import Choice, preferences_by_hash
from notifier.store.schema import utcnow

log = get_logger(__name__)

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


class SendGate:
    def __init__(
        self,
        *,
        database: Database,
        store: DeliveryStore,
        routing: Routing,
        frequency_caps: bool = True,
        quiet_hours: bool = True,
    ) -> None:
        self.database = database
        self.store = store
        self.routing = routing
        # NOTIFIER_CHOICE__FREQUENCY_CAPS: off only for benchmarks and clock-free tests.
        self.frequency_caps = frequency_caps
        self.quiet_hours = quiet_hours

    def admit(
        self, claims: Sequence[ClaimedDelivery]
    ) -> tuple[list[ClaimedDelivery], list[SendOutcome]]:
        """The claims to send now, and the outcomes of those suppressed or held."""
        checked = [c for c in claims if c.uncertain_provider is None]
        if not checked:
            return list(claims), []
        choices = self.routing.choices
        opted = opted_out(self.database, [(c.recipient_hash, c.channel) for c in checked])
        preferences = preferences_by_hash(
            self.database,
            [h for c in checked for h in (c.recipient_hash, c.account_hash) if h],
        )
        now = utcnow()

        def decide(claim: ClaimedDelivery, history: RecipientHistory) -> Verdict:
            if (claim.recipient_hash, claim.channel) in opted:
                return Suppress(SuppressReason.OPTED_OUT, "the citizen opted out of the channel")
            mandatory = choices.is_mandatory(claim.agency_code, claim.event_status)
            choice = Choice.of(
                preferences.get(claim.account_hash) if claim.account_hash else None,
                preferences.get(claim.recipient_hash),
            )
            if not mandatory and choice.channel_off(claim.channel):
                return Suppress(SuppressReason.CHANNEL_OFF, "the citizen turned the channel off")
            if (
                self.quiet_hours
                and choice.quiet_hours
                and not choices.is_urgent(claim.agency_code, claim.event_status)
            ):
                window = choices.quiet_hours_for(claim.agency_code)
                ends = window.ends_after(now) if claim.channel in window.channels else None
                if ends is not None:
                    return Hold(ends, HoldReason.QUIET_HOURS)
            cap = choices.cap_for(claim.channel) if self.frequency_caps else None
            if cap is None or claim.counted_at is not None:
                # No cap, or a retry that already holds its place under it.
                return None
            if cap.identical_within is not None and history.sent_same_text(
                claim.content_hash, now - cap.identical_within
            ):
                return Suppress(
                    SuppressReason.DUPLICATE,
                    "the same text went to this recipient within "
                    f"{cap.identical_within.total_seconds() / 60:g} minutes",
                )
            slot = cap.next_slot(now, history.since(now - HOUR), history.since(now - DAY))
            if slot is None:
                return None
            if cap.over is OverCap.SUPPRESS and not mandatory:
                return Suppress(SuppressReason.FREQUENCY_CAP, "over the recipient's frequency cap")
            return Hold(slot, HoldReason.FREQUENCY_CAP)

        verdicts: dict[UUID, Verdict] = {}
        for channel in sorted({c.channel for c in checked}):
            group = [c for c in checked if c.channel == channel]
            cap = choices.cap_for(channel) if self.frequency_caps else None
            quiet = self.quiet_hours and any(
                channel in choices.quiet_hours_for(c.agency_code).channels
                and choices.quiet_hours_for(c.agency_code).ends_after(now) is not None
                for c in group
            )
            if cap is None and not quiet and not opted and not preferences:
                continue  # nothing to check and nothing to count: no transaction
            since = None
            if cap is not None:
                since = now - max(DAY, cap.identical_within or DAY)
            verdicts.update(self.store.gate(channel, group, decide, history_since=since, now=now))
        admitted = [c for c in claims if verdicts.get(c.delivery_id) is None]
        outcomes = []
        for delivery_id, verdict in verdicts.items():
            if isinstance(verdict, Suppress):
                log.info(
                    "delivery suppressed at send time",
                    delivery_id=str(delivery_id),
                    reason=verdict.reason.value,
                )
                outcomes.append(SendOutcome(delivery_id, DeliveryStatus.SUPPRESSED))
            elif isinstance(verdict, Hold):
                log.info(
                    "delivery held at send time",
                    delivery_id=str(delivery_id),
                    reason=verdict.reason.value,
                    due_at=verdict.due_at.isoformat(),
                )
                outcomes.append(SendOutcome(delivery_id, DeliveryStatus.SCHEDULED))
        return admitted, outcomes
