"""Settings of the Zalo ZNS adapter: the Zalo app, the OA's webhook key, and ZNS limits.

They come from ``NOTIFIER_ADAPTERS__ZALO__*`` through the core's settings; unknown keys
are errors (see :class:`notifier.adapter.AdapterSettings`). Secrets are ``SecretStr``:
never shown in a repr, a log line or an error.
"""

from __future__ import annotations

import json
import re

from pydantic import Field, SecretStr, field_validator

from notifier.adapter import AdapterSettings

__all__ = ["DEFAULT_PARAM_LIMITS", "QUOTA_ERROR_CODES", "ZaloSettings"]

# Per-parameter length limits of ZNS templates known from vendor documentation
# (name 30, code 30, address 200, status 30). Keys ending in ``_code`` (and ``code``)
# are limited to ``code_param_length``; any other key to ``max_param_length``.
DEFAULT_PARAM_LIMITS: dict[str, int] = {
    "customer_name": 30,
    "status_name": 30,
    "status": 30,
    "address": 200,
}

# Codes meaning "the OA cannot send more today" besides -115 (balance too low), which
# the adapter always treats so. The ZBS error table has no separate daily-quota code
# (-144, once assumed here, is not in it); errors whose message mentions "quota" count
# too. Operators who see another code in the delivery log can add it here.
QUOTA_ERROR_CODES: tuple[int, ...] = ()

_CONTROL = re.compile(r"[\x00-\x20\x7f]")


class ZaloSettings(AdapterSettings):
    """One Zalo app sending ZNS on behalf of one Official Account."""

    # The Zalo app (developers.zalo.me) linked to the OA; app_secret is its "secret key",
    # sent as the ``secret_key`` header of the OAuth v4 refresh call.
    app_id: str = Field(min_length=1, max_length=64)
    app_secret: SecretStr
    # The OA's webhook secret ("OA Secret Key"): signs delivery webhooks. Without it,
    # every receipt is refused.
    oa_secret_key: SecretStr | None = None
    # The OA id, only if Zalo turns out to sign webhooks with it instead of the app id
    # (one copy of Zalo's documentation says so); when set, both forms are accepted.
    oa_id: str | None = Field(default=None, min_length=1, max_length=64)

    base_url: str = "https://business.openapi.zalo.me"
    oauth_url: str = "https://oauth.zaloapp.com/v4/oa/access_token"
    # ZBS Template Message to a Zalo user id (``uid:<id>`` recipients), cheaper than
    # ZNS by phone. Endpoint from public clients, not Zalo's own docs (README).
    uid_url: str = "https://openapi.zalo.me/v3.0/oa/message/template"
    # Name of the tokens in the core's TokenStore (`notifier tokens set <name>`).
    token_name: str = Field(default="zalo", min_length=1, max_length=64)
    # Refresh before a send when the access token expires within this many seconds.
    refresh_margin_s: float = Field(default=600.0, ge=0, le=86_400)
    # Adds ``"mode": "development"``: Zalo then delivers only to the app's/OA's admins.
    development_mode: bool = False
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    max_connections: int = Field(default=20, ge=1, le=1000)

    # ZNS parameter lengths: longer text is shortened with "…"; a longer code fails
    # (a cut dossier code would send the citizen looking for the wrong dossier).
    max_param_length: int = Field(default=100, ge=2, le=400)
    code_param_length: int = Field(default=30, ge=2, le=400)
    param_limits: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_PARAM_LIMITS))
    quota_error_codes: tuple[int, ...] = QUOTA_ERROR_CODES

    # Correctly signed delivery webhooks older (or further in the future) than this are
    # acknowledged and ignored. Zalo retries after 30 s, 5, 15, 30 and 60 min (a blog
    # reports retries for 12 h); a retry may keep the first timestamp, so the default
    # covers a day. Receipt nonces are kept at least twice this long (retention), so
    # a repeat inside the window is always recognised.
    receipt_max_age_s: float = Field(default=86_400.0, gt=0, le=7 * 86_400)

    @field_validator("app_secret", "oa_secret_key")
    @classmethod
    def _not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("app_id", "oa_id", "token_name")
    @classmethod
    def _no_whitespace(cls, value: str | None) -> str | None:
        if value is not None and _CONTROL.search(value):
            raise ValueError("must not contain spaces or control characters")
        return value

    @field_validator("base_url", "oauth_url", "uid_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        if not value.startswith(("https://", "http://")) or _CONTROL.search(value):
            raise ValueError("must be an http(s):// URL without spaces")
        return value.rstrip("/")

    @field_validator("param_limits", "quota_error_codes", mode="before")
    @classmethod
    def _json_from_environment(cls, value: object) -> object:
        # NOTIFIER_ADAPTERS__ZALO__QUOTA_ERROR_CODES='[-1200]' arrives as a string.
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError("must be JSON (a list of codes / an object of limits)") from None
        return value

    @field_validator("param_limits")
    @classmethod
    def _positive_limits(cls, value: dict[str, int]) -> dict[str, int]:
        for key, limit in value.items():
            if not 2 <= limit <= 400:
                raise ValueError(f"limit of {key!r} must be between 2 and 400")
        return value
