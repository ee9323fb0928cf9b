"""Opt-outs: a citizen's choice not to be told by one channel, stored and honoured.

Stored by keyed recipient hash (:func:`notifier.masking.recipient_hash` under
``NOTIFIER_RECIPIENT_HASH_KEY``), never in clear: the same hash the delivery log
keeps, so ingest checks a planned delivery with one indexed lookup. A planned
delivery whose (recipient, channel) is opted out is recorded with status
``suppressed`` and never enqueued or sent; its count stays in the log and reports.

Who records one:

- the portal backend, for a citizen's choice: ``POST /v1/opt-outs`` (and ``DELETE``
  to opt back in), with an API key of scope ``inbox``;
- operators: ``notifier opt-out add|remove --channel C --recipient R``;
- the citizen, by replying STOP to an SMS, where the gateway forwards replies (MO
  messages) to ``/v1/inbound-sms/<provider>/<receipt_token>`` (the older
  ``?token=<receipt_token>`` form still works, deprecated). The parameter
  names ``Phone`` and ``Content`` follow eSMS's usual naming and are an assumption:
  no gateway's MO-forwarding document was at hand; check with the gateway before
  relying on it (any of query string, form or JSON body is read, names
  case-insensitive). ``STOP``, ``TU CHOI``/``TUCHOI`` and ``HUY`` (any case, with or
  without diacritics and punctuation) opt the number out of SMS; any other text is
  acknowledged and ignored. A gateway whose adapter reads its own format
  (``accepts_inbound``: SpeedSMS's JSON ``{type: "incoming", phone, content}``) is read
  by the adapter, here and on its receipts URL alike.

Phone numbers are taken in any written form and kept in the +84 form ingest uses, so
``0901 888 484`` and ``+84901888484`` are one citizen.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations,
# which name dependencies local to :func:`opt_out_routes`.
import hmac
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Header, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from notifier.adapter import InvalidReceipt, MalformedReceipt, ReceiptRequest
from notifier.logging import get_logger
from notifier.masking import mask_recipient, recipient_hash
from notifier.phones import InvalidPhone, PhoneFormat, parse_mobile
from notifier.store import Database
from notifier.store.apikeys import ApiClient, ApiKeys
from notifier.store.deliveries.lifecycle import DeliveryStatus, PlannedDelivery
from notifier.store.schema import opt_outs, utcnow
from notifier.text import strip_diacritics

log = get_logger(__name__)

SMS_CHANNEL = "sms"
STOP_WORDS = frozenset({"STOP", "TU CHOI", "TUCHOI", "HUY"})
_CHANNEL = r"^[a-z][a-z0-9_-]{0,31}$"
_SOURCE = r"^[a-z][a-z0-9_-]{0,31}$"


def canonical_recipient(value: str) -> str:
    """The form ingest hashes: phones as +84..., anything else as given (trimmed)."""
    value = value.strip()
    if "@" in value:
        return value
    try:
        return parse_mobile(value).format(PhoneFormat.E164)
    except InvalidPhone:
        return value


def is_stop_text(text: str) -> bool:
    """Whether an SMS reply asks to stop: STOP, TỪ CHỐI, HỦY (case, accents, punctuation
    ignored). Only the whole message counts: "Huy" is also a given name."""
    plain = strip_diacritics(text).upper()
    words = re.sub(r"[^A-Z0-9]+", " ", plain).split()
    return " ".join(words) in STOP_WORDS


class OptOutStore:
    def __init__(self, database: Database, hash_key: str) -> None:
        self.database = database
        self.hash_key = hash_key

    def _hash(self, recipient: str) -> str:
        return recipient_hash(canonical_recipient(recipient), self.hash_key)

    def add(self, recipient: str, channel: str, source: str) -> bool:
        """Record an opt-out; returns whether it is new."""
        with self.database.begin() as connection:
            inserted = connection.execute(
                self.database.insert_ignore(opt_outs, "recipient_hash", "channel")
                .values(
                    recipient_hash=self._hash(recipient),
                    channel=channel,
                    source=source[:32],
                    created_at=utcnow(),
                )
                .returning(opt_outs.c.channel)
            ).first()
        if inserted is not None:
            log.info("opt-out recorded", channel=channel, source=source, recipient=recipient)
        return inserted is not None

    def remove(self, recipient: str, channel: str) -> bool:
        """Opt back in; returns whether there was an opt-out."""
        with self.database.begin() as connection:
            removed = connection.execute(
                sa.delete(opt_outs).where(
                    opt_outs.c.recipient_hash == self._hash(recipient),
                    opt_outs.c.channel == channel,
                )
            ).rowcount
        if removed:
            log.info("opt-out removed", channel=channel, recipient=recipient)
        return bool(removed)

    def is_opted_out(self, recipient: str, channel: str) -> bool:
        return bool(opted_out(self.database, [(self._hash(recipient), channel)]))


def opted_out(database: Database, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of these (recipient hash, channel) pairs are opted out."""
    if not keys:
        return set()
    o = opt_outs.c
    query = sa.select(o.recipient_hash, o.channel).where(
        o.recipient_hash.in_({h for h, _ in keys}), o.channel.in_({c for _, c in keys})
    )
    with database.engine.connect() as connection:
        found = {(row.recipient_hash, row.channel) for row in connection.execute(query)}
    return found & set(keys)


