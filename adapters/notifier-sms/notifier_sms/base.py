"""What every SMS gateway adapter shares: settings, text and phone preparation and the
pooled HTTP client (the adapter kit's :class:`~notifier.adapter_http.AdapterHttp`, which
maps HTTP/transport errors onto the core's failures the same way for every adapter).

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
import hmac
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import httpx
from pydantic import Field, SecretStr, field_validator

from notifier.adapter import (
    Adapter,
    AdapterContext,
    AdapterSettings,
    InvalidReceipt,
    OutboundMessage,
    PermanentFailure,
    ReceiptRequest,
    RecipientKind,
    SendResult,
    TemplatePart,
)
from notifier.adapter_http import AdapterHttp, request, retry_after
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
    "decode_json_text",
    "gateway_text",
    "json_path",
    "prepare_text",
]

# Brandnames (sender ids) are registered with the carriers: at most 11 characters,
# printable ASCII (letters, digits, a few punctuation marks in practice).
_BRANDNAME = re.compile(r"[\x20-\x7e]{1,11}")
# The receipt token travels in a URL path: URL-safe characters only.
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
    # Shared secret for the gateway's callbacks: the last path segment of
    # /v1/receipts/<name>/<token> (and /v1/inbound-sms/<name>/<token>).
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


def check_receipt_token(settings: SmsSettings, request: ReceiptRequest) -> None:
    """Require the receipt token, compared in constant time: as the path segment of
    ``/v1/receipts/<name>/<token>``, or (deprecated) as ``?token=`` on
    ``/v1/receipts/<name>``. The path form survives a gateway appending its own query
    string to the URL (eSMS does); a ``?token=`` may not."""
    expected = settings.receipt_token
    if expected is None:
        raise InvalidReceipt("receipts are not enabled: set receipt_token")
    given = request.token if request.token is not None else request.query.get("token")
    if given is None:
        raise InvalidReceipt("missing token")
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise InvalidReceipt("wrong token")


class SmsAdapterBase(Adapter[S]):
    """Base of the SMS gateway adapters (channel ``sms``).

    :meth:`send` prepares the text (diacritics, segments), parses the phone number,
    then calls the gateway's :meth:`submit` with a pooled ``httpx.AsyncClient``
    created on first use through :meth:`AdapterContext.http_client` and closed in
    :meth:`close`. Timeouts, connection errors, HTTP 429 (with Retry-After, or the
    gateway's own header through :meth:`retry_after`) and 5xx become
    :class:`TemporaryFailure` in the adapter kit's HTTP layer (:mod:`notifier.adapter_http`).
    """

    channel: ClassVar[str] = "sms"
    recipient_kind: ClassVar[RecipientKind] = RecipientKind.PHONE
    template_parts: ClassVar[tuple[TemplatePart, ...]] = (TemplatePart("text"),)
    # Shown in failure reasons ("eSMS refused ...").
    gateway_label: ClassVar[str] = "SMS gateway"

    def __init__(self, settings: S, context: AdapterContext) -> None:
        super().__init__(settings, context)
        # The pooled client is made on first send: an httpx client belongs to the loop
        # that uses it, and adapters are constructed before (and outside) that loop.
        self._http: AdapterHttp | None = None

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
        """One HTTP exchange through the adapter kit's :func:`~notifier.adapter_http.request`:
        transport errors, 429 and 5xx are already :class:`TemporaryFailure` (with
        ``maybe_sent`` once the request went out); other answers are the caller's to read."""
        return await request(
            client,
            method,
            url,
            provider=self.gateway_label,
            retry_after_hook=self.retry_after,
            **kwargs,
        )

    def retry_after(self, response: httpx.Response) -> float | None:
        """Seconds a throttling (429) or failing (5xx) gateway asks us to wait: the
        ``Retry-After`` header unless the gateway uses its own (override it)."""
        return retry_after(response)

    # -- the client -----------------------------------------------------------------

    def _get_client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = AdapterHttp(
                self.context,
                self.gateway_label,
                timeout_s=self.settings.timeout_s,
                max_connections=self.settings.max_connections,
                retry_after_hook=self.retry_after,
                base_url=self.base_url(),
                **self.client_options(),
            )
        return self._http.client()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
