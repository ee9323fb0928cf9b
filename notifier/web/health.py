"""``GET /healthz``: the service answers, and which version it is (no key needed)."""

from fastapi import APIRouter

from notifier import __version__

router = APIRouter(tags=["service"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}
