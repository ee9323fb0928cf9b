"""The Zalo channel adapter: ZNS template messages to the citizen's phone.

Registered as ``zalo`` in the ``notifier.adapters`` entry-point group.

Tokens. ZNS calls carry an OA access token (about 25 hours); OAuth v4 refreshes it
with a **single-use** refresh token. The tokens live in the core's
:class:`~notifier.tokens.TokenStore` under ``settings.token_name``; a refresh runs
through :meth:`TokenStore.refresh`, which holds a database row lock around the call to
Zalo so only one worker anywhere spends the refresh token, and the others pick up the
result. Each adapter keeps the current token in memory (no database read per send),
refreshes it when it expires within ``refresh_margin_s``, and when Zalo still answers
-124 (token invalid) re-reads the store (another worker may have refreshed) or
refreshes once, then retries the send once.

Answers. Zalo answers HTTP 200 to failures too; the ``error`` field decides:

====================  ===================================================================
0                     sent: ``msg_id`` and the OA's daily quota go to the delivery log
-124                  access token invalid/expired: refresh once, send once more
-108 -114 -118        the citizen's phone/account cannot get ZNS: permanent, no alert
                      (the core then falls back to SMS)
-131 -132             template not approved / does not exist: permanent, operator alert
quota (-144 ?)        daily quota used up: permanent, operator alert, code "quota"
                      (the real code is unverified, see ``ZaloSettings.quota_error_codes``)
-133                  outside the template's sending hours: retry after 07:00 (Vietnam)
other codes           permanent, operator alert (unknown: an operator should look)
HTTP 5xx, 429,        temporary (429 honours Retry-After)
timeouts, no network
====================  ===================================================================
"""

from __future__ import annotations

import asyncio
import email.utils
import re
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import httpx

from notifier.adapter import (
    Adapter,
    AdapterContext,
    DeliveryFailure,
    Health,
    OutboundMessage,
    PermanentFailure,
    Receipt,
    ReceiptRequest,
    RecipientKind,
    SendResult,
    TemplatePart,
    TemporaryFailure,
)
from notifier.logging import get_logger
from notifier.masking import scrub
from notifier.phones import InvalidPhone, PhoneFormat, parse_mobile
from notifier.tokens import Token, TokenGrant, TokenStoreError

from .params import ParamValue, template_data, template_id
from .receipts import parse_receipt
from .settings import ZaloSettings

__all__ = ["ZaloZnsAdapter", "classify_answer", "zns_phone"]

log = get_logger(__name__)

TOKEN_INVALID = -124
# The citizen's side: no Zalo account, inactive/blocked/outdated app, invalid phone.
RECIPIENT_ERRORS = frozenset({-108, -114, -118})
# Our side: the template is not approved or does not exist.
TEMPLATE_ERRORS = frozenset({-131, -132})
OUTSIDE_HOURS = -133

VIETNAM = ZoneInfo("Asia/Ho_Chi_Minh")
# Customer-care templates may be sent 07:00-22:00 (unofficial summary); transactional
# ones any time. After -133 the send waits for the next 07:00 in Vietnam.
_WINDOW_OPENS = 7
_WINDOW_CLOSES = 22
_INSIDE_WINDOW_RETRY_S = 900.0

REAUTHORISE = (
    "re-authorise the OA in Zalo's developer console and run "
    "`notifier tokens set {name} --refresh-token-stdin`"
)

_PHONE_CHARS = re.compile(r"\+?[0-9 .()\-]+")


def zns_phone(recipient: str) -> str:
    """The recipient as ZNS wants it (84xxxxxxxxx), or a permanent failure.

    The reasons never contain the number.
    """
    value = recipient.strip()
    if not _PHONE_CHARS.fullmatch(value) or sum(ch.isdigit() for ch in value) > 15:
        raise PermanentFailure(
            "ZNS needs the citizen's phone number; the recipient is a Zalo user id",
            code="not_a_phone",
        )
    try:
        return parse_mobile(value).format(PhoneFormat.INTERNATIONAL)
    except InvalidPhone as exc:
        raise PermanentFailure(
            f"phone number unusable for ZNS: {exc}", code="invalid_phone"
        ) from None


