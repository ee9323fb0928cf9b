"""A configurable HTTP SMS gateway, for provinces' own gateways and the many small
Vietnamese SMS APIs that are "POST some JSON, read a code back".

Everything is settings (``NOTIFIER_ADAPTERS__HTTP_SMS__*``):

- where: ``url``, ``method`` (POST, PUT, GET), ``body_encoding`` (json, form, query),
  ``headers`` (secret values, e.g. ``{"Authorization": "Bearer ..."}``);
- what: ``body``, a template whose strings may hold the placeholders ``{phone}``
  (in ``phone_format``), ``{text}``, ``{brandname}``, ``{reference}`` (the delivery
  id), ``{unicode}`` ("1" when the text is sent as UCS-2, else "0") and
  ``{secret.NAME}`` (a value of ``secrets``, for gateways that want credentials in the
  body);
- how to read the answer: ``success_field`` + ``success_value`` (a dotted JSON path
  and the value it must hold; without them any 2xx is success), ``message_id_field``,
  ``code_field``, ``message_field``, and the codes that are ``permanent_codes``
  (about the recipient: final), ``operator_alert_codes`` (our account or
  configuration: alert and fail over), ``duplicate_codes`` (the reference was
  already taken: treated as sent). Other refusals are temporary (retried).

Delivery receipts (optional): POSTed JSON (an object or a list of objects) signed
with HMAC-SHA256 over the raw body in ``receipt_signature_header`` (hex, optionally
``sha256=`` first) with ``receipt_secret``; or, for gateways that cannot sign, the
token as the last path segment of the callback URL, ``/v1/receipts/http_sms/<token>``
(``?token=<receipt_token>`` still accepted, deprecated). Field paths and status values are
settings too (``receipt_*``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self
from uuid import UUID

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

from notifier.adapter import (
    InvalidReceipt,
    PermanentFailure,
    Receipt,
    ReceiptRequest,
    TemporaryFailure,
)
from notifier.adapter_http import status_failure
from notifier.phones import PhoneFormat

from .base import (
    GatewayAccepted,
    PreparedSms,
    SmsAdapterBase,
    SmsSettings,
    check_http_url,
    check_receipt_token,
    decode_json_text,
    gateway_text,
    json_path,
    read_json,
)

__all__ = ["HttpSmsAdapter", "HttpSmsSettings", "render_template"]

_PLACEHOLDER = re.compile(r"\{(phone|text|brandname|reference|unicode|secret\.[A-Za-z0-9_]+)\}")
_SECRET_PLACEHOLDER = re.compile(r"\{secret\.([A-Za-z0-9_]+)\}")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~\-]+")
_SECRET_NAME = re.compile(r"[A-Za-z0-9_]+")
_FIELD_PATH = re.compile(r"[^.\s]+(\.[^.\s]+)*")

_DEFAULT_BODY: dict[str, Any] = {
    "to": "{phone}",
    "text": "{text}",
    "sender": "{brandname}",
    "reference": "{reference}",
}


def render_template(template: Any, values: Mapping[str, str]) -> Any:
    """Replace placeholders in every string of a JSON-like template (not in keys)."""
    if isinstance(template, str):
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)
    if isinstance(template, Mapping):
        return {key: render_template(value, values) for key, value in template.items()}
    if isinstance(template, list):
        return [render_template(value, values) for value in template]
    return template


def _strings(template: Any) -> list[str]:
    if isinstance(template, str):
        return [template]
    if isinstance(template, Mapping):
        return [s for value in template.values() for s in _strings(value)]
    if isinstance(template, list):
        return [s for value in template for s in _strings(value)]
    return []


def _as_text(value: Any) -> str | None:
    """A JSON scalar as the text settings compare it with (true, 0, "OK")."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip()
    return json.dumps(value)


