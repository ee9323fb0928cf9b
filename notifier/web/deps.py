"""FastAPI dependencies the routers share: the app and its stores, and ``require_scope``.

``create_api`` (:mod:`notifier.web.api`) puts the :class:`~notifier.app.Notifier` and
the objects built once from it on ``app.state``; the module-level routers reach them
only through these dependencies, so a route names what it needs in its signature.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request, Response

from notifier.app import Notifier
from notifier.store.apikeys import ApiClient, ApiKeys
from notifier.store.deliveries.log import DeliveryLog
from notifier.store.optouts import OptOutStore
from notifier.store.publishers import Submitter

BEARER = "bearer "


@dataclass(frozen=True)
class WebState:
    """What the routes share, built once per FastAPI app from the Notifier."""

    notifier: Notifier
    keys: ApiKeys
    delivery_log: DeliveryLog
    opt_outs: OptOutStore
    submit_event: Callable[[bytes, Submitter], None]
    # Wakes the inbox live streams (notifier.web.inbox.InboxWakeups).
    inbox_wakeups: Any


def get_state(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state


def get_notifier(request: Request) -> Notifier:
    return get_state(request).notifier


State = Annotated[WebState, Depends(get_state)]
App = Annotated[Notifier, Depends(get_notifier)]


def bearer_client(keys: ApiKeys, authorization: str | None) -> ApiClient | None:
    """The client of an ``Authorization: Bearer <key>`` header; None without such a
    header, 401 for a key that is unknown or revoked."""
    if not authorization or not authorization.lower().startswith(BEARER):
        return None
    client = keys.authenticate(authorization[len(BEARER) :].strip())
    if client is None:
        raise HTTPException(401, "invalid or revoked API key", {"WWW-Authenticate": "Bearer"})
    return client


def require_scope(scope: str, *also: str) -> Callable[..., ApiClient]:
    """Dependency: the API key's client, which must hold ``scope`` (or any of ``also``);
    401 without a valid key, 403 for a key without the scope."""
    accepted = {scope, *also}

    def authenticate(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> ApiClient:
        client = bearer_client(get_state(request).keys, authorization)
        if client is None:
            raise HTTPException(401, "missing API key", {"WWW-Authenticate": "Bearer"})
        if not accepted & set(client.scopes):
            raise HTTPException(403, f"this key lacks the {scope!r} scope")
        return client

    return authenticate


async def bounded_body(request: Request, limit: int) -> bytes:
    """The request body, 413 as soon as it (or its declared length) passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def aware(value: datetime | None) -> datetime | None:
    """A time filter, which must carry its zone (422 otherwise)."""
    if value is not None and value.tzinfo is None:
        raise HTTPException(422, "times need a zone offset, e.g. 2026-11-26T08:00:00+07:00")
    return value


def mark_deprecated(response: Response, since: datetime, successor: str) -> None:
    """The headers of a deprecated operation (RFC 9745 ``Deprecation``: ``since``, which
    carries its zone; RFC 8288 ``Link`` to what replaces it), so a client learns it from
    any call, not only from OpenAPI."""
    response.headers["Deprecation"] = f"@{int(since.timestamp())}"
    response.headers["Link"] = f'<{successor}>; rel="successor-version"'
