"""``/v1/receipts/{provider}``: providers' delivery reports (and inbound replies they
carry), verified by each adapter's own scheme."""

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import BaseModel

from notifier.adapter import InvalidReceipt, MalformedReceipt, ReceiptRequest
from notifier.app import Notifier
from notifier.logging import get_logger
from notifier.plugins.registry import Provider
from notifier.store.optouts import take_reply
from notifier.web.deps import State, bounded_body

log = get_logger(__name__)
router = APIRouter(tags=["receipts"])
MAX_RECEIPT_BYTES = 64 * 1024


class ReceiptAnswer(BaseModel):
    received: int  # delivery reports in the call
    applied: int  # deliveries they moved forward
    duplicates: int = 0  # reports seen before: acknowledged, not applied again
    inbound: int = 0  # citizens' messages forwarded in the call
    opted_out: int = 0  # of which asked to stop (STOP, TU CHOI, HUY)


def _receipt_provider(app: Notifier, name: str) -> Provider | None:
    """The provider of that name whose adapter takes receipts, or None."""
    takers = {p.name: p for p in app.registry.all_providers() if p.adapter_class.accepts_receipts}
    return takers.get(name)


def _served_channels(app: Notifier, provider: str) -> set[str]:
    """The channels ``provider`` serves here: its receipts touch only their deliveries."""
    return {
        channel
        for channel, providers in app.registry.channels.items()
        if any(p.name == provider for p in providers)
    }


async def take_receipt(
    state: State, provider: str, request: Request, token: str | None
) -> ReceiptAnswer:
    """Delivery reports from providers, verified by each adapter's own scheme.

    A duplicate (a report seen before, e.g. a provider's retry after our answer was
    lost) is answered 200 and not applied again: providers retry anything else, and
    Zalo may turn off a webhook that keeps failing. Only what fails verification is
    refused (403); a verified but unreadable report is 400.
    """
    app = state.notifier
    found = _receipt_provider(app, provider)
    if found is None:
        raise HTTPException(404, "no provider here takes receipts under that name")
    names = [name for name, _ in request.query_params.multi_items()]
    if len(names) != len(set(names)):
        # Which of two SMSIDs is the report's? Neither: refuse rather than guess.
        raise HTTPException(400, "a query parameter is given more than once")
    body = await bounded_body(request, MAX_RECEIPT_BYTES)
    receipt_request = ReceiptRequest(
        method=request.method,
        headers={k.lower(): v for k, v in request.headers.items()},
        query=dict(request.query_params),
        body=body,
        received_at=time.time(),
        token=token,
    )
    adapter_class = found.adapter_class
    try:
        receipts = adapter_class.parse_receipt(found.settings, receipt_request)
        inbound = (
            adapter_class.parse_inbound(found.settings, receipt_request)
            if adapter_class.accepts_inbound
            else []
        )
    except MalformedReceipt as exc:
        log.warning("receipt refused: malformed", provider=provider, reason=str(exc))
        raise HTTPException(400, "receipt malformed") from None
    except InvalidReceipt as exc:
        log.warning("receipt refused", provider=provider, reason=str(exc))
        raise HTTPException(403, "receipt refused") from None
    if token is None and receipts:
        log.warning(
            "receipt by the deprecated ?token= URL: give the provider "
            f"/v1/receipts/{provider}/<token> instead",
            provider=provider,
        )
    fresh = [r for r in receipts if r.nonce is None]
    nonces = [r for r in receipts if r.nonce is not None]
    if nonces:
        taken = await asyncio.to_thread(
            app.deliveries.take_nonces, provider, [r.nonce or "" for r in nonces]
        )
        fresh += [r for r, new in zip(nonces, taken, strict=True) if new]
    duplicates = len(receipts) - len(fresh)
    if duplicates:
        log.info("receipt duplicate acknowledged", provider=provider, count=duplicates)
    channels = _served_channels(app, provider)
    applied = 0
    for item in fresh:
        changed = await asyncio.to_thread(
            app.deliveries.apply_receipt,
            provider,
            channels=channels,
            delivered=item.delivered,
            delivery_id=item.delivery_id,
            provider_message_id=item.provider_message_id,
            error=item.error,
            error_code=item.error_code,
            charge_vnd=item.charge_vnd,
        )
        applied += int(changed)
    opted_out = 0
    for message in inbound:
        opted_out += int(
            await asyncio.to_thread(
                take_reply, state.opt_outs, provider, message.phone, message.text
            )
        )
    return ReceiptAnswer(
        received=len(receipts),
        applied=applied,
        duplicates=duplicates,
        inbound=len(inbound),
        opted_out=opted_out,
    )


async def receipt(provider: str, request: Request, state: State) -> ReceiptAnswer:
    """A provider's delivery report; gateways that cannot sign prove themselves with
    ``?token=`` (deprecated: use ``/v1/receipts/{provider}/{token}``)."""
    return await take_receipt(state, provider, request, None)


async def receipt_with_token(
    provider: str, token: Annotated[str, Path(max_length=200)], request: Request, state: State
) -> ReceiptAnswer:
    """A provider's delivery report, the shared secret in the path: eSMS appends its
    own query string to the callback URL, which a ``?token=`` might not survive."""
    return await take_receipt(state, provider, request, token)


# Providers call back with GET (eSMS) or POST (Zalo, SpeedSMS, webhooks): one handler,
# two operations in the OpenAPI document, for each URL form.
for _method in ("GET", "POST"):
    router.add_api_route(
        "/v1/receipts/{provider}",
        receipt,
        methods=[_method],
        response_model=ReceiptAnswer,
        operation_id=f"receipt_{_method.lower()}",
    )
    router.add_api_route(
        "/v1/receipts/{provider}/{token}",
        receipt_with_token,
        methods=[_method],
        response_model=ReceiptAnswer,
        operation_id=f"receipt_with_token_{_method.lower()}",
    )