class HttpSmsSettings(SmsSettings):
    """``NOTIFIER_ADAPTERS__HTTP_SMS__*``. Lists and dicts may be given as JSON text."""

    brandname: str = ""  # optional here: some gateways fix the sender id themselves
    url: str
    method: Literal["POST", "PUT", "GET"] = "POST"
    body_encoding: Literal["json", "form", "query"] = "json"
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    secrets: dict[str, SecretStr] = Field(default_factory=dict)
    phone_format: PhoneFormat = PhoneFormat.INTERNATIONAL
    body: dict[str, Any] = Field(default_factory=lambda: dict(_DEFAULT_BODY))

    success_field: str | None = None
    success_value: str | None = None
    message_id_field: str | None = None
    code_field: str | None = None
    message_field: str | None = None
    permanent_codes: list[str] = Field(default_factory=list)
    operator_alert_codes: list[str] = Field(default_factory=list)
    duplicate_codes: list[str] = Field(default_factory=list)

    receipt_secret: SecretStr | None = None
    receipt_signature_header: str = "x-signature"
    receipt_reference_field: str | None = "reference"
    receipt_message_id_field: str | None = "message_id"
    receipt_status_field: str = "status"
    receipt_delivered_values: list[str] = Field(default_factory=lambda: ["delivered"])
    receipt_failed_values: list[str] = Field(
        default_factory=lambda: ["failed", "undelivered", "rejected", "expired"]
    )
    receipt_error_field: str | None = "error"

    @field_validator(
        "headers",
        "secrets",
        "body",
        "permanent_codes",
        "operator_alert_codes",
        "duplicate_codes",
        "receipt_delivered_values",
        "receipt_failed_values",
        mode="before",
    )
    @classmethod
    def _decode_json(cls, value: Any) -> Any:
        return decode_json_text(value)

    @field_validator("brandname")
    @classmethod
    def _brandname(cls, value: str) -> str:
        value = value.strip()
        if value and not re.fullmatch(r"[\x20-\x7e]{1,11}", value):
            raise ValueError("must be at most 11 printable ASCII characters")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_http_url(value)

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, secret in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError("header names must be HTTP tokens")
            if any(ch in secret.get_secret_value() for ch in "\r\n\x00"):
                raise ValueError(f"header {name!r} must not contain line breaks")
        return value

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name in value:
            if not _SECRET_NAME.fullmatch(name):
                raise ValueError("secret names are letters, digits and _ only")
        return value

    @field_validator(
        "success_field",
        "message_id_field",
        "code_field",
        "message_field",
        "receipt_reference_field",
        "receipt_message_id_field",
        "receipt_status_field",
        "receipt_error_field",
    )
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not _FIELD_PATH.fullmatch(value):
            raise ValueError("must be a dotted field path such as status or data.id")
        return value

    @field_validator("receipt_signature_header")
    @classmethod
    def _signature_header(cls, value: str) -> str:
        if not _HEADER_NAME.fullmatch(value):
            raise ValueError("must be an HTTP header name")
        return value.lower()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.success_field is None) != (self.success_value is None):
            raise ValueError("success_field and success_value go together")
        for text in _strings(self.body):
            for name in _SECRET_PLACEHOLDER.findall(text):
                if name not in self.secrets:
                    raise ValueError(f"body uses {{secret.{name}}} but secrets has no {name!r}")
        if self.body_encoding != "json":
            for key, value in self.body.items():
                if not isinstance(value, str | int | float | bool):
                    raise ValueError(
                        f"body field {key!r}: {self.body_encoding} bodies take plain values only"
                    )
        elif self.method == "GET":
            raise ValueError("GET sends no JSON body: use body_encoding 'query'")
        return self


