"""Settings of the email adapter: which SMTP relay to use and who the mail is from.

They come from ``NOTIFIER_ADAPTERS__EMAIL__*`` through the core's settings; unknown
keys are errors (see :class:`notifier.adapter.AdapterSettings`).
"""

from __future__ import annotations

import re
from email.errors import HeaderParseError
from email.headerregistry import Address
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from notifier.adapter import AdapterSettings

# Anything that could end a header line or smuggle a control character into one.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")


def check_addr_spec(value: str) -> str:
    """A bare ``local@domain`` address in ASCII (we do not speak SMTPUTF8), or ValueError.

    The message never includes the value: for recipients it is personal data.
    """
    if not value.isascii() or _CONTROL.search(value) or " " in value:
        raise ValueError("must be an ASCII address without spaces or control characters")
    try:
        parsed = Address(addr_spec=value)
    except (ValueError, HeaderParseError):
        raise ValueError("is not a valid email address") from None
    if not parsed.username or not parsed.domain or parsed.addr_spec != value:
        raise ValueError("is not a valid email address of the form local@domain")
    return value


class EmailSettings(AdapterSettings):
    """Where to hand mail over, how to authenticate, and how many connections to keep."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=25, ge=1, le=65535)
    # "starttls": plain connect, then upgrade (port 587 usually);
    # "tls": TLS from the first byte (implicit TLS, port 465 usually).
    security: Literal["none", "starttls", "tls"] = "none"
    username: str | None = Field(default=None, min_length=1)
    password: SecretStr | None = None  # SecretStr: never shown in repr, logs or errors
    # Not EmailStr: email-validator refuses special-use domains such as ``.local``
    # and ``.internal`` that closed government networks do use for relays.
    from_address: str = "no-reply@notifier.local"
    from_name: str = "Cổng Dịch vụ công"
    reply_to: str | None = None
    pool_size: int = Field(default=4, ge=1, le=64)
    timeout_s: float = Field(default=20.0, gt=0)
    # The wait for the answer to the end of DATA, once the message is sent. RFC 5321
    # (4.5.3.2.6) has clients wait 10 minutes: a busy relay may take long to queue the
    # message, and cutting earlier leaves it `unknown`, held for an admin. 60 s: the
    # email channel's lease (75 s) bounds how late a crashed worker's claims come back.
    data_timeout_s: float = Field(default=60.0, gt=0, le=600)
    validate_certs: bool = True
    local_hostname: str | None = Field(default=None, min_length=1)

    @field_validator("host", "local_hostname")
    @classmethod
    def _no_whitespace(cls, value: str | None) -> str | None:
        if value is not None and (_CONTROL.search(value) or " " in value):
            raise ValueError("must not contain spaces or control characters")
        return value

    @field_validator("from_address", "reply_to")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return None if value is None else check_addr_spec(value.strip())

    @field_validator("from_name")
    @classmethod
    def _display_name(cls, value: str) -> str:
        # A line break here would let configuration inject headers into every message.
        if _CONTROL.search(value):
            raise ValueError("must not contain line breaks or control characters")
        return value.strip()

    @model_validator(mode="after")
    def _credentials_together(self) -> Self:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password must be set together, or neither")
        return self
