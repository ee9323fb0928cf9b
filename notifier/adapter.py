"""The channel adapter API: what a channel or gateway plugin declares and implements.

An adapter is a class registered under the ``notifier.adapters`` entry-point group.
It declares its name, channel, settings model, the contact it needs and the template
parts it renders; it implements :meth:`Adapter.send` and reports failures by raising
:class:`TemporaryFailure` (retry later) or :class:`PermanentFailure` (never retry).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, ClassVar, Generic, Protocol, TypeVar
from uuid import UUID

import httpx
from pydantic import BaseModel, ConfigDict

from notifier.http_pool import pooled_transport

# httpx's own default, for a client made without limits.
DEFAULT_HTTP_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


class RecipientKind(StrEnum):
    """Which of the applicant's contacts an adapter delivers to.

    ``ZALO``: a phone number (+84…), or a Zalo user id written ``uid:<id>``
    (:data:`ZALO_UID_PREFIX`), which the planner prefers when the event has both."""

    EMAIL = "email"
    PHONE = "phone"
    ZALO = "zalo"
    PORTAL_ACCOUNT = "portal_account"


# A Zalo recipient that is a user id rather than a phone number (ZBS by UID).
ZALO_UID_PREFIX = "uid:"


class AdapterSettings(BaseModel):
    """Base of every adapter's settings model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class TemplatePart:
    """A piece of a message the templates must provide, e.g. an email subject."""

    name: str
    html: bool = False
    max_length: int | None = None


@dataclass(frozen=True)
class RateLimit:
    """A provider's published request limit, as notifier's default for it: ``rate_per_s``
    for the whole deployment, at most ``burst`` calls at once per worker process.
    ``NOTIFIER_PROVIDERS__<NAME>__RATE_PER_S`` / ``__BURST`` override it."""

    rate_per_s: float
    burst: int


@dataclass(frozen=True)
class OutboundMessage:
    """One rendered message for one recipient on one channel."""

    delivery_id: UUID  # pass it to the provider as the idempotency/tracking reference
    event_id: UUID
    channel: str
    recipient: str
    language: str
    parts: Mapping[str, str]
    dossier_code: str
    agency_code: str
    status: str
    # Set on a reply to a citizen's inbound message (``status`` is then
    # :data:`REPLY_STATUS`): the message answered, for providers whose replies are a
    # message type of their own (Zalo's consultation message, within its window).
    in_reply_to: InboundReference | None = None


# The event status a reply to a citizen's inbound message carries in the delivery log.
REPLY_STATUS = "reply"


@dataclass(frozen=True)
class SendResult:
    """What the provider said when it accepted a message."""

    provider_message_id: str | None = None
    delivered: bool = False  # True when acceptance is final delivery (e.g. the portal inbox)
    details: Mapping[str, Any] = field(default_factory=dict)


class DeliveryFailure(Exception):
    """A send that did not succeed; ``code`` is the provider's own code when there is one."""

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        self.reason = reason
        self.code = code
        super().__init__(reason if code is None else f"{reason} (code {code})")


class TemporaryFailure(DeliveryFailure):
    """Worth retrying later: timeouts, connection errors, 5xx/429, SMTP 4xx, busy codes.

    ``maybe_sent`` says the provider may have taken the message (a read timeout, a
    connection lost after the request went out): the core then retries the same
    provider, which dedupes by our reference, instead of failing over to another one.
    """

    def __init__(
        self,
        reason: str,
        *,
        code: str | None = None,
        retry_after_s: float | None = None,
        maybe_sent: bool = False,
    ) -> None:
        super().__init__(reason, code=code)
        self.retry_after_s = retry_after_s
        self.maybe_sent = maybe_sent


class PermanentFailure(DeliveryFailure):
    """Never worth retrying for this message. ``operator_alert`` marks our own
    misconfiguration (bad credentials, empty balance) rather than the recipient's."""

    def __init__(self, reason: str, *, code: str | None = None, operator_alert: bool = False):
        super().__init__(reason, code=code)
        self.operator_alert = operator_alert


