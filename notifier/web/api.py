"""The HTTP API (``notifier api``): :func:`create_api` builds the FastAPI app from the
module-level routers, one module per resource.

Every route but ``/healthz`` needs an API key (``Authorization: Bearer <key>``) with
the route's scope (:func:`notifier.web.deps.require_scope`; keys are
:mod:`notifier.store.apikeys`). The routes reach the :class:`~notifier.app.Notifier`
through dependencies (:mod:`notifier.web.deps`), which read what ``create_api`` put on
``app.state``. The OpenAPI document is at ``/openapi.json`` and browsable at ``/docs``.
"""

from collections.abc import Callable

from fastapi import FastAPI

from notifier import __version__
from notifier.app import Notifier
from notifier.store.apikeys import ApiKeys
from notifier.store.deliveries.log import DeliveryLog
from notifier.store.optouts import OptOutStore
from notifier.store.publishers import Submitter
from notifier.web import (
    deliveries,
    events,
    health,
    inbox,
    metrics,
    optouts,
    preferences,
    receipts,
    statuses,
)
from notifier.web.deps import WebState
from notifier.web.events import EventSubmitter
from notifier.web.security import secure_api


def create_api(
    app: Notifier, *, submit: Callable[[bytes, Submitter], None] | None = None
) -> FastAPI:
    """The service's FastAPI app for ``app``; ``submit`` replaces the queueing of
    accepted events (tests)."""
    api = FastAPI(
        title="notifier",
        version=__version__,
        description="Dossier status events in; citizen notifications out.",
    )
    hash_key = app.settings.recipient_hash_key.get_secret_value()
    api.state.web = WebState(
        notifier=app,
        keys=ApiKeys(app.database),
        delivery_log=DeliveryLog(app.database, hash_key),
        opt_outs=OptOutStore(app.database, hash_key),
        submit_event=submit or EventSubmitter(app),
    )
    secure_api(api, app)  # rate limit, body size limit, headers
    for module in (optouts, preferences, health, events, statuses, inbox, receipts, deliveries):
        api.include_router(module.router)
    from notifier.web.console import install_console  # /console and its /v1 API

    install_console(api, app)
    api.include_router(metrics.router)
    return api
