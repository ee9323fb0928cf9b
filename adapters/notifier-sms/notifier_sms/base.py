"""What every SMS gateway adapter shares: settings, text and phone preparation, the
pooled HTTP client and the mapping of HTTP/transport errors onto the core's failures.

A gateway module subclasses :class:`SmsAdapterBase` and implements :meth:`submit`
(one HTTP exchange, answering a :class:`GatewayAccepted` or raising a
:class:`~notifier.adapter.DeliveryFailure`); everything before (text, segments,
phone) and around it (client, timeouts, 429/5xx) happens here, the same way for
every gateway.

Personal data: the phone number and the text never appear in a failure reason;
texts that come from a gateway are scrubbed (:func:`notifier.masking.scrub`).
"""

from __future__ import annotations

import abc
import asyncio
import hmac
import json
import math
import re
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, TypeVar

import httpx
from pydantic import Field, SecretStr, field_validator

from notifier.adapter import (
    Adapter,
    AdapterContext,
    AdapterSettings,
    DeliveryFailure,
    InvalidReceipt,
    OutboundMessage,
    PermanentFailure,
    ReceiptRequest,
    RecipientKind,
    SendResult,
    TemplatePart,
    TemporaryFailure,
)
from notifier.masking import scrub
from notifier.phones import InvalidPhone, MobileNumber, parse_mobile
from notifier.text import SmsLength, is_gsm7, sms_length, strip_diacritics

__all__ = [
    "GatewayAccepted",
    "PreparedSms",
    "SmsAdapterBase",
    "SmsSettings",
    "check_http_url",
    "check_receipt_token",
    "client_error",
    "decode_json_text",
    "gateway_text",
    "json_path",
    "parse_retry_after",
    "prepare_text",
]

# Brandnames (sender ids) are registered with the carriers: at most 11 characters,
# printable ASCII (letters, digits, a few punctuation marks in practice).
_BRANDNAME = re.compile(r"[\x20-\x7e]{1,11}")
# The receipt token travels in a query string: URL-safe characters only.
_TOKEN = re.compile(r"[A-Za-z0-9._~\-]{16,200}")

# Punctuation that word processors put in templates and that GSM-7 lacks: mapped to
# the nearest GSM-7 character(s) when sending unaccented, instead of forcing UCS-2.
_TYPOGRAPHIC = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u2032": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2033": '"',
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2212": "-",
        "\u2026": "...",
        "\u2022": "-",
        "\u00b7": ".",
        "\u00a0": " ",
        "\u202f": " ",
        "\u2009": " ",
        "\t": " ",
        "\u00d0": "D",
        "\u00f0": "d",  # Eth, sometimes typed for Đ/đ
    }
)


def prepare_text(text: str, *, unicode: bool) -> str:
    """The text as it is handed to the gateway.

    ``unicode=False``: Vietnamese without diacritics, typographic punctuation made
    plain, anything else outside GSM-7 (emoji, CJK) replaced by ``?`` so the message
    stays in GSM-7 (160 characters a segment). ``unicode=True``: the text as written
    (NFC), sent as UCS-2 when it needs to be.
    """
    text = unicodedata.normalize("NFC", text).strip()
    if unicode:
        return text
    text = strip_diacritics(text).translate(_TYPOGRAPHIC)
    return "".join(ch if is_gsm7(ch) else "?" for ch in text)


def decode_json_text(value: Any) -> Any:
    """Environment variables deliver lists and dicts as JSON text: decode them."""
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def check_http_url(value: str) -> str:
    """An absolute http(s) URL, or ValueError (without echoing a possible secret)."""
    try:
        url = httpx.URL(value.strip())
    except (httpx.InvalidURL, TypeError):
        raise ValueError("is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an absolute http:// or https:// URL")
    return str(url)