class Handover:
    """Whether a send reached the step after which the provider may hold the message.

    The core cuts every send at ``send_timeout_s``. A send cut before its adapter said
    :func:`handing_over` never reached the provider, so it is retried like any failure;
    one cut after it (or by an adapter that never says) may have sent, and meets the
    provider's uncertain-send policy. On a saturated machine a send can wait seconds for
    the event loop before its first byte: without this, such a wait held emails as
    ``unknown`` for an admin although nothing had left.
    """

    __slots__ = ("reached",)

    def __init__(self) -> None:
        self.reached = False


_HANDOVER: ContextVar[Handover | None] = ContextVar("notifier_handover", default=None)


def handing_over() -> None:
    """Called by an adapter right before the step that may hand the message to the
    provider (SMTP: before DATA; HTTP: before the request is written). Safe to call
    outside a send (does nothing)."""
    handover = _HANDOVER.get()
    if handover is not None:
        handover.reached = True


@contextmanager
def watching_handover() -> Iterator[Handover]:
    """The core's side: sends started inside see this handover (tasks copy the context)."""
    handover = Handover()
    token = _HANDOVER.set(handover)
    try:
        yield handover
    finally:
        _HANDOVER.reset(token)


class UncertainSendPolicy(StrEnum):
    """What to do with a send whose outcome is unknown: the worker died during the call
    (its lease ran out with the call marked as started), or the adapter reported
    ``TemporaryFailure(maybe_sent=True)``."""

    # Send again: the provider drops a repeat of our reference (within
    # ``Adapter.dedupe_window_s`` of the first send).
    RESEND = "resend"
    # Ask the provider (``Adapter.lookup``) whether it has the message; send again only
    # if it says it has not.
    VERIFY = "verify"
    # Send nothing: the delivery becomes ``unknown`` until an admin resends it or marks
    # it sent.
    HOLD = "hold"


class LookupAnswer(StrEnum):
    """What a provider's status lookup said about one of our messages."""

    ACCEPTED = "accepted"  # it has the message (sent, waiting, delivered)
    DELIVERED = "delivered"  # it reports the message delivered
    NOT_FOUND = "not-found"  # it never took it: safe to send


@dataclass(frozen=True)
class ReceiptRequest:
    """A provider's delivery-report call, as received by ``notifier api``."""

    method: str
    headers: Mapping[str, str]  # lower-cased names
    query: Mapping[str, str]
    body: bytes
    received_at: float  # epoch seconds, for signature time windows
    # The secret path segment of ``/v1/receipts/<name>/<token>`` (None on the older
    # ``/v1/receipts/<name>?token=`` form). Gateways that cannot sign their calls are
    # given the URL with it; see :func:`notifier_sms.base.check_receipt_token`.
    token: str | None = None


@dataclass(frozen=True)
class Receipt:
    """One delivery report: a message reached the recipient's device, or did not.

    Identify the delivery by ``delivery_id`` where the provider echoes our reference
    (tracking id, request id), else by ``provider_message_id``.
    """

    delivered: bool
    delivery_id: UUID | None = None
    provider_message_id: str | None = None
    error: str | None = None
    error_code: str | None = None
    # What identifies this report (a signature, the provider's event id, the message
    # and the state it reports): a receipt whose nonce was seen before is a duplicate,
    # acknowledged (providers retry anything else) and not applied again.
    nonce: str | None = None
    # What the provider says it charged for the message, in VND (eSMS's TotalPrice):
    # replaces notifier's estimate as the delivery's cost. None: not reported.
    charge_vnd: Decimal | None = None


@dataclass(frozen=True)
class InboundMessage:
    """A citizen's message to us, as the channel's adapter read it from the provider's
    call: an SMS forwarded by a gateway (MO), a user's text to the Zalo OA.

    ``sender`` is what a reply goes to on the same channel (a phone number in any
    written form, a Zalo user id); the core keeps it hashed and masked only.
    """

    sender: str
    text: str
    # When the citizen sent it, as the provider says (None: not given; the core then
    # takes the time it was received). Time-zone aware.
    sent_at: datetime | None = None
    # The provider's id of the message (eSMS's smsid, Zalo's msg_id): a second call
    # with the same id is a repeat, acknowledged and not answered again.
    provider_message_id: str | None = None


