"""``/v1/opt-outs`` (scope ``inbox``) and ``/v1/inbound-sms/{provider}`` (the gateway's
token): opt-outs over HTTP. The storage and the STOP words are
:mod:`notifier.store.optouts`, which describes who records an opt-out and how."""

import asyncio
import hmac
import json
import time
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from notifier.adapter import InboundMessage, InvalidReceipt, MalformedReceipt, ReceiptRequest
from notifier.logging import get_logger
from notifier.masking import mask_recipient
from notifier.phones import InvalidPhone, parse_mobile
from notifier.pipeline.inbound import InboundSummary
from notifier.store.apikeys import ApiClient
from notifier.store.optouts import SMS_CHANNEL
from notifier.web.deps import State, require_scope

log = get_logger(__name__)
router = APIRouter(tags=["opt-outs"])
InboxClient = Annotated[ApiClient, Depends(require_scope("inbox"))]
MAX_INBOUND_BYTES = 16 * 1024
_CHANNEL = r"^[a-z][a-z0-9_-]{0,31}$"
_SOURCE = r"^[a-z][a-z0-9_-]{0,31}$"


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
    opted_out: bool  # a message of the call opted its sender out just now
    received: int = 0  # citizens' messages in the call
    answered: int = 0  # of which got a reply (queued as a delivery)
    duplicates: int = 0  # repeats of a message taken before: not answered again
    rate_limited: int = 0  # over the sender's limit: one notice, then no reply


def _result(summary: InboundSummary) -> InboundSmsResult:
    return InboundSmsResult(
        opted_out=summary.opted_out > 0,
        received=summary.received,
        answered=summary.answered,
        duplicates=summary.duplicates,
        rate_limited=summary.rate_limited,
    )


def _checked(state: State, body: OptOutRequest) -> OptOutRequest:
    channels = set(state.notifier.registry.channels)
    if body.channel not in channels:
        raise HTTPException(
            422, f"unknown channel {body.channel!r}; known: {', '.join(sorted(channels))}"
        )
    return body


@router.post("/v1/opt-outs", response_model=OptOutState)
def add_opt_out(body: OptOutRequest, state: State, _client: InboxClient) -> OptOutState:
    """Record a citizen's choice not to be notified on a channel."""
    _checked(state, body)
    changed = state.opt_outs.add(body.recipient, body.channel, body.source)
    return OptOutState(
        channel=body.channel,
        recipient=mask_recipient(body.recipient),
        opted_out=True,
        changed=changed,
    )


@router.delete("/v1/opt-outs", response_model=OptOutState)
def remove_opt_out(body: OptOutRequest, state: State, _client: InboxClient) -> OptOutState:
    """Opt a citizen back in to a channel."""
    _checked(state, body)
    changed = state.opt_outs.remove(body.recipient, body.channel)
    return OptOutState(
        channel=body.channel,
        recipient=mask_recipient(body.recipient),
        opted_out=False,
        changed=changed,
    )


async def take_inbound(
    state: State, provider: str, request: Request, token: str | None
) -> InboundSmsResult:
    sms_providers = {p.name: p for p in state.notifier.registry.channels.get(SMS_CHANNEL, [])}
    found = sms_providers.get(provider)
    expected = getattr(found.settings, "receipt_token", None) if found else None
    if found is None or expected is None:
        raise HTTPException(404, "no SMS gateway here forwards replies under that name")
    adapter_class = found.adapter_class
    if adapter_class.accepts_inbound:
        # The gateway's own format (e.g. SpeedSMS's JSON), read by its adapter.
        body = await request.body()
        if len(body) > MAX_INBOUND_BYTES:
            raise HTTPException(413, f"body over {MAX_INBOUND_BYTES} bytes")
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
        summary = await asyncio.to_thread(
            state.notifier.inbound.handle, provider, SMS_CHANNEL, messages
        )
        return _result(summary)
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
    message = InboundMessage(
        sender=phone, text=text, provider_message_id=fields.get("smsid") or None
    )
    summary = await asyncio.to_thread(
        state.notifier.inbound.handle, provider, SMS_CHANNEL, [message]
    )
    return _result(summary)


async def inbound_sms(provider: str, request: Request, state: State) -> InboundSmsResult:
    """Replies (MO messages) forwarded by an SMS gateway; ``?token=`` is the gateway's
    ``receipt_token`` (deprecated: use ``/v1/inbound-sms/{provider}/{token}``).
    Every message goes to the core's inbound dispatcher: TRA CUU <code>, STOP / TU CHOI /
    HUY, DANG KY / START, HD / HELP are answered by SMS (notifier.pipeline.inbound)."""
    return await take_inbound(state, provider, request, None)


async def inbound_sms_with_token(
    provider: str, token: Annotated[str, Path(max_length=200)], request: Request, state: State
) -> InboundSmsResult:
    """Replies (MO messages) forwarded by an SMS gateway, its ``receipt_token`` in the
    path. Answered like ``/v1/inbound-sms/{provider}`` (notifier.pipeline.inbound)."""
    return await take_inbound(state, provider, request, token)


for _method in ("GET", "POST"):
    router.add_api_route(
        "/v1/inbound-sms/{provider}",
        inbound_sms,
        methods=[_method],
        response_model=InboundSmsResult,
        operation_id=f"inbound_sms_{_method.lower()}",
    )
    router.add_api_route(
        "/v1/inbound-sms/{provider}/{token}",
        inbound_sms_with_token,
        methods=[_method],
        response_model=InboundSmsResult,
        operation_id=f"inbound_sms_with_token_{_method.lower()}",
    )


async def _fields(request: Request) -> dict[str, str]:
    """Query parameters, then a form or JSON body, with lower-cased names."""
    fields = {k.lower(): v for k, v in request.query_params.items() if k.lower() != "token"}
    if request.method == "POST":
        body = await request.body()
        if len(body) > MAX_INBOUND_BYTES:
            raise HTTPException(413, f"body over {MAX_INBOUND_BYTES} bytes")
        content_type = request.headers.get("content-type", "")
        if body and "json" in content_type:
            try:
                document = json.loads(body)
            except ValueError:
                raise HTTPException(422, "body is not JSON") from None
            if isinstance(document, dict):
                fields.update({str(k).lower(): str(v) for k, v in document.items()})
        elif body and "form" in content_type:
            text = body.decode(errors="replace")
            fields.update({k.lower(): v for k, v in parse_qsl(text, keep_blank_values=True)})
    return fields
