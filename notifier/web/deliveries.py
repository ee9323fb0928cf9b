"""The delivery log over HTTP: ``POST /v1/deliveries/search`` (the one search: paged,
with a total), a delivery's attempts, rejected events, and the deprecated
``GET /v1/deliveries`` kept answering for one release."""

import json
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field

from notifier.store.apikeys import ApiClient
from notifier.store.deliveries.lifecycle import DeliveryStatus
from notifier.store.deliveries.log import MAX_ID, MAX_PAGE, DeliveryQuery
from notifier.web.console.auth import Principal
from notifier.web.console.service import api_reader
from notifier.web.deps import State, aware, mark_deprecated, require_scope

router = APIRouter(tags=["operators"])
Operator = Annotated[ApiClient, Depends(require_scope("operator"))]
SEARCH_PATH = "/v1/deliveries/search"
# When GET /v1/deliveries was deprecated (issue 15); it is removed one release later.
LIST_DEPRECATED_SINCE = datetime(2026, 12, 3, tzinfo=UTC)


class SearchRequest(BaseModel):
    """Delivery search; ``recipient`` is a full phone or email (matched by its keyed
    hash, never stored or echoed), ``recipient_masked`` as the log displays it. In the
    body, not the URL: a citizen's number must not reach access logs and proxies."""

    dossier_code: str | None = Field(default=None, max_length=64)
    recipient: str | None = Field(default=None, max_length=320)
    recipient_masked: str | None = Field(default=None, max_length=128)
    channel: str | None = None
    status: DeliveryStatus | None = None
    agency_code: str | None = None
    procedure_code: str | None = None
    provider: str | None = None
    event_id: UUID | None = None
    since: datetime | None = None
    until: datetime | None = None
    page: int = Field(default=1, ge=1, le=100_000)
    page_size: int = Field(default=50, ge=1, le=MAX_PAGE)


@router.post(SEARCH_PATH)
def search(
    _user: Annotated[Principal, Depends(api_reader)], state: State, body: SearchRequest
) -> dict[str, Any]:
    """Delivery search, paged, with the total of matches; recipients are shown masked
    only. Needs an API key with scope ``operator`` (or ``admin``), or a console session."""
    query = DeliveryQuery(
        dossier_code=body.dossier_code,
        recipient=body.recipient,
        recipient_masked=body.recipient_masked,
        channel=body.channel,
        status=body.status,
        agency_code=body.agency_code,
        procedure_code=body.procedure_code,
        provider=body.provider,
        event_id=body.event_id,
        since=aware(body.since),
        until=aware(body.until),
        limit=body.page_size,
        offset=(body.page - 1) * body.page_size,
    )
    return {
        "items": [row.as_json() for row in state.delivery_log.search(query)],
        "total": state.delivery_log.count(query),
        "page": body.page,
        "page_size": body.page_size,
    }


@router.get("/v1/deliveries", deprecated=True)
def list_deliveries(
    response: Response,
    state: State,
    _client: Operator,
    dossier_code: str | None = None,
    channel: str | None = None,
    status: DeliveryStatus | None = None,
    agency_code: str | None = None,
    event_id: UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> dict[str, Any]:
    """Deprecated: use ``POST /v1/deliveries/search`` (pages and a total). Answers as
    before, with a ``Deprecation`` header and a ``Link`` to the search."""
    mark_deprecated(response, LIST_DEPRECATED_SINCE, SEARCH_PATH)
    rows = state.delivery_log.search(
        DeliveryQuery(
            dossier_code=dossier_code,
            channel=channel,
            status=status,
            agency_code=agency_code,
            event_id=event_id,
            since=since,
            until=until,
            limit=limit,
            offset=offset,
        )
    )
    return {"items": [row.as_json() for row in rows]}


@router.get("/v1/deliveries/{delivery_id}/attempts")
def delivery_attempts(delivery_id: UUID, state: State, _client: Operator) -> dict[str, Any]:
    rows = state.delivery_log.attempts(delivery_id)
    return {"items": [json.loads(json.dumps(r.__dict__, default=str)) for r in rows]}


@router.get("/v1/rejects")
def list_rejects(
    state: State,
    _client: Operator,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> dict[str, Any]:
    rows = state.delivery_log.rejects(limit=limit, offset=offset)
    return {"items": [json.loads(json.dumps(r.__dict__, default=str)) for r in rows]}