@dataclass(frozen=True)
class InboundReference:
    """What a reply knows of the message it answers: providers with a reply window
    (Zalo's consultation messages) read it from :attr:`OutboundMessage.in_reply_to`."""

    provider_message_id: str | None
    received_at: datetime


class InvalidReceipt(Exception):
    """A receipt that fails verification (bad signature or token): answered 403."""


class MalformedReceipt(InvalidReceipt):
    """A verified caller's report that cannot be read (a parameter missing, not a
    number, given twice): answered 400."""


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str = ""


# -- the services the core lends adapters (implemented by notifier.store) ---------------


@dataclass(frozen=True)
class NewNotification:
    """One notification for a citizen's portal inbox (see :class:`Inbox`)."""

    delivery_id: UUID
    account_id: str
    agency_code: str
    dossier_code: str
    status: str
    title: str
    body: str
    link: str | None


class Inbox(Protocol):
    """The portal inbox (:class:`notifier.store.inbox.InboxStore`)."""

    def add_many(self, notifications: Sequence[NewNotification]) -> dict[UUID, int]:
        """Store notifications in one transaction; delivery id → notification id. A
        delivery stored before keeps its notification (and its id)."""
        ...


@dataclass(frozen=True)
class Token:
    """A provider's OAuth tokens as stored (decrypted), with their version."""

    name: str
    access_token: str | None
    refresh_token: str
    expires_at: datetime | None
    version: int

    def expires_within(self, seconds: float) -> bool:
        if self.access_token is None or self.expires_at is None:
            return True
        return (self.expires_at - datetime.now(UTC)).total_seconds() < seconds


@dataclass(frozen=True)
class TokenGrant:
    """What a provider's refresh call returned."""

    access_token: str
    refresh_token: str
    expires_at: datetime


class TokenStoreError(Exception):
    """Tokens missing or unreadable (e.g. encrypted under another secret key)."""


class Tokens(Protocol):
    """Providers' OAuth tokens (:class:`notifier.store.tokens.TokenStore`)."""

    def get(self, name: str) -> Token | None: ...

    def refresh(
        self, name: str, refresher: Callable[[Token], TokenGrant], *, seen_version: int
    ) -> Token:
        """Refresh under a lock, unless someone refreshed after ``seen_version``."""
        ...


@dataclass
class AdapterContext:
    """What the core lends an adapter: shared services and the network seam."""

    inbox: Inbox
    tokens: Tokens
    # Tests swap the network here (httpx.MockTransport); None means the real network.
    http_transport: httpx.AsyncBaseTransport | None = None

    def http_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """A pooled client for the adapter's own lifetime (close it in ``close``). HTTP
        adapters rather use :class:`notifier.adapter_http.AdapterHttp`, which makes one
        and maps its outcomes onto the failure types. On the real network its transport
        is :func:`notifier.http_pool.pooled_transport` (httpx's, with a cheaper pool)."""
        transport = self.http_transport
        if transport is None:
            # What httpx would give these to its own transport goes to ours.
            transport = pooled_transport(
                kwargs.pop("limits", DEFAULT_HTTP_LIMITS),
                verify=kwargs.pop("verify", True),
                trust_env=kwargs.get("trust_env", True),
            )
        return httpx.AsyncClient(transport=transport, **kwargs)


SettingsT = TypeVar("SettingsT", bound=AdapterSettings)


