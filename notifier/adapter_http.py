"""The adapter kit's HTTP layer: the one place where httpx outcomes become notifier's failures.

Every built-in HTTP adapter sends through :func:`request` (or :class:`AdapterHttp`, which
owns the pooled client), so a timeout, a refused connection, a 429 or a 502 means the
same thing whatever the provider:

=================================================  =========================================
connection refused, DNS, TLS, connect/pool timeout  ``TemporaryFailure``, code
                                                    ``connect-failed``: nothing was sent
read/write timeout                                  ``TemporaryFailure(maybe_sent=True)``,
                                                    code ``timeout``
connection lost after the request went out          ``TemporaryFailure(maybe_sent=True)``,
(reset, closed without an answer, garbled answer)   code ``connection-lost``
HTTP 429 and 5xx                                    ``TemporaryFailure``, code ``http-<n>``,
                                                    ``retry_after_s`` from ``Retry-After``
                                                    (or the adapter's own reset header)
anything else                                       the :class:`httpx.Response`, for the
                                                    adapter to read (see
                                                    :func:`status_failure` for the rest)
=================================================  =========================================

``maybe_sent`` tells the core the provider may have taken the message: it then retries
the same provider (which dedupes by our reference where it can) rather than failing
over to another one. Codes are always spelled ``http-<status>``.

Personal data: reasons name the provider and the error class only, never the URL
(which may carry a phone number or a token) or the body.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from notifier.adapter import AdapterContext, DeliveryFailure, PermanentFailure, TemporaryFailure

__all__ = [
    "CONNECTION_LOST",
    "CONNECT_FAILED",
    "MAX_RETRY_AFTER_S",
    "TIMEOUT",
    "AdapterHttp",
    "RetryAfterHook",
    "answer_failure",
    "http_code",
    "parse_retry_after",
    "request",
    "request_sync",
    "retry_after",
    "status_failure",
    "transport_failure",
]

# Failure codes for outcomes without an HTTP status.
CONNECT_FAILED = "connect-failed"  # the provider never saw the request
TIMEOUT = "timeout"  # the request went out; no answer in time
CONNECTION_LOST = "connection-lost"  # the request went out; the connection died

# A provider asking for more than an hour is treated as asking for an hour: the core's
# own backoff ceiling and the circuit breaker take over from there.
MAX_RETRY_AFTER_S = 3600.0

# Errors raised before any byte of the request could reach the provider.
_NOT_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
    httpx.ProxyError,
)

# How a provider says "wait this long" on a 429/5xx: the adapter may pass its own.
RetryAfterHook = Callable[[httpx.Response], float | None]


def http_code(status: int) -> str:
    """The failure code for an HTTP status: ``http-429``, ``http-503``..."""
    return f"http-{status}"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP date.

    None when absent or unreadable; never negative; at most :data:`MAX_RETRY_AFTER_S`.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # HTTP dates are GMT (RFC 9110 §5.6.7)
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def retry_after(response: httpx.Response) -> float | None:
    """The default hook: the standard ``Retry-After`` header."""
    return parse_retry_after(response.headers.get("retry-after"))


def transport_failure(exc: httpx.TransportError, provider: str) -> TemporaryFailure:
    """A transport error as a temporary failure, saying whether the provider may have
    taken the message."""
    kind = type(exc).__name__
    if isinstance(exc, _NOT_SENT):
        return TemporaryFailure(f"{provider} unreachable ({kind})", code=CONNECT_FAILED)
    if isinstance(exc, httpx.TimeoutException):  # read or write timeout
        return TemporaryFailure(
            f"{provider} did not answer in time ({kind}); it may have taken the message",
            code=TIMEOUT,
            maybe_sent=True,
        )
    # ReadError, WriteError, RemoteProtocolError ("server disconnected without sending a
    # response"), LocalProtocolError: the request may have been read and acted upon.
    return TemporaryFailure(
        f"{provider} connection lost ({kind}); it may have taken the message",
        code=CONNECTION_LOST,
        maybe_sent=True,
    )


def answer_failure(
    response: httpx.Response, provider: str, hook: RetryAfterHook | None = None
) -> TemporaryFailure | None:
    """429 and 5xx as a temporary failure with the provider's wait; None otherwise."""
    status = response.status_code
    if status != 429 and status < 500:
        return None
    wait = (hook or retry_after)(response)
    what = "is throttling us" if status == 429 else "server error"
    return TemporaryFailure(
        f"{provider} {what} (HTTP {status})", code=http_code(status), retry_after_s=wait
    )


