"""HTTP hardening for every route of ``notifier api``: one ASGI middleware.

- **Rate limit**: a token bucket per caller (``NOTIFIER_API__RATE_PER_S`` tokens a
  second, up to ``NOTIFIER_API__BURST``): a valid API key is its own caller (by its
  SHA-256, never the key itself; a key is looked up once a minute at most, its first
  request charged to the address); anything else (no key, a wrong or revoked key,
  providers' webhooks) is charged to the client address, so trying many keys does not
  buy fresh buckets. Over the limit: 429 with ``Retry-After`` (whole seconds). Behind a
  reverse proxy, list it in ``NOTIFIER_API__TRUSTED_PROXIES``: its ``X-Forwarded-For``
  then names the client (uvicorn's ProxyHeadersMiddleware); otherwise every client has
  the proxy's address. ``/healthz`` is not limited.
- **Body size**: any request body over ``NOTIFIER_API__MAX_BODY_BYTES`` is answered 413
  before a route sees it (from ``Content-Length``, or while reading a chunked body).
- **Values the database refuses** (an id beyond the integer range, a NUL in text)
  are answered 422 rather than 500: a caller's mistake, not a server fault.
- **Text that is not Unicode**: a JSON body with an unpaired surrogate escape
  (``"\\ud800"``, valid JSON syntax but no character) is answered 400 before any
  route sees it, whatever the route (logins, webhooks, opt-outs, searches alike); such
  text cannot be encoded to UTF-8, so it would fail later, in hashing, the database or
  the answer. A 422 answer lists what was wrong without echoing the input (which can
  hold personal data, and bad text).
- **Headers** on every response, unless the route set its own (the console sets a
  stricter policy for its pages): ``X-Content-Type-Options: nosniff``,
  ``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer``; ``Cache-Control:
  no-store`` on ``/v1`` (citizens' data must not sit in caches); a
  ``Content-Security-Policy`` on HTML (``/docs`` and ``/redoc`` get one that lets
  their script and styles load from the CDN FastAPI uses).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pydantic_core
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DataError, OperationalError
from starlette.requests import Request
from starlette.responses import JSONResponse

from notifier.logging import get_logger
from notifier.masking import redact_url_secrets
from notifier.settings import ApiSettings

log = get_logger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HTML_CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "font-src https://fonts.gstatic.com; worker-src blob:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_DOCS_PATHS = ("/docs", "/redoc")
_UNLIMITED_PATHS = ("/healthz",)
_ALWAYS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


class TokenBuckets:
    """Token buckets by caller, the least recently seen forgotten beyond ``max_callers``
    (a forgotten caller starts again with a full bucket)."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_callers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.max_callers = max_callers
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, caller: str) -> float:
        """Take one token: 0.0 if granted, else the seconds until one is available."""
        now = self.clock()
        tokens, last = self._buckets.pop(caller, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        granted = tokens >= 1.0
        if granted:
            tokens -= 1.0
        self._buckets[caller] = (tokens, now)
        while len(self._buckets) > self.max_callers:
            self._buckets.popitem(last=False)
        return 0.0 if granted else (1.0 - tokens) / self.rate


class _KnownKeys:
    """Which API keys (by hash) are valid, remembered for ``ttl_s``."""

    def __init__(
        self, is_valid: Callable[[str], bool], ttl_s: float = 60.0, size: int = 10_000
    ) -> None:
        self.is_valid = is_valid
        self.ttl_s = ttl_s
        self.size = size
        self._seen: OrderedDict[str, tuple[bool, float]] = OrderedDict()

    def cached(self, digest: str) -> bool | None:
        found = self._seen.get(digest)
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]

    async def check(self, key: str, digest: str) -> bool:
        valid = await asyncio.to_thread(self.is_valid, key)
        self._seen[digest] = (valid, time.monotonic() + self.ttl_s)
        self._seen.move_to_end(digest)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return valid