def seconds_until_window(now: datetime | None = None) -> float:
    """Seconds until ZNS's sending window (07:00-22:00 in Vietnam) opens again."""
    local = (now or datetime.now(UTC)).astimezone(VIETNAM)
    opens = local.replace(hour=_WINDOW_OPENS, minute=0, second=0, microsecond=0)
    if local.hour >= _WINDOW_CLOSES:
        opens += timedelta(days=1)
    elif local >= opens:
        # Inside the window by our clock, yet Zalo said no: the template may have a
        # narrower window, or the clocks differ. Look again a little later.
        return _INSIDE_WINDOW_RETRY_S
    return max(60.0, (opens - local).total_seconds())


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str | float):
        try:
            return int(float(value))
        except ValueError:
            return None
    return None


def _zalo_text(answer: dict[str, Any]) -> str:
    text = answer.get("message")
    return scrub(" ".join(str(text).split()))[:200] if text else ""


def classify_answer(answer: dict[str, Any], settings: ZaloSettings) -> SendResult:
    """A /message/template answer (HTTP 200) as a result, or the failure it means.

    -124 is handled by the caller (refresh and retry) and is temporary here.
    """
    code = _as_int(answer.get("error"))
    if code is None:
        raise TemporaryFailure("unexpected answer from Zalo: no error code")
    if code == 0:
        data = answer.get("data")
        data = data if isinstance(data, dict) else {}
        quota = data.get("quota")
        quota = quota if isinstance(quota, dict) else {}
        msg_id = data.get("msg_id")
        details: dict[str, Any] = {
            "quota_daily": _as_int(quota.get("dailyQuota")),
            "quota_remaining": _as_int(quota.get("remainingQuota")),
        }
        if settings.development_mode:
            details["mode"] = "development"
        return SendResult(
            provider_message_id=None if msg_id is None else str(msg_id), details=details
        )
    text = _zalo_text(answer)
    reason = f"Zalo error {code}" + (f": {text}" if text else "")
    if code in RECIPIENT_ERRORS:
        raise PermanentFailure(reason, code=str(code))
    if code in TEMPLATE_ERRORS:
        raise PermanentFailure(reason, code=str(code), operator_alert=True)
    if code in settings.quota_error_codes or "quota" in text.lower():
        raise PermanentFailure(
            f"ZNS daily quota used up ({reason})", code="quota", operator_alert=True
        )
    if code == OUTSIDE_HOURS:
        raise TemporaryFailure(reason, code=str(code), retry_after_s=seconds_until_window())
    if code == TOKEN_INVALID:
        raise TemporaryFailure(reason, code=str(code))
    # Unknown to us: most of Zalo's other codes are about the app, the OA or the
    # request (our configuration); an operator should look at it.
    raise PermanentFailure(reason, code=str(code), operator_alert=True)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        answer = response.json()
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


