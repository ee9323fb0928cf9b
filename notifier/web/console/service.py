"""The console's shared state: queries, sessions, templates, replay, metrics."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

import jinja2
from fastapi import Header, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from notifier.ops.replay import Replayer
from notifier.pipeline.budget import BudgetStatus, budget_statuses, cost_zone
from notifier.store.apikeys import ApiKeys
from notifier.store.deliveries.costs import CostLog
from notifier.store.deliveries.log import DeliveryLog
from notifier.store.operators import OperatorStore
from notifier.web.console.auth import (
    CSRF_HEADER,
    LANGUAGE_COOKIE,
    SECURITY_HEADERS,
    NotSignedIn,
    Principal,
    Sessions,
    SignInThrottle,
    same_origin,
    set_cookie,
)
from notifier.web.console.i18n import Translator, pick_language

if TYPE_CHECKING:
    from notifier.app import Notifier

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
MAX_FORM_BYTES = 256 * 1024


class Console:
    def __init__(self, app: Notifier) -> None:
        self.app = app
        self.log = DeliveryLog(app.database, app.settings.recipient_hash_key.get_secret_value())
        self.keys = ApiKeys(app.database)
        self.operators = OperatorStore(app.database)
        self.sessions = Sessions(
            app.settings.secret_key.get_secret_value(), self.operators, self.keys
        )
        self.throttle = SignInThrottle()
        self.replayer = Replayer(app, delivery_log=self.log)
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("notifier.web.console", "templates"),
            # The gettext dialect (_(), pgettext(), {% trans %}); each render passes the
            # callables of the request's language (Translator.helpers), so one shared
            # environment serves both languages.
            extensions=["jinja2.ext.i18n"],
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def budgets(self) -> list[BudgetStatus]:
        """Each budgeted agency's spend this month (warnings at 80% and 100%)."""
        costs = self.app.settings.costs
        return budget_statuses(CostLog(self.app.database), costs.budgets, cost_zone(costs.timezone))

    @property
    def configured_providers(self) -> dict[str, list[str]]:
        return {c: [p.name for p in ps] for c, ps in self.app.registry.channels.items()}

    # -- who is asking --------------------------------------------------------------------

    def page_user(self, request: Request) -> Principal:
        """Dependency of the HTML pages: the signed-in operator, or off to sign in."""
        principal = self.sessions.principal(request)
        if principal is None:
            raise NotSignedIn()
        return principal

    def api_principal(
        self, request: Request, authorization: str | None, *, admin: bool = False
    ) -> Principal:
        """Who calls the JSON API: an operator/admin API key or a session (whose unsafe
        requests must carry the session's CSRF token in X-CSRF-Token)."""
        principal = self.sessions.from_api_key(authorization)
        if principal is None:
            principal = self.sessions.principal(request)
            if principal is None:
                raise HTTPException(
                    401, "sign in or give an API key", {"WWW-Authenticate": "Bearer"}
                )
            if request.method not in SAFE_METHODS and not (
                same_origin(request)
                and self.sessions.csrf_valid_token(principal, request.headers.get(CSRF_HEADER))
            ):
                raise HTTPException(403, "missing or wrong CSRF token")
        if admin and not principal.is_admin:
            raise HTTPException(403, "only admins may do this")
        return principal

    # -- pages ----------------------------------------------------------------------------

    def translator(self, request: Request) -> Translator:
        return Translator(
            pick_language(request.query_params.get("lang"), request.cookies.get(LANGUAGE_COOKIE))
        )

    def render(
        self,
        request: Request,
        template: str,
        user: Principal | None,
        *,
        status_code: int = 200,
        **context: Any,
    ) -> Response:
        tr = self.translator(request)
        html = self.templates.get_template(template).render(
            **tr.helpers(),
            request=request,
            user=user,
            csrf=user.csrf_token if user else None,
            lang_url={
                lang: str(request.url.include_query_params(lang=lang)) for lang in ("vi", "en")
            },
            **context,
        )
        response = HTMLResponse(html, status_code=status_code)
        return self.finish(request, response)

    def finish(self, request: Request, response: Response) -> Response:
        """Security headers on every console response; remember a chosen language."""
        for name, value in SECURITY_HEADERS.items():
            response.headers[name] = value
        chosen = request.query_params.get("lang")
        if chosen in ("vi", "en") and request.cookies.get(LANGUAGE_COOKIE) != chosen:
            set_cookie(response, request, LANGUAGE_COOKIE, chosen, 365 * 86400)
        return response

    def redirect(self, request: Request, url: str) -> Response:
        return self.finish(request, RedirectResponse(url, status_code=303))

    def sign_in_redirect(self, request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        next_part = f"?next={quote(target, safe='')}" if request.method == "GET" else ""
        return self.redirect(request, f"/console/sign-in{next_part}")

    def error_page(self, request: Request, status_code: int, message_key: str) -> Response:
        user = self.sessions.principal(request)
        return self.render(
            request, "error.html", user, status_code=status_code, message_key=message_key
        )

    async def form(self, request: Request) -> dict[str, list[str]]:
        """A urlencoded form body (the console's forms post nothing else)."""
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "form too large")
        if not body:
            return {}
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type != "application/x-www-form-urlencoded":
            raise HTTPException(415, "expected a form")
        return parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)

    def check_post(self, request: Request, user: Principal, form: dict[str, list[str]]) -> None:
        """A console POST must come from our own page of this session: its CSRF token."""
        token = (form.get("csrf_token") or [""])[0]
        if not same_origin(request) or not self.sessions.csrf_valid_token(user, token):
            raise HTTPException(403, "missing or wrong CSRF token")


# -- dependencies of the console's routers (the Console is on app.state) ----------------


def get_console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def page_user(request: Request) -> Principal:
    """Dependency of the HTML pages: the signed-in operator, or off to sign in."""
    return get_console(request).page_user(request)


def api_reader(request: Request, authorization: str | None = Header(default=None)) -> Principal:
    """Dependency of the JSON API's reads: an operator/admin key, or a session."""
    return get_console(request).api_principal(request, authorization)


def api_admin(request: Request, authorization: str | None = Header(default=None)) -> Principal:
    """Dependency of the JSON API's replays: an admin key, or an admin's session."""
    return get_console(request).api_principal(request, authorization, admin=True)


def static_file(name: str) -> tuple[bytes, str] | None:
    """One of the console's own static files (CSS, JS, icon), or None."""
    types = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
    types[".svg"] = "image/svg+xml"
    suffix = name[name.rfind(".") :] if "." in name else ""
    if suffix not in types or "/" in name or name.startswith("."):
        return None
    path = resources.files("notifier.web.console").joinpath("static", name)
    if not path.is_file():
        return None
    return path.read_bytes(), types[suffix]