class Adapter(abc.ABC, Generic[SettingsT]):
    """Base class of channel adapters. One instance per worker process, used from one
    event loop; ``send`` may be called concurrently."""

    name: ClassVar[str]
    channel: ClassVar[str]
    description: ClassVar[str] = ""
    settings_model: ClassVar[type[AdapterSettings]] = AdapterSettings
    recipient_kind: ClassVar[RecipientKind]
    template_parts: ClassVar[tuple[TemplatePart, ...]]

    def __init__(self, settings: SettingsT, context: AdapterContext) -> None:
        self.settings = settings
        self.context = context

    @abc.abstractmethod
    async def send(self, message: OutboundMessage) -> SendResult:
        """Hand one message to the provider, or raise a :class:`DeliveryFailure`."""

    @property
    def max_in_flight(self) -> int:
        """Sends the core runs at once on this adapter, per process. Return the size of
        the adapter's connection pool: callers beyond it only queue inside the client,
        and httpx's pool slows down with every waiter."""
        return 10

    # What the core does when a send's outcome is unknown (see UncertainSendPolicy and
    # docs/reliability.md). ``hold`` is the safe default for a provider that does not
    # drop repeats of our reference; an operator may override it per provider
    # (NOTIFIER_PROVIDERS__<NAME>__UNCERTAIN_SEND).
    uncertain_send_policy: ClassVar[UncertainSendPolicy] = UncertainSendPolicy.HOLD

    # True when send() calls :func:`handing_over` right before the step that may hand
    # the message over: a send the core cuts at its timeout before that step is then a
    # plain temporary failure, not an uncertain one. False: every cut send is uncertain.
    reports_handover: ClassVar[bool] = False

    @property
    def answer_timeout_s(self) -> float:
        """How long a send that reached its handover may take in all, from its start,
        when the core's ``send_timeout_s`` runs out first (only with
        ``reports_handover``). 0: cut at ``send_timeout_s`` wherever it is, and a send
        past its handover is then uncertain. Worker leases grow to cover it."""
        return 0.0

    async def lookup(self, message: OutboundMessage) -> LookupAnswer:
        """Ask the provider whether it took ``message`` (for the ``verify`` policy).
        Raise :class:`TemporaryFailure` when it cannot tell now. Adapters without a
        status lookup leave this as is, and ``verify`` cannot be chosen for them."""
        raise NotImplementedError(f"adapter {self.name!r} has no status lookup")

    @classmethod
    def has_lookup(cls) -> bool:
        return cls.lookup is not Adapter.lookup

    # Set to True by adapters that implement parse_receipt; the API then serves
    # GET and POST /v1/receipts/<name>.
    accepts_receipts: ClassVar[bool] = False

    # The provider's own request limit (e.g. SpeedSMS: 60 a minute), used when the
    # deployment sets none for it; None: no limit known.
    default_rate_limit: ClassVar[RateLimit | None] = None

    # How long the provider refuses a second message with our reference (the delivery
    # id), e.g. eSMS's RequestId: 24 hours. A resend of a send that may have been taken
    # is deduplicated only inside this window: with the ``resend`` policy, an uncertain
    # send older than this is held instead. None: no time limit (e.g. the portal inbox,
    # unique on the delivery id); a provider that does not dedupe at all declares the
    # ``hold`` policy instead.
    dedupe_window_s: ClassVar[float | None] = None

    @classmethod
    def parse_receipt(cls, settings: SettingsT, request: ReceiptRequest) -> list[Receipt]:
        """Verify a provider's delivery report and read it. Pure: no I/O, so the API can
        call it without the adapter's connections. Raise :class:`InvalidReceipt` to refuse."""
        raise InvalidReceipt(f"adapter {cls.name!r} does not take delivery receipts")

    # The optional inbound capability. Set to True by adapters whose provider forwards
    # citizens' messages (an SMS gateway's MO forward, the Zalo OA webhook); the API
    # then reads every call to /v1/receipts/<name>/... and /v1/inbound-sms/<name>/...
    # with parse_inbound, and the core's one dispatcher answers each message
    # (TRA CUU <code>, STOP, DANG KY, HELP; see notifier.pipeline.inbound).
    accepts_inbound: ClassVar[bool] = False

    @classmethod
    def parse_inbound(cls, settings: SettingsT, request: ReceiptRequest) -> list[InboundMessage]:
        """Verify a provider's call (token or signature, time window) and read the
        citizens' messages it carries (none when the call is a delivery report). Pure,
        like :meth:`parse_receipt`: raise :class:`InvalidReceipt` to refuse the call
        (403), :class:`MalformedReceipt` for a verified call that cannot be read (400).
        Give each message its ``provider_message_id`` where the provider has one: the
        core refuses a repeat of it (a replayed call) without answering again."""
        raise InvalidReceipt(f"adapter {cls.name!r} does not forward inbound messages")

    async def close(self) -> None:
        """Release pooled connections."""

    async def health(self) -> Health:
        return Health(ok=True)
