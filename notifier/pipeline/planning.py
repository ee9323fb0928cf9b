"""Planning: which deliveries an event makes (routing, consent, recipients, rendering,
opt-outs), the same for a new event and for a fallback after a permanent failure."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from notifier.adapter import ZALO_UID_PREFIX, RecipientKind
from notifier.events import DossierStatusEvent, EventRejected, ZaloContact
from notifier.logging import get_logger
from notifier.masking import mask_recipient, recipient_hash
from notifier.phones import InvalidPhone, PhoneFormat, parse_mobile
from notifier.pipeline.agencies import AgencyRegistry
from notifier.pipeline.budget import BudgetGuard
from notifier.pipeline.rendering import TemplateSet
from notifier.pipeline.routing import Routing
from notifier.store import Database
from notifier.store.deliveries.lifecycle import DeliveryStatus, PlannedDelivery
from notifier.store.optouts import opted_out, suppress

log = get_logger(__name__)


def _phone(raw: str) -> str:
    """The canonical +84 form, so one number written two ways is one recipient. A number
    that does not parse is kept as written: the adapter fails it with the reason."""
    try:
        return parse_mobile(raw).format(PhoneFormat.E164)
    except InvalidPhone:
        return raw


def recipient_for(
    event: DossierStatusEvent, kind: RecipientKind, *, any_phone: bool = False
) -> str | None:
    """The applicant's contact for a kind of channel. Zalo: the Zalo user id when the
    event carries one (ZBS by UID, the cheapest), else the Zalo phone; with
    ``any_phone`` (a one-of group such as "zalo|sms") also the applicant's phone, since
    ZNS to it costs less than an SMS and a failure falls back."""
    contacts = event.applicant.contacts
    match kind:
        case RecipientKind.EMAIL:
            return contacts.email
        case RecipientKind.PHONE:
            return None if contacts.phone is None else _phone(contacts.phone)
        case RecipientKind.ZALO:
            if contacts.zalo is not None and contacts.zalo.user_id is not None:
                return ZALO_UID_PREFIX + contacts.zalo.user_id.strip()
            if contacts.zalo is not None and contacts.zalo.phone is not None:
                return _phone(contacts.zalo.phone)
            if any_phone and contacts.phone is not None:
                return _phone(contacts.phone)
            return None
        case RecipientKind.PORTAL_ACCOUNT:
            return contacts.portal_account_id


class Planner:
    """Turns an event into rendered deliveries for the channels it should reach."""

    def __init__(
        self,
        *,
        database: Database,
        routing: Routing,
        templates: TemplateSet,
        recipient_kinds: Mapping[str, RecipientKind],
        hash_key: str,
        agencies: AgencyRegistry | None = None,
        budget: BudgetGuard | None = None,
    ) -> None:
        self.database = database
        # An agency that spent its monthly budget, with routing's at_limit =
        # cheaper_only, gets only the budget's cheaper channels.
        self.budget = budget
        self.routing = routing
        self.templates = templates
        self.recipient_kinds = dict(recipient_kinds)
        self.hash_key = hash_key
        self.agencies = agencies

    def plan(self, event: DossierStatusEvent) -> list[PlannedDelivery]:
        """The deliveries of a new event: its routed channels the citizen consented to
        and has a contact for. Opt-outs are applied by :meth:`suppress_opted_out`.

        Raises :class:`EventRejected` when the status is routed somewhere but the
        applicant has no contact for any of those channels."""
        routed = self.routing.channels_for(event.agency.code, event.dossier.status)
        consented = event.applicant.channels
        cheaper = self.routing.budget.cheaper
        cheaper_only = self.budget is not None and self.budget.cheaper_only(event.agency.code)
        planned = []
        for group in self.routing.choices_for(event.agency.code, event.dossier.status):
            # All of the single channels; the first of a one-of group that reaches the
            # citizen (consented, with a contact): e.g. Zalo by UID, else ZNS, else SMS.
            for channel in group:
                if consented is not None and channel not in consented:
                    continue
                over_budget = cheaper_only and channel not in cheaper
                if over_budget and len(group) > 1:
                    continue  # a cheaper alternative of the group may still reach them
                rendered = self._render_for(event, [channel], any_phone=len(group) > 1)
                if over_budget:
                    log.info(
                        "delivery suppressed: the agency's monthly budget is spent",
                        channel=channel,
                        agency=event.agency.code,
                    )
                    rendered = [replace(p, status=DeliveryStatus.SUPPRESSED) for p in rendered]
                planned.extend(rendered)
                if rendered:
                    break
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

    def plan_fallback(
        self, event: DossierStatusEvent, failed_channel: str, failed_recipient: str | None = None
    ) -> list[PlannedDelivery]:
        """The deliveries of the routing's fallback channels for ``failed_channel`` (those
        enabled here and consented to), opt-outs already suppressed.

        A Zalo send by user id that failed is first tried again by ZNS to the citizen's
        phone (Zalo's or the applicant's), when there is one: "Zalo by UID, else ZNS by
        phone, else SMS" holds on failure too."""
        if (
            failed_recipient is not None
            and failed_recipient.startswith(ZALO_UID_PREFIX)
            and self.reaches_by_zalo(failed_channel)
        ):
            by_phone = self._zalo_by_phone(event, failed_channel)
            if by_phone:
                (by_phone,) = self.suppress_opted_out([by_phone])
                return by_phone
        consented = event.applicant.channels
        channels = [
            c
            for c in self.routing.fallback_for(failed_channel)
            if c in self.recipient_kinds and (consented is None or c in consented)
        ]
        planned = self._render_for(event, channels)
        if not planned:
            return []
        (planned,) = self.suppress_opted_out([planned])
        return planned

    def _zalo_by_phone(self, event: DossierStatusEvent, channel: str) -> list[PlannedDelivery]:
        contacts = event.applicant.contacts
        phone = (contacts.zalo.phone if contacts.zalo is not None else None) or contacts.phone
        if phone is None:
            return []
        without_uid = event.model_copy(
            update={
                "applicant": event.applicant.model_copy(
                    update={
                        "contacts": contacts.model_copy(update={"zalo": ZaloContact(phone=phone)})
                    }
                )
            }
        )
        return self._render_for(without_uid, [channel])

    def reaches_by_zalo(self, channel: str) -> bool:
        """Whether the channel's recipients are Zalo contacts (user id or phone)."""
        return self.recipient_kinds.get(channel) is RecipientKind.ZALO

    def falls_back(self, channel: str) -> bool:
        """Whether a permanent failure on this channel may plan another channel."""
        return bool(self.routing.fallback_for(channel))

    def suppress_opted_out(
        self, groups: Sequence[list[PlannedDelivery]]
    ) -> list[list[PlannedDelivery]]:
        """Opted-out deliveries become ``suppressed`` (kept, not sent); one lookup for
        every group."""
        found = opted_out(self.database, [(p.recipient_hash, p.channel) for g in groups for p in g])
        if not found:
            return list(groups)
        return [suppress(group, found) for group in groups]

    def _render_for(
        self, event: DossierStatusEvent, channels: Iterable[str], *, any_phone: bool = False
    ) -> list[PlannedDelivery]:
        if self.agencies is not None:
            event = self.agencies.resolved(event)  # the registry's name, never the event's
        language = event.applicant.language
        planned = []
        for channel in channels:
            recipient = recipient_for(event, self.recipient_kinds[channel], any_phone=any_phone)
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
