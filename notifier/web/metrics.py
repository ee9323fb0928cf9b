"""``GET /metrics``: the Prometheus exposition (scope ``metrics``, ``operator`` or ``admin``)."""

import threading
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from notifier.store.apikeys import ApiClient
from notifier.web.deps import require_scope

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

router = APIRouter(tags=["service"])
_building = threading.Lock()


def _registry(request: Request) -> "CollectorRegistry":
    """The app's metrics registry, built on the first scrape (one per FastAPI app)."""
    state = request.app.state
    with _building:
        if getattr(state, "metrics_registry", None) is None:
            from notifier.ops.metrics import state_registry

            state.metrics_registry = state_registry(state.web.notifier)
        registry: CollectorRegistry = state.metrics_registry
    return registry


@router.get("/metrics", response_class=Response)
def metrics(
    request: Request,
    _client: Annotated[ApiClient, Depends(require_scope("metrics", "operator", "admin"))],
) -> Response:
    """Prometheus text exposition; needs an API key with scope metrics, operator or
    admin (Prometheus: ``authorization: {credentials_file: ...}``)."""
    from notifier.ops.metrics import exposition

    body, content_type = exposition(_registry(request))
    return Response(body, media_type=content_type)