def suppress(planned: list[PlannedDelivery], found: set[tuple[str, str]]) -> list[PlannedDelivery]:
    """Planned deliveries with the opted-out ones (``found`` by :func:`opted_out`) turned
    ``suppressed``: kept, not sent."""
    if not found:
        return planned
    result = []
    for p in planned:
        if (p.recipient_hash, p.channel) in found:
            log.info("delivery suppressed: the citizen opted out", channel=p.channel)
            p = replace(p, status=DeliveryStatus.SUPPRESSED)
        result.append(p)
    return result


def take_reply(store: OptOutStore, provider: str, phone: str, text: str) -> bool:
    """A citizen's SMS forwarded by ``provider``: STOP words opt the number out of SMS.
    Returns whether it did; any other text (or a number that is not a Vietnamese
    mobile) is acknowledged and ignored."""
    if not is_stop_text(text):
        log.info("inbound sms ignored: not a stop word", provider=provider)
        return False
    try:
        number = parse_mobile(phone).format(PhoneFormat.E164)
    except InvalidPhone:
        log.warning("inbound sms ignored: not a Vietnamese mobile number", provider=provider)
        return False
    store.add(number, SMS_CHANNEL, f"sms-stop:{provider}"[:32])
    return True


# -- HTTP ---------------------------------------------------------------------------------


class OptOutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: str = Field(pattern=_CHANNEL, description="e.g. sms, email, zalo, portal")
    recipient: str = Field(
        min_length=1, max_length=320, description="phone (any form), email, or account id"
    )
    source: str = Field(default="portal", pattern=_SOURCE)


class OptOutState(BaseModel):
    channel: str
    recipient: str = Field(description="masked")
    opted_out: bool
    changed: bool


class InboundSmsResult(BaseModel):
    opted_out: bool


def _require(keys: ApiKeys, scope: str) -> Callable[..., ApiClient]:
    def authenticate(authorization: Annotated[str | None, Header()] = None) -> ApiClient:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise HTTPException(401, "missing API key", {"WWW-Authenticate": "Bearer"})
        client = keys.authenticate(authorization[7:].strip())
        if client is None:
            raise HTTPException(401, "invalid or revoked API key", {"WWW-Authenticate": "Bearer"})
        if scope not in client.scopes:
            raise HTTPException(403, f"this key lacks the {scope!r} scope")
        return client

    return authenticate