class HttpSmsAdapter(SmsAdapterBase[HttpSmsSettings]):
    """SMS through a gateway described entirely by settings (see the module docs)."""

    name: ClassVar[str] = "http_sms"
    description: ClassVar[str] = (
        "Configurable HTTP SMS gateway (JSON/form/query templates, code mapping, "
        "HMAC-signed receipts)"
    )
    settings_model = HttpSmsSettings
    gateway_label: ClassVar[str] = "HTTP SMS gateway"
    accepts_receipts: ClassVar[bool] = True

    def base_url(self) -> str:
        # Requests use the absolute URL (httpx would append "/" to a base_url path).
        url = httpx.URL(self.settings.url)
        return str(url.copy_with(path="/", query=None, fragment=None))

    def client_options(self) -> dict[str, Any]:
        headers = {name: value.get_secret_value() for name, value in self.settings.headers.items()}
        return {"headers": headers} if headers else {}

    def placeholder_values(self, sms: PreparedSms) -> dict[str, str]:
        settings = self.settings
        values = {
            "phone": sms.phone.format(settings.phone_format),
            "text": sms.text,
            "brandname": settings.brandname,
            "reference": sms.reference,
            "unicode": "1" if sms.ucs2 else "0",
        }
        values.update(
            {f"secret.{name}": value.get_secret_value() for name, value in settings.secrets.items()}
        )
        return values

    async def submit(self, client: httpx.AsyncClient, sms: PreparedSms) -> GatewayAccepted:
        settings = self.settings
        payload = render_template(settings.body, self.placeholder_values(sms))
        kwargs: dict[str, Any]
        if settings.body_encoding == "json":
            kwargs = {"json": payload}
        else:
            flat = {key: _as_text(value) or "" for key, value in payload.items()}
            kwargs = {"data": flat} if settings.body_encoding == "form" else {"params": flat}
        response = await self.request(client, settings.method, settings.url, **kwargs)
        document = read_json(response)
        code = _as_text(json_path(document, settings.code_field))
        if code is not None and code in settings.duplicate_codes:
            message_id = _as_text(json_path(document, settings.message_id_field))
            return GatewayAccepted(message_id, {"duplicate": True})
        succeeded = response.is_success and (
            settings.success_field is None
            or _as_text(json_path(document, settings.success_field)) == settings.success_value
        )
        if succeeded:
            return GatewayAccepted(_as_text(json_path(document, settings.message_id_field)))
        said = gateway_text(json_path(document, settings.message_field))
        suffix = f" ({said})" if said else ""
        label = self.gateway_label
        if code is not None and code in settings.operator_alert_codes:
            raise PermanentFailure(
                f"{label} refused the message: code {code}{suffix}", code=code, operator_alert=True
            )
        if code is not None and code in settings.permanent_codes:
            raise PermanentFailure(f"{label} refused the message: code {code}{suffix}", code=code)
        if not response.is_success:
            raise status_failure(response, label)
        raise TemporaryFailure(
            f"{label} did not confirm the message{'' if code is None else f': code {code}'}"
            f"{suffix}",
            code=code,
        )

    @classmethod
    def parse_receipt(cls, settings: HttpSmsSettings, request: ReceiptRequest) -> list[Receipt]:
        if settings.receipt_secret is not None:
            _check_signature(settings, request)
            try:
                document: Any = json.loads(request.body)
            except ValueError:
                raise InvalidReceipt("body is not JSON") from None
        elif settings.receipt_token is not None:
            check_receipt_token(settings, request)
            if request.body.strip():
                try:
                    document = json.loads(request.body)
                except ValueError:
                    raise InvalidReceipt("body is not JSON") from None
            else:  # a GET callback: the report is in the query string
                document = {k: v for k, v in request.query.items() if k != "token"}
        else:
            raise InvalidReceipt("receipts are not enabled: set receipt_secret or receipt_token")
        items = document if isinstance(document, list) else [document]
        receipts: list[Receipt] = []
        delivered_values = {v.lower() for v in settings.receipt_delivered_values}
        failed_values = {v.lower() for v in settings.receipt_failed_values}
        for item in items:
            if not isinstance(item, Mapping):
                raise InvalidReceipt("each report must be a JSON object")
            status = (_as_text(json_path(item, settings.receipt_status_field)) or "").lower()
            delivery_id = _uuid(_as_text(json_path(item, settings.receipt_reference_field)))
            message_id = _as_text(json_path(item, settings.receipt_message_id_field)) or None
            if delivery_id is None and message_id is None:
                raise InvalidReceipt("a report names neither our reference nor a message id")
            if status in delivered_values:
                receipts.append(
                    Receipt(delivered=True, delivery_id=delivery_id, provider_message_id=message_id)
                )
            elif status in failed_values:
                error = gateway_text(json_path(item, settings.receipt_error_field)) or status
                receipts.append(
                    Receipt(
                        delivered=False,
                        delivery_id=delivery_id,
                        provider_message_id=message_id,
                        error=error,
                        error_code=status,
                    )
                )
            # other statuses: still in progress, nothing to record yet
        return receipts


def _check_signature(settings: HttpSmsSettings, request: ReceiptRequest) -> None:
    assert settings.receipt_secret is not None
    if not request.body:
        raise InvalidReceipt("signed receipts need a body")
    given = request.headers.get(settings.receipt_signature_header)
    if not given:
        raise InvalidReceipt(f"missing {settings.receipt_signature_header} header")
    given = given.strip()
    if given.lower().startswith("sha256="):
        given = given[len("sha256=") :]
    expected = hmac.new(
        settings.receipt_secret.get_secret_value().encode(), request.body, hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(given.lower().encode(), expected.encode()):
        raise InvalidReceipt("bad signature")


def _uuid(value: str | None) -> UUID | None:
    if not value:
        return None
    try:
        return UUID(value)
    except ValueError:
        return None
