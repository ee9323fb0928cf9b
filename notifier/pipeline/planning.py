"""Planning: which deliveries an event makes (routing, consent, recipients, rendering,
the citizen's preferences and quiet hours, opt-outs), the same for a new event and for
a fallback after a permanent failure.

The citizen's choice at planning (issue 18):

- a channel the citizen turned off is recorded ``suppressed`` (reason ``channel_off``)
  unless the routing marks the status mandatory; when that leaves no channel but the
  portal is not routed, the portal inbox still gets the notice (if the event names an
  account);
- the language the citizen chose renders the message;
- SMS and Zalo deliveries planned inside quiet hours (Vietnam time) are held
  (``scheduled``, reason ``quiet_hours``) until the window ends, unless the status is
  urgent or the citizen turned quiet hours off.

A choice or opt-out made after planning is applied again at send time
(:mod:`notifier.pipeline.gate`), with the frequency caps.

Zalo by user id (issue 19): the event's Zalo user id, else the one the portal stored on
the account the event names (:mod:`notifier.store.preferences`, encrypted), else Zalo by
phone. The account's id is used for planning only: the stored event stays as published.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from notifier.adapter import ZALO_UID_PREFIX, RecipientKind
from notifier.events import DossierStatusEvent, EventRejected, ZaloContact
from notifier.logging import get_logger
from notifier.masking import mask_recipient, recipient_hash
from notifier.phones import InvalidPhone, PhoneFormat, parse_mobile
from notifier.pipeline.agencies import AgencyRegistry
from notifier.pipeline.budget import BudgetGuard
from notifier.pipeline.choices import Choices
from notifier.pipeline.rendering import TemplateSet
from notifier.pipeline.routing import Routing
from notifier.store import Database
from notifier.store.deliveries.lifecycle import (
    DeliveryStatus,
    HoldReason,
    PlannedDelivery,
    SuppressReason,
)
from notifier.store.optouts import opted_out, suppress
from notifier.store.preferences import (
    PORTAL_CHANNEL,
    Choice,
    Preference,
    ZaloUserIdSeal,
    preferences_by_hash,
)
from notifier.store.schema import utcnow

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
        quiet_hours: bool = True,
        budget: BudgetGuard | None = None,
        secret_key: str | None = None,
    ) -> None:
        self.database = database
        # Opens the Zalo user ids the portal stored on accounts (none read without it).
        self.seal = None if secret_key is None else ZaloUserIdSeal(secret_key)
        # An agency that spent its monthly budget, with routing's at_limit =
        # cheaper_only, gets only the budget's cheaper channels.
        self.budget = budget
        self.routing = routing
        self.templates = templates
        self.recipient_kinds = dict(recipient_kinds)
        self.hash_key = hash_key
        self.agencies = agencies
        # NOTIFIER_CHOICE__QUIET_HOURS: off only for benchmarks and clock-free tests.
        self.quiet_hours = quiet_hours

    @property
    def choices(self) -> Choices:
        return self.routing.choices

    def preferences_for(self, events: Sequence[DossierStatusEvent]) -> dict[str, Preference]:
        """The stored preferences of every identity of these events (one query), for
        :meth:`plan` to use instead of looking up each event's."""
        hashes: list[str] = []
        for event in events:
            routed = self.routing.channels_for(event.agency.code, event.dossier.status)
            hashes += self._identity_hashes(event, [*routed, PORTAL_CHANNEL])
        return preferences_by_hash(self.database, hashes, self.seal)

    def plan(
        self, event: DossierStatusEvent, preferences: Mapping[str, Preference] | None = None
    ) -> list[PlannedDelivery]:
        """The deliveries of a new event: its routed channels the citizen consented to
        and has a contact for. Opt-outs are applied by :meth:`suppress_opted_out`.

        Raises :class:`EventRejected` when the status is routed somewhere but the
        applicant has no contact for any of those channels."""
        routed = self.routing.channels_for(event.agency.code, event.dossier.status)
        consented = event.applicant.channels
        candidates = [c for c in routed if consented is None or c in consented]
        if preferences is None:
            preferences = self._preferences(event, candidates)
        event = self._with_account_zalo(event, preferences)
        mandatory = self.choices.is_mandatory(event.agency.code, event.dossier.status.value)
        cheaper = self.routing.budget.cheaper
        cheaper_only = self.budget is not None and self.budget.cheaper_only(event.agency.code)
        planned: list[PlannedDelivery] = []
        for group in self.routing.groups_for(event.agency.code, event.dossier.status):
            # All of the single channels; the first of a one-of group that reaches the
            # citizen (consented, with a contact, not turned off): e.g. Zalo by UID, else
            # ZNS, else SMS.
            for position, channel in enumerate(group):
                if consented is not None and channel not in consented:
                    continue
                alternatives_left = position < len(group) - 1
                over_budget = cheaper_only and channel not in cheaper
                if over_budget and len(group) > 1:
                    continue  # a cheaper alternative of the group may still reach them
                rendered = self._render_for(event, [channel], preferences, any_phone=len(group) > 1)
                if (
                    rendered
                    and alternatives_left
                    and not mandatory
                    and self.choice_for(preferences, rendered[0]).channel_off(channel)
                ):
                    continue  # turned off by the citizen: the next alternative instead
                if over_budget:
                    log.info(
                        "delivery suppressed: the agency's monthly budget is spent",
                        channel=channel,
                        agency=event.agency.code,
                    )
                    rendered = [p.suppressed(SuppressReason.BUDGET) for p in rendered]
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
        planned = self._apply_preferences(event, planned, preferences)
        if (
            planned
            and all(p.status is DeliveryStatus.SUPPRESSED for p in planned)
            and PORTAL_CHANNEL not in routed
            and PORTAL_CHANNEL in self.recipient_kinds
        ):
            # Every channel is off for a status that is not mandatory: the portal inbox
            # still gets it, so the citizen can read it when they look.
            planned += self._render_for(event, [PORTAL_CHANNEL], preferences)
        return self._hold_for_quiet_hours(event, planned, preferences)

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
        preferences = self._preferences(event, channels)
        planned = self._render_for(
            self._with_account_zalo(event, preferences), channels, preferences
        )
        if not planned:
            return []
        planned = self._apply_preferences(event, planned, preferences)
        planned = self._hold_for_quiet_hours(event, planned, preferences)
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

    def _with_account_zalo(
        self, event: DossierStatusEvent, preferences: Mapping[str, Preference]
    ) -> DossierStatusEvent:
        """The event with its account's Zalo user id when it carries none itself (the
        Zalo phone kept, for the fallback to ZNS by phone)."""
        contacts = event.applicant.contacts
        if contacts.zalo is not None and contacts.zalo.user_id is not None:
            return event  # the publisher's id is the newer word
        account_hash = self._account_hash(event)
        account = preferences.get(account_hash) if account_hash else None
        if account is None or account.zalo_user_id is None:
            return event
        zalo = ZaloContact(
            phone=None if contacts.zalo is None else contacts.zalo.phone,
            user_id=account.zalo_user_id,
        )
        return event.model_copy(
            update={
                "applicant": event.applicant.model_copy(
                    update={"contacts": contacts.model_copy(update={"zalo": zalo})}
                )
            }
        )

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

    def choice_for(self, preferences: Mapping[str, Preference], p: PlannedDelivery) -> Choice:
        """The preferences that apply to one delivery: its account's and its contact's."""
        return Choice.of(
            preferences.get(p.account_hash) if p.account_hash else None,
            preferences.get(p.recipient_hash),
        )

    def _account_hash(self, event: DossierStatusEvent) -> str | None:
        account = event.applicant.contacts.portal_account_id
        return None if account is None else recipient_hash(account, self.hash_key)

    def _preferences(
        self, event: DossierStatusEvent, channels: Iterable[str]
    ) -> dict[str, Preference]:
        """The stored preferences of the event's account and of its contacts on these
        channels (one query)."""
        return preferences_by_hash(self.database, self._identity_hashes(event, channels), self.seal)

    def _identity_hashes(self, event: DossierStatusEvent, channels: Iterable[str]) -> list[str]:
        hashes = [self._account_hash(event)]
        for channel in channels:
            kind = self.recipient_kinds.get(channel)
            # any_phone: a one-of group ("zalo|sms") may reach Zalo by the plain phone.
            recipient = None if kind is None else recipient_for(event, kind, any_phone=True)
            if recipient is not None:
                hashes.append(recipient_hash(recipient, self.hash_key))
        return [h for h in hashes if h]

    def _apply_preferences(
        self,
        event: DossierStatusEvent,
        planned: list[PlannedDelivery],
        preferences: Mapping[str, Preference],
    ) -> list[PlannedDelivery]:
        """Channels the citizen turned off become ``suppressed``, unless the status is
        mandatory (a notice that must go out by every channel)."""
        if not preferences or self.choices.is_mandatory(
            event.agency.code, event.dossier.status.value
        ):
            return planned
        result = []
        for p in planned:
            if p.status is DeliveryStatus.QUEUED and self.choice_for(preferences, p).channel_off(
                p.channel
            ):
                log.info(
                    "delivery suppressed: the citizen turned the channel off", channel=p.channel
                )
                p = p.suppressed(SuppressReason.CHANNEL_OFF)
            result.append(p)
        return result

    def _hold_for_quiet_hours(
        self,
        event: DossierStatusEvent,
        planned: list[PlannedDelivery],
        preferences: Mapping[str, Preference],
        now: datetime | None = None,
    ) -> list[PlannedDelivery]:
        """Deliveries on quiet channels planned inside the agency's quiet hours are held
        until the window ends (not for urgent statuses, nor for a citizen who turned
        quiet hours off)."""
        agency, status = event.agency.code, event.dossier.status.value
        if not self.quiet_hours or self.choices.is_urgent(agency, status):
            return planned
        window = self.choices.quiet_hours_for(agency)
        ends = window.ends_after(now or utcnow())
        if ends is None:
            return planned
        return [
            p.held_until(ends, HoldReason.QUIET_HOURS)
            if p.status is DeliveryStatus.QUEUED
            and p.channel in window.channels
            and self.choice_for(preferences, p).quiet_hours
            else p
            for p in planned
        ]

    def _content_hash(self, channel: str, recipient: str, parts: Mapping[str, str]) -> str:
        text = json.dumps([channel, recipient, dict(parts)], sort_keys=True, ensure_ascii=False)
        return hmac.new(self.hash_key.encode(), text.encode(), hashlib.sha256).hexdigest()

    def _render_for(
        self,
        event: DossierStatusEvent,
        channels: Iterable[str],
        preferences: Mapping[str, Preference] | None = None,
        *,
        any_phone: bool = False,
    ) -> list[PlannedDelivery]:
        if self.agencies is not None:
            event = self.agencies.resolved(event)  # the registry's name, never the event's
        account_hash = self._account_hash(event)
        planned = []
        for channel in channels:
            recipient = recipient_for(event, self.recipient_kinds[channel], any_phone=any_phone)
            if recipient is None:
                continue
            hashed = recipient_hash(recipient, self.hash_key)
            choice = Choice.of(
                (preferences or {}).get(account_hash) if account_hash else None,
                (preferences or {}).get(hashed),
            )
            language = choice.language or event.applicant.language
            rendered = self.templates.render(event, channel, language)
            planned.append(
                PlannedDelivery(
                    delivery_id=uuid.uuid4(),
                    channel=channel,
                    recipient=recipient,
                    recipient_masked=mask_recipient(recipient),
                    recipient_hash=hashed,
                    language=language,
                    template=rendered.template,
                    content=rendered.parts,
                    account_hash=account_hash,
                    content_hash=self._content_hash(channel, recipient, rendered.parts),
                )
            )
        return planned