class SecurityMiddleware:
    """Rate limit, body size limit and security headers (see the module's text)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: ApiSettings,
        key_is_valid: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.max_body = settings.max_body_bytes
        self.buckets = TokenBuckets(settings.rate_per_s, settings.burst, clock=clock)
        self.keys = _KnownKeys(key_is_valid) if key_is_valid is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._secured(scope, receive, watched)
        except OperationalError as exc:
            # The database is unreachable (restarting, or failing over to its standby):
            # a clear "come back" for the caller instead of a 500 and a traceback.
            if started:
                raise
            log.warning("database unavailable; answered 503", error=type(exc.orig).__name__)
            path = scope.get("path", "")
            await _answer(
                _with_headers(send, path),
                503,
                "the database is unavailable for a moment; send the request again",
                [(b"retry-after", b"1")],
            )

    async def _secured(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        headers = _headers(scope)
        secured = _with_headers(send, path)
        if path not in _UNLIMITED_PATHS:
            caller, unknown_key = self._caller(scope, headers)
            wait = self.buckets.take(caller)
            if wait > 0:
                log.warning("rate limited", caller=caller.split(":", 1)[0], path=path)
                retry = str(max(1, math.ceil(wait)))
                await _answer(secured, 429, "too many requests", [(b"retry-after", retry.encode())])
                return
            if unknown_key is not None and self.keys is not None:
                # Looked up only once the address's bucket allowed the request, so a
                # flood of made-up keys costs no database queries beyond the limit.
                await self.keys.check(*unknown_key)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            await _answer(secured, 413, f"body over {self.max_body} bytes")
            return
        if (declared.isdigit() and int(declared) > 0) or "transfer-encoding" in headers:
            body = await self._read_body(receive)
            if body is None:
                await _answer(secured, 413, f"body over {self.max_body} bytes")
                return
            if has_unpaired_surrogate(body):
                log.warning("request refused: unpaired surrogate in the body", path=path)
                await _answer(
                    secured,
                    400,
                    "the body holds text that is not valid Unicode "
                    "(an unpaired surrogate escape such as \\ud800)",
                )
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, secured)

    def _caller(self, scope: Scope, headers: dict[str, str]) -> tuple[str, tuple[str, str] | None]:
        """The bucket to charge, and a key not seen lately (to look up after)."""
        client = scope.get("client")
        by_address = f"ip:{client[0] if client else 'unknown'}"
        authorization = headers.get("authorization", "")
        if self.keys is None or authorization[:7].lower() != "bearer ":
            return by_address, None
        key = authorization[7:].strip()
        digest = hashlib.sha256(key.encode()).hexdigest()
        known = self.keys.cached(digest)
        if known is None:
            return by_address, (key, digest)
        return (f"key:{digest[:32]}" if known else by_address), None

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; the route will see the disconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def has_unpaired_surrogate(body: bytes) -> bool:
    """Whether ``body`` is JSON whose text holds an unpaired UTF-16 surrogate.

    Only a ``\\u`` escape can make one (raw bytes that are not UTF-8 fail to decode
    anyway). pydantic's parser refuses such escapes and Python's ``json`` takes them:
    a body the first refuses and the second takes is checked by encoding what it holds.
    """
    if b"\\u" not in body:
        return False
    try:
        pydantic_core.from_json(body)
        return False
    except ValueError:
        pass
    try:
        document = json.loads(body)
    except ValueError:
        return False  # not JSON at all: the route answers for itself
    try:
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _with_headers(send: Send, path: str) -> Send:
    async def secured(message: Message) -> None:
        if message["type"] == "http.response.start":
            raw = list(message.get("headers", []))
            present = {name.lower() for name, _ in raw}
            extra = [(n, v) for n, v in _ALWAYS if n not in present]
            if path.startswith("/v1/") and b"cache-control" not in present:
                extra.append((b"cache-control", b"no-store"))
            content_type = next((v for n, v in raw if n.lower() == b"content-type"), b"")
            if content_type.startswith(b"text/html") and b"content-security-policy" not in present:
                policy = DOCS_CSP if path.startswith(_DOCS_PATHS) else HTML_CSP
                extra.append((b"content-security-policy", policy.encode()))
            message["headers"] = raw + extra
        await send(message)

    return secured


async def _answer(
    send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RedactUrlSecrets(logging.Filter):
    """Redacts secrets in URLs a library logs: uvicorn's access log prints the path and
    query string, where gateways' receipts and forwarded SMS replies carry the shared
    token (``/v1/receipts/esms/<token>``, the deprecated ``?token=``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_url_secrets(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted_arg(a) for a in record.args)
        return True


def _redacted_arg(value: object) -> object:
    if isinstance(value, int | float) or value is None:
        return value
    text = str(value)  # e.g. an httpx.URL
    redacted = redact_url_secrets(text)
    return value if redacted == text else redacted


def redact_library_urls(names: tuple[str, ...] = ("uvicorn.access", "httpx")) -> None:
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactUrlSecrets) for f in logger.filters):
            logger.addFilter(RedactUrlSecrets())


async def _value_out_of_range(request: Request, exc: Exception) -> JSONResponse:
    """The database refused a value from the request (a number beyond its column's
    range, a NUL character in text): the caller's error, answered 422, not a 500."""
    cause = getattr(exc, "orig", None)
    log.warning(
        "request value refused by the database",
        path=request.url.path,
        error=type(cause or exc).__name__,
    )
    return JSONResponse(
        {"detail": "a value in the request is out of the range the service stores"},
        status_code=422,
    )


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, without echoing the input: what was sent may hold personal data,
    and text that cannot be encoded (the answer would fail as a 500)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [
        {
            "type": _printable(error.get("type", "")),
            "loc": [p if isinstance(p, int) else _printable(p) for p in error.get("loc", ())],
            "msg": _printable(error.get("msg", "")),
        }
        for error in errors
    ]
    return JSONResponse({"detail": detail}, status_code=422)


def _printable(value: Any) -> str:
    return str(value).encode("utf-8", "replace").decode("utf-8")


def secure_api(api: Any, app: Any) -> None:
    """Install :class:`SecurityMiddleware` on ``create_api``'s FastAPI app for ``app``
    (the :class:`notifier.app.Notifier`), and keep secrets in URLs out of the logs."""
    from notifier.store.apikeys import ApiKeys

    redact_library_urls()
    api.add_exception_handler(DataError, _value_out_of_range)
    api.add_exception_handler(RequestValidationError, _invalid_request)
    keys = ApiKeys(app.database)
    api.add_middleware(
        SecurityMiddleware,
        settings=app.settings.api,
        key_is_valid=lambda key: keys.authenticate(key) is not None,
    )
    trusted = app.settings.api.trusted_proxies
    if trusted:
        # Outermost: the rate limit, sign-in throttling and the access log all see the
        # client a trusted proxy names (its X-Forwarded-For, read right to left past
        # the trusted hops), never an address a client wrote itself.
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        api.add_middleware(ProxyHeadersMiddleware, trusted_hosts=trusted)
