"""Who may use the console and its API: signed session cookies, CSRF tokens, API keys.

A session is recorded server-side (``console_sessions``, see
:mod:`notifier.store.operators`) and its cookie holds the username, a stamp of the password
hash, the session's random id and an expiry, signed with HMAC-SHA256 under a key
derived from the service's ``secret_key``. Every request looks the session and its
operator up, so signing out, a password change or disabling the account ends the
session at once (and re-enabling an account revives none), and a role change takes
effect at once. The CSRF token of a session is an HMAC of its id: forms carry it in a
hidden field, scripts in ``X-CSRF-Token``.
The sign-in form has its own token, bound to a short-lived pre-session cookie.

Callers of the JSON API may instead present an API key (``Authorization: Bearer``):
scope ``operator`` reads, ``admin`` also replays (see :mod:`notifier.store.apikeys`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from notifier.store.apikeys import ApiKeys
from notifier.store.operators import Operator, OperatorStore, Role
from notifier.web.deps import bearer_client

SESSION_COOKIE = "notifier_session"
PRESESSION_COOKIE = "notifier_signin"
LANGUAGE_COOKIE = "notifier_lang"
SESSION_SECONDS = 8 * 3600
PRESESSION_SECONDS = 30 * 60
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Principal:
    """Whoever is making a request: a signed-in operator or an API key."""

    name: str
    role: Role
    via: str  # "session" | "api-key"
    csrf_token: str | None = None  # sessions only

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def actor(self) -> str:
        """How replays record who did them."""
        return f"{'operator' if self.via == 'session' else 'api-key'}:{self.name}"


class NotSignedIn(Exception):
    """Raised by page dependencies; answered with a redirect to the sign-in page."""


def _same(expected: str, given: str | None) -> bool:
    """Constant-time equality (as bytes: a str with non-ASCII would raise)."""
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    def __init__(self, secret_key: str, operators: OperatorStore, keys: ApiKeys) -> None:
        # Derived keys, so a token for one purpose is never valid for another and the
        # provider-token encryption key is not used here as is.
        root = secret_key.encode()
        self._session_key = hmac.new(root, b"notifier console session v1", "sha256").digest()
        self._csrf_key = hmac.new(root, b"notifier console csrf v1", "sha256").digest()
        # The cookie is signed and dated by itsdangerous (the signer Flask and Starlette
        # use); it only names a session that lives in the database, so a sign-out,
        # a password change or a disabled account ends it whatever the cookie says.
        self._serializer = URLSafeTimedSerializer(
            self._session_key, salt="notifier console session v2"
        )
        self.operators = operators
        self.keys = keys

    # -- tokens ---------------------------------------------------------------------------

    def _sign(self, payload: dict[str, Any]) -> str:
        return self._serializer.dumps(payload)

    def _verify(self, token: str) -> dict[str, Any] | None:
        try:
            payload = self._serializer.loads(token, max_age=SESSION_SECONDS)
        except BadSignature:  # tampered, expired or not ours
            return None
        if not isinstance(payload, dict) or payload.get("exp", 0) < time.time():
            return None
        return payload

    def csrf_for(self, nonce: str) -> str:
        return _b64(hmac.new(self._csrf_key, nonce.encode(), hashlib.sha256).digest())

    def csrf_valid(self, nonce: str, token: str | None) -> bool:
        return _same(self.csrf_for(nonce), token)

    @staticmethod
    def csrf_valid_token(principal: Principal, token: str | None) -> bool:
        """Whether ``token`` is the CSRF token of ``principal``'s session."""
        return principal.csrf_token is not None and _same(principal.csrf_token, token)

    # -- sessions -------------------------------------------------------------------------

    def start(self, response: Response, request: Request, operator: Operator) -> None:
        """Record a session for ``operator`` and set its cookie (blocking: a database
        write; call from a thread)."""
        session_id = self.operators.start_session(operator, timedelta(seconds=SESSION_SECONDS))
        token = self._sign(
            {
                "u": operator.username,
                "s": operator.password_stamp,
                "n": session_id,
                "exp": int(time.time()) + SESSION_SECONDS,
            }
        )
        set_cookie(response, request, SESSION_COOKIE, token, SESSION_SECONDS)
        response.delete_cookie(PRESESSION_COOKIE, path="/console")

    def _cookie(self, request: Request) -> tuple[dict[str, Any], str] | None:
        """The verified cookie payload and its session id, if the cookie is ours."""
        token = request.cookies.get(SESSION_COOKIE)
        payload = self._verify(token) if token else None
        session_id = payload.get("n") if payload is not None else None
        if payload is None or not isinstance(session_id, str) or not session_id:
            return None
        return payload, session_id

    def end(self, response: Response, request: Request) -> None:
        """End this request's session server-side, not only in this browser (blocking)."""
        cookie = self._cookie(request)
        if cookie is not None:
            self.operators.end_session(cookie[1])
        response.delete_cookie(SESSION_COOKIE, path="/")

    def principal(self, request: Request) -> Principal | None:
        """The signed-in operator of this request's session, if it is still live."""
        cookie = self._cookie(request)
        if cookie is None:
            return None
        payload, session_id = cookie
        operator = self.operators.session_operator(session_id)
        if (
            operator is None
            or operator.username != payload.get("u")
            or operator.password_stamp != payload.get("s")
        ):
            return None
        return Principal(operator.username, operator.role, "session", self.csrf_for(session_id))

    def from_api_key(self, authorization: str | None) -> Principal | None:
        """The principal of a Bearer API key (None without one); 401 for a bad key,
        403 for a key without the operator or admin scope."""
        client = bearer_client(self.keys, authorization)
        if client is None:
            return None
        if "admin" in client.scopes:
            return Principal(client.name, Role.ADMIN, "api-key")
        if "operator" in client.scopes:
            return Principal(client.name, Role.VIEWER, "api-key")
        raise HTTPException(403, "this key lacks the 'operator' scope")

    # -- the sign-in form -----------------------------------------------------------------

    def presession(self, request: Request) -> tuple[str, str | None]:
        """The sign-in form's CSRF token, bound to a pre-session nonce, and the nonce to
        set as the pre-session cookie when the request had none (see set_presession)."""
        nonce = request.cookies.get(PRESESSION_COOKIE)
        if nonce and 8 <= len(nonce) <= 64:
            return self.csrf_for("signin:" + nonce), None
        nonce = secrets.token_urlsafe(16)
        return self.csrf_for("signin:" + nonce), nonce

    @staticmethod
    def set_presession(response: Response, request: Request, nonce: str) -> None:
        set_cookie(response, request, PRESESSION_COOKIE, nonce, PRESESSION_SECONDS, "/console")

    def presession_valid(self, request: Request, token: str | None) -> bool:
        nonce = request.cookies.get(PRESESSION_COOKIE)
        return bool(nonce) and self.csrf_valid("signin:" + (nonce or ""), token)


