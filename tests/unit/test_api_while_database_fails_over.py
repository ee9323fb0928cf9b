"""The API while its database is unreachable (restarting, or failing over to the
standby): a 503 with Retry-After that tells the caller to send again, never a 500 with a
traceback, whether the API key lookup or the route itself hit the outage."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from notifier.settings import ApiSettings
from notifier.web.security import SecurityMiddleware
from tests.support import ServedApi


def _unreachable() -> OperationalError:
    return OperationalError("SELECT 1", {}, ConnectionError("session is read-only"))


async def _route_hits_the_outage(_request: Request) -> JSONResponse:
    raise _unreachable()


async def _fine(_request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def _key_lookup_hits_the_outage(_key: str) -> bool:
    raise _unreachable()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    # Installed as create_api installs it (add_middleware): inside Starlette's own error
    # middleware, so a route's exception reaches it before any response has started.
    api = Starlette(
        routes=[
            Route("/v1/events", _route_hits_the_outage, methods=["POST"]),
            Route("/v1/fine", _fine),
        ],
        middleware=[
            Middleware(
                SecurityMiddleware,
                settings=ApiSettings(),
                key_is_valid=_key_lookup_hits_the_outage,
            )
        ],
    )
    with ServedApi(api) as served, httpx.Client(base_url=served.base_url) as http:
        yield http


def test_a_route_that_meets_a_database_outage_answers_503_with_retry_after(
    client: httpx.Client,
) -> None:
    answer = client.post("/v1/events", json={})
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    assert "send the request again" in answer.json()["detail"]


def test_a_key_lookup_that_meets_a_database_outage_answers_503_too(client: httpx.Client) -> None:
    answer = client.get("/v1/fine", headers={"Authorization": "Bearer some-key"})
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"


def test_requests_that_need_no_database_are_answered_as_usual(client: httpx.Client) -> None:
    assert client.get("/v1/fine").json() == {"ok": True}