def opt_out_routes(app: Any) -> APIRouter:
    """``/v1/opt-outs`` (scope ``inbox``) and ``/v1/inbound-sms/{provider}`` (gateway
    token), for ``create_api`` to include. ``app`` is the :class:`notifier.app.Notifier`."""
    router = APIRouter()
    store = OptOutStore(app.database, app.settings.recipient_hash_key.get_secret_value())
    keys = ApiKeys(app.database)
    channels = set(app.registry.channels)
    inbox_caller = _require(keys, "inbox")

    def checked(body: OptOutRequest) -> OptOutRequest:
        if body.channel not in channels:
            raise HTTPException(
                422, f"unknown channel {body.channel!r}; known: {', '.join(sorted(channels))}"
            )
        return body

    @router.post("/v1/opt-outs", response_model=OptOutState, tags=["opt-outs"])
    def add_opt_out(
        body: OptOutRequest, _client: Annotated[ApiClient, Depends(inbox_caller)]
    ) -> OptOutState:
        """Record a citizen's choice not to be notified on a channel."""
        checked(body)
        changed = store.add(body.recipient, body.channel, body.source)
        return OptOutState(
            channel=body.channel,
            recipient=mask_recipient(body.recipient),
            opted_out=True,
            changed=changed,
        )

    @router.delete("/v1/opt-outs", response_model=OptOutState, tags=["opt-outs"])
    def remove_opt_out(
        body: OptOutRequest, _client: Annotated[ApiClient, Depends(inbox_caller)]
    ) -> OptOutState:
        """Opt a citizen back in to a channel."""
        checked(body)
        changed = store.remove(body.recipient, body.channel)
        return OptOutState(
            channel=body.channel,
            recipient=mask_recipient(body.recipient),
            opted_out=False,
            changed=changed,
        )

    sms_providers = {p.name: p for p in app.registry.channels.get(SMS_CHANNEL, [])}

    async def take_inbound(provider: str, request: Request, token: str | None) -> InboundSmsResult:
        found = sms_providers.get(provider)
        expected = getattr(found.settings, "receipt_token", None) if found else None
        if found is None or expected is None:
            raise HTTPException(404, "no SMS gateway here forwards replies under that name")
        adapter_class = found.adapter_class
        if adapter_class.accepts_inbound:
            # The gateway's own format (e.g. SpeedSMS's JSON), read by its adapter.
            body = await request.body()
            if len(body) > 16 * 1024:
                raise HTTPException(413, "body over 16384 bytes")
            call = ReceiptRequest(
                method=request.method,
                headers={k.lower(): v for k, v in request.headers.items()},
                query=dict(request.query_params),
                body=body,
                received_at=time.time(),
                token=token,
            )
            try:
                messages = adapter_class.parse_inbound(found.settings, call)
            except MalformedReceipt:
                raise HTTPException(422, "inbound message malformed") from None
            except InvalidReceipt:
                log.warning("inbound sms refused", provider=provider)
                raise HTTPException(403, "inbound message refused") from None
            stopped = [take_reply(store, provider, m.phone, m.text) for m in messages]
            return InboundSmsResult(opted_out=any(stopped))
        given = token if token is not None else request.query_params.get("token") or ""
        if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
            log.warning("inbound sms refused: wrong token", provider=provider)
            raise HTTPException(403, "inbound message refused")
        fields = await _fields(request)
        phone, text = fields.get("phone", ""), fields.get("content", "")
        if not phone:
            raise HTTPException(422, "Phone is missing")
        try:
            parse_mobile(phone)
        except InvalidPhone:
            raise HTTPException(422, "Phone is not a Vietnamese mobile number") from None
        return InboundSmsResult(opted_out=take_reply(store, provider, phone, text))

    async def inbound_sms(provider: str, request: Request) -> InboundSmsResult:
        """Replies (MO messages) forwarded by an SMS gateway; ``?token=`` is the gateway's
        ``receipt_token`` (deprecated: use ``/v1/inbound-sms/{provider}/{token}``).
        STOP / TU CHOI / HUY opts the sender out of SMS."""
        return await take_inbound(provider, request, None)

    async def inbound_sms_with_token(
        provider: str, token: Annotated[str, Path(max_length=200)], request: Request
    ) -> InboundSmsResult:
        """Replies (MO messages) forwarded by an SMS gateway, its ``receipt_token`` in the
        path. STOP / TU CHOI / HUY opts the sender out of SMS."""
        return await take_inbound(provider, request, token)

    for method in ("GET", "POST"):
        router.add_api_route(
            "/v1/inbound-sms/{provider}",
            inbound_sms,
            methods=[method],
            response_model=InboundSmsResult,
            tags=["opt-outs"],
            operation_id=f"inbound_sms_{method.lower()}",
        )
        router.add_api_route(
            "/v1/inbound-sms/{provider}/{token}",
            inbound_sms_with_token,
            methods=[method],
            response_model=InboundSmsResult,
            tags=["opt-outs"],
            operation_id=f"inbound_sms_with_token_{method.lower()}",
        )
    return router


async def _fields(request: Request) -> dict[str, str]:
    """Query parameters, then a form or JSON body, with lower-cased names."""
    fields = {k.lower(): v for k, v in request.query_params.items() if k.lower() != "token"}
    if request.method == "POST":
        body = await request.body()
        if len(body) > 16 * 1024:
            raise HTTPException(413, "body over 16384 bytes")
        content_type = request.headers.get("content-type", "")
        if body and "json" in content_type:
            try:
                document = json.loads(body)
            except ValueError:
                raise HTTPException(422, "body is not JSON") from None
            if isinstance(document, dict):
                fields.update({str(k).lower(): str(v) for k, v in document.items()})
        elif body and "form" in content_type:
            from urllib.parse import parse_qsl

            text = body.decode(errors="replace")
            fields.update({k.lower(): v for k, v in parse_qsl(text, keep_blank_values=True)})
    return fields