class ZaloZnsAdapter(Adapter[ZaloSettings]):
    """Zalo Notification Service: approved template + parameters, to a phone number."""

    name: ClassVar[str] = "zalo"
    channel: ClassVar[str] = "zalo"
    description: ClassVar[str] = (
        "Zalo ZNS template messages (OA access token shared by all workers, "
        "signed delivery webhooks)"
    )
    settings_model = ZaloSettings
    recipient_kind: ClassVar[RecipientKind] = RecipientKind.ZALO
    template_parts: ClassVar[tuple[TemplatePart, ...]] = (
        TemplatePart("template_id"),
        TemplatePart("template_data"),
    )
    accepts_receipts: ClassVar[bool] = True

    def __init__(self, settings: ZaloSettings, context: AdapterContext) -> None:
        super().__init__(settings, context)
        self._token: Token | None = None  # newest version seen, to skip a read per send
        # asyncio objects belong to the loop that runs ``send``; made on first use.
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    @property
    def max_in_flight(self) -> int:
        return self.settings.max_connections

    # -- receipts ------------------------------------------------------------------------

    @classmethod
    def parse_receipt(cls, settings: ZaloSettings, request: ReceiptRequest) -> list[Receipt]:
        return parse_receipt(settings, request)

    # -- sending -------------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> SendResult:
        body: dict[str, Any] = {
            "phone": zns_phone(message.recipient),
            "template_id": template_id(message.parts),
            "template_data": template_data(message.parts, self.settings),
            "tracking_id": str(message.delivery_id),
        }
        if self.settings.development_mode:
            body["mode"] = "development"
        token = await self._usable_token()
        answer = await self._post_message(token, body)
        if _as_int(answer.get("error")) == TOKEN_INVALID:
            log.info("zalo access token rejected, renewing it", version=token.version)
            token = await self._replace_rejected(token)
            answer = await self._post_message(token, body)
            if _as_int(answer.get("error")) == TOKEN_INVALID:
                raise TemporaryFailure(
                    "Zalo rejected a just-renewed access token", code=str(TOKEN_INVALID)
                )
        return classify_answer(answer, self.settings)

    async def _post_message(
        self, token: Token, body: dict[str, str | dict[str, ParamValue]]
    ) -> dict[str, Any]:
        assert token.access_token is not None
        try:
            response = await self._get_client().post(
                f"{self.settings.base_url}/message/template",
                json=body,
                headers={"access_token": token.access_token},
            )
        except httpx.TimeoutException:
            raise TemporaryFailure(
                f"no answer from Zalo within {self.settings.timeout_s:g}s"
            ) from None
        except httpx.TransportError as exc:
            raise TemporaryFailure(f"Zalo unreachable: {type(exc).__name__}") from None
        status = response.status_code
        if status == 429:
            raise TemporaryFailure(
                "Zalo is rate limiting (HTTP 429)",
                code="http_429",
                retry_after_s=_retry_after(response),
            )
        if status >= 500:
            raise TemporaryFailure(
                f"Zalo server error (HTTP {status})",
                code=f"http_{status}",
                retry_after_s=_retry_after(response),
            )
        if not 200 <= status < 300:
            # Zalo answers 200 even to failures: anything else is a wrong URL or a proxy.
            raise PermanentFailure(
                f"unexpected HTTP {status} from {self.settings.base_url}",
                code=f"http_{status}",
                operator_alert=True,
            )
        answer = _json_object(response)
        if answer is None:
            raise TemporaryFailure("unexpected answer from Zalo: not a JSON object")
        return answer

    def _get_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client.is_closed or self._client_loop is not loop:
            # A client made on another loop (tests, a restarted runtime) cannot be used
            # or closed from this one; its connections go with it.
            self._client = self.context.http_client(
                timeout=httpx.Timeout(self.settings.timeout_s),
                limits=httpx.Limits(
                    max_connections=self.settings.max_connections,
                    max_keepalive_connections=self.settings.max_connections,
                ),
            )
            self._client_loop = loop
        return self._client

    # -- tokens --------------------------------------------------------------------------

    def _refresh_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    def _remember(self, token: Token) -> Token:
        if self._token is None or token.version >= self._token.version:
            self._token = token
        return token

    async def _read_store(self) -> Token | None:
        try:
            return await asyncio.to_thread(self.context.tokens.get, self.settings.token_name)
        except TokenStoreError as exc:
            raise PermanentFailure(str(exc), code="tokens", operator_alert=True) from None
        except Exception as exc:  # the database is down or busy
            raise TemporaryFailure(f"token store unavailable: {type(exc).__name__}") from None

    def _no_tokens(self) -> PermanentFailure:
        name = self.settings.token_name
        return PermanentFailure(
            f"no Zalo tokens stored under {name!r}: " + REAUTHORISE.format(name=name),
            code="tokens",
            operator_alert=True,
        )

    async def _usable_token(self) -> Token:
        """The cached token, refreshed first when it expires within the margin."""
        token = self._token
        if token is None:
            token = await self._read_store()
            if token is None:
                raise self._no_tokens()
            self._remember(token)
        margin = self.settings.refresh_margin_s
        if token.expires_within(margin):
            token, spent = await self._refresh(token)
            if not spent and token.expires_within(margin):
                # Another worker refreshed before us, but that token is due too.
                token, _ = await self._refresh(token)
        if token.access_token is None:
            raise self._no_tokens()
        return token

    async def _replace_rejected(self, rejected: Token) -> Token:
        """After -124: a token another worker refreshed meanwhile, or a refresh of ours."""
        current = await self._read_store()
        if current is None:
            raise self._no_tokens()
        if (
            current.version > rejected.version
            and current.access_token not in (None, rejected.access_token)
            and not current.expires_within(0)
        ):
            return self._remember(current)
        token, _ = await self._refresh(current)
        if token.access_token is None:
            raise self._no_tokens()
        return token

    async def _refresh(self, stale: Token) -> tuple[Token, bool]:
        """Refresh unless someone already replaced ``stale``; True when we spent the
        refresh token ourselves."""
        async with self._refresh_lock():  # one refresh at a time in this process
            cached = self._token
            if (
                cached is not None
                and cached.version > stale.version
                and cached.access_token is not None
                and not cached.expires_within(0)
            ):
                return cached, False
            spent: list[bool] = []

            def refresher(current: Token) -> TokenGrant:
                spent.append(True)
                return self._call_refresh(current)

            try:
                # The store calls ``refresher`` under a row lock, and not at all when
                # another worker refreshed after ``stale`` was read.
                token = await asyncio.to_thread(
                    self.context.tokens.refresh,
                    self.settings.token_name,
                    refresher,
                    seen_version=stale.version,
                )
            except DeliveryFailure:
                raise
            except TokenStoreError as exc:
                raise PermanentFailure(str(exc), code="tokens", operator_alert=True) from None
            except Exception as exc:  # the database is down or busy
                raise TemporaryFailure(
                    f"token store unavailable during refresh: {type(exc).__name__}"
                ) from None
            self._remember(token)
            if spent:
                log.info(
                    "zalo access token refreshed",
                    version=token.version,
                    expires_at=None if token.expires_at is None else token.expires_at.isoformat(),
                )
            return token, bool(spent)

    def _call_refresh(self, current: Token) -> TokenGrant:
        """OAuth v4 refresh: synchronous, run by the token store under its row lock.

        A synchronous ``httpx.Client`` on the real network: the context's transport seam
        is asynchronous and cannot serve it (tests use a real local server instead).
        """
        settings = self.settings
        name = settings.token_name
        try:
            with httpx.Client(timeout=httpx.Timeout(settings.timeout_s)) as client:
                response = client.post(
                    settings.oauth_url,
                    headers={"secret_key": settings.app_secret.get_secret_value()},
                    data={
                        "refresh_token": current.refresh_token,
                        "app_id": settings.app_id,
                        "grant_type": "refresh_token",
                    },
                )
        except httpx.TimeoutException:
            # If Zalo did refresh, its answer (and the new single-use refresh token) is
            # lost: the next refresh will be refused and ask for re-authorisation.
            raise TemporaryFailure(
                f"no answer from Zalo OAuth within {settings.timeout_s:g}s"
            ) from None
        except httpx.TransportError as exc:
            raise TemporaryFailure(f"Zalo OAuth unreachable: {type(exc).__name__}") from None
        status = response.status_code
        if status == 429 or status >= 500:
            raise TemporaryFailure(
                f"Zalo OAuth unavailable (HTTP {status})",
                code=f"http_{status}",
                retry_after_s=_retry_after(response),
            )
        answer = _json_object(response) or {}
        access_token = answer.get("access_token")
        if 200 <= status < 300 and isinstance(access_token, str) and access_token:
            refresh_token = answer.get("refresh_token")
            if not isinstance(refresh_token, str) or not refresh_token:
                log.warning("zalo refresh answer without a new refresh token; keeping the old")
                refresh_token = current.refresh_token
            expires_in = _as_int(answer.get("expires_in"))
            if expires_in is None or expires_in <= 0:
                expires_in = 3600  # Zalo says about 25 hours; assume less when it is silent
            return TokenGrant(
                access_token=access_token,
                refresh_token=refresh_token,
                expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
            )
        code = _as_int(answer.get("error"))
        label = answer.get("error_name") or answer.get("message") or f"HTTP {status}"
        label = scrub(" ".join(str(label).split()))[:120]
        raise PermanentFailure(
            f"Zalo refused to refresh the access token ({label}"
            + (f", error {code}" if code is not None else "")
            + "): "
            + REAUTHORISE.format(name=name),
            code="token_refresh",
            operator_alert=True,
        )

    # -- lifecycle -----------------------------------------------------------------------

    async def close(self) -> None:
        client, loop = self._client, self._client_loop
        self._client = self._client_loop = None
        if client is not None and loop is asyncio.get_running_loop():
            await client.aclose()

    async def health(self) -> Health:
        """Whether tokens are stored and when the access token expires (no Zalo call)."""
        try:
            token = await self._read_store()
        except DeliveryFailure as exc:
            return Health(ok=False, detail=exc.reason)
        name = self.settings.token_name
        if token is None:
            return Health(ok=False, detail=f"no tokens stored under {name!r}")
        self._remember(token)
        if token.access_token is None or token.expires_at is None:
            return Health(ok=True, detail="access token not fetched yet (fetched on first send)")
        return Health(
            ok=True,
            detail=f"access token version {token.version} expires {token.expires_at.isoformat()}",
        )
