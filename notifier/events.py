"""The dossier status event: the contract between TTHC systems and notifier (version 1).

Publishers send it as plain JSON; ``schemas/dossier-status-event.v1.schema.json`` is
generated from these models (``notifier schema``) and documented in ``docs/events.md``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import date
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from notifier.text import strip_diacritics

SCHEMA_VERSION = "1"


class Status(StrEnum):
    """Dossier statuses, with the numeric codes one-stop systems sync to the national portal."""

    SUBMITTED = "submitted"
    RECEIVED = "received"
    REFUSED = "refused"
    PROCESSING = "processing"
    SUPPLEMENT_REQUESTED = "supplement_requested"
    PAYMENT_REQUIRED = "payment_required"
    WITHDRAWN = "withdrawn"
    STOPPED = "stopped"
    RESULT_READY = "result_ready"
    RESULT_RETURNED = "result_returned"
    OVERDUE = "overdue"

    @property
    def code(self) -> int | None:
        """The portal's numeric code; ``None`` for overdue, which has none."""
        return _CODES.get(self)

    @property
    def vietnamese_name(self) -> str:
        return _VIETNAMESE_NAMES[self]


_CODES: dict[Status, int] = {
    Status.SUBMITTED: 1,
    Status.RECEIVED: 2,
    Status.REFUSED: 3,
    Status.PROCESSING: 4,
    Status.SUPPLEMENT_REQUESTED: 5,
    Status.PAYMENT_REQUIRED: 6,
    Status.WITHDRAWN: 7,
    Status.STOPPED: 8,
    Status.RESULT_READY: 9,
    Status.RESULT_RETURNED: 10,
}

_VIETNAMESE_NAMES: dict[Status, str] = {
    Status.SUBMITTED: "Mới đăng ký",
    Status.RECEIVED: "Được tiếp nhận",
    Status.REFUSED: "Không được tiếp nhận",
    Status.PROCESSING: "Đang xử lý",
    Status.SUPPLEMENT_REQUESTED: "Yêu cầu bổ sung giấy tờ",
    Status.PAYMENT_REQUIRED: "Yêu cầu thực hiện nghĩa vụ tài chính",
    Status.WITHDRAWN: "Công dân yêu cầu rút hồ sơ",
    Status.STOPPED: "Dừng xử lý",
    Status.RESULT_READY: "Đã xử lý xong",
    Status.RESULT_RETURNED: "Đã trả kết quả",
    Status.OVERDUE: "Quá hạn",
}


def _fold(text: str) -> str:
    """Lower-case, strip diacritics (đ too) and collapse spaces and underscores."""
    bare = strip_diacritics(text)
    return " ".join(bare.lower().replace("_", " ").replace("-", " ").split())


_STATUS_ALIASES: dict[str, Status] = {}
for _status in Status:
    _STATUS_ALIASES[_fold(_status.value)] = _status
    _STATUS_ALIASES[_fold(_status.vietnamese_name)] = _status
_STATUS_BY_CODE: dict[str, Status] = {str(code): status for status, code in _CODES.items()}
_STATUS_ALIASES[_fold("quá hạn xử lý")] = Status.OVERDUE


def parse_status(value: object) -> Status:
    """Accept a code (2 or "2"), an English name or a Vietnamese name (any accents/case)."""
    if isinstance(value, bool):
        raise ValueError("status must be a code (1-10) or a status name, not a boolean")
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError("status must be a code (1-10) or a status name")
    text = value.strip()
    if any(ch.isdigit() for ch in text):
        # A code is exactly "1".."10": never "-1", "_2" or "2_" (which _fold would trim).
        status = _STATUS_BY_CODE.get(text)
    else:
        status = _STATUS_ALIASES.get(_fold(text))
    if status is None:
        raise ValueError(
            f"unknown status {value[:40]!r}; use a code 1-10, 'overdue', "
            "or a name such as 'received' / 'Được tiếp nhận'"
        )
    return status


def _single_line(value: str) -> str:
    # Header injection guard: a single-line field never carries CR/LF or other controls.
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise ValueError("must be a single line without control characters")
    return value.strip()


SingleLine = Annotated[str, StringConstraints(min_length=1, max_length=300)]
Text = Annotated[str, StringConstraints(max_length=2000)]
CODE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")
Code = Annotated[str, StringConstraints(pattern=CODE_PATTERN.pattern)]
Language = Literal["vi", "en"]
ChannelName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{1,31}$")]


class _Model(BaseModel):
    # Strict: no number-as-timestamp or number-as-string coercion. Publishers send JSON,
    # where strict mode still reads ISO 8601 strings as dates and UUIDs.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True, strict=True)


class Agency(_Model):
    code: Code = Field(description="Mã đơn vị, e.g. 000.00.12.H29")
    name: SingleLine | None = None

    _line = field_validator("name")(lambda v: None if v is None else _single_line(v))


class Procedure(_Model):
    code: Code = Field(description="Mã TTHC, e.g. 1.001234")
    name: SingleLine = Field(description="Tên TTHC")

    _line = field_validator("name")(_single_line)