def is_local_http(request: Request) -> bool:
    return request.url.scheme == "http" and (request.url.hostname or "") in _LOCAL_HOSTS


def set_cookie(
    response: Response, request: Request, name: str, value: str, max_age: int, path: str = "/"
) -> None:
    """HttpOnly, SameSite=Strict; Secure everywhere but plain http on this machine
    (behind a TLS proxy the browser sees https, so the cookie stays Secure)."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        httponly=True,
        samesite="strict",
        secure=not is_local_http(request),
    )


def same_origin(request: Request) -> bool:
    """False when a browser says the request comes from another site (defence in depth
    next to SameSite cookies and CSRF tokens)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        # Absent, or hidden by our own Referrer-Policy: no-referrer (browsers then send
        # "null"): the CSRF token decides.
        return True
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1].rstrip("/") == host


class SignInThrottle:
    """Slows password guessing without letting anyone lock an operator out (per API
    process, in memory).

    Failures count per (name, client address): the first ``free_failures`` cost
    nothing, then each one makes that pair wait ``base_delay_s`` doubled per further
    failure, up to ``max_delay_s``; a success, or ``forget_after_s`` without failures,
    clears the pair. An attacker guessing a name from one address is slowed to a crawl
    while the operator signs in from anywhere else. Each address also has a looser
    limit over every name (``per_address`` failures in ``window_s``), so spraying many
    names from one address is slowed too. Behind a reverse proxy the client address is
    the one the proxy names (``NOTIFIER_API__TRUSTED_PROXIES``); without that setting
    every client shares the proxy's address and its limit."""

    def __init__(
        self,
        *,
        free_failures: int = 3,
        base_delay_s: float = 1.0,
        max_delay_s: float = 15 * 60,
        forget_after_s: float = 3600,
        per_address: int = 50,
        window_s: float = 900,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures, self.base_delay_s = free_failures, base_delay_s
        self.max_delay_s, self.forget_after_s = max_delay_s, forget_after_s
        self.per_address, self.window_s = per_address, window_s
        self.clock = clock
        self._pairs: dict[tuple[str, str], tuple[int, float]] = {}  # failures, last at
        self._addresses: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _delay(self, failures: int) -> float:
        """The wait after ``failures`` failures in a row: 0, then 1 s, 2 s, 4 s..."""
        over = failures - self.free_failures
        if over <= 0:
            return 0.0
        return float(min(self.max_delay_s, self.base_delay_s * 2 ** min(over - 1, 30)))

    def _recent(self, address: str, now: float) -> deque[float]:
        found = self._addresses.setdefault(address, deque())
        while found and found[0] <= now - self.window_s:
            found.popleft()
        return found

    def retry_after(self, name: str, address: str) -> float:
        """Seconds before this name may try again from this address (0: now)."""
        now = self.clock()
        with self._lock:
            waits = [0.0]
            failures, last = self._pairs.get((name, address), (0, now))
            if failures and now - last < self.forget_after_s:
                waits.append(last + self._delay(failures) - now)
            recent = self._recent(address, now)
            if len(recent) >= self.per_address:
                waits.append(recent[len(recent) - self.per_address] + self.window_s - now)
            return max(waits)

    def blocked(self, name: str, address: str) -> bool:
        return self.retry_after(name, address) > 0

    def failed(self, name: str, address: str) -> None:
        now = self.clock()
        with self._lock:
            failures, last = self._pairs.get((name, address), (0, now))
            if now - last >= self.forget_after_s:
                failures = 0
            self._pairs[(name, address)] = (failures + 1, now)
            self._recent(address, now).append(now)
            if len(self._pairs) + len(self._addresses) > 10_000:
                self._forget_old(now)  # bounded memory under a spray of names

    def succeeded(self, name: str, address: str) -> None:
        with self._lock:
            self._pairs.pop((name, address), None)

    def _forget_old(self, now: float) -> None:
        self._pairs = {
            pair: (failures, last)
            for pair, (failures, last) in self._pairs.items()
            if now - last < max(self.forget_after_s, self._delay(failures))
        }
        self._addresses = {a: q for a, q in self._addresses.items() if self._recent(a, now)}
