"""The operators' console: web pages under /console and their JSON API under /v1,
served by ``notifier api``. See docs/operations.md.

Kept light to import (the CLI imports :mod:`notifier.cli.operators`): the web
parts load when :func:`install_console` runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from notifier.app import Notifier


def install_console(api: FastAPI, app: Notifier) -> None:
    """Add the console and its JSON API to the service's FastAPI app."""
    from fastapi import Request
    from fastapi.responses import Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from notifier.web.console import jsonapi, pages
    from notifier.web.console.auth import NotSignedIn
    from notifier.web.console.service import Console

    console = Console(app)
    # The routers' dependencies read it from here (service.get_console); so do operators'
    # tooling and tests (e.g. the throttle's clock).
    api.state.console = console
    api.include_router(pages.router)
    api.include_router(jsonapi.router)

    async def not_signed_in(request: Request, _exc: Exception) -> Response:
        return console.sign_in_redirect(request)

    api.add_exception_handler(NotSignedIn, not_signed_in)

    # Errors on console pages get a page, with the security headers; elsewhere FastAPI's
    # JSON errors stay as they are.
    from fastapi.exception_handlers import http_exception_handler

    async def console_errors(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if not request.url.path.startswith("/console") or request.url.path.startswith(
            "/console/static"
        ):
            return await http_exception_handler(request, exc)
        key = {403: "forbidden", 404: "not_found"}.get(exc.status_code, "bad_request")
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(console.error_page, request, exc.status_code, key)

    api.add_exception_handler(StarletteHTTPException, console_errors)