class Dossier(_Model):
    code: Code = Field(
        description=(
            "Mã hồ sơ, <agency code>-<YYMMDD>-<NNNN>, e.g. 000.00.12.H29-231025-0001; "
            "it must start with the event's agency code and a '-'"
        )
    )
    procedure: Procedure
    status: Annotated[
        Status,
        # The parser accepts codes and names in either language (see parse_status), so
        # the published schema says so rather than listing the canonical names only.
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "integer", "minimum": 1, "maximum": 10},
                    {"type": "string", "minLength": 1, "maxLength": 60},
                ]
            }
        ),
    ] = Field(description="A code 1-10, 'overdue', or a status name in English or Vietnamese")
    due_date: date | None = Field(default=None, description="Ngày hẹn trả")
    new_due_date: date | None = Field(default=None, description="For 'overdue': the new date")
    reason: Text | None = Field(
        default=None, description="Why refused / stopped, or what to supplement"
    )
    amount_due: int | None = Field(default=None, ge=0, description="Fees or taxes due, in VND")
    note: Text | None = None
    tracking_url: Annotated[str, StringConstraints(max_length=500)] | None = Field(
        default=None,
        description="The dossier's page on the public service portal (https)",
        json_schema_extra={"pattern": "^https://"},
    )

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: object) -> Status:
        return parse_status(value)

    @field_validator("tracking_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
            raise ValueError("must be an https:// URL")
        return None if value is None else _single_line(value)


class ZaloContact(_Model):
    phone: Annotated[str, StringConstraints(max_length=20)] | None = None
    user_id: Annotated[str, StringConstraints(max_length=64)] | None = None


class Contacts(_Model):
    email: EmailStr | None = None
    phone: (
        Annotated[str, StringConstraints(max_length=20, pattern=r"^[0-9+ ().-]{8,20}$")] | None
    ) = None
    zalo: ZaloContact | None = None
    portal_account_id: Annotated[str, StringConstraints(max_length=64)] | None = None


class Applicant(_Model):
    name: SingleLine
    citizen_id: Annotated[str, StringConstraints(pattern=r"^[0-9]{9,12}$")] | None = Field(
        default=None, description="Số định danh cá nhân / CCCD (masked in logs)"
    )
    language: Language = "vi"
    contacts: Contacts
    channels: list[ChannelName] | None = Field(
        default=None,
        description="Channels the citizen consented to; absent means every channel with a contact",
    )

    _line = field_validator("name")(_single_line)


class DossierStatusEvent(_Model):
    """One change of a dossier's status, as published by a TTHC system."""

    schema_version: Literal["1"] = Field(description="Contract version; this document is '1'")
    event_id: UUID = Field(description="Unique per event; the idempotency key")
    occurred_at: AwareDatetime = Field(description="When the status changed (with time zone)")
    source_system: Code = Field(description="The publishing system, e.g. motcua-hanoi")
    agency: Agency
    dossier: Dossier
    applicant: Applicant

    @model_validator(mode="after")
    def _overdue_has_date(self) -> DossierStatusEvent:
        if self.dossier.status is Status.OVERDUE and self.dossier.new_due_date is None:
            raise ValueError("an 'overdue' event needs dossier.new_due_date")
        return self


class EventRejected(Exception):
    """An event that cannot be processed, with a reason fit for an operator."""

    def __init__(self, reason: str, errors: list[str] | None = None) -> None:
        self.reason = reason
        self.errors = errors or []
        super().__init__(reason)


def parse_event(raw: bytes | str, *, max_bytes: int) -> DossierStatusEvent:
    """Parse and validate a raw event body, raising :class:`EventRejected` with the reason."""
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError:
            raise EventRejected("body is not valid UTF-8 text") from None
    size = len(raw)
    if size > max_bytes:
        raise EventRejected(f"event is {size} bytes, over the {max_bytes}-byte limit")
    try:
        document: Any = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise EventRejected(f"body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise EventRejected("body must be a JSON object")
    version = document.get("schema_version")
    if version != SCHEMA_VERSION:
        raise EventRejected(
            f"unsupported schema_version {json.dumps(version)[:20]}; "
            f'this service accepts the string "{SCHEMA_VERSION}"'
        )
    try:
        event = DossierStatusEvent.model_validate_json(raw)
    except ValidationError as exc:
        errors = [_describe(error) for error in exc.errors()]
        raise EventRejected(
            "event does not match the schema: " + "; ".join(errors), errors
        ) from None
    mismatch = dossier_code_mismatch(event.agency.code, event.dossier.code)
    if mismatch is not None:
        raise EventRejected(mismatch, [f"dossier.code: {mismatch}"])
    return event


def dossier_code_mismatch(agency_code: str, dossier_code: str) -> str | None:
    """Why a dossier code does not belong to the agency, or None if it does.

    The national dossier code is ``<agency code>-<YYMMDD>-<NNNN>`` (e.g.
    ``000.00.12.H29-231025-0001``), so the code must start with the agency code
    exactly (same case) followed by ``-`` and something more. The date and the
    number are not checked: systems differ in the sequence's width. Checked at
    parse time, not in the model, so events stored before the rule still load.
    """
    prefix = agency_code + "-"
    if dossier_code.startswith(prefix) and len(dossier_code) > len(prefix):
        return None
    return (
        f"dossier code {dossier_code!r} does not belong to agency {agency_code!r}: a "
        f"dossier code is <agency code>-<YYMMDD>-<NNNN>, e.g. {prefix}261126-0001"
    )


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(event)"
    return f"{where}: {error['msg']}"


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the v1 event, as published in ``schemas/``."""
    schema = DossierStatusEvent.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://notifier.example/schemas/dossier-status-event.v1.schema.json"
    return schema