class SmsSettings(AdapterSettings):
    """Settings every SMS gateway adapter takes (``NOTIFIER_ADAPTERS__<NAME>__*``)."""

    # The sender id shown on the phone, registered with the carriers in advance.
    brandname: str
    # False: send Vietnamese without diacritics in GSM-7 (160 a segment, cheaper);
    # True: send it as written, UCS-2 (70 a segment) whenever it has a diacritic.
    unicode: bool = False
    # Longer texts are refused as a template problem (each segment is billed).
    max_segments: int = Field(default=3, ge=1, le=10)
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    max_connections: int = Field(default=10, ge=1, le=500)
    # Shared secret for delivery-report callbacks (query parameter ``token``).
    receipt_token: SecretStr | None = None

    @field_validator("brandname")
    @classmethod
    def _brandname(cls, value: str) -> str:
        value = value.strip()
        if not _BRANDNAME.fullmatch(value):
            raise ValueError(
                "must be 1 to 11 printable ASCII characters (the registered sender id)"
            )
        return value

    @field_validator("receipt_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _TOKEN.fullmatch(value.get_secret_value()):
            raise ValueError(
                "must be 16 to 200 URL-safe characters (letters, digits, . _ ~ -); "
                "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return value


S = TypeVar("S", bound=SmsSettings)


@dataclass(frozen=True)
class PreparedSms:
    """One message ready for a gateway: checked phone, final text, its length."""

    message: OutboundMessage
    phone: MobileNumber
    text: str
    length: SmsLength

    @property
    def reference(self) -> str:
        """Our idempotency/tracking reference at the gateway: the delivery id."""
        return str(self.message.delivery_id)

    @property
    def ucs2(self) -> bool:
        return self.length.encoding == "ucs2"


@dataclass(frozen=True)
class GatewayAccepted:
    """What :meth:`SmsAdapterBase.submit` answers when the gateway took the message."""

    provider_message_id: str | None
    details: Mapping[str, Any] = field(default_factory=dict)


def gateway_text(value: Any, limit: int = 160) -> str:
    """A gateway's own error text, safe for reasons and logs: masked, one line, short."""
    if value is None:
        return ""
    return scrub(" ".join(str(value).split()))[:limit]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def json_path(document: Any, path: str | None) -> Any:
    """The value at a dotted path (``data.tranId``, ``items.0.id``), or None."""
    if path is None:
        return None
    current = document
    for part in path.split("."):
        if isinstance(current, Mapping):
            current = current.get(part)
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return None
        if current is None:
            return None
    return current


def read_json(response: httpx.Response) -> Any:
    """The response body as JSON, or None when it is not JSON."""
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def client_error(response: httpx.Response, gateway: str) -> DeliveryFailure:
    """An HTTP answer that is neither success, throttling nor a server error, and that
    the gateway's own codes did not explain: our URL, credentials or request shape."""
    status = response.status_code
    code = f"http-{status}"
    if status in (401, 403):
        return PermanentFailure(
            f"{gateway} refused our credentials (HTTP {status})", code=code, operator_alert=True
        )
    if status in (408, 425):
        return TemporaryFailure(f"{gateway} asked us to try again (HTTP {status})", code=code)
    if 300 <= status < 400:
        return PermanentFailure(
            f"{gateway} answered a redirect (HTTP {status}): check its base_url",
            code=code,
            operator_alert=True,
        )
    if 400 <= status < 500:
        return PermanentFailure(
            f"{gateway} refused the request (HTTP {status}): check its settings",
            code=code,
            operator_alert=True,
        )
    # 1xx/2xx that the gateway module could not read: the message may or may not have
    # been taken; retrying is the conservative choice (and idempotent where supported).
    return TemporaryFailure(f"{gateway} gave an unreadable answer (HTTP {status})", code=code)


def check_receipt_token(settings: SmsSettings, request: ReceiptRequest) -> None:
    """Require ``?token=<receipt_token>`` on a callback, compared in constant time."""
    expected = settings.receipt_token
    if expected is None:
        raise InvalidReceipt("receipts are not enabled: set receipt_token")
    given = request.query.get("token")
    if given is None:
        raise InvalidReceipt("missing token")
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise InvalidReceipt("wrong token")


class SmsAdapterBase(Adapter[S]):
    """Base of the SMS gateway adapters (channel ``sms``).

    :meth:`send` prepares the text (diacritics, segments), parses the phone number,
    then calls the gateway's :meth:`submit` with a pooled ``httpx.AsyncClient``
    created on first use through :meth:`AdapterContext.http_client` and closed in
    :meth:`close`. Timeouts, connection errors, HTTP 429 (with Retry-After) and 5xx
    become :class:`TemporaryFailure`.
    """

    channel: ClassVar[str] = "sms"
    recipient_kind: ClassVar[RecipientKind] = RecipientKind.PHONE
    template_parts: ClassVar[tuple[TemplatePart, ...]] = (TemplatePart("text"),)
    # Shown in failure reasons ("eSMS refused ...").
    gateway_label: ClassVar[str] = "SMS gateway"

    def __init__(self, settings: S, context: AdapterContext) -> None:
        super().__init__(settings, context)
        # Created on first send: an httpx client belongs to the loop that uses it, and
        # adapters are constructed before (and outside) that loop.
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    @property
    def max_in_flight(self) -> int:
        return self.settings.max_connections

    # -- what a gateway module provides ---------------------------------------------

    @abc.abstractmethod
    def base_url(self) -> str:
        """Where the gateway's API lives; request paths are relative to it."""

    def client_options(self) -> dict[str, Any]:
        """Extra ``httpx.AsyncClient`` arguments (auth, headers)."""
        return {}

    @abc.abstractmethod
    async def submit(self, client: httpx.AsyncClient, sms: PreparedSms) -> GatewayAccepted:
        """Hand one prepared message to the gateway; raise a DeliveryFailure if it
        refuses. Use :meth:`request` for the HTTP exchange."""

    # -- the shared flow ------------------------------------------------------------

    def prepare(self, message: OutboundMessage) -> PreparedSms:
        """Text and phone checks that need no network: failures here are final."""
        raw = message.parts.get("text")
        if raw is None or not raw.strip():
            raise PermanentFailure(
                "the SMS template rendered no text", code="empty-text", operator_alert=True
            )
        text = prepare_text(raw, unicode=self.settings.unicode)
        length = sms_length(text)
        if length.segments > self.settings.max_segments:
            # Our template's problem, not the citizen's: alert, and let a gateway set up
            # differently (unaccented, more segments allowed) try.
            raise PermanentFailure(
                f"the text needs {length.segments} SMS segments ({length.encoding}, "
                f"{length.units} units) and max_segments is {self.settings.max_segments}: "
                "shorten the SMS template",
                code="too-long",
                operator_alert=True,
            )
        try:
            phone = parse_mobile(message.recipient)
        except InvalidPhone as exc:
            raise PermanentFailure(f"invalid phone number: {exc}", code="invalid-phone") from None
        return PreparedSms(message=message, phone=phone, text=text, length=length)

    async def send(self, message: OutboundMessage) -> SendResult:
        sms = self.prepare(message)
        accepted = await self.submit(self._get_client(), sms)
        details: dict[str, Any] = {
            "segments": sms.length.segments,
            "encoding": sms.length.encoding,
            "carrier": sms.phone.carrier,
        }
        details.update(accepted.details)
        return SendResult(provider_message_id=accepted.provider_message_id, details=details)

    async def request(
        self, client: httpx.AsyncClient, method: str, url: str, **kwargs: Any
    ) -> httpx.Response:
        """One HTTP exchange with transport errors, 429 and 5xx already mapped to
        :class:`TemporaryFailure`; other answers are the caller's to read."""
        label = self.gateway_label
        # Codes tell whether the gateway may have taken the message: "connect-failed"
        # (it never saw the request) vs "timeout"/"connection-lost" (outcome unknown).
        try:
            response = await client.request(method, url, **kwargs)
        except (httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ConnectError) as exc:
            raise TemporaryFailure(
                f"{label} unreachable: {type(exc).__name__} {gateway_text(exc, 120)}".rstrip(),
                code="connect-failed",
            ) from None
        except httpx.TimeoutException as exc:
            raise TemporaryFailure(
                f"{label} did not answer within {self.settings.timeout_s:g}s "
                f"({type(exc).__name__}); it may have taken the message",
                code="timeout",
                maybe_sent=True,
            ) from None
        except httpx.TransportError as exc:
            raise TemporaryFailure(
                f"{label} connection lost: {type(exc).__name__} {gateway_text(exc, 120)}".rstrip(),
                code="connection-lost",
                maybe_sent=True,
            ) from None
        status = response.status_code
        if status == 429:
            raise TemporaryFailure(
                f"{label} is throttling us (HTTP 429)",
                code="http-429",
                retry_after_s=parse_retry_after(response.headers.get("retry-after")),
            )
        if status >= 500:
            raise TemporaryFailure(
                f"{label} server error (HTTP {status})",
                code=f"http-{status}",
                retry_after_s=parse_retry_after(response.headers.get("retry-after")),
            )
        return response

    # -- the client -----------------------------------------------------------------

    def _get_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._client
        if client is not None and self._client_loop is not loop:
            # Made on another event loop (tests, a restarted runtime): its connections
            # cannot be used or closed from this one; let it go.
            client = None
        if client is None or client.is_closed:
            limits = httpx.Limits(
                max_connections=self.settings.max_connections,
                max_keepalive_connections=self.settings.max_connections,
            )
            client = self.context.http_client(
                base_url=self.base_url(),
                timeout=httpx.Timeout(self.settings.timeout_s),
                limits=limits,
                **self.client_options(),
            )
            self._client, self._client_loop = client, loop
        return client

    async def close(self) -> None:
        client, loop = self._client, self._client_loop
        self._client = self._client_loop = None
        if client is None or client.is_closed:
            return
        if loop is asyncio.get_running_loop():
            await client.aclose()