async def request(
    client: httpx.AsyncClient,
    method: str,
    url: str | httpx.URL,
    *,
    provider: str,
    retry_after_hook: RetryAfterHook | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """One HTTP exchange on the adapter's own client, with transport errors, 429 and
    5xx raised as :class:`TemporaryFailure`. Other answers are returned to be read.

    ``provider`` names the provider in failure reasons ("eSMS", "Zalo");
    ``retry_after_hook`` reads a provider's own reset header (default: ``Retry-After``).
    ``kwargs`` go to :meth:`httpx.AsyncClient.request` (``json=``, ``headers=``...).
    """
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        raise transport_failure(exc, provider) from None
    failure = answer_failure(response, provider, retry_after_hook)
    if failure is not None:
        raise failure
    return response


def request_sync(
    client: httpx.Client,
    method: str,
    url: str | httpx.URL,
    *,
    provider: str,
    retry_after_hook: RetryAfterHook | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """:func:`request` for the rare synchronous call (e.g. a token refresh run by the
    token store in a thread): the same mapping, the same codes."""
    try:
        response = client.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        raise transport_failure(exc, provider) from None
    failure = answer_failure(response, provider, retry_after_hook)
    if failure is not None:
        raise failure
    return response


def status_failure(
    response: httpx.Response, provider: str, *, refusal_is_ours: bool = True
) -> DeliveryFailure:
    """An answer the adapter could not read as success or as one of the provider's own
    codes: what its HTTP status says.

    401/403: our credentials (operator alert); 3xx, 404, 405: the URL (operator alert);
    408/425: try again; other 4xx: the provider refused the request, ours to fix
    (``refusal_is_ours=True``, an operator alert) or about this message only (False);
    2xx/1xx that could not be read: temporary (the conservative choice).
    """
    status = response.status_code
    code = http_code(status)
    if status in (401, 403):
        return PermanentFailure(
            f"{provider} refused our credentials (HTTP {status})", code=code, operator_alert=True
        )
    if status in (408, 425):
        return TemporaryFailure(
            f"{provider} asked us to try again (HTTP {status})",
            code=code,
            retry_after_s=retry_after(response),
        )
    if 300 <= status < 400 or status in (404, 405):
        return PermanentFailure(
            f"{provider} answered HTTP {status}: check its URL", code=code, operator_alert=True
        )
    if 400 <= status < 500:
        if refusal_is_ours:
            return PermanentFailure(
                f"{provider} refused the request (HTTP {status}): check its settings",
                code=code,
                operator_alert=True,
            )
        return PermanentFailure(f"{provider} refused the message (HTTP {status})", code=code)
    if status >= 500 or status == 429:
        failure = answer_failure(response, provider)
        assert failure is not None
        return failure
    return TemporaryFailure(f"{provider} gave an unreadable answer (HTTP {status})", code=code)


class AdapterHttp:
    """An adapter's pooled :class:`httpx.AsyncClient`, made on first use on the event
    loop that sends (adapters are built before, outside that loop), with
    :meth:`request`. Close it from the adapter's ``close``::

        self.http = AdapterHttp(context, "Acme", timeout_s=settings.timeout_s)
        response = await self.http.request("POST", settings.url, json=body)
        ...
        await self.http.aclose()
    """

    def __init__(
        self,
        context: AdapterContext,
        provider: str,
        *,
        timeout_s: float,
        max_connections: int = 10,
        retry_after_hook: RetryAfterHook | None = None,
        **client_options: Any,
    ) -> None:
        self.context = context
        self.provider = provider
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.retry_after_hook = retry_after_hook
        self.client_options = client_options
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def client(self) -> httpx.AsyncClient:
        """The pooled client of the running loop (a new one if the loop changed)."""
        loop = asyncio.get_running_loop()
        client = self._client
        if client is None or client.is_closed or self._loop is not loop:
            # A client made on another loop (tests, a restarted runtime) can neither be
            # used nor closed from this one; its connections go with that loop.
            client = self.context.http_client(
                timeout=httpx.Timeout(self.timeout_s),
                limits=httpx.Limits(
                    max_connections=self.max_connections,
                    max_keepalive_connections=self.max_connections,
                ),
                **self.client_options,
            )
            self._client, self._loop = client, loop
        return client

    async def request(self, method: str, url: str | httpx.URL, **kwargs: Any) -> httpx.Response:
        """:func:`request` on this adapter's client."""
        return await request(
            self.client(),
            method,
            url,
            provider=self.provider,
            retry_after_hook=self.retry_after_hook,
            **kwargs,
        )

    async def aclose(self) -> None:
        """Close the client (idempotent); one made on another loop is just dropped."""
        client, loop = self._client, self._loop
        self._client = self._loop = None
        if client is None or client.is_closed:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        if loop is running:
            await client.aclose()
